//! The backup job, run by the leader: the cluster-wide two-phase cut, then
//! the transfer, each decision a raft entry before it is acted on.
//!
//! ```text
//! StartBackup ─▶ PREPARE all (parallel, deadline) ─▶ COMMIT all (unlock; each
//!   reply proves its lock was held until then) ─▶ CommitCut (every position
//!   and release) ─▶ TRANSFER all ─▶ ArtifactStored × N ─▶ Complete
//! any failure or missed deadline: ABORT all agents, then Fail(reason naming the server)
//! ```
//!
//! The barrier proof: every COMMIT is sent after the last PREPARED arrived,
//! that is after the last server locked, and an agent answers it with
//! `held_until_commit` only if its lock was still held when the COMMIT
//! arrived (a lock released by lease, a vanished caller or an error makes
//! the agent refuse the COMMIT). So when every reply carries the flag, all
//! servers were frozen together at the instant the first COMMIT was sent:
//! the cut is consistent, proven rather than assumed. Only then is the cut
//! recorded in raft, outside the freeze window; a leader lost before the
//! record leaves the backup `preparing`, and its successor aborts it.
//!
//! The Prepare streams (and the connections they ride on) stay open until
//! COMMIT: an agent releases its lock by itself when its caller disappears,
//! so a crashed leader never leaves a server locked.
//!
//! A node that becomes leader resolves the running backups it inherits
//! ([`Jobs::watch_leadership`]): `preparing` ones are aborted everywhere and
//! failed (the cut was never recorded); `transferring` ones are finished if
//! the agents still hold the snapshots, and failed with the reason otherwise.
//!
//! Files: `mod.rs` (the job and its transfer), `cut.rs` (the two-phase cut
//! it shares with restore points), `restore_point.rs` (restore points and
//! their schedule), `leadership.rs` (the leadership watcher and the
//! resolution of inherited backups and restores).
//!
//! One cut of a cluster at a time: a backup's PREPARE..COMMIT and a restore
//! point's take turns ([`Jobs::cut_turn`]).
//!
//! Fencing: every agent call carries the raft term the job runs in, and an
//! agent refuses calls from a term lower than the highest it has seen. A
//! deposed leader therefore cannot abort what its successor is finishing;
//! and a job that fails because its node lost leadership leaves the backup
//! to the next leader instead of aborting it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_proto::agent as agent_pb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, info, info_span, warn};

use crate::catalog::Command;
use crate::client::error_chain;
use crate::core::{Core, fail_hit, fail_pause, now_unix_ms};
use crate::error::Result;
use crate::restore::{self, RestoreRequest};

mod cut;
mod leadership;
mod restore_point;

use cut::{Cut, Participant, abort_all};
pub use restore_point::PointStats;

/// How long one ABORT call may take.
const ABORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the leadership watcher polls the raft status.
const LEADERSHIP_POLL: Duration = Duration::from_millis(100);
/// How often a leader looks for running backups and restores that no job
/// of its own drives.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// The backup and restore jobs this node runs as leader.
#[derive(Debug)]
pub struct Jobs {
    core: Arc<Core>,
    /// Ids of the backups and restores this node is driving right now.
    active: Mutex<HashSet<String>>,
    /// cluster → the turn its cuts take (backups and restore points).
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// cluster → its restore points' failures and skips on this leader.
    point_stats: Mutex<HashMap<String, PointStats>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Jobs {
    /// Jobs driven by `core`'s node; they stop when `shutdown` is cancelled.
    pub fn new(core: Arc<Core>, shutdown: CancellationToken) -> Arc<Jobs> {
        Arc::new(Jobs {
            core,
            active: Mutex::new(HashSet::new()),
            turns: Mutex::new(HashMap::new()),
            point_stats: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            shutdown,
        })
    }

    /// Waits for every job task after shutdown was signalled.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// The turn the cuts of `cluster` take: hold it from PREPARE to the
    /// end of COMMIT.
    fn cut_turn(&self, cluster: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }

    fn claim(&self, id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
    }

    fn is_claimed(&self, id: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn release(&self, id: &str) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Starts a backup of every registered server of `cluster`: records it,
    /// then drives it in the background. Returns its id.
    pub async fn start_backup(
        self: &Arc<Self>,
        cluster: &str,
        sink: Option<&str>,
        kind: &str,
    ) -> Result<String> {
        let kind = match kind.trim().to_ascii_lowercase().as_str() {
            k @ ("" | "logical" | "physical") => k.to_string(),
            other => {
                return Err(crate::Error::Config(format!(
                    "unknown backup kind {other:?}: expected logical or physical"
                )));
            }
        };
        let term = self.core.require_leader().await?;
        let (c, requested) = (cluster.to_string(), sink.map(str::to_string));
        let (parts, sink) = self
            .core
            .read(move |cat| {
                let parts = cat
                    .clusters
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
                    .unwrap_or_default();
                let sink = crate::sinks::primary_for(cat, &c, requested.as_deref());
                (parts, sink)
            })
            .await?;
        let sink = sink?;
        let id = uuid::Uuid::new_v4().to_string();
        // Claimed before it exists, so the leadership watcher never mistakes
        // it for an inherited backup.
        self.claim(&id);
        let started = self
            .core
            .propose(&Command::StartBackup {
                id: id.clone(),
                cluster: cluster.to_string(),
                servers: parts.iter().map(|p| p.name.clone()).collect(),
                at_unix_ms: now_unix_ms(),
                sink,
            })
            .await;
        // Fail point: the start was recorded, but this node acts as if the
        // proposal had timed out (no job, an error to the caller).
        let started = started.and_then(|()| {
            if fail_hit("start-backup-unconfirmed") {
                return Err(crate::Error::ProposalTimeout {
                    what: format!("start backup {id}"),
                    timeout: Duration::ZERO,
                });
            }
            Ok(())
        });
        if let Err(e) = started {
            self.release(&id);
            return Err(e);
        }
        let jobs = self.clone();
        let span = info_span!("backup", backup = %id, cluster = %cluster, term);
        let job_id = id.clone();
        let cluster = cluster.to_string();
        self.tracker.spawn(
            async move {
                jobs.run(&job_id, &cluster, term, parts, &kind).await;
                jobs.release(&job_id);
            }
            .instrument(span),
        );
        Ok(id)
    }

    /// Runs a coordinated restore (see [`crate::restore`]) as a job of this
    /// node: checked and recorded, then run in a task of its own that
    /// finishes and records its outcome even if the caller goes away.
    /// Returns when every server is done.
    pub async fn restore(self: &Arc<Self>, req: RestoreRequest) -> Result<restore::Restored> {
        let id = uuid::Uuid::new_v4().to_string();
        // Claimed before it is recorded, so the reconciler never takes it
        // for an orphan.
        self.claim(&id);
        let recorded = match restore::record(&self.core, &id, req).await {
            Ok(r) => r,
            Err(e) => {
                self.release(&id);
                return Err(e);
            }
        };
        let jobs = self.clone();
        let task = self.tracker.spawn(async move {
            let done = restore::run(&jobs.core, recorded).await;
            jobs.release(&id);
            done
        });
        task.await
            .map_err(|e| crate::Error::Config(format!("the restore task stopped: {e}")))
    }

    /// Drives one backup to COMPLETE or FAILED.
    async fn run(&self, id: &str, cluster: &str, term: u64, parts: Vec<Participant>, kind: &str) {
        let started = Instant::now();
        let outcome = tokio::select! {
            r = self.drive(id, cluster, term, &parts, kind) => r,
            _ = self.shutdown.cancelled() => Err("the coordinator shut down".to_string()),
        };
        let Err(reason) = outcome else {
            info!(elapsed = ?started.elapsed(), "backup complete");
            self.copy_by_policy(id).await;
            return;
        };
        if !self.still_leads(term).await {
            // Dropping the Prepare streams released any lock this node still
            // held; the next leader aborts or finishes the backup, and its
            // higher term fences off anything this node would still send.
            warn!(%reason, "backup interrupted: this node no longer leads; the next leader resolves it");
            return;
        }
        warn!(%reason, "backup failed; aborting on every server");
        abort_all(&self.core, id, term, &parts, &reason).await;
        self.fail(id, &reason).await;
    }

    /// The copies the cluster's sink policy asks for, until done or the
    /// coordinator shuts down (`lockstep copy` makes what is missing).
    async fn copy_by_policy(&self, id: &str) {
        tokio::select! {
            () = crate::sinks::copy_by_policy(&self.core, id) => {}
            _ = self.shutdown.cancelled() => {
                warn!(backup = id, "shutting down before the policy's copies were made; lockstep copy makes them");
            }
        }
    }

    /// Whether this node still leads in `term` (and is not shutting down).
    async fn still_leads(&self, term: u64) -> bool {
        !self.shutdown.is_cancelled()
            && matches!(self.core.require_leader().await, Ok(t) if t == term)
    }

    async fn fail(&self, id: &str, reason: &str) {
        let cmd = Command::Fail {
            id: id.to_string(),
            reason: reason.to_string(),
            at_unix_ms: now_unix_ms(),
        };
        if let Err(e) = self.core.propose(&cmd).await {
            warn!(error = %e, "could not record the failure; the next leader resolves the backup");
        }
    }

    /// The happy path; `Err` carries the failure reason naming the server.
    async fn drive(
        &self,
        id: &str,
        cluster: &str,
        term: u64,
        parts: &[Participant],
        kind: &str,
    ) -> std::result::Result<(), String> {
        let cut = Cut {
            core: &self.core,
            id,
            term,
            position_only: false,
            kind,
        };
        // Bases of servers backed up with mariadb-backup, taken before
        // the cut (nothing is locked meanwhile).
        if kind != "logical" {
            cut.take_bases(parts).await?;
        }
        // PREPARE, barrier and COMMIT (see `cut.rs`), one cut of the
        // cluster at a time: a restore point waits for this one's end.
        let turn = self.cut_turn(cluster);
        let turn = turn.lock().await;
        let cut = cut.run(parts).await;
        drop(turn);
        let cut = cut?;
        fail_pause("before-commit-cut").await;

        // The barrier is proven: one raft entry carrying every position and
        // release records the cut (the servers run freely meanwhile).
        self.core
            .propose(&Command::CommitCut {
                id: id.to_string(),
                at_unix_ms: now_unix_ms(),
                cut,
            })
            .await
            .map_err(|e| format!("record the cut in the catalog: {e}"))?;
        fail_pause("after-commit-cut").await;

        // TRANSFER everywhere.
        let transfers = parts.iter().map(|p| self.transfer_one(id, term, p));
        futures::future::try_join_all(transfers).await?;
        self.core
            .propose(&Command::Complete {
                id: id.to_string(),
                at_unix_ms: now_unix_ms(),
            })
            .await
            .map_err(|e| format!("mark the backup complete: {e}"))
    }

    async fn transfer_one(
        &self,
        id: &str,
        term: u64,
        p: &Participant,
    ) -> std::result::Result<(), String> {
        let timeout = self.core.config.transfer_timeout;
        let wanted = id.to_string();
        let (sink, cluster, servers) = self
            .core
            .read(move |cat| {
                cat.backups.get(&wanted).map(|b| {
                    (
                        crate::sinks::spec(cat, &b.cluster, &b.sink),
                        b.cluster.clone(),
                        b.servers.clone(),
                    )
                })
            })
            .await
            .map_err(|e| format!("read backup {id}: {e}"))?
            .ok_or_else(|| format!("backup {id} is not in the catalog"))?;
        let sink = sink.map_err(|e| format!("server {}: {e}", p.name))?;
        let work = async {
            let mut client = self
                .core
                .agent_client(&p.addr)
                .await
                .map_err(|e| format!("server {}: {e}", p.name))?;
            let mut stream = client
                .transfer(agent_pb::TransferRequest {
                    backup_id: id.to_string(),
                    zstd_level: 0,
                    term,
                    sink,
                    cluster,
                    cut_servers: servers,
                })
                .await
                .map_err(|s| format!("server {}: transfer refused: {}", p.name, status_text(&s)))?
                .into_inner();
            loop {
                let msg = stream
                    .message()
                    .await
                    .map_err(|s| {
                        format!("server {}: transfer failed: {}", p.name, status_text(&s))
                    })?
                    .ok_or_else(|| {
                        format!("server {}: transfer ended without an artifact", p.name)
                    })?;
                if !msg.done {
                    continue;
                }
                let a = msg.artifact.ok_or_else(|| {
                    format!("server {}: transfer finished without an artifact", p.name)
                })?;
                return self
                    .core
                    .propose(&Command::ArtifactStored {
                        id: id.to_string(),
                        server: p.name.clone(),
                        artifact: crate::convert::stored_artifact(a),
                    })
                    .await
                    .map_err(|e| format!("server {}: record the artifact: {e}", p.name));
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("server {} did not transfer within {timeout:?}", p.name))?
    }
}

/// An agent's error status for a failure reason: its message, or for
/// transport failures (the agent vanished or stopped answering) the cause.
pub(crate) fn status_text(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(src)
            if s.code() == tonic::Code::Unavailable
                || s.code() == tonic::Code::Unknown
                || s.code() == tonic::Code::Internal =>
        {
            format!("the connection to its agent failed: {}", error_chain(src))
        }
        _ => s.message().to_string(),
    }
}
