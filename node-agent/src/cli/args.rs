//! The `lockstep-agent` command line: clap structs, and the flags of
//! `serve` applied over its TOML configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::ServeConfig;
use crate::ddl_guard::DdlPolicy;
use crate::error::Error;
use crate::flavour::LockMethod;
use crate::mysql::SslMode;

/// Exit code of a refusal worth retrying (EX_TEMPFAIL).
pub const EXIT_RETRY: i32 = 75;

#[derive(Debug, Parser)]
#[command(
    name = "lockstep-agent",
    version,
    about = "lockstep node agent: lock a MySQL/MariaDB server for milliseconds, capture its binlog position, dump and restore it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing syntax, e.g. "info" or "lockstep_node_agent=debug").
    #[arg(long, global = true, env = "LOCKSTEP_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon (gRPC service for coordinators).
    Serve(Box<ServeArgs>),
    /// Take a consistent snapshot of one server into a directory.
    Dump(DumpArgs),
    /// Restore a snapshot directory into a server.
    Load(LoadArgs),
    /// Check every file of a snapshot directory against its manifest.
    Verify(VerifyArgs),
    /// Drive one cut on a running agent: prepare, hold, commit or abort.
    Cut(CutArgs),
    /// Write a new operator key (32 random bytes, hex, mode 0600) to FILE,
    /// for --key-file. Never replaces a file.
    Keygen(KeygenArgs),
    /// Show a running agent's state.
    Status(StatusArgs),
    /// List the transactions of binlog files on this host that match a
    /// table, a kind of change, a text or a time window.
    SearchBinlog(super::search_binlog::SearchBinlogArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see deploy/agent.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7400].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// URL the coordinators reach this agent at [default: http://LISTEN];
    /// needed when listening on 0.0.0.0.
    #[arg(long)]
    pub advertise: Option<String>,
    /// This server's name in the catalog; required with --coordinators
    /// (unique per cluster) [default: the MySQL host:port].
    #[arg(long)]
    pub name: Option<String>,
    /// Local server, mysql://USER@HOST:PORT[?ssl-mode=MODE&ssl-ca=FILE].
    /// Without it the agent is a media agent: it holds disk pools (--pool)
    /// and loads backups into any target, but takes no part in cuts. Give
    /// the password with --mysql-password-file or LOCKSTEP_MYSQL_PASSWORD:
    /// one in this URL is visible in the process list.
    #[arg(long, env = "LOCKSTEP_MYSQL", hide_env_values = true)]
    pub mysql: Option<String>,
    /// File holding the local server's password (first line; mode 0600).
    #[arg(long)]
    pub mysql_password_file: Option<PathBuf>,
    /// TLS to the local server: disabled, preferred, required, verify-ca,
    /// verify-identity [default: verify-ca with --ssl-ca, else preferred].
    #[arg(long, value_enum)]
    pub ssl_mode: Option<SslMode>,
    /// PEM file of the CA the local server's certificate must chain to.
    #[arg(long)]
    pub ssl_ca: Option<PathBuf>,
    /// Credentials file (TOML, mode 0600) naming restore targets this agent
    /// loads, for `lockstep restore run --target SERVER=cred:NAME`.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// Root directory of the host-local sink (used when no sink is named).
    #[arg(long)]
    pub sink_dir: Option<PathBuf>,
    /// A directory this agent holds as a disk pool for other agents;
    /// repeat for several.
    #[arg(long = "pool")]
    pub pools: Vec<PathBuf>,
    /// The operator's key file (64 hex digits, mode 0600; `lockstep-agent
    /// keygen FILE` makes one): encrypts what goes to sinks that encrypt,
    /// and opens encrypted copies.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Cluster name used when registering with coordinators.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Coordinator URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub coordinators: Option<Vec<String>>,
    /// Lock primitive: auto, backup-stage (MariaDB ≥ 10.4) or ftwrl.
    #[arg(long, value_enum)]
    pub lock_method: Option<LockMethod>,
    /// Longest lease a caller may ask for, e.g. "10s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_lease: Option<Duration>,
    /// Pre-flight budget: refuse if a write or DDL has run longer, e.g. "1s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub preflight_budget: Option<Duration>,
    /// Lock-wait budget: cancel the lock if not granted within, e.g. "500ms".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lock_wait_budget: Option<Duration>,
    /// When DDL waits for a table a running dump holds: yield (fail the
    /// transfer at once) or wait (up to --ddl-wait, then yield) [default: yield].
    #[arg(long, value_enum)]
    pub ddl_policy: Option<DdlPolicy>,
    /// With --ddl-policy wait: how long DDL may wait for the dump, e.g. "30s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ddl_wait: Option<Duration>,
    /// Mutual TLS for every connection (coordinators, media agents).
    #[command(flatten)]
    pub tls: lockstep_proto::tls::TlsOptions,
    /// Serve without TLS on a non-loopback address: every call is then
    /// unauthenticated. Refused without this flag.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Archive the server's binlogs continuously to the cluster's primary
    /// sink (needs --coordinators and the REPLICATION SLAVE privilege).
    #[arg(long)]
    pub archive: bool,
    /// Local archive directory [default: SINK_DIR/../binlog-archive/NAME].
    #[arg(long)]
    pub archive_dir: Option<PathBuf>,
    /// Server id the archiver presents as a replica (unique among the
    /// server's replicas) [default: 4000000000 + server_id % 100000000].
    #[arg(long)]
    pub archive_replica_id: Option<u32>,
    /// The kind of this server's backups when a backup does not say:
    /// logical or physical [default: logical].
    #[arg(long, value_parser = ["logical", "physical"])]
    pub backup_kind: Option<String>,
    /// Snapshot provider for physical backups given by flags: btrfs or
    /// reflink (LVM and ZFS are configured in the file, [physical.snapshot]).
    #[arg(long, value_parser = ["btrfs", "reflink"], requires_all = ["snapshot_volume", "snapshot_dir"])]
    pub snapshot_provider: Option<String>,
    /// Physical backups with `mariadb-backup` as the data mover (no
    /// snapshotting filesystem needed): a base copied before the cut,
    /// rolled to the cut with the server's binlog on restore.
    #[arg(long, conflicts_with = "snapshot_provider")]
    pub mariabackup: bool,
    /// The directory snapshotted (a btrfs subvolume, or a directory on XFS
    /// or btrfs for reflink) holding the datadir, its redo log and binlog.
    #[arg(long)]
    pub snapshot_volume: Option<PathBuf>,
    /// Where snapshots are made (same filesystem as the volume).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// The agent's records of snapshots it holds and its staged file sets
    /// [default: SINK_DIR/../state/NAME].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// An application file set cut with the databases, NAME=PATH
    /// (repeatable); copied during the freeze unless configured with a
    /// snapshot provider in the file.
    #[arg(long = "file-set", value_parser = crate::physical::config::parse_file_set)]
    pub file_sets: Vec<crate::physical::FileSet>,
    /// The most bytes the copied file sets may hold together.
    #[arg(long)]
    pub file_set_budget: Option<u64>,
    /// The mariadbd that recovers restored physical backups.
    #[arg(long)]
    pub mariadbd: Option<PathBuf>,
}

impl ServeArgs {
    /// The file's settings (or defaults) with the flags applied.
    pub fn config(&self) -> Result<ServeConfig, Error> {
        let mut c = match &self.config {
            Some(p) => ServeConfig::from_file(p)?,
            None => ServeConfig::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.advertise {
            c.advertise = v.clone();
        }
        if let Some(v) = &self.name {
            c.name = v.clone();
        }
        if let Some(v) = &self.mysql {
            c.mysql = v.clone();
        }
        if let Some(v) = &self.mysql_password_file {
            c.password_file = Some(v.clone());
        }
        if let Some(v) = self.ssl_mode {
            c.ssl_mode = Some(v);
        }
        if let Some(v) = &self.ssl_ca {
            c.ssl_ca = Some(v.clone());
        }
        if let Some(v) = &self.credentials_file {
            c.credentials_file = Some(v.clone());
        }
        if let Some(v) = &self.sink_dir {
            c.sink_dir = v.clone();
        }
        if !self.pools.is_empty() {
            c.pools = self.pools.clone();
        }
        if let Some(v) = &self.key_file {
            c.key_file = Some(v.clone());
        }
        if let Some(v) = &self.cluster {
            c.cluster = v.clone();
        }
        if let Some(v) = &self.coordinators {
            c.coordinators = v.clone();
        }
        if let Some(v) = self.lock_method {
            c.lock_method = v;
        }
        if let Some(v) = self.max_lease {
            c.max_lease = v;
        }
        if let Some(v) = self.preflight_budget {
            c.budgets.preflight = v;
        }
        if let Some(v) = self.lock_wait_budget {
            c.budgets.lock_wait = v;
        }
        if let Some(v) = self.ddl_policy {
            c.ddl_policy = v;
        }
        if let Some(v) = self.ddl_wait {
            c.ddl_wait = v;
        }
        c.tls = c.tls.overridden_by(&self.tls);
        c.insecure_plaintext |= self.insecure_plaintext;
        c.archive.enabled |= self.archive;
        if let Some(v) = &self.archive_dir {
            c.archive.dir = Some(v.clone());
        }
        if let Some(v) = self.archive_replica_id {
            c.archive.replica_server_id = Some(v);
        }
        if let Some(v) = &self.backup_kind {
            c.physical.kind = crate::physical::Kind::parse_or(v, c.physical.kind)?;
        }
        if let (Some(p), Some(volume), Some(dir)) = (
            &self.snapshot_provider,
            &self.snapshot_volume,
            &self.snapshot_dir,
        ) {
            let (volume, snapshot_dir) = (volume.clone(), dir.clone());
            c.physical.snapshot = Some(match p.as_str() {
                "btrfs" => crate::snapshot::ProviderConfig::Btrfs {
                    volume,
                    snapshot_dir,
                },
                _ => crate::snapshot::ProviderConfig::Reflink {
                    volume,
                    snapshot_dir,
                },
            });
        }
        if self.mariabackup && c.physical.mariabackup.is_none() {
            c.physical.mariabackup = Some(crate::physical::MariabackupConfig::default());
        }
        if let Some(v) = &self.state_dir {
            c.physical.state_dir = Some(v.clone());
        }
        if let Some(v) = &self.mariadbd {
            c.physical.mariadbd = Some(v.clone());
        }
        c.files.sets.extend(self.file_sets.iter().cloned());
        if let Some(v) = self.file_set_budget {
            c.files.budget_bytes = v;
        }
        Ok(c)
    }
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Server to dump, mysql://USER@HOST:PORT[?ssl-mode=MODE&ssl-ca=FILE]
    /// (the password from --mysql-password-file or LOCKSTEP_MYSQL_PASSWORD).
    #[arg(long, env = "LOCKSTEP_MYSQL", hide_env_values = true)]
    pub mysql: String,
    /// File holding the server's password (first line; mode 0600).
    #[arg(long)]
    pub mysql_password_file: Option<PathBuf>,
    /// Output directory; must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Snapshot connections dumping in parallel.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Name recorded for the server in the manifest [default: host:port].
    #[arg(long)]
    pub name: Option<String>,
    /// Lock primitive: auto, backup-stage (MariaDB ≥ 10.4) or ftwrl.
    #[arg(long, value_enum, default_value = "auto")]
    pub lock_method: LockMethod,
    /// Refuse if a write or DDL has run longer than this.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub preflight_budget: Duration,
    /// Cancel the lock if it is not granted within this time.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub lock_wait_budget: Duration,
    /// Skip FLUSH NO_WRITE_TO_BINLOG TABLES before locking.
    #[arg(long)]
    pub no_preflush: bool,
    /// zstd level of the data files (1 fast … 19 small).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub zstd_level: i32,
    /// Rows per data file for tables with an integer primary key.
    #[arg(long, default_value_t = 250_000)]
    pub chunk_rows: u64,
    /// When DDL waits for a table the dump holds: yield (fail the dump at
    /// once, exit 75) or wait (up to --ddl-wait, then yield).
    #[arg(long, value_enum, default_value = "yield")]
    pub ddl_policy: DdlPolicy,
    /// With --ddl-policy wait: how long DDL may wait for the dump.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ddl_wait: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Target server, mysql://USER@HOST:PORT[?ssl-mode=MODE&ssl-ca=FILE]
    /// (the password from --mysql-password-file or LOCKSTEP_MYSQL_PASSWORD).
    #[arg(long, env = "LOCKSTEP_MYSQL", hide_env_values = true)]
    pub mysql: String,
    /// File holding the server's password (first line; mode 0600).
    #[arg(long)]
    pub mysql_password_file: Option<PathBuf>,
    /// Snapshot directory (the one holding manifest.json).
    #[arg(long)]
    pub from: PathBuf,
    /// Connections loading in parallel.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Load into a server that has user databases; the backup's databases
    /// are dropped and recreated there.
    #[arg(long)]
    pub force: bool,
    /// Write the loaded data to the target's binlog.
    #[arg(long)]
    pub binlog: bool,
    /// On a MySQL 5.7 target with GTIDs, run RESET MASTER to set its
    /// gtid_purged (erases the target's binary logs; refused without it).
    #[arg(long)]
    pub allow_reset_master: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshot directory (the one holding manifest.json).
    #[arg(long)]
    pub from: PathBuf,
    /// Files checked in parallel.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CutArgs {
    /// Agent gRPC address, e.g. http://127.0.0.1:7400.
    #[arg(long)]
    pub agent: String,
    /// Mutual TLS to the agent (with TLS, only coordinator identities may
    /// drive a cut).
    #[command(flatten)]
    pub tls: lockstep_proto::tls::TlsOptions,
    /// Backup id [default: a new UUID].
    #[arg(long)]
    pub backup_id: Option<String>,
    /// Lease: the agent releases the lock by itself after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// How long to hold the lock before committing (0: commit at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Abort instead of committing.
    #[arg(long)]
    pub abort: bool,
    /// After committing, transfer the snapshot to the agent's sink (without
    /// it, the snapshots are dropped at once).
    #[arg(long)]
    pub transfer: bool,
    /// Print results as JSON (one object per step, one per line).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Agent gRPC address, e.g. http://127.0.0.1:7400.
    #[arg(long)]
    pub agent: String,
    /// Mutual TLS to the agent.
    #[command(flatten)]
    pub tls: lockstep_proto::tls::TlsOptions,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `keygen` arguments.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (refused if it exists).
    pub file: PathBuf,
}
