//! Position-only cuts (restore points) and the claim on the server's lock.
//!
//! A restore point is the two-phase cut without data: the agent arms (lock
//! and watchdog connections, pre-flight), waits for Go, locks, captures the
//! position and holds the lock until Commit, Abort, the lease, the caller's
//! departure or shutdown, exactly as for a backup, but opens no snapshot
//! connection and leaves nothing to transfer. It runs in a session of its
//! own beside the backup's, so a backup that is committed or transferring
//! keeps its snapshots while points are taken.
//!
//! Two cuts never hold (or arm) the server's lock at once: whoever arms
//! first takes the [`Claim`] and keeps it until its lock is released; any
//! other Prepare meanwhile is refused with [`Error::LockHeld`] naming the
//! holder.

use std::sync::Arc;

use futures::FutureExt as _;
use tokio::sync::{Mutex, oneshot};

use super::{Agent, COMMIT, CommitInfo, PrepareRequest, PreparedInfo, Released};
use crate::cut::PreparedCut;
use crate::error::{Error, Result};
use crate::mysql::Server;

/// The restore-point session and the claim on the lock.
#[derive(Debug, Default)]
pub(super) struct Points {
    /// Who arms or holds the server's lock ("backup ID", "restore point ID").
    holder: Arc<std::sync::Mutex<Option<String>>>,
    /// The restore point whose lock is held.
    held: Mutex<Option<HeldPoint>>,
    /// The last point committed: what a repeated Commit answers.
    committed: std::sync::Mutex<Option<CommitInfo>>,
}

/// A restore point holding the lock.
#[derive(Debug)]
struct HeldPoint {
    id: String,
    cut: PreparedCut,
    /// Tells the watcher the lock was released by Commit or Abort.
    notify: Option<oneshot::Sender<Released>>,
    _claim: Claim,
}

/// The server's lock belongs to one cut while it arms and holds it; dropping
/// the claim frees it.
#[derive(Debug)]
pub(super) struct Claim {
    holder: Arc<std::sync::Mutex<Option<String>>>,
    who: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut h = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if h.as_deref() == Some(self.who.as_str()) {
            *h = None;
        }
    }
}

impl Points {
    /// Claims the server's lock for `who` (e.g. "backup ID"), or refuses
    /// naming the cut that has it.
    pub(super) fn claim(&self, who: &str, requested: &str) -> Result<Claim> {
        let mut h = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = h.as_ref() {
            return Err(Error::LockHeld {
                holder: current.clone(),
                requested: requested.to_string(),
            });
        }
        *h = Some(who.to_string());
        Ok(Claim {
            holder: self.holder.clone(),
            who: who.to_string(),
        })
    }
}

impl Agent {
    /// Refuses a cut while a restore loads the agent's own server.
    pub(super) fn refuse_while_restoring(&self, own: &Server, requested: &str) -> Result<()> {
        let own = own.address();
        if self
            .restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(own)
        {
            return Err(Error::Busy {
                current: format!("a restore into {own}"),
                requested: requested.to_string(),
            });
        }
        Ok(())
    }

    /// [`Agent::prepare`] of a restore point: no snapshot connections, no
    /// pre-flush under BACKUP STAGE (nothing is read), its own session.
    pub(super) async fn prepare_point(
        self: &Arc<Self>,
        req: PrepareRequest,
        ready: Option<oneshot::Sender<()>>,
        caller_gone: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(PreparedInfo, oneshot::Receiver<Released>)> {
        let caller_gone = caller_gone.boxed().shared();
        if req.backup_id.is_empty() {
            return Err(Error::Config("restore point id is empty".into()));
        }
        let own_server = self.own_server()?.clone();
        self.refuse_while_restoring(&own_server, &req.backup_id)?;
        let claim = self.points.claim(
            &format!("restore point {}", req.backup_id),
            &format!("restore point {}", req.backup_id),
        )?;
        let lease = req.lease.min(self.cfg.max_lease);
        let span =
            tracing::info_span!("restore_point", point = %req.backup_id, server = %self.cfg.name);
        let prepared = self
            .arm_and_lock(
                &own_server,
                &req,
                0,
                lease,
                &span,
                ready,
                caller_gone.clone(),
                None,
            )
            .await?;
        let info = PreparedInfo {
            backup_id: req.backup_id.clone(),
            position: prepared.position.clone(),
            info: prepared.info.clone(),
            method: prepared.lock.method(),
            timings: prepared.timings,
            kind: crate::physical::Kind::Logical,
            provider: "",
            snapshot_us: 0,
            file_sets: 0,
        };
        *self.info.lock().expect("info lock") = Some(prepared.info.clone());
        tracing::debug!(parent: &span, position = %info.position, lock_wait_us = info.timings.lock_wait_us, "restore point: locked and captured");
        let (notify_tx, notify_rx) = oneshot::channel();
        let (out_tx, out_rx) = oneshot::channel();
        *self.points.held.lock().await = Some(HeldPoint {
            id: req.backup_id.clone(),
            cut: prepared,
            notify: Some(notify_tx),
            _claim: claim,
        });

        // The watcher, as for a backup: whichever comes first releases.
        self.watch_lock(
            super::Held::Point,
            req.backup_id,
            lease,
            notify_rx,
            caller_gone,
            out_tx,
        );
        Ok((info, out_rx))
    }

    /// Takes the held point `id` out of its session, if it is the one.
    async fn take_point(&self, id: &str) -> Option<HeldPoint> {
        self.points.held.lock().await.take_if(|p| p.id == id)
    }

    /// Releases a point's lock that nobody committed; a later Commit fails.
    pub(super) async fn expire_point(&self, id: &str, reason: &str) -> Option<Released> {
        let point = self.take_point(id).await?;
        let released = self.release_prepared(id, point.cut, reason).await;
        tracing::warn!(point = id, server = %self.cfg.name, reason, held_us = released.held_us, "restore point: lock released without commit");
        Some(released)
    }

    /// Commit of restore point `id`: `None` if `id` is not a restore point
    /// of this agent (a backup's Commit). A repeated Commit answers with
    /// the first one's release.
    pub(super) async fn commit_point(&self, id: &str) -> Option<Result<CommitInfo>> {
        let Some(mut point) = self.take_point(id).await else {
            let done = self
                .points
                .committed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return done
                .filter(|c| c.released.backup_id == id)
                .map(Ok)
                .or_else(|| self.point_gone(id).map(Err));
        };
        let server = self.own_server().map(|s| s.address().to_string());
        let server = match server {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let notify = point.notify.take();
        let result = match point.cut.commit(&server).await {
            Ok(committed) => {
                let released = self.record(id, COMMIT, committed.held);
                let info = CommitInfo {
                    released: released.clone(),
                    snapshot_positions: Vec::new(),
                };
                *self
                    .points
                    .committed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(info.clone());
                tracing::debug!(
                    point = id,
                    held_us = released.held_us,
                    "restore point committed"
                );
                if let Some(n) = notify {
                    let _ = n.send(released);
                }
                Ok(info)
            }
            Err(e) => {
                let released = self.record(id, "error", std::time::Duration::ZERO);
                if let Some(n) = notify {
                    let _ = n.send(released);
                }
                Err(e)
            }
        };
        Some(result)
    }

    /// Why a Commit of restore point `id` fails when it is not held: `None`
    /// when the agent never saw such a point (then it is a backup's id).
    fn point_gone(&self, id: &str) -> Option<Error> {
        let last = self.last_release.lock().expect("release lock").clone()?;
        (last.backup_id == id && last.reason != COMMIT).then(|| Error::BadState {
            backup_id: id.into(),
            reason: format!(
                "restore point: its lock was already released ({}): this server did not hold its lock until COMMIT",
                last.reason
            ),
        })
    }

    /// Abort of restore point `id`: `None` if it is not a held point of
    /// this agent; otherwise whether a lock was held (it is released).
    pub(super) async fn abort_point(&self, id: &str, reason: &str) -> Option<bool> {
        let point = self.take_point(id).await?;
        let released = self.release_prepared(id, point.cut, "abort").await;
        tracing::info!(
            point = id,
            reason,
            held_us = released.held_us,
            "restore point aborted: lock released"
        );
        if let Some(n) = point.notify {
            let _ = n.send(released);
        }
        Some(true)
    }

    /// Aborts whatever restore point holds the lock (shutdown).
    pub(super) async fn abort_any_point(&self, reason: &str) {
        let id = self.points.held.lock().await.as_ref().map(|p| p.id.clone());
        if let Some(id) = id {
            self.abort_point(&id, reason).await;
        }
    }

    /// The restore point holding the lock and for how long, for `Status`.
    pub(super) fn point_status(&self) -> Option<(String, u64)> {
        let held = self.points.held.try_lock().ok()?;
        held.as_ref()
            .map(|p| (p.id.clone(), p.cut.lock.held_for().as_micros() as u64))
    }
}
