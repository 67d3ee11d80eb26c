//! The catalog as raft stores it: the [`crate::raft::StateMachine`] impl
//! (commands arrive as JSON), one key per record, and the set of records an
//! apply changed.

use serde::{Deserialize, Serialize};

use super::{
    ArchivedFile, AuditRecord, Backup, Catalog, ClusterSinks, Command, MediaAgent, Restore,
    RestorePoint, RestorePointSchedule, RoleGrant, Server, version,
};
use crate::raft::{Change, KeyValue};

/// Raft applies catalog commands as JSON; the reply is the JSON of
/// `Result<(), Rejected>`. An entry this build cannot decode (a newer build
/// wrote it) or a cluster version above its own is an error: the raft node
/// stops there rather than skip an entry other replicas apply.
impl crate::raft::StateMachine for Catalog {
    fn apply(
        &mut self,
        index: u64,
        data: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        let result = match version::decode(index, data)? {
            Ok(cmd) => {
                let key = cmd.key(self);
                let r = Catalog::apply(self, cmd);
                if r.is_ok() {
                    self.dirty.0.insert(key);
                }
                r
            }
            Err(rejected) => Err(rejected),
        };
        Ok(serde_json::to_vec(&result).expect("a catalog reply always serialises"))
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
                    Key::ClusterVersion => Some(serde_json::to_vec(&self.cluster_version)),
                    Key::Sinks { cluster } => self.sinks.get(cluster).map(serde_json::to_vec),
                    Key::Media { cluster, name } => self
                        .media
                        .get(cluster)
                        .and_then(|m| m.get(name))
                        .map(serde_json::to_vec),
                    Key::Role { pattern } => self.roles.get(pattern).map(serde_json::to_vec),
                    Key::Audit { seq } => self.audit.get(seq).map(serde_json::to_vec),
                    Key::Archive {
                        cluster,
                        server,
                        file,
                    } => self
                        .server_archive(cluster, server)
                        .and_then(|a| a.get(file))
                        .map(serde_json::to_vec),
                    Key::RestorePoint { cluster, seq } => self
                        .restore_points
                        .get(cluster)
                        .and_then(|p| p.get(seq))
                        .map(serde_json::to_vec),
                    Key::RestorePointSchedule { cluster } => self
                        .restore_point_schedules
                        .get(cluster)
                        .map(serde_json::to_vec),
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
                Key::ClusterVersion => {
                    let v: u32 = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog cluster version: {e}"))?;
                    version::check_loaded(v)?;
                    c.cluster_version = v;
                }
                Key::Sinks { cluster } => {
                    let s: ClusterSinks = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog sinks of {cluster}: {e}"))?;
                    c.sinks.insert(cluster, s);
                }
                Key::Media { cluster, name } => {
                    let m: MediaAgent = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog media agent {cluster}/{name}: {e}"))?;
                    c.media.entry(cluster).or_default().insert(name, m);
                }
                Key::Role { pattern } => {
                    let r: RoleGrant = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog role of {pattern:?}: {e}"))?;
                    c.roles.insert(pattern, r);
                }
                Key::Audit { seq } => {
                    let r: AuditRecord = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog audit record {seq}: {e}"))?;
                    c.audit.insert(seq, r);
                }
                Key::Archive {
                    cluster,
                    server,
                    file,
                } => {
                    let f: ArchivedFile = serde_json::from_slice(&v).map_err(|e| {
                        format!("catalog archived binlog {cluster}/{server}/{file}: {e}")
                    })?;
                    c.archive
                        .entry(cluster)
                        .or_default()
                        .entry(server)
                        .or_default()
                        .insert(file, f);
                }
                Key::RestorePoint { cluster, seq } => {
                    let p: RestorePoint = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog restore point {seq} of {cluster}: {e}"))?;
                    c.restore_points.entry(cluster).or_default().insert(seq, p);
                }
                Key::RestorePointSchedule { cluster } => {
                    let s: RestorePointSchedule = serde_json::from_slice(&v)
                        .map_err(|e| format!("catalog restore point schedule of {cluster}: {e}"))?;
                    c.restore_point_schedules.insert(cluster, s);
                }
            }
        }
        *self = c;
        Ok(())
    }
}

/// A catalog record's key in the raft store: one per server, backup and
/// restore, so an apply writes only the records it changed; and the cluster
/// version, stored only once raised (a catalog at version 1 has no such
/// key, so builds without versions load it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Key {
    Server {
        cluster: String,
        name: String,
    },
    Backup {
        id: String,
    },
    Restore {
        id: String,
    },
    ClusterVersion,
    Sinks {
        cluster: String,
    },
    Media {
        cluster: String,
        name: String,
    },
    /// A role set for an identity or pattern.
    Role {
        pattern: String,
    },
    /// One audit record, by sequence number.
    Audit {
        seq: u64,
    },
    /// One archived binlog file of a server.
    Archive {
        cluster: String,
        server: String,
        file: String,
    },
    /// One restore point of a cluster, by its sequence number.
    RestorePoint {
        cluster: String,
        seq: u64,
    },
    RestorePointSchedule {
        cluster: String,
    },
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

impl Command {
    /// The record this command changes in `catalog` (before it applies).
    pub(super) fn key(&self, catalog: &Catalog) -> Key {
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
            Command::SetClusterVersion { .. } => Key::ClusterVersion,
            Command::RegisterMedia(m) => Key::Media {
                cluster: m.cluster.clone(),
                name: m.name.clone(),
            },
            Command::RemoveMedia { cluster, name } => Key::Media {
                cluster: cluster.clone(),
                name: name.clone(),
            },
            Command::SetRole { pattern, .. } | Command::RemoveRole { pattern } => Key::Role {
                pattern: pattern.clone(),
            },
            Command::Audit { .. } => catalog.next_audit_key(),
            Command::AddSink { cluster, .. }
            | Command::RemoveSink { cluster, .. }
            | Command::SetSinkPolicy { cluster, .. } => Key::Sinks {
                cluster: cluster.clone(),
            },
            Command::CopyStored { id, .. } | Command::CopyVerified { id, .. } => backup(id),
            Command::ImportBackup { backup: b } => backup(&b.id),
            Command::ArchiveSegments {
                cluster,
                server,
                segments,
            } => Key::Archive {
                cluster: cluster.clone(),
                server: server.clone(),
                file: segments.first().map(|s| s.file.clone()).unwrap_or_default(),
            },
            Command::AddRestorePoint { point } => catalog.next_restore_point_key(&point.cluster),
            Command::SetRestorePointSchedule { cluster, .. } => Key::RestorePointSchedule {
                cluster: cluster.clone(),
            },
        }
    }
}

/// The records changed since the raft core last took them. Not part of the
/// catalog's value: never serialised, and equal whatever it holds.
#[derive(Debug, Clone, Default)]
pub(super) struct Dirty(pub(super) std::collections::BTreeSet<Key>);

impl PartialEq for Dirty {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Dirty {}
