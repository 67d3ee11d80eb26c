//! Reaching a server: URL parsing, TLS (`ssl-mode`, as the mysql client
//! has it), connecting with a deadline, and the session settings every
//! lockstep connection uses.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use serde::{Deserialize, Serialize};

use crate::error::{Error, MysqlContext, Result};

/// How long a connection attempt may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Session settings of connections that read or write backup data: UTC for
/// TIMESTAMP columns, raw bytes in both directions, and no server-side timeouts
/// that could cut a long dump or load short.
pub const DATA_SESSION: &[&str] = &[
    "SET SESSION time_zone = '+00:00'",
    "SET NAMES binary",
    "SET SESSION net_read_timeout = 3600, net_write_timeout = 3600, wait_timeout = 86400",
];

/// How a session with a server is secured, as the mysql client's
/// `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disabled,
    /// TLS when the server offers it (certificate not checked), plaintext
    /// when it does not.
    #[default]
    Preferred,
    /// TLS or nothing; the certificate is not checked.
    Required,
    /// TLS, and the server's certificate must chain to the CA (`ssl-ca`).
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyIdentity,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disabled => "disabled",
            SslMode::Preferred => "preferred",
            SslMode::Required => "required",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyIdentity => "verify-identity",
        }
    }

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "disabled" => SslMode::Disabled,
            "preferred" => SslMode::Preferred,
            "required" => SslMode::Required,
            "verify-ca" => SslMode::VerifyCa,
            "verify-identity" => SslMode::VerifyIdentity,
            _ => return None,
        })
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyIdentity)
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// TLS settings given beside a URL (agent config keys, flags, a
/// credentials entry). Settings in the URL's query (`?ssl-mode=...&ssl-ca=...`)
/// may not contradict them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslSettings {
    /// None: `verify-ca` when a CA is given, else `preferred`.
    pub mode: Option<SslMode>,
    /// PEM file of the CA(s) the server's certificate must chain to.
    pub ca: Option<PathBuf>,
}

impl SslSettings {
    fn effective(&self) -> SslMode {
        self.mode.unwrap_or(if self.ca.is_some() {
            SslMode::VerifyCa
        } else {
            SslMode::Preferred
        })
    }
}

/// One MySQL/MariaDB server as given by a
/// `mysql://USER[:PASS]@HOST:PORT[?ssl-mode=MODE&ssl-ca=FILE]` URL.
#[derive(Clone)]
pub struct Server {
    /// Options without TLS (`disabled`, and `preferred` after the server
    /// turned out to have no TLS).
    plain: Opts,
    /// Options with TLS, unless `disabled`.
    tls: Option<Opts>,
    mode: SslMode,
    ca: Option<PathBuf>,
    address: String,
    /// `preferred`: the server offered no TLS (shared by clones).
    no_tls: Arc<AtomicBool>,
    /// `verify-ca`: options naming a host the server's certificate names,
    /// once a session found it (shared by clones); see [`Server::connect`].
    verify_ca_named: Arc<std::sync::Mutex<Option<Opts>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Server")
            .field("address", &self.address)
            .field("ssl_mode", &self.mode)
            .finish()
    }
}

/// Our query parameters (`ssl-mode`, `ssl-ca`) taken out of `url`; the
/// rest is for the driver. mysql_async's own TLS switches are refused:
/// `ssl-mode` says it all.
fn split_tls_params(url: &str) -> std::result::Result<(String, SslSettings), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), SslSettings::default()));
    };
    let mut tls = SslSettings::default();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key.replace('_', "-").as_str() {
            "ssl-mode" | "sslmode" => {
                tls.mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "ssl-mode={value:?} is not one of disabled, preferred, required, verify-ca, verify-identity"
                    )
                })?)
            }
            "ssl-ca" => tls.ca = Some(PathBuf::from(value)),
            "require-ssl" | "verify-ca" | "verify-identity" | "built-in-roots" => {
                return Err(format!(
                    "{key} is not supported; use ssl-mode=disabled|preferred|required|verify-ca|verify-identity and ssl-ca=FILE"
                ));
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, tls))
}

/// The DNS name a certificate was found valid for, from rustls's "not
/// valid for name" error text (`... is only valid for DnsName("db1") ...`).
fn certificate_name(text: &str) -> Option<String> {
    if !text.contains("not valid for name") {
        return None;
    }
    let rest = text.split_once("valid for DnsName(\"")?.1;
    let name = rest.split('"').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Whether an I/O error came from TLS (the handshake or a certificate)
/// rather than the network.
fn is_tls_failure(e: &mysql_async::IoError) -> bool {
    match e {
        mysql_async::IoError::Tls(_) => true,
        // tokio-rustls reports TLS failures as InvalidData.
        mysql_async::IoError::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
    }
}

/// `%XX` escapes of a query value decoded (a CA path may need them).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Server {
    /// A server from its URL alone (TLS settings in its query, if any).
    pub fn parse(url: &str) -> Result<Self> {
        Server::parse_with(url, &SslSettings::default(), None)
    }

    /// A server from its URL, TLS settings given beside it (which the
    /// URL's query may repeat but not contradict), and a password given
    /// beside it (refused if the URL has one too).
    pub fn parse_with(url: &str, tls: &SslSettings, password: Option<&str>) -> Result<Self> {
        let redacted = redact(url);
        let bad = |reason: String| Error::BadUrl {
            url: redacted.clone(),
            reason,
        };
        if !url.starts_with("mysql://") {
            return Err(bad(
                "expected mysql://USER[:PASSWORD]@HOST:PORT[?ssl-mode=MODE&ssl-ca=FILE]".into(),
            ));
        }
        let (driver_url, in_url) = split_tls_params(url).map_err(bad)?;
        let mode = match (in_url.mode, tls.mode) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "the URL says ssl-mode={a} but the configuration says ssl_mode={b}"
                )));
            }
            (a, b) => a.or(b),
        };
        let ca = match (&in_url.ca, &tls.ca) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "the URL says ssl-ca={} but the configuration says ssl_ca={}",
                    a.display(),
                    b.display()
                )));
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let tls = SslSettings { mode, ca };
        let mode = tls.effective();
        if let Some(ca) = &tls.ca
            && !mode.verifies()
        {
            return Err(bad(format!(
                "ssl-ca={} is given but ssl-mode={mode} does not check certificates (use verify-ca or verify-identity)",
                ca.display()
            )));
        }
        let opts = Opts::from_url(&driver_url).map_err(|e| bad(e.to_string()))?;
        if opts.user().is_none() {
            return Err(bad("no user given (mysql://USER@HOST:PORT)".into()));
        }
        if password.is_some() && opts.pass().is_some() {
            return Err(bad(
                "the URL has a password and one is given beside it (password file or environment); give it once".into(),
            ));
        }
        let address = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        // Always talk TCP to the address given: the socket the server advertises
        // may belong to a different mount namespace (containers, sidecars).
        let mut builder = OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .tcp_nodelay(true);
        if let Some(pw) = password {
            builder = builder.pass(Some(pw));
        }
        let plain: Opts = builder.clone().ssl_opts(None::<SslOpts>).into();
        let tls_opts = match mode {
            SslMode::Disabled => None,
            SslMode::Preferred | SslMode::Required => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            SslMode::VerifyCa | SslMode::VerifyIdentity => {
                let mut ssl = SslOpts::default()
                    .with_danger_skip_domain_validation(mode == SslMode::VerifyCa);
                if let Some(ca) = &tls.ca {
                    if !ca.is_file() {
                        return Err(bad(format!("ssl-ca={}: no such file", ca.display())));
                    }
                    ssl = ssl
                        .with_root_certs(vec![ca.clone().into()])
                        .with_disable_built_in_roots(true);
                }
                Some(ssl)
            }
        };
        Ok(Server {
            plain,
            tls: tls_opts.map(|ssl| builder.ssl_opts(ssl).into()),
            mode,
            ca: tls.ca,
            address,
            no_tls: Arc::new(AtomicBool::new(false)),
            verify_ca_named: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// `host:port`, the name used for this server in every message.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn user(&self) -> &str {
        self.plain.user().unwrap_or_default()
    }

    /// Whether a password is set (from the URL or given beside it).
    pub fn has_password(&self) -> bool {
        self.plain.pass().is_some_and(|p| !p.is_empty())
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// The CA file certificates are checked against (`ssl-ca`), if any.
    pub fn ssl_ca(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    /// Host, port, user and password, for a client that speaks the protocol
    /// itself (the binlog dump client, [`crate::binlog::dump`]).
    pub(crate) fn login(&self) -> (String, u16, String, Option<String>) {
        (
            self.plain.ip_or_hostname().to_string(),
            self.plain.tcp_port(),
            self.user().to_string(),
            self.plain.pass().map(str::to_string),
        )
    }

    /// Opens a connection; `purpose` names it in errors ("open lock connection").
    pub async fn connect(&self, purpose: &str) -> Result<Conn> {
        let plaintext = self.tls.is_none() || self.no_tls.load(Ordering::Relaxed);
        let Some(tls) = self.tls.as_ref().filter(|_| !plaintext) else {
            return self
                .connect_with(self.plain.clone())
                .await
                .map_err(|e| self.login_error(purpose, e));
        };
        let named = self
            .verify_ca_named
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tls = named.as_ref().unwrap_or(tls);
        match self.connect_with(tls.clone()).await {
            Ok(conn) => Ok(conn),
            // mysql_async 0.37 asks rustls to skip the name check by
            // matching an error text rustls 0.23 no longer produces, so
            // with verify-ca a certificate that does not name the host
            // fails. The chain was good (the name is checked last): ask
            // again presenting a name the certificate has, which checks the
            // chain in full and the name trivially — verify-ca exactly.
            Err(e) if self.mode == SslMode::VerifyCa && named.is_none() => {
                let Some(name) = certificate_name(&e.to_string()) else {
                    return Err(self.tls_error(purpose, e));
                };
                let ssl = tls
                    .ssl_opts()
                    .cloned()
                    .unwrap_or_default()
                    .with_danger_tls_hostname_override(Some(name));
                let retry: Opts = OptsBuilder::from_opts(tls.clone()).ssl_opts(ssl).into();
                let conn = self
                    .connect_with(retry.clone())
                    .await
                    .map_err(|e| self.tls_error(purpose, e))?;
                *self
                    .verify_ca_named
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(retry);
                Ok(conn)
            }
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if self.mode == SslMode::Preferred => {
                tracing::info!(server = %self.address, "the server offers no TLS; ssl-mode=preferred falls back to plaintext");
                self.no_tls.store(true, Ordering::Relaxed);
                self.connect_with(self.plain.clone())
                    .await
                    .map_err(|e| self.login_error(purpose, e))
            }
            Err(e) => Err(self.tls_error(purpose, e)),
        }
    }

    async fn connect_with(&self, opts: Opts) -> std::result::Result<Conn, mysql_async::Error> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
            Ok(r) => r,
            Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                ),
            ))),
        }
    }

    /// A failed plaintext login; one refused because the account or the
    /// server requires TLS says so.
    fn login_error(&self, purpose: &str, e: mysql_async::Error) -> Error {
        let needs_tls = match &e {
            // ER_SECURE_TRANSPORT_REQUIRED (MySQL 3159, MariaDB 4188)
            mysql_async::Error::Server(s) if s.code == 3159 || s.code == 4188 => {
                Some("the server requires TLS (require_secure_transport)")
            }
            // ER_ACCESS_DENIED_ERROR: a REQUIRE SSL account without TLS is
            // refused the same way as a wrong password.
            mysql_async::Error::Server(s) if s.code == 1045 && self.mode == SslMode::Disabled => {
                Some(
                    "login refused; if the account requires TLS (REQUIRE SSL), a plaintext session cannot log in",
                )
            }
            _ => None,
        };
        match needs_tls {
            Some(why) => Error::mysql(
                &self.address,
                format!("{purpose} with ssl-mode={} ({why})", self.mode),
                e,
            ),
            None => Error::mysql(&self.address, purpose, e),
        }
    }

    /// A failed TLS login: what the mode needed and what went wrong.
    fn tls_error(&self, purpose: &str, e: mysql_async::Error) -> Error {
        let reason = match &e {
            mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
                "the server offers no TLS (start it with ssl_cert and ssl_key, or use ssl-mode=preferred)".to_string()
            }
            mysql_async::Error::Io(io) if is_tls_failure(io) => {
                let text = e.to_string();
                let ca = self.ca.as_ref().map_or_else(
                    || "the system's roots".to_string(),
                    |ca| format!("the CA in {}", ca.display()),
                );
                if text.contains("not valid for name") {
                    format!(
                        "the server's certificate does not name {}",
                        self.plain.ip_or_hostname()
                    )
                } else if text.contains("certificate") {
                    format!("the server's certificate is not trusted by {ca}")
                } else {
                    "TLS handshake failed".to_string()
                }
            }
            _ => return Error::mysql(&self.address, purpose, e),
        };
        Error::mysql(
            &self.address,
            format!("{purpose} with ssl-mode={} ({reason})", self.mode),
            e,
        )
    }

    /// Opens a connection and applies [`DATA_SESSION`].
    pub async fn connect_data(&self, purpose: &str) -> Result<Conn> {
        let mut conn = self.connect(purpose).await?;
        for stmt in DATA_SESSION {
            conn.query_drop(*stmt).await.on(&self.address, purpose)?;
        }
        Ok(conn)
    }
}

/// The URL with its password replaced by `***`. Works on malformed input
/// too: whatever sits between the user and the last '@' is masked.
pub fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |s| s + 3);
    let Some(at) = url[start..].rfind('@').map(|at| start + at) else {
        return url.to_string();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

/// Quotes an identifier with backticks.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal for SQL text sent with `NAMES binary`.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_address_and_hides_password() {
        let s = Server::parse("mysql://root:secret@127.0.0.1:3307").expect("valid url");
        assert_eq!(s.address(), "127.0.0.1:3307");
        assert!(!format!("{s:?}").contains("secret"));
        assert_eq!(redact("mysql://root:secret@h:1"), "mysql://root:***@h:1");
    }

    #[test]
    fn parse_rejects_bad_urls_without_leaking_password() {
        for url in ["postgres://u:pw@h:1", "mysql://h:99999", "root:pw@h"] {
            let err = Server::parse(url).expect_err(url).to_string();
            assert!(err.contains("invalid MySQL URL"), "{err}");
            assert!(!err.contains("pw@"), "{err}");
        }
        for url in [
            "mysql://u:Sekrit@h:99999",
            "mysql://u:Sekrit@h:1?ssl-mode=bogus",
            "mysql://u:Sekrit@h:1?require_ssl=true",
            "mysql://u:Sekrit@h:1?ssl-mode=required&ssl-ca=/nonexistent.pem",
        ] {
            let err = Server::parse(url).expect_err(url).to_string();
            assert!(!err.contains("Sekrit"), "{err}");
        }
    }

    #[test]
    fn the_name_a_certificate_has_is_read_from_the_error() {
        let text = "Input/output error: invalid peer certificate: certificate not valid for name \"127.0.0.1\"; certificate is only valid for DnsName(\"db1.example\") or DnsName(\"db1\")";
        assert_eq!(certificate_name(text).as_deref(), Some("db1.example"));
        assert_eq!(
            certificate_name("invalid peer certificate: UnknownIssuer"),
            None
        );
    }

    #[test]
    fn ssl_mode_from_url_and_settings() {
        let s = Server::parse("mysql://root@127.0.0.1:3307").expect("valid");
        assert_eq!(s.ssl_mode(), SslMode::Preferred);
        let s = Server::parse("mysql://root@127.0.0.1:3307?ssl-mode=DISABLED").expect("valid");
        assert_eq!(s.ssl_mode(), SslMode::Disabled);
        assert!(s.tls.is_none());
        let s = Server::parse("mysql://root@127.0.0.1:3307?ssl_mode=required").expect("valid");
        assert_eq!(s.ssl_mode(), SslMode::Required);
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").expect("write");
        // A CA alone means verify-ca, as with the mysql client.
        let url = format!("mysql://root@127.0.0.1:3307?ssl-ca={}", ca.display());
        let s = Server::parse(&url).expect("valid");
        assert_eq!(s.ssl_mode(), SslMode::VerifyCa);
        let tls = SslSettings {
            mode: Some(SslMode::VerifyIdentity),
            ca: Some(ca.clone()),
        };
        let s = Server::parse_with("mysql://root@127.0.0.1:3307", &tls, Some("pw")).expect("valid");
        assert_eq!(s.ssl_mode(), SslMode::VerifyIdentity);
        let err = Server::parse_with("mysql://root@h:1?ssl-mode=required", &tls, None)
            .expect_err("contradiction")
            .to_string();
        assert!(
            err.contains("ssl-mode=required") && err.contains("verify-identity"),
            "{err}"
        );
        let err = Server::parse_with("mysql://root:a@h:1", &SslSettings::default(), Some("b"))
            .expect_err("two passwords")
            .to_string();
        assert!(err.contains("give it once"), "{err}");
        // Other driver parameters pass through.
        Server::parse("mysql://root@h:1?ssl-mode=disabled&stmt_cache_size=0").expect("valid");
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("it's \\"), "'it''s \\\\'");
    }
}
