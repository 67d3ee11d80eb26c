//! The leader's watch over the jobs it did not start: on becoming leader,
//! and every [`RECONCILE_EVERY`] after, it resolves the running backups and
//! fails the running restores that no job of this node drives.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use super::{Cut, Jobs, LEADERSHIP_POLL, Participant, RECONCILE_EVERY, abort_all};
use crate::catalog::{Backup, Command, RestoreStatus, Status};
use crate::core::now_unix_ms;
use crate::error::Result;
use crate::raft::Role;

impl Jobs {
    /// Polls the raft role. While leader, it resolves the running backups
    /// and fails the running restores that no job of this node drives: those
    /// inherited from a previous leader, those of an earlier term of this
    /// node (leadership A→B→A), and a backup whose start proposal timed out
    /// but was applied later. At once on becoming leader, then every
    /// [`RECONCILE_EVERY`]. Ends on shutdown or when the raft node stops
    /// (then it cancels `on_raft_stop`).
    pub async fn watch_leadership(self: Arc<Self>, on_raft_stop: CancellationToken) {
        let mut was_leader = false;
        let mut reconciled: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(LEADERSHIP_POLL) => {}
            }
            let st = match self.core.raft.status().await {
                Ok(st) => st,
                Err(e) => {
                    tracing::error!(error = %e, "the raft node stopped; shutting down");
                    on_raft_stop.cancel();
                    return;
                }
            };
            let leader = st.role == Role::Leader;
            if leader != was_leader {
                info!(term = st.term, leader, "leadership changed");
                self.core.clear_health();
                reconciled = None;
            }
            was_leader = leader;
            if !leader || reconciled.is_some_and(|t| t.elapsed() < RECONCILE_EVERY) {
                continue;
            }
            match self.reconcile(st.term).await {
                Ok(()) => reconciled = Some(Instant::now()),
                Err(e) => warn!(error = %e, "cannot read the running jobs; retrying"),
            }
        }
    }

    /// One pass of [`Jobs::watch_leadership`] as leader of `term`.
    async fn reconcile(self: &Arc<Self>, term: u64) -> Result<()> {
        let started = Instant::now();
        self.fail_orphaned_restores().await?;
        for b in self.inherited().await? {
            self.spawn_resolve(b, term, started);
        }
        Ok(())
    }

    /// Fails the running restores no job of this node drives: their caller
    /// and driver are gone, and the servers without a recorded outcome may
    /// or may not be loaded.
    async fn fail_orphaned_restores(&self) -> Result<()> {
        let running: Vec<String> = self
            .core
            .read(|cat| {
                cat.restores
                    .values()
                    .filter(|r| r.status == RestoreStatus::Running)
                    .map(|r| r.id.clone())
                    .collect()
            })
            .await?;
        for id in running {
            if self.is_claimed(&id) {
                continue;
            }
            warn!(restore = %id, "failing a restore no coordinator drives any more");
            self.core
                .propose(&Command::FinishRestore {
                    id,
                    reason: Some(
                        "the coordinator changed while it ran; servers without an outcome may or may not be loaded: check them, then restore again (with --force for loaded ones)"
                            .into(),
                    ),
                    at_unix_ms: now_unix_ms(),
                })
                .await?;
        }
        Ok(())
    }

    /// Running backups with their participants' agent addresses.
    async fn inherited(&self) -> Result<Vec<(Backup, Vec<Participant>)>> {
        self.core
            .read(|cat| {
                cat.backups
                    .values()
                    .filter(|b| b.status.is_running())
                    .map(|b| {
                        let servers = cat.clusters.get(&b.cluster);
                        let parts = b
                            .servers
                            .iter()
                            .map(|name| Participant {
                                name: name.clone(),
                                addr: servers
                                    .and_then(|s| s.get(name))
                                    .map(|s| s.agent_addr.clone())
                                    .unwrap_or_default(),
                            })
                            .collect();
                        (b.clone(), parts)
                    })
                    .collect()
            })
            .await
    }

    fn spawn_resolve(
        self: &Arc<Self>,
        (backup, parts): (Backup, Vec<Participant>),
        term: u64,
        t0: Instant,
    ) {
        if !self.claim(&backup.id) {
            return;
        }
        let jobs = self.clone();
        let span = info_span!("inherited", backup = %backup.id, cluster = %backup.cluster, term);
        self.tracker.spawn(
            async move {
                let id = backup.id.clone();
                tokio::select! {
                    _ = jobs.resolve(&backup, term, &parts) => {
                        info!(elapsed = ?t0.elapsed(), "inherited backup resolved");
                    }
                    _ = jobs.shutdown.cancelled() => {}
                }
                jobs.release(&id);
            }
            .instrument(span),
        );
    }

    async fn resolve(&self, b: &Backup, term: u64, parts: &[Participant]) {
        match b.status {
            Status::Preparing => {
                let reason = "no coordinator job drove it (the coordinator changed, or its start was never confirmed) before the cut was recorded; aborted on every server";
                warn!(reason, "failing an inherited backup");
                abort_all(&self.core, &b.id, term, parts, reason).await;
                self.fail(&b.id, reason).await;
            }
            Status::Transferring => {
                info!("finishing the transfer of an inherited backup");
                // A cut recorded by this version carries every release. One
                // without (recorded before its COMMITs, by an older
                // coordinator) must meet the same rule now: each server
                // still held its lock when this COMMIT arrived.
                let unproven = parts.iter().filter(|p| {
                    b.cut
                        .get(&p.name)
                        .is_none_or(|c| c.released_at_unix_us.is_none())
                });
                for p in unproven {
                    let proof = match self.core.agent_client(&p.addr).await {
                        Ok(client) => {
                            let cut = Cut {
                                core: &self.core,
                                id: &b.id,
                                term,
                                position_only: false,
                                kind: "",
                            };
                            cut.commit_one(&p.name, client).await
                        }
                        Err(e) => Err(format!("server {}: {e}", p.name)),
                    };
                    if let Err(e) = proof {
                        let reason = format!("coordinator changed after the cut was recorded: {e}");
                        warn!(%reason, "failing an inherited backup");
                        abort_all(&self.core, &b.id, term, parts, &reason).await;
                        self.fail(&b.id, &reason).await;
                        return;
                    }
                }
                let missing: Vec<&Participant> = parts
                    .iter()
                    .filter(|p| !b.artifacts.contains_key(&p.name))
                    .collect();
                let transfers = missing.iter().map(|p| self.transfer_one(&b.id, term, p));
                let outcome = match futures::future::try_join_all(transfers).await {
                    Ok(_) => self
                        .core
                        .propose(&Command::Complete {
                            id: b.id.clone(),
                            at_unix_ms: now_unix_ms(),
                        })
                        .await
                        .map_err(|e| format!("mark the backup complete: {e}")),
                    Err(e) => Err(e),
                };
                if outcome.is_ok() {
                    self.copy_by_policy(&b.id).await;
                }
                if let Err(e) = outcome {
                    if !self.still_leads(term).await {
                        warn!(error = %e, "interrupted: this node no longer leads; the next leader resolves the backup");
                        return;
                    }
                    let reason = format!(
                        "coordinator changed after the cut was recorded and the transfer could not be finished: {e}"
                    );
                    warn!(%reason, "failing an inherited backup");
                    abort_all(&self.core, &b.id, term, parts, &reason).await;
                    self.fail(&b.id, &reason).await;
                }
            }
            Status::Complete | Status::Failed => {}
        }
    }
}
