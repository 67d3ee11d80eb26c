//! Sinks, media agents and copies in the catalog (catalog version 2).
//!
//! A cluster's sinks are named places artifacts are stored: a disk pool
//! held by an agent, or an S3 bucket and prefix. Credentials never enter the
//! catalog: agents take them from their environment. The cluster's policy
//! names the primary sink (where TRANSFER writes) and the sinks every
//! COMPLETE backup is copied to. A backup's primary copy is its `artifacts`;
//! every further copy is in `copies`, one record per sink and server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Artifact, Backup, Catalog, Rejected, Status};

/// Where a sink is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkKind {
    /// A directory on an agent's host (a media agent's pool, or any agent's).
    Disk { agent: String, path: String },
    /// S3-compatible object storage.
    S3 {
        bucket: String,
        prefix: String,
        endpoint: String,
        region: String,
    },
}

impl SinkKind {
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Disk { .. } => "disk",
            SinkKind::S3 { .. } => "s3",
        }
    }

    /// Where it is, for people: `DIR on AGENT` or `s3://BUCKET/PREFIX`.
    pub fn place(&self) -> String {
        match self {
            SinkKind::Disk { agent, path } => format!("{path} on {agent}"),
            SinkKind::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => {
                let at = if endpoint.is_empty() {
                    String::new()
                } else {
                    format!(" at {endpoint}")
                };
                format!("s3://{bucket}/{prefix}{at}")
            }
        }
    }
}

/// A named sink of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sink {
    pub name: String,
    #[serde(flatten)]
    pub kind: SinkKind,
    /// Agents encrypt what they write to it (see docs/format.md).
    pub encrypt: bool,
    pub added_at_unix_ms: i64,
}

/// A cluster's sinks and its sink policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSinks {
    pub sinks: BTreeMap<String, Sink>,
    /// Where TRANSFER writes; `None`: each agent's host-local directory.
    pub primary: Option<String>,
    /// Sinks every COMPLETE backup is copied to.
    pub copies: Vec<String>,
}

/// An agent without a database server: it holds disk pools and loads
/// backups into any target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaAgent {
    pub cluster: String,
    pub name: String,
    pub agent_addr: String,
    pub registered_at_unix_ms: i64,
    /// The certificate identity that first registered it (see
    /// [`super::Server::registered_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<String>,
}

/// The name of the implicit sink: each agent's own `--sink-dir`.
pub const HOST_LOCAL: &str = "host-local";

/// Checks a sink name: it appears in commands, paths and logs.
pub fn check_sink_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(format!(
            "sink name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    if name == HOST_LOCAL {
        return Err(format!(
            "{HOST_LOCAL:?} names each agent's own directory; choose another name"
        ));
    }
    Ok(())
}

impl Backup {
    /// Every copy of every server: (sink, server, artifact), the primary
    /// copy first. The primary's sink is `sink` (empty: host-local).
    pub fn all_copies(&self) -> Vec<(&str, &str, &Artifact)> {
        let mut out: Vec<(&str, &str, &Artifact)> = self
            .artifacts
            .iter()
            .map(|(server, a)| (self.sink.as_str(), server.as_str(), a))
            .collect();
        for (sink, servers) in &self.copies {
            for (server, a) in servers {
                out.push((sink.as_str(), server.as_str(), a));
            }
        }
        out
    }

    /// The copies of one server's artifact, the primary first.
    pub fn copies_of(&self, server: &str) -> Vec<(&str, &Artifact)> {
        self.all_copies()
            .into_iter()
            .filter(|(_, s, _)| *s == server)
            .map(|(sink, _, a)| (sink, a))
            .collect()
    }

    /// The copy of `server` in `sink`, primary or not.
    pub fn copy_in_mut(&mut self, sink: &str, server: &str) -> Option<&mut Artifact> {
        if self.sink == sink {
            return self.artifacts.get_mut(server);
        }
        self.copies.get_mut(sink).and_then(|c| c.get_mut(server))
    }
}

impl Catalog {
    pub(super) fn add_sink(&mut self, cluster: String, sink: Sink) -> Result<(), Rejected> {
        check_sink_name(&sink.name).map_err(|reason| Rejected::BadSink {
            sink: sink.name.clone(),
            reason,
        })?;
        let entry = self.sinks.entry(cluster).or_default();
        if entry.sinks.contains_key(&sink.name) {
            return Err(Rejected::BadSink {
                sink: sink.name.clone(),
                reason: "a sink of this name exists; remove it first".into(),
            });
        }
        if let Some(same) = entry.sinks.values().find(|s| s.kind == sink.kind) {
            return Err(Rejected::BadSink {
                sink: sink.name.clone(),
                reason: format!("sink {} is already {}", same.name, same.kind.place()),
            });
        }
        entry.sinks.insert(sink.name.clone(), sink);
        Ok(())
    }

    pub(super) fn remove_sink(&mut self, cluster: &str, name: &str) -> Result<(), Rejected> {
        let bad = |reason: String| Rejected::BadSink {
            sink: name.to_string(),
            reason,
        };
        let entry = self
            .sinks
            .get(cluster)
            .filter(|c| c.sinks.contains_key(name))
            .ok_or_else(|| bad(format!("cluster {cluster} has no such sink")))?;
        if entry.primary.as_deref() == Some(name) || entry.copies.iter().any(|c| c == name) {
            return Err(bad(
                "the cluster's sink policy uses it; set a policy without it first".into(),
            ));
        }
        for b in self.backups.values().filter(|b| b.cluster == cluster) {
            if b.status.is_running() && b.sink == name {
                return Err(bad(format!("backup {} is being written to it", b.id)));
            }
            if b.status != Status::Complete {
                continue;
            }
            for server in &b.servers {
                // A copy known to be bad does not count.
                let copies: Vec<_> = b
                    .copies_of(server)
                    .into_iter()
                    .filter(|(_, a)| a.verify_error.is_none())
                    .collect();
                if copies.iter().any(|(sink, _)| *sink == name)
                    && copies.iter().all(|(sink, _)| *sink == name)
                {
                    return Err(bad(format!(
                        "it holds the only good copy of server {server} of backup {}; copy the backup elsewhere first (lockstep copy --backup {} --to SINK)",
                        b.id, b.id
                    )));
                }
            }
        }
        let entry = self.sinks.get_mut(cluster).expect("checked above");
        entry.sinks.remove(name);
        // The catalog forgets the copies it held (the objects stay).
        for b in self.backups.values_mut().filter(|b| b.cluster == cluster) {
            if b.copies.remove(name).is_some() {
                self.dirty
                    .0
                    .insert(super::store::Key::Backup { id: b.id.clone() });
            }
        }
        Ok(())
    }

    pub(super) fn set_policy(
        &mut self,
        cluster: String,
        primary: Option<String>,
        copies: Vec<String>,
    ) -> Result<(), Rejected> {
        let entry = self.sinks.entry(cluster).or_default();
        for name in primary.iter().chain(&copies) {
            if !entry.sinks.contains_key(name) {
                return Err(Rejected::BadSink {
                    sink: name.clone(),
                    reason: "no such sink; add it first".into(),
                });
            }
        }
        if let Some(p) = &primary
            && copies.contains(p)
        {
            return Err(Rejected::BadSink {
                sink: p.clone(),
                reason: "the primary sink cannot also be a copy".into(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = copies.iter().find(|c| !seen.insert(*c)) {
            return Err(Rejected::BadSink {
                sink: dup.clone(),
                reason: "named twice".into(),
            });
        }
        entry.primary = primary;
        entry.copies = copies;
        Ok(())
    }

    /// A named sink of a cluster; `""`/host-local is not one.
    pub fn sink(&self, cluster: &str, name: &str) -> Option<&Sink> {
        self.sinks.get(cluster).and_then(|c| c.sinks.get(name))
    }

    pub(super) fn store_copy(
        &mut self,
        id: &str,
        server: String,
        sink: String,
        artifact: Artifact,
    ) -> Result<(), Rejected> {
        let b = self
            .backups
            .get(id)
            .ok_or_else(|| Rejected::UnknownBackup(id.to_string()))?;
        if b.status != Status::Complete {
            return Err(Rejected::BadTransition {
                id: id.to_string(),
                reason: "only a COMPLETE backup is copied".into(),
            });
        }
        if !b.servers.contains(&server) {
            return Err(Rejected::BadTransition {
                id: id.to_string(),
                reason: format!("server {server} is not part of it"),
            });
        }
        if sink == b.sink {
            return Err(Rejected::BadTransition {
                id: id.to_string(),
                reason: format!("sink {sink} holds its primary copy"),
            });
        }
        if self.sink(&b.cluster, &sink).is_none() {
            return Err(Rejected::BadSink {
                sink,
                reason: format!("cluster {} has no such sink", b.cluster),
            });
        }
        let b = self.backups.get_mut(id).expect("checked above");
        b.copies.entry(sink).or_default().insert(server, artifact);
        Ok(())
    }

    pub(super) fn verified(
        &mut self,
        id: &str,
        server: &str,
        sink: &str,
        at_unix_ms: i64,
        error: Option<String>,
    ) -> Result<(), Rejected> {
        let b = self
            .backups
            .get_mut(id)
            .ok_or_else(|| Rejected::UnknownBackup(id.to_string()))?;
        let copy = b
            .copy_in_mut(sink, server)
            .ok_or_else(|| Rejected::BadTransition {
                id: id.to_string(),
                reason: format!("it has no copy of server {server} in sink {sink:?}"),
            })?;
        copy.verified_at_unix_ms = Some(at_unix_ms);
        copy.verify_error = error;
        Ok(())
    }

    pub(super) fn import(&mut self, backup: Backup) -> Result<(), Rejected> {
        if backup.status != Status::Complete {
            return Err(Rejected::BadTransition {
                id: backup.id,
                reason: "only a COMPLETE backup is imported".into(),
            });
        }
        if let Some(have) = self.backups.get_mut(&backup.id) {
            // Known already: only add the copies the catalog lacks.
            if have.cluster != backup.cluster {
                return Err(Rejected::BadTransition {
                    id: backup.id,
                    reason: format!("the catalog has it in cluster {}", have.cluster),
                });
            }
            for (sink, server, a) in backup.all_copies() {
                if have.copies_of(server).iter().any(|(s, _)| *s == sink) {
                    continue;
                }
                have.copies
                    .entry(sink.to_string())
                    .or_default()
                    .insert(server.to_string(), a.clone());
            }
            return Ok(());
        }
        if backup.servers.is_empty()
            || backup
                .servers
                .iter()
                .any(|s| !backup.artifacts.contains_key(s))
        {
            return Err(Rejected::BadTransition {
                id: backup.id,
                reason: "an imported backup needs an artifact for every server of its cut".into(),
            });
        }
        self.backups.insert(backup.id.clone(), backup);
        Ok(())
    }

    pub(super) fn remove_media(&mut self, cluster: String, name: String) -> Result<(), Rejected> {
        let agents = self
            .media
            .get_mut(&cluster)
            .ok_or_else(|| Rejected::UnknownCluster(cluster.clone()))?;
        if agents.remove(&name).is_none() {
            return Err(Rejected::UnknownServer { cluster, name });
        }
        if agents.is_empty() {
            self.media.remove(&cluster);
        }
        Ok(())
    }

    pub(super) fn register_media(&mut self, m: MediaAgent) {
        self.media
            .entry(m.cluster.clone())
            .or_default()
            .insert(m.name.clone(), m);
    }
}
