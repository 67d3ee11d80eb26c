//! Secrets the agent reads from files: the one rule for files that hold a
//! secret (private to their owner, as ssh demands of its keys), the MySQL
//! password given without argv (`password_file`, `LOCKSTEP_MYSQL_PASSWORD`),
//! and the credentials file that restore targets name by reference
//! (`cred:NAME`), so a target's password never crosses the coordinator.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::mysql::{Server, SslMode, SslSettings};

/// The environment variable that may hold the agent's MySQL password.
pub const PASSWORD_ENV: &str = "LOCKSTEP_MYSQL_PASSWORD";
/// How a restore target names an entry of the loading agent's credentials
/// file instead of giving a URL: `cred:NAME`.
pub const REFERENCE_PREFIX: &str = "cred:";
/// Longest secret file read (a key, a password or a credentials file).
const MAX_SECRET_FILE: u64 = 1 << 20;

/// Reads a file that holds a secret (`what` names it in errors: "key
/// file", "password file", "credentials file"). Refused, naming the file
/// and its mode, unless it is a regular file nobody but its owner may
/// read, write or execute (mode 0600 or 0400), like ssh's private keys.
pub fn read_private(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let action = match what {
        "key file" => "load key file",
        "password file" => "load password file",
        _ => "load credentials file",
    };
    let refuse = |kind, reason: String| Error::io(path, action, io::Error::new(kind, reason));
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, action, e))?;
    if !meta.is_file() {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "not a regular file".into(),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(
            io::ErrorKind::PermissionDenied,
            format!(
                "its mode {mode:04o} lets group or others at it; a {what} must be private to its owner (chmod 600 {})",
                path.display()
            ),
        ));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(refuse(
            io::ErrorKind::InvalidData,
            format!("{} bytes is too long for a {what}", meta.len()),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, action, e))
}

/// The password in a password file: its first line, without the newline.
pub fn read_password_file(path: &Path) -> Result<String> {
    let bytes = read_private(path, "password file")?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::io(
            path,
            "load password file",
            io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
        )
    })?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(Error::io(
            path,
            "load password file",
            io::Error::new(io::ErrorKind::InvalidData, "the file is empty"),
        ));
    }
    Ok(line.to_string())
}

/// The password given beside a URL: `password_file`, or [`PASSWORD_ENV`];
/// refused when more than one of them and the URL has one.
fn own_password(url_has_password: bool, file: Option<&Path>) -> Result<Option<String>> {
    let env = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
    let given =
        usize::from(url_has_password) + usize::from(file.is_some()) + usize::from(env.is_some());
    if given > 1 {
        return Err(Error::Config(format!(
            "the MySQL password is given more than once (in the URL, password_file / --mysql-password-file, {PASSWORD_ENV}); give it once"
        )));
    }
    match file {
        Some(path) => Ok(Some(read_password_file(path)?)),
        None => Ok(env),
    }
}

/// A server from its URL, TLS settings and password: from the URL,
/// `password_file`, or [`PASSWORD_ENV`] (one of them at most).
pub fn server(url: &str, tls: &SslSettings, password_file: Option<&Path>) -> Result<Server> {
    let in_url = Server::parse_with(url, tls, None)?;
    match own_password(in_url.has_password(), password_file)? {
        Some(pw) => Server::parse_with(url, tls, Some(&pw)),
        None => Ok(in_url),
    }
}

/// Warns when the password is in a URL given on the command line (where
/// every user of the host sees it in the process list); `from_env` is the
/// value of the variable the flag also reads.
pub fn warn_if_on_argv(flag: &str, url: &str, from_env: Option<&str>) {
    if from_env == Some(url) {
        return;
    }
    if Server::parse(url).is_ok_and(|s| s.has_password()) {
        tracing::warn!(
            server = %crate::mysql::redact(url),
            "the password in {flag} is visible in the process list to every user of this host; give it with --mysql-password-file or {PASSWORD_ENV} instead"
        );
    }
}

/// Warns when the configuration file at `path` holds a password (in its
/// `mysql` URL) and group or others may read it.
pub fn warn_if_readable(path: &Path, url: &str) {
    use std::os::unix::fs::PermissionsExt;
    let has_password = Server::parse(url).is_ok_and(|s| s.has_password());
    let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777);
    if has_password && mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:04o}"),
            "the configuration file holds the MySQL password and others may read it; chmod 600 it, or move the password to password_file"
        );
    }
}

/// One entry of a credentials file: a target's URL (with its password)
/// and how to secure the session.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credential {
    url: String,
    #[serde(default)]
    ssl_mode: Option<SslMode>,
    #[serde(default)]
    ssl_ca: Option<PathBuf>,
}

/// The agent's credentials file: target name → server, for restore targets
/// given as `cred:NAME`. Its text and its passwords never leave the agent.
#[derive(Clone)]
pub struct Credentials {
    path: PathBuf,
    servers: BTreeMap<String, Server>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("path", &self.path)
            .field("names", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Reads and checks every entry of the file at `path` (private to its
    /// owner, TOML tables `[NAME]` with `url`, and optionally `ssl_mode`
    /// and `ssl_ca`). Errors name the file and the entry, never a secret.
    pub fn load(path: &Path) -> Result<Credentials> {
        let bytes = read_private(path, "credentials file")?;
        let bad = |reason: String| {
            Error::io(
                path,
                "load credentials file",
                io::Error::new(io::ErrorKind::InvalidData, reason),
            )
        };
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        // toml's errors quote the offending line, which may hold a password:
        // say only where it is.
        let entries: BTreeMap<String, Credential> = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .map_or(String::new(), |line| format!(" at line {line}"));
            bad(format!(
                "not a credentials file{at}: each entry is a table [NAME] with url = \"mysql://USER:PASSWORD@HOST:PORT\" and optionally ssl_mode and ssl_ca"
            ))
        })?;
        let mut servers = BTreeMap::new();
        for (name, c) in entries {
            check_reference_name(&name)
                .map_err(|reason| bad(format!("entry [{name}]: {reason}")))?;
            let tls = SslSettings {
                mode: c.ssl_mode,
                ca: c.ssl_ca,
            };
            let server = Server::parse_with(&c.url, &tls, None)
                .map_err(|e| bad(format!("entry [{name}]: {e}")))?;
            servers.insert(name, server);
        }
        Ok(Credentials {
            path: path.to_path_buf(),
            servers,
        })
    }

    /// The server a `cred:NAME` reference names.
    pub fn resolve(&self, name: &str) -> Result<Server> {
        self.servers.get(name).cloned().ok_or_else(|| {
            Error::Config(format!(
                "restore target {REFERENCE_PREFIX}{name}: the credentials file {} has no entry [{name}] (it has: {})",
                self.path.display(),
                if self.servers.is_empty() {
                    "none".to_string()
                } else {
                    self.servers.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ))
        })
    }
}

/// A reference's name: letters, digits, '.', '_' and '-'.
pub fn check_reference_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a credential name (letters, digits, '.', '_' and '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "pw", "s3cr3t\n", 0o640);
        let err = read_password_file(&path)
            .expect_err("group-readable")
            .to_string();
        assert!(
            err.contains("0640") && err.contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_password_file(&path).expect("private"), "s3cr3t");
        let empty = write(dir.path(), "empty", "\n", 0o600);
        assert!(read_password_file(&empty).is_err());
    }

    #[test]
    fn credentials_resolve_by_name_and_never_show_the_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "creds.toml",
            "[db1]\nurl = \"mysql://restorer:Pa55word@127.0.0.1:3307\"\nssl_mode = \"required\"\n",
            0o600,
        );
        let creds = Credentials::load(&path).expect("valid");
        let s = creds.resolve("db1").expect("known");
        assert_eq!(s.address(), "127.0.0.1:3307");
        assert_eq!(s.ssl_mode(), SslMode::Required);
        let err = creds.resolve("db2").expect_err("unknown").to_string();
        assert!(err.contains("cred:db2") && err.contains("db1"), "{err}");
        assert!(!format!("{creds:?}").contains("Pa55word"));

        let broken = write(
            dir.path(),
            "broken.toml",
            "[db1]\nurl = \"mysql://restorer:Pa55word@127.0.0.1:3307\"\nbogus = 1\n",
            0o600,
        );
        let err = Credentials::load(&broken)
            .expect_err("unknown key")
            .to_string();
        assert!(!err.contains("Pa55word"), "{err}");
        let bad_url = write(
            dir.path(),
            "bad.toml",
            "[db1]\nurl = \"mysql://restorer:Pa55word@127.0.0.1:99999\"\n",
            0o600,
        );
        let err = Credentials::load(&bad_url)
            .expect_err("bad port")
            .to_string();
        assert!(err.contains("[db1]") && !err.contains("Pa55word"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Credentials::load(&path)
            .expect_err("world-readable")
            .to_string();
        assert!(err.contains("0644"), "{err}");
    }
}
