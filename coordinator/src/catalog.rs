//! The backup catalog: the raft state machine.
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

use crate::raft::{Change, KeyValue};

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
}

/// Where one server's snapshot was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub location: String,
    pub manifest_sha256: String,
    pub bytes: u64,
    pub files: u64,
    pub rows: u64,
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
    pub artifacts: BTreeMap<String, Artifact>,
    /// Why it failed, naming the server where one is to blame.
    pub reason: Option<String>,
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

/// A change to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
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
/// (see [`Key`]), so an apply writes only the records it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// cluster → server name → server.
    pub clusters: BTreeMap<String, BTreeMap<String, Server>>,
    pub backups: BTreeMap<String, Backup>,
    #[serde(default)]
    pub restores: BTreeMap<String, Restore>,
    #[serde(skip)]
    dirty: Dirty,
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
            Command::RegisterServer(s) => {
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

/// Raft applies catalog commands as JSON; the reply is the JSON of
/// `Result<(), Rejected>`.
impl crate::raft::StateMachine for Catalog {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        let result = match serde_json::from_slice::<Command>(data) {
            Ok(cmd) => {
                let key = cmd.key();
                let r = Catalog::apply(self, cmd);
                if r.is_ok() {
                    self.dirty.0.insert(key);
                }
                r
            }
            Err(e) => Err(Rejected::BadTransition {
                id: String::new(),
                reason: format!("undecodable command: {e}"),
            }),
        };
        serde_json::to_vec(&result).expect("a catalog reply always serialises")
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.dirty.0)
            .into_iter()
            .map(|key| {
                let value = match &key {
                    Key::Server { cluster, name } => self
                        .clusters
                        .get(cluster)
                        .and_then(|s| s.get(name))
                        .map(serde_json::to_vec),
                    Key::Backup { id } => self.backups.get(id).map(serde_json::to_vec),
                    Key::Restore { id } => self.restores.get(id).map(serde_json::to_vec),
                };
                let value = value.map(|v| v.expect("a catalog record always serialises"));
                (key.to_string(), value)
            })
            .collect()
    }

    fn load(
        &mut self,
        entries: Vec<KeyValue>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut c = Catalog::default();
        for (k, v) in entries {
            match serde_json::from_str::<Key>(&k).map_err(|e| format!("catalog key {k:?}: {e}"))? {
                Key::Server { cluster, name } => {
                    let s: Server = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog server {cluster}/{name}: {e}"))?;
                    c.clusters.entry(cluster).or_default().insert(name, s);
                }
                Key::Backup { id } => {
                    let b: Backup = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog backup {id}: {e}"))?;
                    c.backups.insert(id, b);
                }
                Key::Restore { id } => {
                    let r: Restore = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog restore {id}: {e}"))?;
                    c.restores.insert(id, r);
                }
            }
        }
        *self = c;
        Ok(())
    }
}

/// A catalog record's key in the raft store: one per server, backup and
/// restore, so an apply writes only the records it changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Key {
    Server { cluster: String, name: String },
    Backup { id: String },
    Restore { id: String },
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

impl Command {
    /// The record this command changes.
    fn key(&self) -> Key {
        let backup = |id: &String| Key::Backup { id: id.clone() };
        let restore = |id: &String| Key::Restore { id: id.clone() };
        match self {
            Command::RegisterServer(s) => Key::Server {
                cluster: s.cluster.clone(),
                name: s.name.clone(),
            },
            Command::RemoveServer { cluster, name } => Key::Server {
                cluster: cluster.clone(),
                name: name.clone(),
            },
            Command::StartBackup { id, .. }
            | Command::CommitCut { id, .. }
            | Command::Released { id, .. }
            | Command::ArtifactStored { id, .. }
            | Command::Complete { id, .. }
            | Command::Fail { id, .. } => backup(id),
            Command::StartRestore { id, .. }
            | Command::RestoreServerDone { id, .. }
            | Command::FinishRestore { id, .. } => restore(id),
        }
    }
}

/// The records changed since the raft core last took them. Not part of the
/// catalog's value: never serialised, and equal whatever it holds.
#[derive(Debug, Clone, Default)]
struct Dirty(std::collections::BTreeSet<Key>);

impl PartialEq for Dirty {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Dirty {}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn server(cluster: &str, name: &str) -> Command {
        Command::RegisterServer(Server {
            cluster: cluster.into(),
            name: name.into(),
            agent_addr: format!("http://{name}:7400"),
            flavour: "mariadb".into(),
            version: "10.11.6".into(),
            server_id: 1,
            server_uuid: String::new(),
            registered_at_unix_ms: 1,
        })
    }

    fn start(id: &str) -> Command {
        Command::StartBackup {
            id: id.into(),
            cluster: "c".into(),
            servers: vec!["a".into(), "b".into()],
            at_unix_ms: 10,
        }
    }

    /// CommitCut with `servers` prepared, locked at the given instants.
    fn commit_cut(id: &str, servers: &[(&str, i64)]) -> Command {
        Command::CommitCut {
            id: id.into(),
            at_unix_ms: 11,
            cut: servers
                .iter()
                .map(|&(s, locked_at)| {
                    let entry = CutEntry {
                        binlog_file: "mysql-bin.000001".into(),
                        binlog_pos: 4,
                        locked_at_unix_us: locked_at,
                        ..CutEntry::default()
                    };
                    (s.to_string(), entry)
                })
                .collect(),
        }
    }

    fn artifact() -> Artifact {
        Artifact {
            location: "/b".into(),
            manifest_sha256: "00".into(),
            bytes: 1,
            files: 1,
            rows: 1,
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.apply(server("c", "a")).expect("register a");
        c.apply(server("c", "b")).expect("register b");
        c
    }

    #[test]
    fn a_backup_runs_through_every_step() {
        let mut c = catalog();
        c.apply(start("b1")).expect("start");
        let early = c.apply(commit_cut("b1", &[("a", 1_000)]));
        assert!(
            matches!(early, Err(Rejected::BadTransition { ref reason, .. }) if reason.contains("server b")),
            "{early:?}"
        );
        c.apply(commit_cut("b1", &[("a", 1_000), ("b", 1_500)]))
            .expect("commit");
        for (s, at) in [("a", 4_000), ("b", 6_000)] {
            c.apply(Command::Released {
                id: "b1".into(),
                server: s.into(),
                held_us: 3_000,
                released_at_unix_us: at,
            })
            .expect("released");
        }
        assert_eq!(c.backups["b1"].freeze_us(), Some(5_000));
        c.apply(Command::ArtifactStored {
            id: "b1".into(),
            server: "a".into(),
            artifact: artifact(),
        })
        .expect("artifact a");
        let incomplete = c.apply(Command::Complete {
            id: "b1".into(),
            at_unix_ms: 13,
        });
        assert!(
            matches!(incomplete, Err(Rejected::BadTransition { ref reason, .. }) if reason.contains("server b has no durable artifact"))
        );
        c.apply(Command::ArtifactStored {
            id: "b1".into(),
            server: "b".into(),
            artifact: artifact(),
        })
        .expect("artifact b");
        c.apply(Command::Complete {
            id: "b1".into(),
            at_unix_ms: 14,
        })
        .expect("complete");
        assert_eq!(c.backups["b1"].status, Status::Complete);
    }

    #[test]
    fn rejections_change_nothing() {
        let mut c = catalog();
        c.apply(start("b1")).expect("start");
        let before = c.clone();
        assert_eq!(
            c.apply(start("b2")),
            Err(Rejected::BackupRunning {
                cluster: "c".into(),
                running: "b1".into()
            })
        );
        assert!(matches!(
            c.apply(commit_cut("b1", &[("a", 1), ("b", 1), ("zzz", 1)])),
            Err(Rejected::BadTransition { .. })
        ));
        assert!(matches!(
            c.apply(commit_cut("nope", &[("a", 1), ("b", 1)])),
            Err(Rejected::UnknownBackup(_))
        ));
        let unknown = c.apply(Command::StartBackup {
            id: "x".into(),
            cluster: "other".into(),
            servers: vec![],
            at_unix_ms: 0,
        });
        assert_eq!(unknown, Err(Rejected::UnknownCluster("other".into())));
        assert_eq!(c, before);
        c.apply(Command::Fail {
            id: "b1".into(),
            reason: "server b: lock timeout".into(),
            at_unix_ms: 5,
        })
        .expect("fail");
        assert!(
            c.apply(Command::Fail {
                id: "b1".into(),
                reason: "again".into(),
                at_unix_ms: 6
            })
            .is_err()
        );
        assert_eq!(
            c.backups["b1"].reason.as_deref(),
            Some("server b: lock timeout")
        );
        c.apply(start("b2"))
            .expect("a failed backup does not block the next");
    }

    #[test]
    fn a_restore_is_recorded_server_by_server() {
        let mut c = catalog();
        c.apply(start("b1")).expect("start");
        c.apply(commit_cut("b1", &[("a", 1), ("b", 2)]))
            .expect("commit");
        for s in ["a", "b"] {
            c.apply(Command::ArtifactStored {
                id: "b1".into(),
                server: s.into(),
                artifact: artifact(),
            })
            .expect("artifact");
        }
        c.apply(Command::Complete {
            id: "b1".into(),
            at_unix_ms: 3,
        })
        .expect("complete");
        let restore = |id: &str, servers: &[&str]| Command::StartRestore {
            id: id.into(),
            backup_id: "b1".into(),
            targets: servers
                .iter()
                .map(|s| (s.to_string(), format!("h:{s}")))
                .collect(),
            force: false,
            at_unix_ms: 4,
        };
        let done = |id: &str, server: &str, error: Option<&str>| Command::RestoreServerDone {
            id: id.into(),
            server: server.into(),
            result: RestoredServer {
                error: error.map(String::from),
                rows: 5,
                ..RestoredServer::default()
            },
        };
        let finish = |id: &str| Command::FinishRestore {
            id: id.into(),
            reason: None,
            at_unix_ms: 5,
        };
        assert!(matches!(
            c.apply(restore("r1", &["a"])),
            Err(Rejected::BadTransition { .. })
        ));
        c.apply(restore("r1", &["a", "b"])).expect("start r1");
        assert!(matches!(
            c.apply(restore("r2", &["a", "b"])),
            Err(Rejected::RestoreRunning { .. })
        ));
        c.apply(done("r1", "a", None)).expect("a done");
        c.apply(done("r1", "b", Some("server b: not empty")))
            .expect("b failed");
        c.apply(finish("r1")).expect("finish r1");
        let r1 = &c.restores["r1"];
        assert_eq!(r1.status, RestoreStatus::Failed);
        assert_eq!(r1.reason.as_deref(), Some("server(s) b not restored"));
        assert!(c.apply(done("r1", "a", None)).is_err(), "r1 is finished");

        c.apply(restore("r2", &["a", "b"])).expect("start r2");
        c.apply(done("r2", "a", None)).expect("a");
        c.apply(done("r2", "b", None)).expect("b");
        c.apply(finish("r2")).expect("finish r2");
        assert_eq!(c.restores["r2"].status, RestoreStatus::Complete);
        assert_eq!(
            c.apply(Command::StartRestore {
                id: "r3".into(),
                backup_id: "nope".into(),
                targets: BTreeMap::new(),
                force: false,
                at_unix_ms: 6,
            }),
            Err(Rejected::UnknownBackup("nope".into()))
        );
    }

    #[test]
    fn a_removed_server_is_left_out_of_later_backups() {
        let mut c = catalog();
        let remove = |name: &str| Command::RemoveServer {
            cluster: "c".into(),
            name: name.into(),
        };
        c.apply(start("b1")).expect("start");
        assert!(matches!(
            c.apply(remove("b")),
            Err(Rejected::BackupRunning { .. })
        ));
        c.apply(Command::Fail {
            id: "b1".into(),
            reason: "test".into(),
            at_unix_ms: 1,
        })
        .expect("fail");
        c.apply(remove("b")).expect("remove b");
        assert_eq!(
            c.apply(remove("b")),
            Err(Rejected::UnknownServer {
                cluster: "c".into(),
                name: "b".into()
            })
        );
        assert!(c.backups["b1"].servers.contains(&"b".to_string()));
        let with_b = c.apply(Command::StartBackup {
            id: "b2".into(),
            cluster: "c".into(),
            servers: vec!["a".into(), "b".into()],
            at_unix_ms: 2,
        });
        assert!(matches!(with_b, Err(Rejected::BadTransition { .. })));
        c.apply(remove("a")).expect("remove a");
        assert!(!c.clusters.contains_key("c"), "an empty cluster is dropped");
    }

    #[test]
    fn raft_applies_json_commands() {
        use crate::raft::StateMachine;
        let mut c = Catalog::default();
        for s in ["a", "b"] {
            let cmd = serde_json::to_vec(&server("c", s)).expect("encode");
            StateMachine::apply(&mut c, 1, &cmd);
        }
        let ok = serde_json::to_vec(&start("b1")).expect("encode");
        let reply: Result<(), Rejected> =
            serde_json::from_slice(&StateMachine::apply(&mut c, 3, &ok)).expect("reply");
        assert_eq!(reply, Ok(()));
        let again: Result<(), Rejected> =
            serde_json::from_slice(&StateMachine::apply(&mut c, 4, &ok)).expect("reply");
        assert!(matches!(again, Err(Rejected::BackupRunning { .. })));
        let garbage: Result<(), Rejected> =
            serde_json::from_slice(&StateMachine::apply(&mut c, 5, b"{")).expect("reply");
        assert!(garbage.is_err());
        let changes = c.take_changes();
        assert_eq!(changes.len(), 3, "servers a and b, backup b1: {changes:?}");
        let mut restored = Catalog::default();
        let stored = changes
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        restored.load(stored).expect("load");
        assert_eq!(restored, c);
        assert!(c.take_changes().is_empty(), "taken");

        let remove = Command::RemoveServer {
            cluster: "c".into(),
            name: "b".into(),
        };
        let fail = Command::Fail {
            id: "b1".into(),
            reason: "test".into(),
            at_unix_ms: 6,
        };
        for cmd in [fail, remove] {
            StateMachine::apply(&mut c, 6, &serde_json::to_vec(&cmd).expect("encode"));
        }
        let changes = c.take_changes();
        assert_eq!(changes.len(), 2, "{changes:?}");
        let (key, value) = changes
            .iter()
            .find(|(k, _)| k.contains("\"name\":\"b\""))
            .expect("server b changed");
        assert!(value.is_none(), "server b removed: {key}");
    }

    #[test]
    fn commands_and_catalog_round_trip_through_json() {
        let mut c = catalog();
        c.apply(start("b1")).expect("start");
        let json = serde_json::to_string(&c).expect("serialise");
        assert_eq!(serde_json::from_str::<Catalog>(&json).expect("parse"), c);
        let cmd = commit_cut("b1", &[("a", 7)]);
        let text = serde_json::to_string(&cmd).expect("serialise");
        assert!(text.contains("\"op\":\"commit_cut\""), "{text}");
        assert_eq!(serde_json::from_str::<Command>(&text).expect("parse"), cmd);
    }
}
