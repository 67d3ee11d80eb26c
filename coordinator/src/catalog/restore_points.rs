//! Restore points in the catalog: the two-phase cut without data, recorded
//! with every server's position and lock times once its cut succeeded; a
//! cluster's schedule; and retention.
//!
//! A cluster keeps its newest `keep` points ([`DEFAULT_KEEP`] unless its
//! schedule says otherwise, at most [`MAX_KEEP`]): the raft snapshot is the
//! whole catalog, so the points must stay bounded. Each point is one stored
//! record (`store.rs`), so adding one writes one key (plus the ones pruned).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::store::Key;
use super::{Catalog, CutEntry, Rejected};

/// How many points a cluster keeps when its schedule does not say.
pub const DEFAULT_KEEP: u32 = 3600;
/// The most points a cluster may keep.
pub const MAX_KEEP: u32 = 10_000;
/// The shortest schedule interval.
pub const MIN_EVERY_MS: u64 = 100;

/// A cluster-wide consistent point: every server was locked at one instant
/// (proven by the cut: every lock was held until its COMMIT) and its
/// position captured inside the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub id: String,
    /// Its place in the cluster's sequence, set when it is applied.
    #[serde(default)]
    pub seq: u64,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    pub created_at_unix_ms: i64,
    /// Server → its position and lock times (every release is set).
    pub servers: BTreeMap<String, CutEntry>,
}

impl RestorePoint {
    /// The freeze window: the first lock taken to the last lock released
    /// (Unix microseconds).
    pub fn freeze_window(&self) -> Option<(i64, i64)> {
        let first = self.servers.values().map(|c| c.locked_at_unix_us).min()?;
        let last = self
            .servers
            .values()
            .map(|c| c.released_at_unix_us)
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()?;
        Some((first, last))
    }

    /// When every server held its lock: the last lock taken to the first
    /// released. `None` if some release is missing or they do not overlap.
    pub fn all_held(&self) -> Option<(i64, i64)> {
        let last_locked = self.servers.values().map(|c| c.locked_at_unix_us).max()?;
        let first_released = self
            .servers
            .values()
            .map(|c| c.released_at_unix_us)
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()?;
        (last_locked <= first_released).then_some((last_locked, first_released))
    }
}

/// A cluster's restore-point schedule and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePointSchedule {
    /// Take one every this many ms; 0: off.
    pub every_ms: u64,
    /// Keep the newest this many points.
    pub keep: u32,
}

impl Default for RestorePointSchedule {
    fn default() -> Self {
        RestorePointSchedule {
            every_ms: 0,
            keep: DEFAULT_KEEP,
        }
    }
}

/// Checks a schedule as an operator gives it (`keep` 0: the default);
/// returns it with the default filled in.
pub fn check_schedule(every_ms: u64, keep: u32) -> Result<RestorePointSchedule, String> {
    if every_ms != 0 && every_ms < MIN_EVERY_MS {
        return Err(format!(
            "a restore point every {every_ms} ms is too often: the interval is at least {MIN_EVERY_MS} ms (0 turns the schedule off)"
        ));
    }
    if keep > MAX_KEEP {
        return Err(format!(
            "keep {keep} is more than the {MAX_KEEP} restore points a cluster may keep"
        ));
    }
    Ok(RestorePointSchedule {
        every_ms,
        keep: if keep == 0 { DEFAULT_KEEP } else { keep },
    })
}

fn bad(what: impl Into<String>, reason: impl Into<String>) -> Rejected {
    Rejected::BadRestorePoint {
        what: what.into(),
        reason: reason.into(),
    }
}

impl Catalog {
    /// Whether `point` may be offered for recovery: every server's binlog
    /// archive in the catalog reaches its position in the point.
    pub fn restore_point_sealed(&self, point: &RestorePoint) -> bool {
        point.servers.iter().all(|(server, c)| {
            self.archived_past(
                &point.cluster,
                server,
                &super::BinlogPos {
                    file: c.binlog_file.clone(),
                    pos: c.binlog_pos,
                },
            )
        })
    }

    /// The schedule of `cluster` (off, keeping [`DEFAULT_KEEP`], if none).
    pub fn restore_point_schedule(&self, cluster: &str) -> RestorePointSchedule {
        self.restore_point_schedules
            .get(cluster)
            .copied()
            .unwrap_or_default()
    }

    /// The point with this id, in any cluster.
    pub fn restore_point(&self, id: &str) -> Option<&RestorePoint> {
        self.restore_points
            .values()
            .flat_map(BTreeMap::values)
            .find(|p| p.id == id)
    }

    /// The key the next point of `cluster` is stored under.
    pub(super) fn next_restore_point_key(&self, cluster: &str) -> Key {
        Key::RestorePoint {
            cluster: cluster.to_string(),
            seq: self.next_restore_point_seq(cluster),
        }
    }

    fn next_restore_point_seq(&self, cluster: &str) -> u64 {
        self.restore_points
            .get(cluster)
            .and_then(|p| p.last_key_value())
            .map_or(1, |(s, _)| s + 1)
    }

    pub(super) fn add_restore_point(&mut self, mut point: RestorePoint) -> Result<(), Rejected> {
        let what = format!("restore point {}", point.id);
        let registered = self
            .clusters
            .get(&point.cluster)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Rejected::UnknownCluster(point.cluster.clone()))?;
        if let Some(stray) = point.servers.keys().find(|s| !registered.contains_key(*s)) {
            return Err(bad(
                what,
                format!(
                    "server {stray} is not registered in cluster {}",
                    point.cluster
                ),
            ));
        }
        if let Some(missing) = registered.keys().find(|s| !point.servers.contains_key(*s)) {
            return Err(bad(
                what,
                format!("server {missing} of cluster {} is not in it", point.cluster),
            ));
        }
        if point.all_held().is_none() {
            return Err(bad(
                what,
                "its servers' locks were not all held at one instant (or a release is missing)",
            ));
        }
        if self.restore_point(&point.id).is_some() {
            return Err(bad(what, "a restore point with this id exists"));
        }
        point.seq = self.next_restore_point_seq(&point.cluster);
        let cluster = point.cluster.clone();
        self.restore_points
            .entry(cluster.clone())
            .or_default()
            .insert(point.seq, point);
        self.prune_restore_points(&cluster);
        Ok(())
    }

    pub(super) fn set_restore_point_schedule(
        &mut self,
        cluster: String,
        every_ms: u64,
        keep: u32,
    ) -> Result<(), Rejected> {
        if self.clusters.get(&cluster).is_none_or(|c| c.is_empty()) {
            return Err(Rejected::UnknownCluster(cluster));
        }
        let schedule = check_schedule(every_ms, keep)
            .map_err(|e| bad(format!("restore point schedule of cluster {cluster}"), e))?;
        self.restore_point_schedules
            .insert(cluster.clone(), schedule);
        self.prune_restore_points(&cluster);
        Ok(())
    }

    /// Drops the oldest points of `cluster` beyond its `keep`.
    fn prune_restore_points(&mut self, cluster: &str) {
        let keep = self.restore_point_schedule(cluster).keep as usize;
        let Some(points) = self.restore_points.get_mut(cluster) else {
            return;
        };
        while points.len() > keep {
            if let Some((seq, _)) = points.pop_first() {
                self.dirty.0.insert(Key::RestorePoint {
                    cluster: cluster.to_string(),
                    seq,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Command, Server};

    fn server(name: &str) -> Server {
        Server {
            cluster: "c1".into(),
            name: name.into(),
            agent_addr: format!("http://{name}:1"),
            flavour: "mariadb".into(),
            version: "10.11".into(),
            server_id: 1,
            server_uuid: String::new(),
            registered_at_unix_ms: 0,
            registered_by: None,
        }
    }

    fn entry(locked: i64, released: i64) -> CutEntry {
        CutEntry {
            binlog_file: "bin.000001".into(),
            binlog_pos: 100,
            locked_at_unix_us: locked,
            released_at_unix_us: Some(released),
            held_us: Some((released - locked) as u64),
            ..CutEntry::default()
        }
    }

    fn point(id: &str, servers: &[(&str, i64, i64)]) -> RestorePoint {
        RestorePoint {
            id: id.into(),
            seq: 0,
            cluster: "c1".into(),
            label: String::new(),
            created_at_unix_ms: 1,
            servers: servers
                .iter()
                .map(|(n, l, r)| (n.to_string(), entry(*l, *r)))
                .collect(),
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        for s in ["a", "b"] {
            c.apply(Command::RegisterServer(server(s)))
                .expect("register");
        }
        c
    }

    /// Points get sequence numbers; a point whose locks did not overlap, or
    /// that misses a server, or names an unknown one, is refused; `keep`
    /// prunes the oldest, also when the schedule is changed.
    #[test]
    fn points_are_checked_numbered_and_pruned() {
        let mut c = catalog();
        for i in 0..5 {
            c.apply(Command::AddRestorePoint {
                point: point(&format!("p{i}"), &[("a", 10, 20), ("b", 15, 25)]),
            })
            .expect("add");
        }
        let seqs: Vec<u64> = c.restore_points["c1"].keys().copied().collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(
            c.restore_points["c1"][&1].freeze_window(),
            Some((10, 25)),
            "first lock to last release"
        );
        let apart = c.apply(Command::AddRestorePoint {
            point: point("x", &[("a", 10, 20), ("b", 21, 25)]),
        });
        assert!(
            matches!(&apart, Err(Rejected::BadRestorePoint { reason, .. }) if reason.contains("one instant")),
            "{apart:?}"
        );
        let partial = c.apply(Command::AddRestorePoint {
            point: point("y", &[("a", 10, 20)]),
        });
        assert!(
            matches!(&partial, Err(Rejected::BadRestorePoint { reason, .. }) if reason.contains("server b")),
            "{partial:?}"
        );
        let dup = c.apply(Command::AddRestorePoint {
            point: point("p1", &[("a", 10, 20), ("b", 15, 25)]),
        });
        assert!(dup.is_err(), "{dup:?}");

        let too_often = c.apply(Command::SetRestorePointSchedule {
            cluster: "c1".into(),
            every_ms: 50,
            keep: 3,
        });
        assert!(
            matches!(&too_often, Err(Rejected::BadRestorePoint { reason, .. }) if reason.contains("at least 100 ms")),
            "{too_often:?}"
        );
        assert_eq!(
            c.restore_points["c1"].len(),
            5,
            "a refused change prunes nothing"
        );
        let unknown = c.apply(Command::SetRestorePointSchedule {
            cluster: "nope".into(),
            every_ms: 1000,
            keep: 3,
        });
        assert_eq!(unknown, Err(Rejected::UnknownCluster("nope".into())));

        c.apply(Command::SetRestorePointSchedule {
            cluster: "c1".into(),
            every_ms: 1000,
            keep: 3,
        })
        .expect("schedule");
        let seqs: Vec<u64> = c.restore_points["c1"].keys().copied().collect();
        assert_eq!(seqs, [3, 4, 5], "the newest 3 stay");
        c.apply(Command::AddRestorePoint {
            point: point("p9", &[("a", 10, 20), ("b", 15, 25)]),
        })
        .expect("add");
        let seqs: Vec<u64> = c.restore_points["c1"].keys().copied().collect();
        assert_eq!(seqs, [4, 5, 6]);
        assert!(!c.restore_point_sealed(&c.restore_points["c1"][&6]));
        assert_eq!(
            c.restore_point_schedule("c1"),
            RestorePointSchedule {
                every_ms: 1000,
                keep: 3
            }
        );
    }

    /// The restore-point commands need catalog version 4, and a catalog
    /// that holds points survives the store's round trip (one key each).
    #[test]
    fn points_need_version_4_and_round_trip_the_store() {
        use crate::raft::StateMachine as _;
        let cmd = Command::SetRestorePointSchedule {
            cluster: "c1".into(),
            every_ms: 1000,
            keep: 2,
        };
        assert_eq!(cmd.min_version(), 4);
        let mut c = catalog();
        let _ = c.take_changes();
        c.apply(cmd).expect("schedule");
        for i in 0..3 {
            let add = Command::AddRestorePoint {
                point: point(&format!("p{i}"), &[("a", 10, 20), ("b", 15, 25)]),
            };
            assert_eq!(add.min_version(), 4);
            let data = serde_json::to_vec(&add).expect("json");
            crate::raft::StateMachine::apply(&mut c, 10 + i, &data).expect("apply");
        }
        let changes = c.take_changes();
        let mut loaded = Catalog::default();
        // Replay the stored changes on a store holding the servers.
        let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for s in ["a", "b"] {
            let key = Key::Server {
                cluster: "c1".into(),
                name: s.into(),
            };
            store.insert(
                key.to_string(),
                serde_json::to_vec(&server(s)).expect("json"),
            );
        }
        let schedule = Key::RestorePointSchedule {
            cluster: "c1".into(),
        };
        store.insert(
            schedule.to_string(),
            serde_json::to_vec(&c.restore_point_schedule("c1")).expect("json"),
        );
        for (k, v) in changes {
            match v {
                Some(v) => store.insert(k, v),
                None => store.remove(&k),
            };
        }
        loaded
            .load(store.into_iter().collect())
            .expect("load the stored records");
        assert_eq!(loaded.restore_points, c.restore_points);
        assert_eq!(loaded.restore_points["c1"].len(), 2);
        assert_eq!(loaded.restore_point_schedule("c1").keep, 2);
    }
}
