//! Restore points, run by the leader: the two-phase cut without data
//! (`cut.rs` with `position_only`), recorded with one raft proposal once it
//! succeeded. A failed one is aborted everywhere, logged and counted, and
//! never recorded.
//!
//! The schedule ([`Jobs::run_schedules`]) runs on every node and acts only
//! while the node leads: each cluster with a schedule gets a point every
//! `every_ms`. A tick is skipped (and counted) while the cluster's previous
//! point is still running or a backup of the cluster is cutting: a backup
//! and a restore point never cut at the same time ([`Jobs::cut_turn`]). A
//! new leader picks the schedules up from the catalog within a tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, info_span, warn};

use super::{Cut, Jobs, Participant, abort_all};
use crate::catalog::{Command, RestorePoint};
use crate::core::now_unix_ms;
use crate::error::{Error, Result};
use crate::raft::Role;

/// How often the schedule looks at the clock and the leadership.
const SCHEDULE_TICK: Duration = Duration::from_millis(20);
/// How long a `restore-point create` waits for a backup's cut of the
/// cluster to end.
const TURN_WAIT: Duration = Duration::from_secs(30);

/// A cluster's restore points on this leader that were not recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointStats {
    /// Cuts that failed (aborted everywhere).
    pub failed: u64,
    /// Scheduled ticks skipped: the previous point or a backup's cut ran.
    pub skipped: u64,
    /// Why the last failed one failed, naming the server.
    pub last_failure: String,
}

impl Jobs {
    /// The restore-point counters of `cluster` since this node last became
    /// leader.
    pub fn point_stats(&self, cluster: &str) -> PointStats {
        self.point_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned()
            .unwrap_or_default()
    }

    fn count(&self, cluster: &str, f: impl FnOnce(&mut PointStats)) {
        f(self
            .point_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_string())
            .or_default());
    }

    /// Takes a restore point of every registered server of `cluster` now
    /// (after a backup's cut of it, if one runs) and records it.
    pub async fn create_restore_point(&self, cluster: &str, label: &str) -> Result<RestorePoint> {
        let term = self.core.require_leader().await?;
        let parts = self.participants(cluster).await?;
        let turn = self.cut_turn(cluster);
        let turn = tokio::time::timeout(TURN_WAIT, turn.lock_owned())
            .await
            .map_err(|_| Error::CutFailed {
                what: format!("restore point of cluster {cluster}"),
                reason: format!("another cut of the cluster did not end within {TURN_WAIT:?}"),
            })?;
        self.take_point(cluster, label, term, parts, turn).await
    }

    /// The cluster's registered servers; `UnknownCluster` if none.
    async fn participants(&self, cluster: &str) -> Result<Vec<Participant>> {
        let c = cluster.to_string();
        let parts = self
            .core
            .read(move |cat| {
                cat.clusters
                    .get(&c)
                    .map(|servers| {
                        servers
                            .values()
                            .map(|s| Participant {
                                name: s.name.clone(),
                                addr: s.agent_addr.clone(),
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .await?;
        if parts.is_empty() {
            return Err(crate::catalog::Rejected::UnknownCluster(cluster.to_string()).into());
        }
        Ok(parts)
    }

    /// One point: the cut while holding the cluster's `turn`, then its
    /// record; a failed cut is aborted everywhere and counted.
    async fn take_point(
        &self,
        cluster: &str,
        label: &str,
        term: u64,
        parts: Vec<Participant>,
        turn: OwnedMutexGuard<()>,
    ) -> Result<RestorePoint> {
        let id = uuid::Uuid::new_v4().to_string();
        let span = info_span!("restore_point", point = %id, cluster, term);
        async {
            let created_at_unix_ms = now_unix_ms();
            let cut = Cut {
                core: &self.core,
                id: &id,
                term,
                position_only: true,
                kind: "",
            }
            .run(&parts)
            .await;
            drop(turn);
            let servers = match cut {
                Ok(servers) => servers,
                Err(reason) => {
                    warn!(%reason, "restore point failed; aborting it on every server");
                    abort_all(&self.core, &id, term, &parts, &reason).await;
                    self.count(cluster, |s| {
                        s.failed += 1;
                        s.last_failure = reason.clone();
                    });
                    return Err(Error::CutFailed {
                        what: format!("restore point {id} of cluster {cluster}"),
                        reason,
                    });
                }
            };
            let point = RestorePoint {
                id: id.clone(),
                seq: 0,
                cluster: cluster.to_string(),
                label: label.to_string(),
                created_at_unix_ms,
                servers,
            };
            if let Err(e) = self
                .core
                .propose(&Command::AddRestorePoint {
                    point: point.clone(),
                })
                .await
            {
                warn!(error = %e, "the restore point's cut succeeded but it was not recorded");
                self.count(cluster, |s| {
                    s.failed += 1;
                    s.last_failure = format!("record restore point {id}: {e}");
                });
                return Err(e);
            }
            debug!(
                freeze_us = point
                    .freeze_window()
                    .map(|(a, b)| b.saturating_sub(a))
                    .unwrap_or_default(),
                "restore point recorded"
            );
            // The record's sequence number is the catalog's.
            let wanted = id.clone();
            let recorded = self
                .core
                .read(move |cat| cat.restore_point(&wanted).cloned())
                .await?;
            Ok(recorded.unwrap_or(point))
        }
        .instrument(span)
        .await
    }

    /// The leader's restore-point schedules, until shutdown: every tick it
    /// checks it leads, reads the schedules from the catalog, and starts a
    /// point for each cluster that is due (skipping, and counting, a tick
    /// while that cluster's previous point or a backup's cut still runs).
    pub async fn run_schedules(self: Arc<Self>) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut led = false;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(SCHEDULE_TICK) => {}
            }
            let term = match self.core.raft.status().await {
                Ok(st) if st.role == Role::Leader => st.term,
                Ok(_) => {
                    led = false;
                    due.clear();
                    continue;
                }
                // The leadership watcher reports a stopped raft node.
                Err(_) => return,
            };
            if !led {
                // A new term of leadership: fresh counters.
                self.point_stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                led = true;
            }
            let schedules = match self
                .core
                .raft
                .read_local(|c| c.restore_point_schedules.clone())
                .await
            {
                Ok(s) => s,
                Err(_) => continue,
            };
            due.retain(|c, _| schedules.get(c).is_some_and(|s| s.every_ms > 0));
            running.retain(|_, h| !h.is_finished());
            let now = Instant::now();
            for (cluster, schedule) in schedules.iter().filter(|(_, s)| s.every_ms > 0) {
                let every = Duration::from_millis(schedule.every_ms);
                let next = due.entry(cluster.clone()).or_insert(now);
                if now < *next {
                    continue;
                }
                // The next one a period later; after a stall, a period from now.
                *next += every;
                if *next <= now {
                    *next = now + every;
                }
                if running.contains_key(cluster) {
                    self.count(cluster, |s| s.skipped += 1);
                    debug!(%cluster, "restore point skipped: the previous one still runs");
                    continue;
                }
                let Ok(turn) = self.cut_turn(cluster).try_lock_owned() else {
                    self.count(cluster, |s| s.skipped += 1);
                    debug!(%cluster, "restore point skipped: a backup of the cluster is cutting");
                    continue;
                };
                let jobs = self.clone();
                let c = cluster.clone();
                let task = self.tracker.spawn(async move {
                    let parts = match jobs.participants(&c).await {
                        Ok(p) => p,
                        Err(e) => {
                            warn!(cluster = %c, error = %e, "scheduled restore point: no servers");
                            return;
                        }
                    };
                    // Failures are logged and counted in take_point.
                    let _ = jobs.take_point(&c, "", term, parts, turn).await;
                });
                running.insert(cluster.clone(), task);
            }
        }
    }
}
