//! Reaching a server: URL parsing, connecting with a deadline, and the session
//! settings every lockstep connection uses.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

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

/// One MySQL/MariaDB server as given by a `mysql://USER[:PASS]@HOST:PORT` URL.
#[derive(Clone)]
pub struct Server {
    opts: Opts,
    address: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish()
    }
}

impl Server {
    pub fn parse(url: &str) -> Result<Self> {
        let redacted = redact(url);
        if !url.starts_with("mysql://") {
            return Err(Error::BadUrl {
                url: redacted,
                reason: "expected mysql://USER[:PASSWORD]@HOST:PORT".into(),
            });
        }
        let opts = Opts::from_url(url).map_err(|e| Error::BadUrl {
            url: redacted.clone(),
            reason: e.to_string(),
        })?;
        if opts.user().is_none() {
            return Err(Error::BadUrl {
                url: redacted,
                reason: "no user given (mysql://USER@HOST:PORT)".into(),
            });
        }
        let address = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        // Always talk TCP to the address given: the socket the server advertises
        // may belong to a different mount namespace (containers, sidecars).
        let opts = OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .tcp_nodelay(true)
            .into();
        Ok(Server { opts, address })
    }

    /// `host:port`, the name used for this server in every message.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn user(&self) -> &str {
        self.opts.user().unwrap_or_default()
    }

    /// Opens a connection; `purpose` names it in errors ("open lock connection").
    pub async fn connect(&self, purpose: &str) -> Result<Conn> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(self.opts.clone())).await {
            Ok(r) => r.on(&self.address, purpose),
            Err(_) => Err(Error::mysql(
                &self.address,
                purpose,
                mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                ))),
            )),
        }
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
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("it's \\"), "'it''s \\\\'");
    }
}
