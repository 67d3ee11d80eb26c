//! The daemon's configuration: a TOML file (see `deploy/agent.toml`) whose
//! keys are also flags of `lockstep-agent serve`; flags win.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::AgentConfig;
use crate::cut::Budgets;
use crate::ddl_guard::{DdlOptions, DdlPolicy};
use crate::dump::DumpOptions;
use crate::error::{Error, IoContext, Result};
use crate::flavour::LockMethod;
use crate::grpc::access::Access;
use crate::mysql::{Server, SslMode, SslSettings};
use crate::physical::{FileSetOptions, PhysicalOptions};
use lockstep_proto::tls::TlsOptions;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// URL the coordinators use to reach this agent; empty: `http://` and
    /// the bound listen address (which must then not be 0.0.0.0 or ::).
    pub advertise: String,
    /// This server's name in the catalog. Standalone agents default to the
    /// MySQL host:port; agents registering with coordinators must set it
    /// (that default is 127.0.0.1:3306 on every host).
    pub name: String,
    /// `mysql://USER@HOST:PORT[?ssl-mode=MODE&ssl-ca=FILE]` of the local
    /// server. Empty: a media agent, which holds disk pools and loads
    /// backups into any target but has no server of its own. A password in
    /// the URL works but is better given by `password_file` or
    /// `LOCKSTEP_MYSQL_PASSWORD`.
    pub mysql: String,
    /// File holding the local server's password (its first line; mode
    /// 0600 or refused).
    pub password_file: Option<PathBuf>,
    /// How sessions with the local server are secured: disabled,
    /// preferred, required, verify-ca, verify-identity (default: verify-ca
    /// with `ssl_ca`, else preferred).
    pub ssl_mode: Option<SslMode>,
    /// PEM file of the CA the local server's certificate must chain to.
    pub ssl_ca: Option<PathBuf>,
    /// Credentials file (TOML, mode 0600): restore targets this agent
    /// loads, by name, for `--target SERVER=cred:NAME`.
    pub credentials_file: Option<PathBuf>,
    /// Host-local sink root: with no sink named, backups go to
    /// `<sink_dir>/<backup id>/<name>/`.
    pub sink_dir: PathBuf,
    /// Directories this agent holds as disk pools for other agents
    /// (`lockstep sink add NAME --kind disk --agent THIS --path DIR`).
    pub pools: Vec<PathBuf>,
    /// The operator's key file (64 hex digits, mode 0600): needed to write
    /// to sinks that encrypt and to read encrypted copies.
    pub key_file: Option<PathBuf>,
    /// Cluster this server belongs to (used when registering with coordinators).
    pub cluster: String,
    /// Coordinator URLs to register with (none: standalone agent).
    pub coordinators: Vec<String>,
    pub lock_method: LockMethod,
    /// Upper bound on any lease a caller asks for; also the default lease.
    #[serde(with = "humantime_serde")]
    pub max_lease: Duration,
    /// How long snapshots stay open after commit waiting for Transfer.
    #[serde(with = "humantime_serde")]
    pub snapshot_ttl: Duration,
    pub snapshot_connections: usize,
    pub zstd_level: i32,
    pub chunk_rows: u64,
    /// What a running dump does when DDL (`ALTER TABLE`, ...) waits for a
    /// table its snapshot holds, stalling every later query on that table:
    /// `yield` fails the transfer at once, releasing the table; `wait` lets
    /// the DDL wait up to `ddl_wait` for the dump to finish, then yields.
    pub ddl_policy: DdlPolicy,
    /// With `ddl_policy = "wait"`: the longest a DDL (and the queries queued
    /// behind it) waits for the dump, e.g. "30s".
    #[serde(with = "humantime_serde")]
    pub ddl_wait: Duration,
    pub budgets: Budgets,
    /// Mutual TLS (`[tls]`: `cert`, `key`, `ca`); none: plaintext.
    pub tls: TlsOptions,
    /// Allow plaintext on a non-loopback `listen` address.
    pub insecure_plaintext: bool,
    /// Which identities may call what (`[access]`: `coordinators`,
    /// `agents`), with TLS.
    pub access: Access,
    /// Continuous binlog archiving (`[archive]`).
    pub archive: ArchiveOptions,
    /// Physical backups: the default kind, the snapshot provider
    /// (`[physical]`, `[physical.snapshot]`).
    pub physical: PhysicalOptions,
    /// Application file sets cut with the databases (`[files]`).
    pub files: FileSetOptions,
}

/// `[archive]`: continuous binlog archiving to the cluster's primary sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveOptions {
    /// Archive the server's binlogs (needs coordinators, the REPLICATION
    /// SLAVE privilege and log_bin on the server).
    pub enabled: bool,
    /// The local archive directory; default `<sink_dir>/../binlog-archive/<name>`.
    pub dir: Option<PathBuf>,
    /// The server id the archiver presents as a replica; default
    /// 4000000000 + the server's id modulo 100000000.
    pub replica_server_id: Option<u32>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let dump = DumpOptions::default();
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: String::new(),
            name: String::new(),
            mysql: String::new(),
            password_file: None,
            ssl_mode: None,
            ssl_ca: None,
            credentials_file: None,
            sink_dir: PathBuf::from("/var/lib/lockstep/backups"),
            pools: Vec::new(),
            key_file: None,
            cluster: "default".into(),
            coordinators: Vec::new(),
            lock_method: LockMethod::Auto,
            max_lease: Duration::from_secs(10),
            snapshot_ttl: Duration::from_secs(3600),
            snapshot_connections: 4,
            zstd_level: dump.zstd_level,
            chunk_rows: dump.chunk_rows,
            ddl_policy: dump.ddl.policy,
            ddl_wait: dump.ddl.wait,
            budgets: Budgets::default(),
            tls: TlsOptions::default(),
            insecure_plaintext: false,
            access: Access::default(),
            archive: ArchiveOptions::default(),
            physical: PhysicalOptions::default(),
            files: FileSetOptions::default(),
        }
    }
}

impl ServeConfig {
    /// The local server: its URL, TLS settings and password (from the URL,
    /// `password_file` or `LOCKSTEP_MYSQL_PASSWORD`).
    fn own_server(&self) -> Result<Server> {
        let ssl = SslSettings {
            mode: self.ssl_mode,
            ca: self.ssl_ca.clone(),
        };
        crate::secrets::server(&self.mysql, &ssl, self.password_file.as_deref())
    }

    /// The archive settings, if archiving is on.
    fn archive_settings(&self, name: &str) -> Result<Option<crate::binlog::ship::ArchiveSettings>> {
        if !self.archive.enabled {
            return Ok(None);
        }
        if self.mysql.is_empty() || self.coordinators.is_empty() {
            return Err(Error::Config(
                "archive.enabled needs a database server (--mysql) and coordinators (--coordinator): the catalog records the archive".into(),
            ));
        }
        let dir = match &self.archive.dir {
            Some(d) => d.clone(),
            None => self
                .sink_dir
                .parent()
                .unwrap_or(&self.sink_dir)
                .join("binlog-archive")
                .join(name),
        };
        Ok(Some(crate::binlog::ship::ArchiveSettings {
            dir,
            replica_server_id: self.archive.replica_server_id,
        }))
    }

    pub fn from_file(path: &Path) -> Result<ServeConfig> {
        let text = std::fs::read_to_string(path).on_file(path, "read configuration")?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks the settings and builds the agent's runtime configuration.
    pub fn validate(&self) -> Result<AgentConfig> {
        let server = if self.mysql.is_empty() {
            if self.name.trim().is_empty() {
                return Err(Error::Config(
                    "a media agent (no --mysql) needs a --name; an agent with a database server needs --mysql mysql://USER[:PASS]@HOST:PORT".into(),
                ));
            }
            None
        } else {
            Some(self.own_server()?)
        };
        if let Some(path) = &self.credentials_file {
            // Checked now, read again at each use (entries may be added
            // without a restart).
            crate::secrets::Credentials::load(path)?;
        }
        for pool in &self.pools {
            if !pool.is_absolute() {
                return Err(Error::Config(format!(
                    "pool {} must be an absolute directory",
                    pool.display()
                )));
            }
        }
        if !(1..=64).contains(&self.snapshot_connections) {
            return Err(Error::Config(format!(
                "snapshot_connections must be 1..=64, got {}",
                self.snapshot_connections
            )));
        }
        if !(-7..=22).contains(&self.zstd_level) {
            return Err(Error::Config(format!(
                "zstd_level must be -7..=22, got {}",
                self.zstd_level
            )));
        }
        if self.max_lease.is_zero() || self.max_lease > Duration::from_secs(600) {
            return Err(Error::Config(format!(
                "max_lease must be between 1ms and 10m, got {}",
                humantime::format_duration(self.max_lease)
            )));
        }
        if !self.coordinators.is_empty() && self.cluster.trim().is_empty() {
            return Err(Error::Config(
                "cluster is empty but coordinators are set (--cluster NAME)".into(),
            ));
        }
        if !self.coordinators.is_empty() && self.name.trim().is_empty() {
            return Err(Error::Config(
                "name is not set: agents registering with coordinators need a unique --name (e.g. the host name)".into(),
            ));
        }
        let advertise_ok = self.advertise.is_empty()
            || self.advertise.starts_with("http://")
            || self.advertise.starts_with("https://");
        if !advertise_ok {
            return Err(Error::Config(format!(
                "advertise must be an http:// or https:// URL, got {:?}",
                self.advertise
            )));
        }
        if !self.coordinators.is_empty()
            && self.advertise.is_empty()
            && self.listen.ip().is_unspecified()
        {
            return Err(Error::Config(format!(
                "listen is {} (every interface), so the coordinators cannot be told where to reach this agent; set advertise (--advertise http://HOST:{})",
                self.listen,
                self.listen.port()
            )));
        }
        if self.budgets.lock_wait.is_zero() {
            return Err(Error::Config("budgets.lock_wait must be positive".into()));
        }
        let ddl = DdlOptions {
            policy: self.ddl_policy,
            wait: self.ddl_wait,
        };
        ddl.validate("ddl_wait")?;
        let name = match &server {
            Some(server) if self.name.is_empty() => server.address().to_string(),
            _ => self.name.clone(),
        };
        let archive = self.archive_settings(&name)?;
        self.files.validate()?;
        if !(-7..=22).contains(&self.physical.zstd_level) {
            return Err(Error::Config(format!(
                "physical.zstd_level must be -7..=22, got {}",
                self.physical.zstd_level
            )));
        }
        if self.physical.kind == crate::physical::Kind::Physical
            && self.physical.snapshot.is_none()
            && self.physical.mariabackup.is_none()
        {
            return Err(Error::Config(
                "physical.kind is physical but no snapshot provider is configured ([physical.snapshot] or --snapshot-provider, or [physical.mariabackup] or --mariabackup)".into(),
            ));
        }
        if self.physical.snapshot.is_some() && self.physical.mariabackup.is_some() {
            return Err(Error::Config(
                "[physical.snapshot] and [physical.mariabackup] are both set: choose one way to take physical backups".into(),
            ));
        }
        let state_dir = match &self.physical.state_dir {
            Some(d) => d.clone(),
            None => self
                .sink_dir
                .parent()
                .unwrap_or(&self.sink_dir)
                .join("state")
                .join(crate::format::fs_name(&name)),
        };
        Ok(AgentConfig {
            archive,
            physical: self.physical.clone(),
            files: self.files.clone(),
            state_dir,
            name,
            server,
            sink_dir: self.sink_dir.clone(),
            pools: self.pools.clone(),
            key: match &self.key_file {
                Some(path) => Some(std::sync::Arc::new(crate::sink::crypt::KeyFile::load(
                    path,
                )?)),
                None => None,
            },
            lock_method: self.lock_method,
            budgets: self.budgets,
            max_lease: self.max_lease,
            snapshot_ttl: self.snapshot_ttl,
            snapshot_connections: self.snapshot_connections,
            dump: DumpOptions {
                zstd_level: self.zstd_level,
                chunk_rows: self.chunk_rows,
                ddl,
            },
            credentials_file: self.credentials_file.clone(),
            cluster: self.cluster.clone(),
            coordinators: self.coordinators.clone(),
            advertise: (!self.advertise.is_empty()).then(|| self.advertise.clone()),
            transport: self
                .tls
                .transport()
                .map_err(|e| Error::Config(e.to_string()))?,
            access: self.access.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let cfg = ServeConfig::from_file(&path).expect("deploy/agent.toml parses");
        let agent = cfg.validate().expect("deploy/agent.toml is valid");
        assert_eq!(agent.name, "db1");
        assert_eq!(agent.budgets.lock_wait, Duration::from_millis(500));
        assert_eq!(agent.dump.ddl, DdlOptions::default());
    }

    #[test]
    fn ddl_policy_defaults_to_yield_and_wait_needs_a_bound() {
        let cfg: ServeConfig =
            toml::from_str("mysql = \"mysql://root@127.0.0.1:3306\"").expect("minimal config");
        let agent = cfg.validate().expect("valid");
        assert_eq!(agent.dump.ddl.policy, DdlPolicy::Yield);
        let cfg: ServeConfig = toml::from_str(
            "mysql = \"mysql://root@127.0.0.1:3306\"\nddl_policy = \"wait\"\nddl_wait = \"5s\"",
        )
        .expect("wait policy");
        let agent = cfg.validate().expect("valid");
        assert_eq!(
            agent.dump.ddl,
            DdlOptions {
                policy: DdlPolicy::Wait,
                wait: Duration::from_secs(5)
            }
        );
        let cfg: ServeConfig = toml::from_str(
            "mysql = \"mysql://root@127.0.0.1:3306\"\nddl_policy = \"wait\"\nddl_wait = \"0s\"",
        )
        .expect("parses");
        let err = cfg.validate().expect_err("no bound").to_string();
        assert!(err.contains("ddl_wait"), "{err}");
        let err = toml::from_str::<ServeConfig>("ddl_policy = \"ignore\"")
            .expect_err("unknown policy")
            .to_string();
        assert!(err.contains("ddl_policy") || err.contains("yield"), "{err}");
    }

    #[test]
    fn rejects_bad_settings() {
        let mut cfg = ServeConfig {
            mysql: "mysql://root@127.0.0.1:3306".into(),
            ..ServeConfig::default()
        };
        assert!(cfg.validate().is_ok());
        cfg.snapshot_connections = 0;
        assert!(
            cfg.validate()
                .expect_err("0 connections")
                .to_string()
                .contains("snapshot_connections")
        );
        cfg.snapshot_connections = 4;
        cfg.name = "db1".into();
        cfg.coordinators = vec!["http://127.0.0.1:7300".into()];
        cfg.listen = "0.0.0.0:7400".parse().expect("address");
        let err = cfg.validate().expect_err("unspecified listen").to_string();
        assert!(err.contains("--advertise http://HOST:7400"), "{err}");
        cfg.advertise = "db1:7400".into();
        assert!(cfg.validate().is_err(), "advertise without a scheme");
        cfg.advertise = "http://db1:7400".into();
        let agent = cfg.validate().expect("listen 0.0.0.0 with advertise");
        assert_eq!(agent.advertise.as_deref(), Some("http://db1:7400"));
        let err = toml::from_str::<ServeConfig>("lisen = \"x\"")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn password_file_tls_and_credentials_settings() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "Hunter-2\n").expect("write");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut cfg = ServeConfig {
            mysql: "mysql://lockstep@127.0.0.1:3306".into(),
            password_file: Some(pw.clone()),
            ssl_mode: Some(SslMode::Required),
            ..ServeConfig::default()
        };
        let server = cfg.validate().expect("valid").server.expect("a server");
        assert!(server.has_password());
        assert_eq!(server.ssl_mode(), SslMode::Required);
        cfg.mysql = "mysql://lockstep:other@127.0.0.1:3306".into();
        let err = cfg.validate().expect_err("two passwords").to_string();
        assert!(err.contains("once") && !err.contains("Hunter-2"), "{err}");
        cfg.mysql = "mysql://lockstep@127.0.0.1:3306?ssl-mode=disabled".into();
        let err = cfg.validate().expect_err("contradicting modes").to_string();
        assert!(
            err.contains("disabled") && err.contains("required"),
            "{err}"
        );
        cfg.mysql = "mysql://lockstep@127.0.0.1:3306".into();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = cfg.validate().expect_err("world-readable").to_string();
        assert!(err.contains("0644") && err.contains("pw"), "{err}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        cfg.credentials_file = Some(dir.path().join("missing.toml"));
        let err = cfg.validate().expect_err("no credentials file").to_string();
        assert!(err.contains("missing.toml"), "{err}");
        let parsed: ServeConfig = toml::from_str(
            "mysql = \"mysql://u@h:1\"\nssl_mode = \"verify-identity\"\nssl_ca = \"/etc/ca.pem\"\npassword_file = \"/etc/pw\"\ncredentials_file = \"/etc/c.toml\"",
        )
        .expect("keys parse");
        assert_eq!(parsed.ssl_mode, Some(SslMode::VerifyIdentity));
    }

    #[test]
    fn name_defaults_only_for_standalone_agents() {
        let mut cfg = ServeConfig {
            mysql: "mysql://root@127.0.0.1:3306".into(),
            ..ServeConfig::default()
        };
        let agent = cfg.validate().expect("standalone agent without a name");
        assert_eq!(agent.name, "127.0.0.1:3306");

        cfg.coordinators = vec!["http://127.0.0.1:7300".into()];
        let err = cfg.validate().expect_err("no name with coordinators");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(err.to_string().contains("unique --name"), "{err}");
        cfg.name = "  ".into();
        assert!(cfg.validate().is_err(), "a blank name is no name");

        cfg.name = "db1".into();
        let agent = cfg.validate().expect("named agent with coordinators");
        assert_eq!(agent.name, "db1");
    }
}
