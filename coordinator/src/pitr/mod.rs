//! Point-in-time recovery of a cluster, a leader job: choose the point,
//! the base backup and every server's binlog range from the catalog
//! ([`plan`], which refuses naming the server and the file), then restore
//! the base backup of every server and replay each server's archived
//! binlogs exactly to its position in the point, all servers in parallel
//! (`run.rs`).
//!
//! Points are cluster-consistent cuts: restore points, and the cut of every
//! backup. A point is **sealed** when every server's archive in the catalog
//! reaches its position; only sealed points are offered. `search.rs` finds
//! transactions in the archive (`lockstep catalog search-binlog`) and
//! resolves `--before-event SERVER:GTID`.

use std::collections::BTreeMap;

use lockstep_proto::agent as agent_pb;
use lockstep_proto::coordinator as pb;

use crate::catalog::{ArchivedFile, BinlogPos, Catalog, CutEntry, Status};
use crate::core::unix_ms_text;
use crate::error::{Error, Result};
use crate::sinks;

mod run;
mod search;

pub use run::run;
pub use search::search;

/// Bytes of binlog replayed per second, for the plan's estimate (the relay
/// method on small OLTP transactions; see BENCHMARKS.md).
const REPLAY_BYTES_PER_SEC: u64 = 20 << 20;

/// A cluster-consistent point: every server's position at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// "restore point ID" or "backup ID".
    pub name: String,
    pub at_unix_ms: i64,
    /// Server → its position and GTID set.
    pub positions: BTreeMap<String, (BinlogPos, String)>,
}

/// A cut's server positions as a point's.
fn positions(cut: &BTreeMap<String, CutEntry>) -> BTreeMap<String, (BinlogPos, String)> {
    cut.iter()
        .map(|(s, c)| {
            let pos = BinlogPos {
                file: c.binlog_file.clone(),
                pos: c.binlog_pos,
            };
            (s.clone(), (pos, c.gtid.clone()))
        })
        .collect()
}

/// When every server of a cut was locked: the last lock taken (ms).
fn locked_at(cut: &BTreeMap<String, CutEntry>) -> Option<i64> {
    cut.values().map(|c| c.locked_at_unix_us / 1000).max()
}

/// Every point of `cluster`, oldest first: its restore points, and the
/// cuts of its backups whose cut was committed.
pub fn points(cat: &Catalog, cluster: &str) -> Vec<Point> {
    let backups = cat
        .backups
        .values()
        .filter(|b| b.cluster == cluster && b.cut_committed_at_unix_ms.is_some())
        .filter(|b| !b.cut.is_empty() && b.cut.len() == b.servers.len())
        .map(|b| Point {
            name: format!("backup {}", b.id),
            at_unix_ms: locked_at(&b.cut).unwrap_or(b.started_at_unix_ms),
            positions: positions(&b.cut),
        });
    let restore_points = cat
        .restore_points
        .get(cluster)
        .into_iter()
        .flat_map(|ps| ps.values())
        .filter(|p| !p.servers.is_empty())
        .map(|p| Point {
            name: format!("restore point {}", p.id),
            at_unix_ms: locked_at(&p.servers).unwrap_or(p.created_at_unix_ms),
            positions: positions(&p.servers),
        });
    let mut out: Vec<Point> = backups.chain(restore_points).collect();
    out.sort_by_key(|p| p.at_unix_ms);
    out
}

/// Every server's archive reaches its position in `p`.
pub fn sealed(cat: &Catalog, cluster: &str, p: &Point) -> bool {
    p.positions
        .iter()
        .all(|(s, (pos, _))| cat.archived_past(cluster, s, pos))
}

/// Where the recovery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The latest sealed point at or before this time.
    Time(i64),
    /// A restore point or backup by id.
    Point(String),
    /// The latest sealed point before this transaction of this server.
    Before { server: String, pos: BinlogPos },
    /// Each server to its own last transaction before `at` (unix ms): the
    /// end of that transaction per server; a server with none there stays
    /// at the base backup's position. Not cluster-consistent.
    Exact {
        at: i64,
        positions: BTreeMap<String, BinlogPos>,
    },
}

/// One server's share of a plan.
#[derive(Debug, Clone)]
pub struct ServerPlan {
    pub server: String,
    pub base_backup: String,
    pub from: BinlogPos,
    pub to: BinlogPos,
    pub gtid: String,
    /// Every segment of every file from `from.file` to `to.file`.
    pub segments: Vec<agent_pb::ArchivedSegment>,
    pub sinks: BTreeMap<String, agent_pb::SinkSpec>,
    pub files: u32,
    pub replay_bytes: u64,
}

/// A recovery's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cluster: String,
    pub point: Point,
    pub base_backup: String,
    pub servers: Vec<ServerPlan>,
    /// A cluster-consistent point (not `--exact`).
    pub consistent: bool,
}

impl Plan {
    pub fn reply(&self, targets: &BTreeMap<String, String>) -> pb::PitrReply {
        pb::PitrReply {
            point: self.point.name.clone(),
            point_unix_ms: self.point.at_unix_ms,
            consistent: self.consistent,
            servers: self
                .servers
                .iter()
                .map(|s| pb::PitrServer {
                    server: s.server.clone(),
                    base_backup: s.base_backup.clone(),
                    from: s.from.to_string(),
                    to: s.to.to_string(),
                    files: s.files,
                    replay_bytes: s.replay_bytes,
                    estimated_ms: s.replay_bytes * 1000 / REPLAY_BYTES_PER_SEC,
                    target: targets
                        .get(&s.server)
                        .map(|t| crate::service::redact(t))
                        .unwrap_or_else(|| "in place".into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

fn refuse(reason: String) -> Error {
    Error::PitrRefused { reason }
}

/// Chooses the point, the base backup and every server's binlog range.
/// Refuses, naming the server and the file, when the archive does not take
/// every server from the base to the point.
pub fn plan(cat: &Catalog, cluster: &str, target: &Target) -> Result<Plan> {
    if !cat.clusters.contains_key(cluster) {
        return Err(Error::Config(format!("unknown cluster {cluster:?}")));
    }
    let all = points(cat, cluster);
    let sealed_points: Vec<&Point> = all.iter().filter(|p| sealed(cat, cluster, p)).collect();
    let point = match target {
        Target::Point(id) => {
            let p = all
                .iter()
                .find(|p| p.name.ends_with(&format!(" {id}")))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "cluster {cluster} has no restore point or backup {id:?}"
                    ))
                })?;
            if !sealed(cat, cluster, p) {
                return Err(refuse(format!(
                    "{} is not sealed yet: the binlog archive of {} does not reach its position",
                    p.name,
                    unsealed_servers(cat, cluster, p).join(", ")
                )));
            }
            p.clone()
        }
        Target::Time(t) => {
            if *t > crate::core::now_unix_ms() {
                return Err(refuse(format!("{} is in the future", unix_ms_text(*t))));
            }
            let chosen = sealed_points
                .iter()
                .rev()
                .find(|p| p.at_unix_ms <= *t)
                .ok_or_else(|| {
                    refuse(match all.first() {
                        Some(first) => format!(
                            "no sealed point at or before {}: the oldest point of cluster {cluster} is {} at {}",
                            unix_ms_text(*t),
                            first.name,
                            unix_ms_text(first.at_unix_ms)
                        ),
                        None => format!("cluster {cluster} has no backup or restore point"),
                    })
                })?;
            if let Some(newer) = all
                .iter()
                .find(|p| p.at_unix_ms > chosen.at_unix_ms && p.at_unix_ms <= *t)
                .filter(|p| !sealed(cat, cluster, p))
            {
                return Err(refuse(format!(
                    "{} is after the archive's sealed end: {} at {} is not sealed (the archive of {} lags behind it)",
                    unix_ms_text(*t),
                    newer.name,
                    unix_ms_text(newer.at_unix_ms),
                    unsealed_servers(cat, cluster, newer).join(", ")
                )));
            }
            (*chosen).clone()
        }
        Target::Exact { at, positions } => Point {
            name: format!(
                "each server's last transaction before {}",
                unix_ms_text(*at)
            ),
            at_unix_ms: *at,
            positions: positions
                .iter()
                .map(|(s, p)| (s.clone(), (p.clone(), String::new())))
                .collect(),
        },
        Target::Before { server, pos } => {
            if !cat
                .clusters
                .get(cluster)
                .is_some_and(|s| s.contains_key(server))
            {
                return Err(Error::Config(format!(
                    "cluster {cluster} has no server {server:?}"
                )));
            }
            sealed_points
                .iter()
                .rev()
                .find(|p| p.positions.get(server).is_some_and(|(at, _)| at <= pos))
                .map(|p| (*p).clone())
                .ok_or_else(|| {
                    refuse(format!(
                        "no sealed point of cluster {cluster} lies before {server}:{pos}"
                    ))
                })?
        }
    };
    let exact_at = match target {
        Target::Exact { at, .. } => Some(*at),
        _ => None,
    };
    let base = cat
        .backups
        .values()
        .filter(|b| b.cluster == cluster && b.status == Status::Complete)
        // The replay starts from a base loaded into running servers: a
        // physical backup (restored into datadirs) is not one yet.
        .filter(|b| b.artifacts.values().all(|a| !a.is_physical()))
        .filter(|b| exact_at.is_none_or(|at| locked_at(&b.cut).is_some_and(|l| l <= at)))
        .filter(|b| {
            point.positions.iter().all(|(s, (to, _))| {
                b.cut.get(s).is_some_and(|c| {
                    BinlogPos {
                        file: c.binlog_file.clone(),
                        pos: c.binlog_pos,
                    } <= *to
                })
            })
        })
        .max_by_key(|b| b.started_at_unix_ms)
        .ok_or_else(|| {
            refuse(format!(
                "{} lies before the oldest COMPLETE logical backup of cluster {cluster} that holds every server: nothing to start the replay from (physical backups are not PITR bases yet)",
                point.name
            ))
        })?;
    let mut point = point;
    if exact_at.is_some() {
        // A server without a transaction before the time stays at the base.
        for (server, c) in &base.cut {
            point.positions.entry(server.clone()).or_insert_with(|| {
                let pos = BinlogPos {
                    file: c.binlog_file.clone(),
                    pos: c.binlog_pos,
                };
                (pos, String::new())
            });
        }
    }
    let mut servers = Vec::new();
    for (server, (to, gtid)) in &point.positions {
        let cut = &base.cut[server];
        let from = BinlogPos {
            file: cut.binlog_file.clone(),
            pos: cut.binlog_pos,
        };
        let (segments, sinks, files, replay_bytes) = if from == *to {
            (Vec::new(), BTreeMap::new(), 0, 0)
        } else {
            let files = cat
                .archive_between(cluster, server, &from, to)
                .map_err(refuse)?;
            segments_of(cat, cluster, &files, &from, to)?
        };
        servers.push(ServerPlan {
            server: server.clone(),
            base_backup: base.id.clone(),
            from,
            to: to.clone(),
            gtid: gtid.clone(),
            segments,
            sinks,
            files,
            replay_bytes,
        });
    }
    Ok(Plan {
        cluster: cluster.to_string(),
        point,
        base_backup: base.id.clone(),
        servers,
        consistent: exact_at.is_none(),
    })
}

fn unsealed_servers(cat: &Catalog, cluster: &str, p: &Point) -> Vec<String> {
    p.positions
        .iter()
        .filter(|(s, (pos, _))| !cat.archived_past(cluster, s, pos))
        .map(|(s, (pos, _))| format!("{s} (needs {pos})"))
        .collect()
}

type Segments = (
    Vec<agent_pb::ArchivedSegment>,
    BTreeMap<String, agent_pb::SinkSpec>,
    u32,
    u64,
);

/// The agent's view of the segments of `files`, the sinks they are in, the
/// number of files and the bytes between `from` and `to`.
pub(crate) fn segments_of(
    cat: &Catalog,
    cluster: &str,
    files: &[(&str, &ArchivedFile)],
    from: &BinlogPos,
    to: &BinlogPos,
) -> Result<Segments> {
    let mut segments = Vec::new();
    let mut specs = BTreeMap::new();
    let mut bytes = 0;
    for (name, f) in files {
        for s in &f.segments {
            if !s.sink.is_empty() && !specs.contains_key(&s.sink) {
                let spec = sinks::spec(cat, cluster, &s.sink)
                    .map_err(refuse)?
                    .ok_or_else(|| refuse(format!("sink {} is gone", s.sink)))?;
                specs.insert(s.sink.clone(), spec);
            }
            // Copies in sinks since removed are not offered.
            let mut alternates = Vec::new();
            for c in &s.copies {
                if let Some(spec) = specs
                    .get(c)
                    .cloned()
                    .or_else(|| sinks::spec(cat, cluster, c).ok().flatten())
                {
                    specs.insert(c.clone(), spec);
                    alternates.push(c.clone());
                }
            }
            segments.push(agent_pb::ArchivedSegment {
                file: s.file.clone(),
                start: s.start,
                end: s.end,
                key: s.key.clone(),
                sha256: s.sha256.clone(),
                sink: s.sink.clone(),
                alternates,
            });
        }
        let lo = if *name == from.file { from.pos } else { 0 };
        let hi = if *name == to.file { to.pos } else { f.end() };
        bytes += hi.saturating_sub(lo);
    }
    Ok((segments, specs, files.len() as u32, bytes))
}
