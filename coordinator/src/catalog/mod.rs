//! The backup catalog: the raft state machine.
//!
//! Files: `mod.rs` (the records, [`Command`] and [`Catalog::apply`]),
//! `access.rs` (roles and the audit trail), `sinks.rs`, `restore_points.rs`, `store.rs` (the raft [`crate::raft::StateMachine`] impl: one stored key
//! per record), `version.rs` (catalog versions for rolling upgrades),
//! `tests.rs`.
//!
//! Every change is a [`Command`] that the leader proposes and every replica
//! applies in log order with [`Catalog::apply`]. `apply` is deterministic and
//! validates before it changes anything: a command that does not fit the
//! current state (a second running backup for a cluster, an artifact for a
//! server outside the cut, completing a backup with artifacts missing) is
//! rejected with a reason and leaves the catalog as it was. Times are carried
//! inside the commands, never read from the clock during apply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod access;
#[cfg(test)]
mod access_tests;
mod archive;
mod restore_points;
mod sinks;
mod store;
#[cfg(test)]
mod tests;
mod version;

use access::bind;
pub use access::{AUDIT_LIMIT, AuditOutcome, AuditRecord, Role, RoleGrant, check_pattern};
pub use archive::{ArchivedFile, BinlogPos, Segment, ServerArchive, split_name};
pub use restore_points::{
    DEFAULT_KEEP, MAX_KEEP, MIN_EVERY_MS, RestorePoint, RestorePointSchedule, check_schedule,
};
pub use sinks::{ClusterSinks, HOST_LOCAL, MediaAgent, Sink, SinkKind, check_sink_name};
use store::Dirty;
pub use version::{ACCESS_VERSION, CATALOG_VERSION, FIRST_VERSION, raise_to};

/// A server as its agent registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub cluster: String,
    pub name: String,
    /// gRPC address of its agent.
    pub agent_addr: String,
    pub flavour: String,
    pub version: String,
    pub server_id: u32,
    pub server_uuid: String,
    pub registered_at_unix_ms: i64,
    /// The certificate identity that first registered it (mutual TLS):
    /// only that identity may register it again, so nobody else can point
    /// it at another agent. `None`: registered by a plaintext caller.
    /// Cleared by removing the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<String>,
}

/// One server's part of a cut.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutEntry {
    pub binlog_file: String,
    pub binlog_pos: u64,
    pub gtid: String,
    pub lock_method: String,
    pub lock_wait_us: u64,
    pub capture_us: u64,
    pub locked_at_unix_us: i64,
    /// Set when the server reported its release.
    pub held_us: Option<u64>,
    pub released_at_unix_us: Option<i64>,
    /// "logical" or "physical" (empty in older catalogs: logical).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Physical: the snapshot provider and the snapshot's time in the lock.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_us: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A kind as the catalog stores it: "physical", or empty for logical (so
/// a logical backup's records stay readable by builds before version 5).
pub fn stored_kind(kind: &str) -> String {
    if kind == "physical" {
        kind.to_string()
    } else {
        String::new()
    }
}

impl CutEntry {
    /// Whether it carries fields of catalog version 5 (physical backups).
    pub fn is_physical_era(&self) -> bool {
        !self.kind.is_empty() || !self.provider.is_empty() || self.snapshot_us > 0
    }
}

/// Where one server's snapshot was stored: one copy in one sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The key prefix in the sink (or, for host-local copies written by
    /// older agents, the absolute directory).
    pub location: String,
    pub manifest_sha256: String,
    pub bytes: u64,
    pub files: u64,
    pub rows: u64,
    /// When `lockstep verify` (or a restore's check) last read it whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at_unix_ms: Option<i64>,
    /// What that check found wrong; `None` when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
    /// "logical" or "physical" (empty in older catalogs: logical).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Physical: the snapshot's bytes and the space left on its volume.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub free_bytes: u64,
    /// The application file sets it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_sets: Vec<String>,
}

impl Artifact {
    pub fn is_physical(&self) -> bool {
        self.kind == "physical"
    }

    /// Whether it carries fields of catalog version 5 (physical backups,
    /// file sets).
    pub fn is_physical_era(&self) -> bool {
        !self.kind.is_empty()
            || self.snapshot_bytes > 0
            || self.free_bytes > 0
            || !self.file_sets.is_empty()
    }
}

impl RestoredServer {
    /// Whether it carries fields of catalog version 5 (physical restores,
    /// file sets).
    pub fn is_physical_era(&self) -> bool {
        !self.kind.is_empty()
            || !self.datadir.is_empty()
            || !self.gtid_binlog_pos.is_empty()
            || self.recovery_ms > 0
            || !self.file_sets.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// PREPARE sent; nothing decided yet. A new leader aborts these.
    Preparing,
    /// The cut is committed: every server was locked at the barrier. A new
    /// leader finishes the transfer or fails the backup.
    Transferring,
    Complete,
    Failed,
}

impl Status {
    pub fn is_running(self) -> bool {
        matches!(self, Status::Preparing | Status::Transferring)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub id: String,
    pub cluster: String,
    pub status: Status,
    /// The servers taking part, fixed when the backup starts.
    pub servers: Vec<String>,
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: Option<i64>,
    pub cut: BTreeMap<String, CutEntry>,
    pub cut_committed_at_unix_ms: Option<i64>,
    /// The primary copy of each server's snapshot, in sink `sink`.
    pub artifacts: BTreeMap<String, Artifact>,
    /// Why it failed, naming the server where one is to blame.
    pub reason: Option<String>,
    /// The sink TRANSFER wrote to; empty: each agent's host-local directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sink: String,
    /// Further copies: sink → server → copy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub copies: BTreeMap<String, BTreeMap<String, Artifact>>,
}

impl Backup {
    /// First lock acquired to last lock released, once every server reported
    /// its release.
    pub fn freeze_us(&self) -> Option<u64> {
        if self.cut.len() != self.servers.len() || self.cut.is_empty() {
            return None;
        }
        let first = self.cut.values().map(|c| c.locked_at_unix_us).min()?;
        let last = self
            .cut
            .values()
            .map(|c| c.released_at_unix_us)
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()?;
        Some(last.saturating_sub(first).max(0) as u64)
    }
}

/// A change to the catalog. A new variant, or a new field, raises the
/// catalog version (see `version.rs`); unknown fields are refused, so an
/// older build stops on them instead of dropping them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// An agent registered (or re-registered with new details).
    RegisterServer(Server),
    /// An operator retired a server: later backups leave it out.
    RemoveServer { cluster: String, name: String },
    /// The leader starts a backup of every registered server of a cluster.
    StartBackup {
        id: String,
        cluster: String,
        servers: Vec<String>,
        at_unix_ms: i64,
        /// The primary sink; empty: host-local (and then not written, so
        /// older builds still decode the command).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sink: String,
    },
    /// Every server is prepared: the cut is decided, with every server's
    /// position and lock timings. One entry, so the decision costs a single
    /// raft round while the servers are locked.
    CommitCut {
        id: String,
        at_unix_ms: i64,
        cut: BTreeMap<String, CutEntry>,
    },
    /// One server released its lock after COMMIT. Written by coordinators
    /// that recorded the cut before COMMIT; the cut now carries every
    /// release, so this is only applied from older logs.
    Released {
        id: String,
        server: String,
        held_us: u64,
        released_at_unix_us: i64,
    },
    /// One server's snapshot is durable at `artifact.location`.
    ArtifactStored {
        id: String,
        server: String,
        artifact: Artifact,
    },
    /// Every artifact is durable.
    Complete { id: String, at_unix_ms: i64 },
    Fail {
        id: String,
        reason: String,
        at_unix_ms: i64,
    },
    /// A coordinated restore of a COMPLETE backup starts (before any agent
    /// is called).
    StartRestore {
        id: String,
        backup_id: String,
        targets: BTreeMap<String, String>,
        force: bool,
        at_unix_ms: i64,
    },
    /// One server of a restore finished (loaded, or failed).
    RestoreServerDone {
        id: String,
        server: String,
        result: RestoredServer,
    },
    /// A restore ended: COMPLETE if every server loaded and `reason` is
    /// empty, FAILED otherwise.
    FinishRestore {
        id: String,
        reason: Option<String>,
        at_unix_ms: i64,
    },
    /// Every voter supports catalog `version`: commands needing it may be
    /// proposed from now on. Only ever raises.
    SetClusterVersion { version: u32 },
    /// A media agent registered (or re-registered with a new address).
    RegisterMedia(MediaAgent),
    /// An operator added a sink to a cluster.
    AddSink { cluster: String, sink: Sink },
    /// An operator removed a sink (refused while it holds the only copy of
    /// a server of a COMPLETE backup or the policy names it).
    RemoveSink { cluster: String, name: String },
    /// The cluster's sink policy: primary sink and copies.
    SetSinkPolicy {
        cluster: String,
        primary: Option<String>,
        copies: Vec<String>,
    },
    /// One server's snapshot of a COMPLETE backup was copied to `sink`.
    CopyStored {
        id: String,
        server: String,
        sink: String,
        artifact: Artifact,
    },
    /// A copy was read back whole; `error` says what was wrong, if anything.
    CopyVerified {
        id: String,
        server: String,
        /// Empty: host-local.
        sink: String,
        at_unix_ms: i64,
        error: Option<String>,
    },
    /// A COMPLETE backup rebuilt from the manifests in a sink
    /// (`lockstep sink scan --import`), or more copies of a known one.
    ImportBackup { backup: Box<Backup> },
    /// An operator gave an identity, or every identity matching a pattern,
    /// a role (replacing any role set for that pattern before).
    SetRole {
        pattern: String,
        role: Role,
        at_unix_ms: i64,
    },
    /// An operator retired a media agent (and its identity binding).
    RemoveMedia { cluster: String, name: String },
    /// An operator removed the role set for a pattern (the coordinators'
    /// configured roles apply to it again).
    RemoveRole { pattern: String },
    /// One audited call, with its outcome (see `access.rs`).
    Audit { record: AuditRecord },
    /// An agent stored segments of one binlog file of its server in the
    /// cluster's primary sink (see `archive.rs`).
    ArchiveSegments {
        cluster: String,
        server: String,
        segments: Vec<Segment>,
    },
    /// A restore point whose cut succeeded on every server
    /// (`restore_points.rs`); the oldest beyond the cluster's `keep` go.
    AddRestorePoint { point: RestorePoint },
    /// A cluster's restore-point schedule (`every_ms` 0: off) and how many
    /// points it keeps (0: the default).
    SetRestorePointSchedule {
        cluster: String,
        every_ms: u64,
        keep: u32,
    },
}

/// Where a coordinated restore stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStatus {
    Running,
    /// Every server loaded and checked.
    Complete,
    /// At least one server failed, or the restore was cut short.
    Failed,
}

/// One server's part of a restore, once it finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredServer {
    /// `host:port` loaded into (or "own server"), never with credentials.
    pub target: String,
    /// The artifact directory loaded.
    pub location: String,
    /// Why it failed, naming the server; `None` when it loaded.
    pub error: Option<String>,
    pub tables: u64,
    pub rows: u64,
    pub duration_ms: u64,
    pub gtid_slave_pos: String,
    /// The sink of the copy loaded and the agent that loaded it (older
    /// builds drop these two; they only inform).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sink: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent: String,
    /// "physical" for a datadir written and recovered (empty: logical).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Physical: the datadir, the recovered gtid_binlog_pos and how long
    /// InnoDB recovery took.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datadir: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gtid_binlog_pos: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recovery_ms: u64,
    /// Application file sets restored, `name -> path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_sets: Vec<String>,
}

/// A coordinated restore of a backup, recorded as it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    pub id: String,
    pub backup_id: String,
    pub status: RestoreStatus,
    pub force: bool,
    /// Server name → where it is loaded (`host:port` or "own server").
    pub targets: BTreeMap<String, String>,
    /// Server name → its outcome, as each finishes.
    pub servers: BTreeMap<String, RestoredServer>,
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: Option<i64>,
    pub reason: Option<String>,
}

/// The catalog. Stored by raft as one key per server, backup and restore
/// (see `store.rs`), so an apply writes only the records it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// cluster → server name → server.
    pub clusters: BTreeMap<String, BTreeMap<String, Server>>,
    pub backups: BTreeMap<String, Backup>,
    #[serde(default)]
    pub restores: BTreeMap<String, Restore>,
    /// cluster → its sinks and sink policy.
    #[serde(default)]
    pub sinks: BTreeMap<String, ClusterSinks>,
    /// cluster → media agent name → media agent.
    #[serde(default)]
    pub media: BTreeMap<String, BTreeMap<String, MediaAgent>>,
    /// Identity or pattern → the role set with `lockstep role set`.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleGrant>,
    /// Sequence number → audit record, the newest [`AUDIT_LIMIT`].
    #[serde(default)]
    pub audit: BTreeMap<u64, AuditRecord>,
    /// cluster → server → its archived binlogs (see `archive.rs`).
    #[serde(default)]
    pub archive: BTreeMap<String, BTreeMap<String, ServerArchive>>,
    /// cluster → sequence number → restore point, the newest `keep`.
    #[serde(default)]
    pub restore_points: BTreeMap<String, BTreeMap<u64, RestorePoint>>,
    /// cluster → its restore-point schedule.
    #[serde(default)]
    pub restore_point_schedules: BTreeMap<String, RestorePointSchedule>,
    /// The catalog version every voter supports (see `version.rs`).
    #[serde(default = "first_version")]
    cluster_version: u32,
    #[serde(skip)]
    dirty: Dirty,
}

fn first_version() -> u32 {
    FIRST_VERSION
}

impl Default for Catalog {
    fn default() -> Catalog {
        Catalog {
            clusters: BTreeMap::new(),
            backups: BTreeMap::new(),
            restores: BTreeMap::new(),
            sinks: BTreeMap::new(),
            media: BTreeMap::new(),
            roles: BTreeMap::new(),
            audit: BTreeMap::new(),
            archive: BTreeMap::new(),
            restore_points: BTreeMap::new(),
            restore_point_schedules: BTreeMap::new(),
            cluster_version: FIRST_VERSION,
            dirty: Dirty::default(),
        }
    }
}

/// Why a command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejected {
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    #[error("unknown backup {0}")]
    UnknownBackup(String),
    #[error("cluster {cluster} already has backup {running} running")]
    BackupRunning { cluster: String, running: String },
    #[error("backup {0} already exists")]
    DuplicateBackup(String),
    #[error("unknown server {name:?} in cluster {cluster:?}")]
    UnknownServer { cluster: String, name: String },
    #[error("unknown restore {0}")]
    UnknownRestore(String),
    #[error("backup {backup} is already being restored (restore {running})")]
    RestoreRunning { backup: String, running: String },
    #[error("backup {id}: {reason}")]
    BadTransition { id: String, reason: String },
    #[error(
        "the cluster's catalog version is already {current}; {proposed} would not raise it (it is never lowered)"
    )]
    VersionNotRaised { current: u32, proposed: u32 },
    #[error("sink {sink}: {reason}")]
    BadSink { sink: String, reason: String },
    #[error("binlog archive of {cluster}/{server}: {reason}")]
    BadArchive {
        cluster: String,
        server: String,
        reason: String,
    },
    #[error("no role is set in the catalog for {0:?}")]
    UnknownRole(String),
    #[error("role for {pattern:?}: {reason}")]
    BadRole { pattern: String, reason: String },
    #[error(
        "{what} {cluster}/{name} was registered by identity '{bound}'; identity '{caller}' may not \
         register it again (an operator can `lockstep server remove` it first)"
    )]
    RegisteredByOther {
        what: String,
        cluster: String,
        name: String,
        bound: String,
        caller: String,
    },
    #[error("{what}: {reason}")]
    BadRestorePoint { what: String, reason: String },
}

impl Catalog {
    pub fn running_backup(&self, cluster: &str) -> Option<&Backup> {
        self.backups
            .values()
            .find(|b| b.cluster == cluster && b.status.is_running())
    }

    /// Applies one command; on rejection nothing changes.
    pub fn apply(&mut self, cmd: Command) -> Result<(), Rejected> {
        match cmd {
            Command::RegisterServer(mut s) => {
                let old = self.clusters.get(&s.cluster).and_then(|c| c.get(&s.name));
                s.registered_by = bind(
                    "server",
                    &s.cluster,
                    &s.name,
                    old.and_then(|o| o.registered_by.as_deref()),
                    s.registered_by.take(),
                )?;
                self.clusters
                    .entry(s.cluster.clone())
                    .or_default()
                    .insert(s.name.clone(), s);
                Ok(())
            }
            Command::RemoveServer { cluster, name } => {
                let servers = self
                    .clusters
                    .get(&cluster)
                    .ok_or_else(|| Rejected::UnknownCluster(cluster.clone()))?;
                if !servers.contains_key(&name) {
                    return Err(Rejected::UnknownServer { cluster, name });
                }
                if let Some(running) = self.running_backup(&cluster) {
                    return Err(Rejected::BackupRunning {
                        cluster,
                        running: running.id.clone(),
                    });
                }
                let servers = self.clusters.get_mut(&cluster).expect("checked above");
                servers.remove(&name);
                if servers.is_empty() {
                    self.clusters.remove(&cluster);
                }
                Ok(())
            }
            Command::StartBackup {
                id,
                cluster,
                servers,
                at_unix_ms,
                sink,
            } => {
                let registered = self
                    .clusters
                    .get(&cluster)
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| Rejected::UnknownCluster(cluster.clone()))?;
                if let Some(running) = self.running_backup(&cluster) {
                    return Err(Rejected::BackupRunning {
                        cluster,
                        running: running.id.clone(),
                    });
                }
                if self.backups.contains_key(&id) {
                    return Err(Rejected::DuplicateBackup(id));
                }
                if !sink.is_empty() && self.sink(&cluster, &sink).is_none() {
                    return Err(Rejected::BadSink {
                        sink,
                        reason: format!("cluster {cluster} has no such sink"),
                    });
                }
                if servers.is_empty() || servers.iter().any(|s| !registered.contains_key(s)) {
                    return Err(Rejected::BadTransition {
                        id,
                        reason: format!(
                            "servers {servers:?} are not all registered in cluster {cluster}"
                        ),
                    });
                }
                self.backups.insert(
                    id.clone(),
                    Backup {
                        id,
                        cluster,
                        status: Status::Preparing,
                        servers,
                        started_at_unix_ms: at_unix_ms,
                        finished_at_unix_ms: None,
                        cut: BTreeMap::new(),
                        cut_committed_at_unix_ms: None,
                        artifacts: BTreeMap::new(),
                        reason: None,
                        sink,
                        copies: BTreeMap::new(),
                    },
                );
                Ok(())
            }
            Command::CommitCut {
                id,
                at_unix_ms,
                cut,
            } => {
                let b = self.backup_in(&id, Status::Preparing)?;
                for server in cut.keys() {
                    require_member(b, server)?;
                }
                if let Some(missing) = b.servers.iter().find(|s| !cut.contains_key(*s)) {
                    return Err(Rejected::BadTransition {
                        id: id.clone(),
                        reason: format!("server {missing} has not prepared"),
                    });
                }
                b.cut = cut;
                b.status = Status::Transferring;
                b.cut_committed_at_unix_ms = Some(at_unix_ms);
                Ok(())
            }
            Command::Released {
                id,
                server,
                held_us,
                released_at_unix_us,
            } => {
                let b = self.backup_in(&id, Status::Transferring)?;
                let entry = b
                    .cut
                    .get_mut(&server)
                    .ok_or_else(|| Rejected::BadTransition {
                        id: id.clone(),
                        reason: format!("server {server} is not in the cut"),
                    })?;
                entry.held_us = Some(held_us);
                entry.released_at_unix_us = Some(released_at_unix_us);
                Ok(())
            }
            Command::ArtifactStored {
                id,
                server,
                artifact,
            } => {
                let b = self.backup_in(&id, Status::Transferring)?;
                require_member(b, &server)?;
                b.artifacts.insert(server, artifact);
                Ok(())
            }
            Command::Complete { id, at_unix_ms } => {
                let b = self.backup_in(&id, Status::Transferring)?;
                if let Some(missing) = b.servers.iter().find(|s| !b.artifacts.contains_key(*s)) {
                    return Err(Rejected::BadTransition {
                        id: id.clone(),
                        reason: format!("server {missing} has no durable artifact"),
                    });
                }
                b.status = Status::Complete;
                b.finished_at_unix_ms = Some(at_unix_ms);
                Ok(())
            }
            Command::Fail {
                id,
                reason,
                at_unix_ms,
            } => {
                let b = self
                    .backups
                    .get_mut(&id)
                    .ok_or_else(|| Rejected::UnknownBackup(id.clone()))?;
                if !b.status.is_running() {
                    return Err(Rejected::BadTransition {
                        id,
                        reason: format!("it is already {:?}", b.status),
                    });
                }
                b.status = Status::Failed;
                b.reason = Some(reason);
                b.finished_at_unix_ms = Some(at_unix_ms);
                Ok(())
            }
            Command::StartRestore {
                id,
                backup_id,
                targets,
                force,
                at_unix_ms,
            } => {
                let b = self
                    .backups
                    .get(&backup_id)
                    .ok_or_else(|| Rejected::UnknownBackup(backup_id.clone()))?;
                if b.status != Status::Complete {
                    return Err(Rejected::BadTransition {
                        id: backup_id,
                        reason: "only a COMPLETE backup can be restored".into(),
                    });
                }
                if targets.len() != b.servers.len()
                    || !b.servers.iter().all(|s| targets.contains_key(s))
                {
                    return Err(Rejected::BadTransition {
                        id: backup_id,
                        reason: "a restore names a target for every server of the backup".into(),
                    });
                }
                if let Some(running) = self
                    .restores
                    .values()
                    .find(|r| r.backup_id == backup_id && r.status == RestoreStatus::Running)
                {
                    return Err(Rejected::RestoreRunning {
                        backup: backup_id,
                        running: running.id.clone(),
                    });
                }
                if self.restores.contains_key(&id) {
                    return Err(Rejected::BadTransition {
                        id,
                        reason: "a restore with this id exists".into(),
                    });
                }
                self.restores.insert(
                    id.clone(),
                    Restore {
                        id,
                        backup_id,
                        status: RestoreStatus::Running,
                        force,
                        targets,
                        servers: BTreeMap::new(),
                        started_at_unix_ms: at_unix_ms,
                        finished_at_unix_ms: None,
                        reason: None,
                    },
                );
                Ok(())
            }
            Command::RestoreServerDone { id, server, result } => {
                let r = self.running_restore(&id)?;
                if !r.targets.contains_key(&server) {
                    return Err(Rejected::BadTransition {
                        id,
                        reason: format!("server {server} is not part of this restore"),
                    });
                }
                r.servers.insert(server, result);
                Ok(())
            }
            Command::FinishRestore {
                id,
                reason,
                at_unix_ms,
            } => {
                let r = self.running_restore(&id)?;
                let failed: Vec<&str> = r
                    .targets
                    .keys()
                    .filter(|s| r.servers.get(*s).is_none_or(|d| d.error.is_some()))
                    .map(String::as_str)
                    .collect();
                let reason = reason.or_else(|| {
                    (!failed.is_empty())
                        .then(|| format!("server(s) {} not restored", failed.join(", ")))
                });
                r.status = if reason.is_some() {
                    RestoreStatus::Failed
                } else {
                    RestoreStatus::Complete
                };
                r.reason = reason;
                r.finished_at_unix_ms = Some(at_unix_ms);
                Ok(())
            }
            Command::SetClusterVersion { version } => self.set_cluster_version(version),
            Command::RegisterMedia(mut m) => {
                let old = self.media.get(&m.cluster).and_then(|c| c.get(&m.name));
                m.registered_by = bind(
                    "media agent",
                    &m.cluster,
                    &m.name,
                    old.and_then(|o| o.registered_by.as_deref()),
                    m.registered_by.take(),
                )?;
                self.register_media(m);
                Ok(())
            }
            Command::AddSink { cluster, sink } => self.add_sink(cluster, sink),
            Command::RemoveSink { cluster, name } => self.remove_sink(&cluster, &name),
            Command::SetSinkPolicy {
                cluster,
                primary,
                copies,
            } => self.set_policy(cluster, primary, copies),
            Command::CopyStored {
                id,
                server,
                sink,
                artifact,
            } => self.store_copy(&id, server, sink, artifact),
            Command::CopyVerified {
                id,
                server,
                sink,
                at_unix_ms,
                error,
            } => self.verified(&id, &server, &sink, at_unix_ms, error),
            Command::ImportBackup { backup } => self.import(*backup),
            Command::SetRole {
                pattern,
                role,
                at_unix_ms,
            } => self.set_role(pattern, role, at_unix_ms),
            Command::RemoveRole { pattern } => self.remove_role(&pattern),
            Command::RemoveMedia { cluster, name } => self.remove_media(cluster, name),
            Command::Audit { record } => {
                self.append_audit(record);
                Ok(())
            }
            Command::ArchiveSegments {
                cluster,
                server,
                segments,
            } => self.archive_segments(&cluster, &server, segments),
            Command::AddRestorePoint { point } => self.add_restore_point(point),
            Command::SetRestorePointSchedule {
                cluster,
                every_ms,
                keep,
            } => self.set_restore_point_schedule(cluster, every_ms, keep),
        }
    }

    fn running_restore(&mut self, id: &str) -> Result<&mut Restore, Rejected> {
        let r = self
            .restores
            .get_mut(id)
            .ok_or_else(|| Rejected::UnknownRestore(id.to_string()))?;
        if r.status != RestoreStatus::Running {
            return Err(Rejected::BadTransition {
                id: id.to_string(),
                reason: format!("restore is already {:?}", r.status),
            });
        }
        Ok(r)
    }

    fn backup_in(&mut self, id: &str, status: Status) -> Result<&mut Backup, Rejected> {
        let b = self
            .backups
            .get_mut(id)
            .ok_or_else(|| Rejected::UnknownBackup(id.to_string()))?;
        if b.status != status {
            return Err(Rejected::BadTransition {
                id: id.to_string(),
                reason: format!("it is {:?}, not {:?}", b.status, status),
            });
        }
        Ok(b)
    }
}

fn require_member(b: &Backup, server: &str) -> Result<(), Rejected> {
    if b.servers.iter().any(|s| s == server) {
        Ok(())
    } else {
        Err(Rejected::BadTransition {
            id: b.id.clone(),
            reason: format!("server {server} is not part of it"),
        })
    }
}
