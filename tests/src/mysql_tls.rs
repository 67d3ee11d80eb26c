//! MySQL over TLS and secrets for tests: a CA and a certificate for
//! 127.0.0.1 that MariaDB serves (issued with lockstep's own rcgen-based
//! issuer), a second CA that signed nothing the servers present, accounts
//! that `REQUIRE SSL` with the least grants docs/agent.md lists, private
//! (0600) files for passwords and credentials, and a grep for a secret in
//! files and process command lines.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::mariadb::{MariaDb, MariaDbOptions};
use crate::process::short_temp_dir;

/// What the agent's backup user needs on MariaDB 10.5+ (docs/agent.md,
/// "MySQL user and grants").
pub const BACKUP_GRANTS: &str =
    "SELECT, RELOAD, PROCESS, BINLOG MONITOR, SHOW VIEW, EVENT, TRIGGER";
/// What a restore target's user needs on MariaDB 10.5+.
pub const RESTORE_GRANTS: &str = "SELECT, INSERT, CREATE, DROP, REFERENCES, INDEX, ALTER, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, EVENT, TRIGGER, SET USER, REPLICATION SLAVE ADMIN, BINLOG ADMIN";

/// A CA, a server certificate and key for 127.0.0.1 signed by it, and a
/// second CA; removed on drop.
#[derive(Debug)]
pub struct TlsFiles {
    dir: Option<tempfile::TempDir>,
    /// The CA that signed the servers' certificate.
    pub ca: PathBuf,
    /// The servers' certificate (SAN: IP 127.0.0.1).
    pub cert: PathBuf,
    /// Its key (mode 0600).
    pub key: PathBuf,
    /// A CA that signed nothing the servers present.
    pub wrong_ca: PathBuf,
    /// A certificate and key from the same CA for another name
    /// (`db.invalid`), not for 127.0.0.1.
    pub misnamed: (PathBuf, PathBuf),
}

impl TlsFiles {
    pub fn new() -> anyhow::Result<TlsFiles> {
        let dir = short_temp_dir("ls-tls-").context("create temp dir for certificates")?;
        let hosts = vec!["127.0.0.1".to_string()];
        let (ca, issued) = lockstep_proto::tls::certs::issue(
            &dir.path().join("good"),
            &["mariadb".to_string()],
            &hosts,
            false,
        )
        .context("issue the servers' certificate")?;
        let (wrong_ca, _) = lockstep_proto::tls::certs::issue(
            &dir.path().join("other"),
            &["stranger".to_string()],
            &hosts,
            false,
        )
        .context("issue a second CA")?;
        let (_, other) = lockstep_proto::tls::certs::issue(
            &dir.path().join("good"),
            &["misnamed".to_string()],
            &["db.invalid".to_string()],
            false,
        )
        .context("issue a certificate for another name")?;
        let server = issued
            .into_iter()
            .next()
            .context("one certificate issued")?;
        let other = other.into_iter().next().context("one certificate issued")?;
        Ok(TlsFiles {
            dir: Some(dir),
            ca,
            cert: server.cert,
            key: server.key,
            wrong_ca,
            misnamed: (other.cert, other.key),
        })
    }

    /// Options for a server whose certificate names `db.invalid`.
    pub fn misnamed_server_options(&self) -> MariaDbOptions {
        MariaDbOptions::default().with_tls(&self.misnamed.0, &self.misnamed.1, &self.ca)
    }

    /// Options for a server that serves TLS with these files.
    pub fn server_options(&self) -> MariaDbOptions {
        MariaDbOptions::default().with_tls(&self.cert, &self.key, &self.ca)
    }

    /// The temp dir holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir kept until drop").path()
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            crate::process::remove_temp_dir(dir, "certificates");
        }
    }
}

/// Creates `user` (from any host) with `password`, `REQUIRE SSL`, and
/// exactly `grants` on `*.*`; checks `SHOW GRANTS` says just that.
pub async fn create_tls_account(
    db: &MariaDb,
    user: &str,
    password: &str,
    grants: &str,
) -> anyhow::Result<()> {
    create_account(db, user, password, grants, true).await
}

/// Creates `user` (from any host) with `password` and exactly `grants` on
/// `*.*`, with `REQUIRE SSL` if `require_ssl`; checks `SHOW GRANTS`.
pub async fn create_account(
    db: &MariaDb,
    user: &str,
    password: &str,
    grants: &str,
    require_ssl: bool,
) -> anyhow::Result<()> {
    let require = if require_ssl { " REQUIRE SSL" } else { "" };
    db.exec(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'{require}"
    ))
    .await?;
    db.exec(&format!("GRANT {grants} ON *.* TO '{user}'@'%'"))
        .await?;
    let shown: Vec<String> = db.query(&format!("SHOW GRANTS FOR '{user}'@'%'")).await?;
    let privileges = |list: &str| {
        let mut v: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
        v.sort();
        v
    };
    let held = shown
        .first()
        .and_then(|g| g.strip_prefix("GRANT "))
        .and_then(|g| g.split_once(" ON *.* TO "))
        .map(|(list, _)| privileges(list));
    anyhow::ensure!(
        shown.len() == 1
            && shown[0].ends_with("REQUIRE SSL") == require_ssl
            && held == Some(privileges(grants)),
        "{}: {user} has grants {shown:?}, expected exactly {grants} ON *.*{require}",
        db.name()
    );
    Ok(())
}

/// TLS connections the server has accepted (`Ssl_accepts`).
pub async fn ssl_accepts(db: &MariaDb) -> anyhow::Result<u64> {
    let row: (String, String) = db
        .query_one("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
        .await?;
    row.1
        .parse()
        .with_context(|| format!("{}: Ssl_accepts = {:?}", db.name(), row.1))
}

/// Writes `text` to a new file at `path` with mode 0600.
pub fn private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    // In case the umask took bits off or on.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Every file under `root` (recursively) whose bytes contain `secret`.
pub fn files_containing(root: &Path, secret: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("stat {}", path.display()))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
                if contains(&bytes, secret) {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether `bytes` contain `secret`.
pub fn contains(bytes: &[u8], secret: &str) -> bool {
    let needle = secret.as_bytes();
    !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle)
}

/// The command line of a running process (`/proc/PID/cmdline`, NULs as
/// spaces).
pub fn cmdline(pid: u32) -> anyhow::Result<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("read the command line of process {pid}"))?;
    Ok(String::from_utf8_lossy(&raw).replace('\0', " "))
}
