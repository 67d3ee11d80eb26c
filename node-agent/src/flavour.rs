//! What kind of server we talk to, and the SQL that differs between kinds.
//!
//! Every statement whose text depends on the flavour or version comes from
//! here, so the MySQL paths (not runnable on this project's test machines) are
//! unit-tested on the SQL they send.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, MysqlContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    MariaDb,
    MySql,
}

impl Flavour {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::MariaDb => "mariadb",
            Flavour::MySql => "mysql",
        }
    }
}

/// How the server is frozen while the cut is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LockMethod {
    /// The lightest correct primitive for the server (see [`ServerInfo::default_lock_method`]).
    Auto,
    /// MariaDB ≥ 10.4: `BACKUP STAGE START` + `BACKUP STAGE BLOCK_COMMIT`.
    /// Blocks commits and DDL only; running InnoDB writes do not delay it.
    BackupStage,
    /// `FLUSH TABLES WITH READ LOCK`: every flavour. Waits for running writes.
    Ftwrl,
}

impl LockMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMethod::Auto => "auto",
            LockMethod::BackupStage => "backup-stage",
            LockMethod::Ftwrl => "ftwrl",
        }
    }

    /// Statements that take the lock, in order, on one connection.
    pub fn lock_sql(self) -> &'static [&'static str] {
        match self {
            LockMethod::BackupStage => &["BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT"],
            LockMethod::Ftwrl | LockMethod::Auto => &["FLUSH TABLES WITH READ LOCK"],
        }
    }

    /// The statement that releases the lock on the same connection.
    pub fn unlock_sql(self) -> &'static str {
        match self {
            LockMethod::BackupStage => "BACKUP STAGE END",
            LockMethod::Ftwrl | LockMethod::Auto => "UNLOCK TABLES",
        }
    }
}

/// A server's identity and capabilities, read once per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub flavour: Flavour,
    /// `VERSION()` as the server reports it.
    pub version: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub server_id: u32,
    /// MySQL `server_uuid`; empty on MariaDB.
    pub server_uuid: String,
    /// MariaDB `gtid_domain_id`; 0 on MySQL.
    pub gtid_domain_id: u32,
    /// MariaDB: "mariadb-gtid" (always on), or "strict" with gtid_strict_mode;
    /// MySQL: the value of `gtid_mode`.
    pub gtid_mode: String,
    pub log_bin: bool,
}

type VersionRow = (String, u32, Option<i64>);

impl ServerInfo {
    /// Reads flavour, version and binlog settings.
    pub async fn detect(conn: &mut Conn, server: &str) -> Result<ServerInfo> {
        let action = "detect server version";
        let (version, server_id, log_bin): VersionRow = conn
            .query_first("SELECT VERSION(), @@GLOBAL.server_id, @@GLOBAL.log_bin")
            .await
            .on(server, action)?
            .ok_or_else(|| Error::Unsupported {
                server: server.into(),
                version: String::new(),
                reason: "SELECT VERSION() returned no row".into(),
            })?;
        let mut info = ServerInfo::from_version(server, &version)?;
        info.server_id = server_id;
        info.log_bin = log_bin == Some(1);
        match info.flavour {
            Flavour::MariaDb => {
                let (domain, strict): (u32, i64) = conn
                    .query_first("SELECT @@GLOBAL.gtid_domain_id, @@GLOBAL.gtid_strict_mode")
                    .await
                    .on(server, action)?
                    .unwrap_or((0, 0));
                info.gtid_domain_id = domain;
                info.gtid_mode = if strict == 1 {
                    "mariadb-gtid-strict"
                } else {
                    "mariadb-gtid"
                }
                .into();
            }
            Flavour::MySql => {
                let (uuid, mode): (String, String) = conn
                    .query_first("SELECT @@GLOBAL.server_uuid, @@GLOBAL.gtid_mode")
                    .await
                    .on(server, action)?
                    .unwrap_or_default();
                info.server_uuid = uuid;
                info.gtid_mode = mode;
            }
        }
        Ok(info)
    }

    /// Fails, naming the server, if binary logging is off.
    pub fn require_binlog(&self, server: &str) -> Result<()> {
        if self.log_bin {
            Ok(())
        } else {
            Err(Error::BinlogOff {
                server: server.into(),
            })
        }
    }

    /// Parses `VERSION()`; rejects servers older than MariaDB 10.0 / MySQL 5.7.
    pub fn from_version(server: &str, version: &str) -> Result<ServerInfo> {
        let flavour = if version.contains("MariaDB") {
            Flavour::MariaDb
        } else {
            Flavour::MySql
        };
        let numbers: Vec<u32> = version
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()
            .unwrap_or_default()
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        let part = |i: usize| numbers.get(i).copied().unwrap_or(0);
        let (major, minor, patch) = (part(0), part(1), part(2));
        let unsupported = |reason: &str| Error::Unsupported {
            server: server.into(),
            version: version.into(),
            reason: reason.into(),
        };
        match flavour {
            Flavour::MariaDb if major < 10 => {
                return Err(unsupported("lockstep needs MariaDB 10.0 or newer"));
            }
            Flavour::MySql if (major, minor) < (5, 7) => {
                return Err(unsupported("lockstep needs MySQL 5.7 or newer"));
            }
            _ => {}
        }
        Ok(ServerInfo {
            flavour,
            version: version.into(),
            major,
            minor,
            patch,
            server_id: 0,
            server_uuid: String::new(),
            gtid_domain_id: 0,
            gtid_mode: String::new(),
            log_bin: false,
        })
    }

    fn at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        (self.major, self.minor, self.patch) >= (major, minor, patch)
    }

    /// `BACKUP STAGE` on MariaDB ≥ 10.4.1: it blocks commits without waiting
    /// for running InnoDB writes, so a long UPDATE cannot pile writers up
    /// behind the lock. FTWRL everywhere else.
    pub fn default_lock_method(&self) -> LockMethod {
        match self.flavour {
            Flavour::MariaDb if self.at_least(10, 4, 1) => LockMethod::BackupStage,
            _ => LockMethod::Ftwrl,
        }
    }

    /// Resolves `Auto` and refuses methods the server does not have.
    pub fn resolve_lock_method(&self, server: &str, wanted: LockMethod) -> Result<LockMethod> {
        match wanted {
            LockMethod::Auto => Ok(self.default_lock_method()),
            LockMethod::BackupStage if self.default_lock_method() != LockMethod::BackupStage => {
                Err(Error::Unsupported {
                    server: server.into(),
                    version: self.version.clone(),
                    reason: "BACKUP STAGE needs MariaDB 10.4.1 or newer; use --lock-method ftwrl"
                        .into(),
                })
            }
            m => Ok(m),
        }
    }

    /// Statement returning (File, Position, ...) of the current binlog.
    pub fn binlog_status_sql(&self) -> &'static str {
        match self.flavour {
            Flavour::MySql if self.at_least(8, 4, 0) => "SHOW BINARY LOG STATUS",
            _ => "SHOW MASTER STATUS",
        }
    }

    /// Statement returning the GTID set of everything in the binlog.
    pub fn gtid_sql(&self) -> &'static str {
        match self.flavour {
            Flavour::MariaDb => "SELECT @@GLOBAL.gtid_binlog_pos",
            Flavour::MySql => "SELECT @@GLOBAL.gtid_executed",
        }
    }

    /// Statement a snapshot connection runs to report the binlog position its
    /// snapshot corresponds to. Only MariaDB has it.
    pub fn snapshot_position_sql(&self) -> Option<&'static str> {
        match self.flavour {
            Flavour::MariaDb => Some("SHOW STATUS LIKE 'binlog\\_snapshot\\_%'"),
            Flavour::MySql => None,
        }
    }

    /// Processlist query for the pre-flight check: (id, user, command,
    /// elapsed milliseconds, statement) of every running statement but ours.
    pub fn running_statements_sql(&self) -> &'static str {
        match self.flavour {
            Flavour::MariaDb => {
                "SELECT ID, USER, COMMAND, CAST(TIME_MS AS UNSIGNED), INFO FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND INFO IS NOT NULL AND COMMAND IN ('Query', 'Execute') ORDER BY TIME_MS DESC"
            }
            Flavour::MySql => {
                "SELECT ID, USER, COMMAND, TIME * 1000, INFO FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND INFO IS NOT NULL AND COMMAND IN ('Query', 'Execute') ORDER BY TIME DESC"
            }
        }
    }

    /// Whether a long read-only statement also makes the lock queue. On MySQL
    /// FTWRL's implicit flush waits for every open table; MariaDB ≥ 10.x does
    /// not wait for readers.
    pub fn readers_block_lock(&self) -> bool {
        self.flavour == Flavour::MySql
    }

    /// Whether [`ServerInfo::restore_gtid_sql`] starts with `RESET MASTER`
    /// (MySQL before 8.0 with GTIDs on), which erases the binary logs.
    pub fn gtid_needs_reset_master(&self) -> bool {
        self.flavour == Flavour::MySql && self.gtid_mode == "ON" && !self.at_least(8, 0, 0)
    }

    /// Statements that make a freshly restored server remember where its data
    /// came from, so it can replicate from its old primary.
    pub fn restore_gtid_sql(&self, gtid_set: &str) -> Vec<String> {
        let gtid = crate::mysql::literal(gtid_set);
        match self.flavour {
            Flavour::MariaDb => vec![format!("SET GLOBAL gtid_slave_pos = {gtid}")],
            Flavour::MySql if self.gtid_mode != "ON" => vec![],
            // 8.0+: '+' appends to gtid_purged even if gtid_executed is not empty.
            Flavour::MySql if self.at_least(8, 0, 0) => {
                vec![format!(
                    "SET GLOBAL gtid_purged = {}",
                    crate::mysql::literal(&format!("+{gtid_set}"))
                )]
            }
            Flavour::MySql => vec![
                "RESET MASTER".into(),
                format!("SET GLOBAL gtid_purged = {gtid}"),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: &str) -> ServerInfo {
        ServerInfo::from_version("h:1", version).expect("supported version")
    }

    #[test]
    fn parses_versions() {
        let m = info("10.11.19-MariaDB-0+deb12u1-log");
        assert_eq!(
            (m.flavour, m.major, m.minor, m.patch),
            (Flavour::MariaDb, 10, 11, 19)
        );
        let m = info("11.4.2-MariaDB");
        assert_eq!((m.flavour, m.major, m.minor), (Flavour::MariaDb, 11, 4));
        let m = info("8.0.36");
        assert_eq!(
            (m.flavour, m.major, m.minor, m.patch),
            (Flavour::MySql, 8, 0, 36)
        );
        let m = info("5.7.44-log");
        assert_eq!((m.flavour, m.major, m.minor), (Flavour::MySql, 5, 7));
        assert!(ServerInfo::from_version("h:1", "5.6.51").is_err());
        assert!(ServerInfo::from_version("h:1", "5.5.5-MariaDB").is_err());
    }

    #[test]
    fn lock_method_per_flavour() {
        assert_eq!(
            info("10.11.6-MariaDB").default_lock_method(),
            LockMethod::BackupStage
        );
        assert_eq!(
            info("10.3.39-MariaDB").default_lock_method(),
            LockMethod::Ftwrl
        );
        assert_eq!(info("8.0.36").default_lock_method(), LockMethod::Ftwrl);
        assert!(
            info("8.0.36")
                .resolve_lock_method("h:1", LockMethod::BackupStage)
                .is_err()
        );
        assert_eq!(
            LockMethod::BackupStage.lock_sql(),
            &["BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT"]
        );
        assert_eq!(LockMethod::Ftwrl.unlock_sql(), "UNLOCK TABLES");
    }

    #[test]
    fn mysql_sql() {
        let my80 = info("8.0.36");
        assert_eq!(my80.binlog_status_sql(), "SHOW MASTER STATUS");
        assert_eq!(info("8.4.0").binlog_status_sql(), "SHOW BINARY LOG STATUS");
        assert_eq!(my80.gtid_sql(), "SELECT @@GLOBAL.gtid_executed");
        assert!(my80.snapshot_position_sql().is_none());
        assert!(my80.running_statements_sql().contains("TIME * 1000"));
        assert!(my80.readers_block_lock());
        let mut on = my80.clone();
        on.gtid_mode = "ON".into();
        assert_eq!(
            on.restore_gtid_sql("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"),
            vec!["SET GLOBAL gtid_purged = '+3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5'"]
        );
        let mut my57 = info("5.7.44");
        my57.gtid_mode = "ON".into();
        assert_eq!(
            my57.restore_gtid_sql("u:1-2"),
            vec!["RESET MASTER", "SET GLOBAL gtid_purged = 'u:1-2'"]
        );
        assert!(my57.gtid_needs_reset_master());
        assert!(!on.gtid_needs_reset_master(), "8.0 appends with '+'");
        assert!(!info("10.11.19-MariaDB").gtid_needs_reset_master());
        assert!(
            my80.restore_gtid_sql("u:1").is_empty(),
            "gtid_mode OFF sets nothing"
        );
    }

    #[test]
    fn mariadb_sql() {
        let m = info("10.11.6-MariaDB");
        assert_eq!(m.gtid_sql(), "SELECT @@GLOBAL.gtid_binlog_pos");
        assert!(!m.readers_block_lock());
        assert_eq!(
            m.restore_gtid_sql("0-1-5,1-2-9"),
            vec!["SET GLOBAL gtid_slave_pos = '0-1-5,1-2-9'"]
        );
    }
}
