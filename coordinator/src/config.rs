//! The coordinator daemon's configuration: flags of `lockstep-coordinator`
//! or the same keys in a TOML file (see `deploy/coordinator.toml`); flags win.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use lockstep_proto::tls::TlsOptions;
use serde::{Deserialize, Serialize};

use crate::catalog::{Role, check_pattern};
use crate::error::{Error, Result};
use crate::raft::RaftConfig;

/// `lockstep-coordinator`: one member of the raft group that holds the
/// backup catalog and runs the cluster-wide cut.
#[derive(Debug, Parser)]
#[command(name = "lockstep-coordinator", version, about)]
pub struct Args {
    /// TOML configuration file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This coordinator's raft id (non-zero, one of --peers) [default: 1].
    #[arg(long)]
    pub id: Option<u64>,
    /// gRPC listen address (coordinator service and raft transport)
    /// [default: 127.0.0.1:7300].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Every voter as ID=URL, comma-separated, this one included
    /// (1, 3 or 5 voters). Empty: a single voter at http://LISTEN.
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Directory of the raft store [default: /var/lib/lockstep/coordinator].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Lease asked of agents for each PREPARE, e.g. "10s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease: Option<Duration>,
    /// How long every server has to reply PREPARED, e.g. "5s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub prepare_timeout: Option<Duration>,
    /// Largest raft snapshot (the whole catalog) this coordinator accepts
    /// from a leader, e.g. "4GiB" [default: 4GiB].
    #[arg(long, value_parser = parse_size)]
    pub max_snapshot_size: Option<u64>,
    /// Mutual TLS for every connection (CLI, agents, the other coordinators).
    #[command(flatten)]
    pub tls: TlsOptions,
    /// Serve without TLS on a non-loopback address: every call is then
    /// unauthenticated. Refused without this flag.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Log filter (tracing syntax).
    #[arg(long, env = "LOCKSTEP_LOG", default_value = "info")]
    pub log: String,
    #[command(flatten)]
    pub roles: RoleArgs,
}

/// Bootstrap roles: who may call what before (and besides) the roles set in
/// the catalog with `lockstep role set`.
#[derive(Debug, Default, clap::Args)]
pub struct RoleArgs {
    /// Give the identities matching PATTERN (a client certificate's name,
    /// or a prefix ending in `*`) ROLE: coordinator, agent, operator,
    /// viewer or none. Repeatable; adds to (and for the same pattern
    /// replaces) the TOML `[roles]`. With no roles configured at all:
    /// coordinator-*=coordinator, agent-*=agent, operator=operator,
    /// viewer=viewer.
    #[arg(long = "role", value_name = "PATTERN=ROLE", value_parser = parse_role)]
    pub role: Vec<(String, Role)>,
}

/// Parses `PATTERN=ROLE`.
fn parse_role(s: &str) -> std::result::Result<(String, Role), String> {
    let (pattern, role) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PATTERN=ROLE, got {s:?}"))?;
    let pattern = pattern.trim();
    check_pattern(pattern)?;
    Ok((pattern.to_string(), role.parse()?))
}

impl Args {
    /// The file's settings (or defaults) with the flags applied.
    pub fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = self.id {
            c.id = v;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.peers {
            c.peers = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.lease {
            c.lease = v;
        }
        if let Some(v) = self.prepare_timeout {
            c.prepare_timeout = v;
        }
        if let Some(v) = self.max_snapshot_size {
            c.max_snapshot_size = v;
        }
        c.tls = c.tls.overridden_by(&self.tls);
        c.insecure_plaintext |= self.insecure_plaintext;
        c.roles.extend(self.roles.role.iter().cloned());
        Ok(c)
    }
}

/// The coordinator's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Raft id of this coordinator.
    pub id: u64,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Voters as "ID=URL"; empty means a single voter at http://listen.
    pub peers: Vec<String>,
    /// Directory of the raft store.
    pub data_dir: PathBuf,
    /// Lease asked of agents for each PREPARE.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Deadline for every server's PREPARED.
    #[serde(with = "humantime_serde")]
    pub prepare_timeout: Duration,
    /// Deadline for each COMMIT (unlock) call.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
    /// Deadline for one server's transfer.
    #[serde(with = "humantime_serde")]
    pub transfer_timeout: Duration,
    /// A server is healthy if its last heartbeat is younger than this.
    #[serde(with = "humantime_serde")]
    pub health_window: Duration,
    /// Largest raft snapshot accepted from a leader, in bytes (TOML: a
    /// number of bytes or a string such as "4GiB"). A follower that lags
    /// behind the compacted log catches up only if the catalog fits.
    #[serde(with = "size_serde")]
    pub max_snapshot_size: u64,
    /// Mutual TLS (`[tls]`: `cert`, `key`, `ca`); none: plaintext.
    pub tls: TlsOptions,
    /// Allow plaintext on a non-loopback `listen` address.
    pub insecure_plaintext: bool,
    /// Identity or pattern → role (the `[roles]` table); empty: the
    /// defaults (see [`Config::roles`]). The catalog's roles win for the
    /// same pattern.
    pub roles: BTreeMap<String, Role>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            peers: Vec::new(),
            data_dir: PathBuf::from("/var/lib/lockstep/coordinator"),
            lease: Duration::from_secs(10),
            prepare_timeout: Duration::from_secs(5),
            commit_timeout: Duration::from_secs(3),
            transfer_timeout: Duration::from_secs(6 * 3600),
            health_window: Duration::from_secs(3),
            max_snapshot_size: crate::raft::DEFAULT_MAX_SNAPSHOT_SIZE,
            tls: TlsOptions::default(),
            insecure_plaintext: false,
            roles: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The configured roles in force: `roles`, or the defaults when none
    /// are configured.
    pub fn roles(&self) -> BTreeMap<String, Role> {
        if self.roles.is_empty() {
            crate::access::default_roles()
        } else {
            self.roles.clone()
        }
    }

    /// The voters: `peers` parsed, or this node alone.
    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>> {
        if self.peers.is_empty() {
            return Ok(BTreeMap::from([(
                self.id,
                format!("http://{}", self.listen),
            )]));
        }
        parse_peers(&self.peers)
    }

    /// Checks the settings and builds the raft node's configuration.
    pub fn validate(&self) -> Result<RaftConfig> {
        let peers = self.peer_map()?;
        if ![1, 3, 5].contains(&peers.len()) {
            return Err(Error::Config(format!(
                "a raft group has 1, 3 or 5 voters, got {} ({})",
                peers.len(),
                self.peers.join(",")
            )));
        }
        if self.prepare_timeout.is_zero() || self.lease <= self.prepare_timeout {
            return Err(Error::Config(format!(
                "lease ({}) must be longer than prepare_timeout ({}): the cut is \
                 committed after every PREPARED and before any lease runs out",
                humantime::format_duration(self.lease),
                humantime::format_duration(self.prepare_timeout)
            )));
        }
        if self.commit_timeout.is_zero()
            || self.transfer_timeout.is_zero()
            || self.health_window.is_zero()
        {
            return Err(Error::Config(
                "commit_timeout, transfer_timeout and health_window must be positive".into(),
            ));
        }
        if let Some(e) = self.roles.keys().find_map(|p| check_pattern(p).err()) {
            return Err(Error::Config(format!("[roles]: {e}")));
        }
        if self.max_snapshot_size < MIN_SNAPSHOT_SIZE {
            return Err(Error::Config(format!(
                "max_snapshot_size ({} bytes) must be at least 1MiB",
                self.max_snapshot_size
            )));
        }
        let mut raft = RaftConfig::new(self.id, self.listen, peers, self.data_dir.clone());
        raft.max_snapshot_size = self.max_snapshot_size;
        raft.validate().map_err(|e| Error::Config(format!("{e}")))?;
        Ok(raft)
    }
}

/// Smallest accepted `max_snapshot_size`.
const MIN_SNAPSHOT_SIZE: u64 = 1 << 20;

/// Parses a size: bytes, or a number with a binary unit ("512MiB", "4GiB";
/// KiB, MiB, GiB, TiB; B for bytes).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?} does not start with a number"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        other => {
            return Err(format!(
                "size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// A size in TOML: a number of bytes or a string for [`parse_size`].
mod size_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(n) => Ok(n),
            Size::Text(t) => super::parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses "ID=URL" items.
pub fn parse_peers(items: &[String]) -> Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in items {
        let (id, url) = item
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("peer {item:?} is not ID=URL")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|e| Error::Config(format!("peer {item:?}: bad id: {e}")))?;
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "peer {item:?}: URL must start with http:// or https://"
            )));
        }
        if peers.insert(id, url.to_string()).is_some() {
            return Err(Error::Config(format!("peer id {id} is given twice")));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn args_are_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn single_voter_by_default_and_peers_parse() {
        let c = Config::default();
        let raft = c.validate().expect("defaults are valid");
        assert_eq!(raft.peers.len(), 1);
        assert_eq!(raft.peers[&1], "http://127.0.0.1:7300");
        let args = Args::try_parse_from([
            "lockstep-coordinator",
            "--id",
            "2",
            "--listen",
            "127.0.0.1:9002",
            "--peers",
            "1=http://127.0.0.1:9001,2=http://127.0.0.1:9002,3=http://127.0.0.1:9003",
            "--data-dir",
            "/tmp/x",
        ])
        .expect("parse");
        let raft = args.config().expect("config").validate().expect("valid");
        assert_eq!(raft.id, 2);
        assert_eq!(raft.peers.len(), 3);
    }

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let cfg = Config::from_file(&path).expect("deploy/coordinator.toml parses");
        let raft = cfg.validate().expect("deploy/coordinator.toml is valid");
        assert_eq!(raft.peers.len(), 3);
        assert_eq!(cfg.lease, Duration::from_secs(10));
        assert_eq!(raft.max_snapshot_size, 4 << 30);
    }

    #[test]
    fn rejects_bad_settings() {
        let bad = |peers: &[&str]| Config {
            peers: peers.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        };
        for (peers, says) in [
            (&["1=x"][..], "http://"),
            (&["1"][..], "ID=URL"),
            (&["1=http://a", "2=http://b"][..], "1, 3 or 5"),
            (&["2=http://a", "3=http://b", "4=http://c"][..], "this node"),
        ] {
            let err = bad(peers).validate().expect_err("invalid").to_string();
            assert!(err.contains(says), "{peers:?}: {err}");
        }
        let err = Config {
            lease: Duration::from_secs(1),
            ..Config::default()
        }
        .validate()
        .expect_err("lease too short")
        .to_string();
        assert!(err.contains("lease"), "{err}");
        let err = toml::from_str::<Config>("lisen = \"x\"")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config {
            max_snapshot_size: 1000,
            ..Config::default()
        }
        .validate()
        .expect_err("tiny snapshot bound")
        .to_string();
        assert!(err.contains("max_snapshot_size"), "{err}");
    }

    /// Roles come from `[roles]` and `--role` (flags win for a pattern);
    /// with none, the defaults; bad patterns and roles are refused.
    #[test]
    fn roles_from_toml_and_flags() {
        assert_eq!(
            Config::default().roles()["agent-*"],
            Role::Agent,
            "defaults"
        );
        let c: Config = toml::from_str("[roles]\n\"ops-*\" = \"operator\"\nalice = \"viewer\"\n")
            .expect("toml");
        assert_eq!(c.roles()["ops-*"], Role::Operator);
        assert!(
            !c.roles().contains_key("agent-*"),
            "configured roles replace the defaults"
        );
        assert!(toml::from_str::<Config>("[roles]\nbob = \"admin\"").is_err());
        let bad: Config = toml::from_str("[roles]\n\"a*b\" = \"viewer\"").expect("toml");
        assert!(bad.validate().is_err(), "'*' only at the end");
        let args = Args::try_parse_from([
            "lockstep-coordinator",
            "--role",
            "alice=operator",
            "--role",
            "agent-*=agent",
        ])
        .expect("parse");
        let roles = args.config().expect("config").roles();
        assert_eq!(roles.len(), 2);
        assert_eq!(roles["alice"], Role::Operator);
        assert!(Args::try_parse_from(["lockstep-coordinator", "--role", "alice"]).is_err());
        assert!(Args::try_parse_from(["lockstep-coordinator", "--role", "alice=root"]).is_err());
    }

    #[test]
    fn max_snapshot_size_parses_and_reaches_raft() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(
            parse_size("4GB")
                .expect_err("unit")
                .contains("unknown unit")
        );
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999TiB").is_err());
        let c: Config = toml::from_str("max_snapshot_size = \"8GiB\"").expect("string");
        assert_eq!(c.validate().expect("valid").max_snapshot_size, 8 << 30);
        let c: Config = toml::from_str("max_snapshot_size = 2097152").expect("bytes");
        assert_eq!(c.max_snapshot_size, 2 << 20);
        assert!(toml::from_str::<Config>("max_snapshot_size = \"lots\"").is_err());
        let args = Args::try_parse_from(["lockstep-coordinator", "--max-snapshot-size", "1GiB"])
            .expect("parse");
        assert_eq!(args.config().expect("config").max_snapshot_size, 1 << 30);
        assert_eq!(
            Config::default()
                .validate()
                .expect("valid")
                .max_snapshot_size,
            4 << 30
        );
    }
}
