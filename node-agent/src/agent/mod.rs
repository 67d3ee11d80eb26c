//! The agent's state machine: at most one backup at a time, moving through
//! `prepared` (lock held) → `committed` (lock released, snapshots open) →
//! `transferring` → idle.
//!
//! The lock is never left to the caller's good behaviour: a watcher task per
//! prepare releases it when the lease runs out or when the Prepare stream's
//! caller goes away, whichever comes first, and a committed backup whose
//! transfer never starts drops its snapshots after `snapshot_ttl`.
//!
//! Only a Commit that finds the lock still held releases it *with* the
//! snapshots kept: that Commit is the agent's share of the barrier proof
//! (see `docs/protocol.md`). A lock released any other way (lease, caller
//! gone, shutdown, abort) drops the backup, and a later Commit fails.
//!
//! Files: `point.rs` (restore points: position-only cuts in a session of
//! their own), `watch.rs` (the lock watcher both kinds of cut use),
//! `artifacts.rs` (restore, copy and verify of artifacts in sinks),
//! `archive.rs` (replaying and searching archived binlogs), `transfer.rs`
//! (phase two: dumping or streaming a committed backup into a sink),
//! `physical.rs` (a backup's file snapshot and file sets).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cut::{
    self, Budgets, CommittedCut, Position, PrepareOptions, PrepareTimings, PreparedCut, unix_micros,
};
use crate::dump::DumpOptions;
use crate::error::{Error, Result};
use crate::flavour::{LockMethod, ServerInfo};
use crate::format::manifest::LockRecord;
use crate::mysql::Server;

mod archive;
mod artifacts;
mod physical;
mod point;
mod transfer;
mod watch;

use watch::Held;

pub use artifacts::{Expected, RestoreTarget};
pub use transfer::dump_once;

/// The release reason when the Prepare caller went away.
const CALLER_GONE: &str = "caller-gone";
/// The release reason of a Commit that found the lock held.
pub const COMMIT: &str = "commit";
/// How much longer than `snapshot_ttl` the server keeps an idle snapshot
/// connection (its `wait_timeout`): the agent drops it first, the server
/// only if the agent cannot.
pub const SNAPSHOT_IDLE_MARGIN: Duration = Duration::from_secs(60);

/// Why and when a lock was released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Released {
    pub backup_id: String,
    /// "commit", "abort", "lease-expired", "caller-gone", "shutdown", "error".
    pub reason: String,
    pub held_us: u64,
    pub released_at_unix_us: i64,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The name of this agent's server in the catalog and in backup paths.
    pub name: String,
    /// The agent's own database server; `None` for a media agent.
    pub server: Option<Server>,
    /// Root of the host-local sink: backups go to
    /// `<sink_dir>/<backup id>/<name>/` when no sink is named.
    pub sink_dir: PathBuf,
    /// Directories this agent holds as disk pools for other agents.
    pub pools: Vec<PathBuf>,
    /// The operator's key: encrypts copies in sinks that ask for it and
    /// opens encrypted copies.
    pub key: Option<Arc<crate::sink::crypt::KeyFile>>,
    pub lock_method: LockMethod,
    /// Budgets used when a request leaves them at zero.
    pub budgets: Budgets,
    /// Upper bound on any requested lease.
    pub max_lease: Duration,
    /// How long snapshots stay open after commit if no transfer starts.
    pub snapshot_ttl: Duration,
    pub snapshot_connections: usize,
    pub dump: DumpOptions,
    /// Credentials file for restore targets given as `cred:NAME`.
    pub credentials_file: Option<PathBuf>,
    /// Cluster this server belongs to, for registration.
    pub cluster: String,
    /// Continuous binlog archiving, if on.
    pub archive: Option<crate::binlog::ship::ArchiveSettings>,
    /// Physical backups: default kind, snapshot provider, recovery.
    pub physical: crate::physical::PhysicalOptions,
    /// Application file sets cut with the databases.
    pub files: crate::physical::FileSetOptions,
    /// The agent's own records: snapshots it holds, staged file sets.
    pub state_dir: PathBuf,
    /// Coordinator URLs to register with (empty: standalone).
    pub coordinators: Vec<String>,
    /// URL registered with the coordinators; `None`: `http://<listen>`.
    pub advertise: Option<String>,
    /// Mutual TLS for every connection (coordinators, media agents), or
    /// plaintext.
    pub transport: lockstep_proto::tls::Transport,
    /// Who may call what on this agent (with mutual TLS).
    pub access: crate::grpc::access::Access,
}

/// What a successful prepare reports.
#[derive(Debug, Clone)]
pub struct PreparedInfo {
    pub backup_id: String,
    pub position: Position,
    pub info: ServerInfo,
    pub method: LockMethod,
    pub timings: PrepareTimings,
    pub kind: crate::physical::Kind,
    /// Physical: the provider and the snapshot's time inside the lock.
    pub provider: &'static str,
    pub snapshot_us: u64,
    /// Application file sets to capture on CaptureFiles.
    pub file_sets: usize,
}

/// What a commit reports. `released.reason` is always [`COMMIT`]: the lock
/// was still held when the (first) Commit arrived.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub released: Released,
    pub snapshot_positions: Vec<Position>,
}

#[derive(Debug)]
enum Stage {
    Prepared(PreparedCut),
    Committed(CommittedCut),
    Transferring,
}

#[derive(Debug)]
struct Session {
    backup_id: String,
    /// The coordinator term that prepared it (0: an operator tool).
    term: u64,
    stage: Stage,
    started_at: String,
    /// Tells the watcher the lock was released by commit/abort.
    notify: Option<oneshot::Sender<Released>>,
    lock_record: LockRecord,
    /// Set once Commit released the lock with the snapshots kept: what a
    /// repeated Commit answers.
    committed: Option<CommitInfo>,
    /// The server's lock is this backup's while it arms and holds it.
    claim: Option<point::Claim>,
    /// Its file snapshot and file sets (released when dropped).
    extra: physical::Extra,
}

/// Snapshot of the agent's state for `Status`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    pub state: &'static str,
    pub backup_id: Option<String>,
    pub lock_held_for_us: Option<u64>,
    pub last_release: Option<Released>,
    pub server: Option<ServerInfo>,
}

#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    session: Mutex<Option<Session>>,
    last_release: std::sync::Mutex<Option<Released>>,
    info: std::sync::Mutex<Option<ServerInfo>>,
    /// Wakes callers attached to a running transfer when it ends.
    transfer_done: tokio::sync::Notify,
    /// The highest coordinator term seen (fencing, see [`Agent::fence`]).
    term: std::sync::Mutex<u64>,
    /// The armed prepare waiting for Go: its backup id and trigger.
    armed: std::sync::Mutex<Option<(String, oneshot::Sender<()>)>>,
    /// `host:port` of every server a restore is loading right now.
    restoring: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Position-only cuts (restore points) and who holds the lock.
    points: point::Points,
    /// `mariadb-backup` bases taken before their backups' cuts, by backup
    /// id (see `physical.rs`).
    bases: std::sync::Mutex<std::collections::HashMap<String, crate::physical::mariabackup::Base>>,
    shutdown: CancellationToken,
}

/// Parameters of one prepare request.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    pub backup_id: String,
    /// The raft term of the coordinator leader asking (0: an operator tool).
    pub term: u64,
    pub lease: Duration,
    pub budgets: Budgets,
    pub snapshot_connections: usize,
    /// A restore point: no snapshots, a session of its own (see `point.rs`).
    pub position_only: bool,
    /// "logical", "physical" or empty (the agent's configured default).
    pub kind: String,
}

impl Agent {
    pub fn new(cfg: AgentConfig, shutdown: CancellationToken) -> Arc<Agent> {
        Arc::new(Agent {
            cfg,
            session: Mutex::new(None),
            last_release: std::sync::Mutex::new(None),
            info: std::sync::Mutex::new(None),
            transfer_done: tokio::sync::Notify::new(),
            term: std::sync::Mutex::new(0),
            armed: std::sync::Mutex::new(None),
            restoring: std::sync::Mutex::new(Default::default()),
            points: point::Points::default(),
            bases: std::sync::Mutex::new(Default::default()),
            shutdown,
        })
    }

    /// Fencing: admits a call from a coordinator leader of raft `term`
    /// unless a leader of a later term has already called (the caller was
    /// deposed and must not undo its successor's work). Term 0 is an
    /// unfenced operator call and is always admitted.
    pub fn fence(&self, term: u64) -> Result<()> {
        if term == 0 {
            return Ok(());
        }
        let mut current = self.term.lock().unwrap_or_else(|p| p.into_inner());
        if term < *current {
            tracing::warn!(
                term,
                current = *current,
                "refused a call from a deposed coordinator"
            );
            return Err(Error::StaleTerm {
                term,
                current: *current,
            });
        }
        *current = term;
        Ok(())
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// Locks the server and captures the position. `caller_gone` resolves when
    /// whoever asked disappears; the returned receiver yields the release record
    /// once the lock is dropped, whatever dropped it.
    ///
    /// With `ready`, the prepare stops before the lock: it fires `ready` and
    /// waits for [`Agent::go`] (bounded by the lease; a vanished caller or
    /// shutdown cancels it, and nothing is locked).
    pub async fn prepare(
        self: &Arc<Self>,
        req: PrepareRequest,
        ready: Option<oneshot::Sender<()>>,
        caller_gone: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(PreparedInfo, oneshot::Receiver<Released>)> {
        if req.position_only {
            return self.prepare_point(req, ready, caller_gone).await;
        }
        let caller_gone = caller_gone.boxed().shared();
        if req.backup_id.is_empty() {
            return Err(Error::Config("backup id is empty".into()));
        }
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            // Snapshots committed but never transferred, and a coordinator
            // (of the same or a later term) now prepares another backup: it
            // runs one backup of a cluster at a time, so it has given the
            // old one up (its ABORT may not have reached this agent, say
            // across a partition). The new backup supersedes them.
            let superseded = matches!(s.stage, Stage::Committed(_))
                && s.term > 0
                && req.term >= s.term
                && req.backup_id != s.backup_id;
            if !superseded {
                return Err(Error::Busy {
                    current: s.backup_id.clone(),
                    requested: req.backup_id,
                });
            }
            tracing::warn!(stale = %s.backup_id, term = s.term, backup = %req.backup_id, new_term = req.term, "dropping the snapshots of a committed backup that was never transferred: a new backup from the coordinator supersedes it");
            *slot = None;
        }
        let own_server = self.own_server()?.clone();
        self.refuse_while_restoring(&own_server, &req.backup_id)?;
        let claim = self
            .points
            .claim(&format!("backup {}", req.backup_id), &req.backup_id)?;
        let lease = req.lease.min(self.cfg.max_lease);
        let started_at = crate::now_rfc3339();
        let span = tracing::info_span!("prepare", backup = %req.backup_id, server = %self.cfg.name);
        let kind = crate::physical::Kind::parse_or(&req.kind, self.cfg.physical.kind)?;
        let mut extra = physical::Extra::plan(self, kind, &req.backup_id)
            .instrument(span.clone())
            .await?;
        // A physical backup reads its data from the file snapshot: it opens
        // no snapshot connections.
        let connections = match kind {
            crate::physical::Kind::Logical => req.snapshot_connections.max(1),
            crate::physical::Kind::Physical => 0,
        };
        let mut prepared = self
            .arm_and_lock(
                &own_server,
                &req,
                connections,
                lease,
                &span,
                ready,
                caller_gone.clone(),
                extra.provider(),
            )
            .await?;
        let snapshot_took = match extra
            .snapshot_in_lock(&mut prepared)
            .instrument(span.clone())
            .await
        {
            Ok(took) => took,
            Err(e) => {
                if let Err(unlock) = prepared.lock.release().await {
                    tracing::warn!(error = %unlock, "release after a failed snapshot");
                }
                return Err(e);
            }
        };
        prepared.timings.capture_us += snapshot_took.as_micros() as u64;
        let _in_span = span.enter();
        *self.info.lock().expect("info lock") = Some(prepared.info.clone());
        let info = PreparedInfo {
            backup_id: req.backup_id.clone(),
            position: prepared.position.clone(),
            info: prepared.info.clone(),
            method: prepared.lock.method(),
            timings: prepared.timings,
            kind,
            provider: extra.provider_name(),
            snapshot_us: snapshot_took.as_micros() as u64,
            file_sets: extra.planned_files.len(),
        };
        tracing::info!(
            position = %info.position,
            lock_wait_us = info.timings.lock_wait_us,
            capture_us = info.timings.capture_us,
            lease_ms = lease.as_millis() as u64,
            "locked and captured"
        );
        let (notify_tx, notify_rx) = oneshot::channel();
        let (out_tx, out_rx) = oneshot::channel();
        *slot = Some(Session {
            backup_id: req.backup_id.clone(),
            term: req.term,
            lock_record: LockRecord {
                method: info.method.as_str().into(),
                lock_wait_us: info.timings.lock_wait_us,
                capture_us: info.timings.capture_us,
                held_us: 0,
                locked_at_unix_us: info.timings.locked_at_unix_us,
            },
            stage: Stage::Prepared(prepared),
            started_at,
            notify: Some(notify_tx),
            committed: None,
            claim: Some(claim),
            extra,
        });
        drop(slot);

        self.watch_lock(
            Held::Backup,
            req.backup_id,
            lease,
            notify_rx,
            caller_gone,
            out_tx,
        );
        Ok((info, out_rx))
    }

    /// Phase one up to the held lock, for a backup or a restore point:
    /// arm (connections, pre-flight, pre-flush), flush the snapshot's
    /// volume (a physical backup: `sync -f` as late as it can be before the
    /// lock), wait for Go when the caller sent `ready`, then lock and
    /// capture.
    #[allow(clippy::too_many_arguments)]
    async fn arm_and_lock(
        &self,
        server: &Server,
        req: &PrepareRequest,
        snapshot_connections: usize,
        lease: Duration,
        span: &tracing::Span,
        ready: Option<oneshot::Sender<()>>,
        caller_gone: impl Future<Output = ()>,
        volume: Option<&dyn crate::snapshot::Provider>,
    ) -> Result<PreparedCut> {
        let armed = cut::arm(
            server,
            PrepareOptions {
                budgets: req.budgets,
                lock_method: self.cfg.lock_method,
                snapshot_connections,
                lease,
                snapshot_idle: self.cfg.snapshot_ttl + SNAPSHOT_IDLE_MARGIN,
            },
        )
        .instrument(span.clone())
        .await?;
        if let Some(provider) = volume {
            provider.flush().instrument(span.clone()).await?;
        }
        if let Some(ready) = ready {
            self.wait_for_go(&req.backup_id, ready, lease, caller_gone)
                .instrument(span.clone())
                .await?;
        }
        armed.lock().instrument(span.clone()).await
    }

    /// Parks an armed prepare until [`Agent::go`] names its backup.
    async fn wait_for_go(
        &self,
        backup_id: &str,
        ready: oneshot::Sender<()>,
        lease: Duration,
        caller_gone: impl Future<Output = ()>,
    ) -> Result<()> {
        let (go_tx, go_rx) = oneshot::channel();
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((backup_id.into(), go_tx));
        let _ = ready.send(());
        tracing::debug!("armed; waiting for Go");
        let outcome = tokio::select! {
            r = go_rx => r.map_err(|_| "Go was dropped"),
            _ = tokio::time::sleep(lease) => Err("no Go arrived within the lease"),
            _ = caller_gone => Err("the caller went away before Go"),
            _ = self.shutdown.cancelled() => Err("the agent is shutting down"),
        };
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_if(|(id, _)| id == backup_id);
        outcome.map_err(|why| Error::BadState {
            backup_id: backup_id.into(),
            reason: format!("{why}; nothing was locked"),
        })
    }

    /// Locks the server of an armed prepare (see [`Agent::prepare`]).
    pub fn go(&self, backup_id: &str) -> Result<()> {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        match armed.take_if(|(id, _)| id == backup_id) {
            Some((_, go)) => go.send(()).map_err(|()| Error::BadState {
                backup_id: backup_id.into(),
                reason: "its prepare ended before Go arrived".into(),
            }),
            None => Err(Error::BadState {
                backup_id: backup_id.into(),
                reason: "no prepare of this backup is waiting for Go".into(),
            }),
        }
    }

    /// Releases the lock of a prepared backup whose caller did not commit,
    /// and drops the backup: its cut can no longer be proven (the lock was
    /// not held when COMMIT came, if it ever comes), so a later Commit fails.
    async fn expire(self: &Arc<Self>, backup_id: &str, reason: &str) -> Option<Released> {
        let mut slot = self.session.lock().await;
        let prepared = matches!(slot.as_ref(), Some(s) if s.backup_id == backup_id && matches!(s.stage, Stage::Prepared(_)));
        if !prepared {
            return None;
        }
        let session = slot.take().expect("checked above");
        let Stage::Prepared(cut) = session.stage else {
            unreachable!("checked above")
        };
        let released = self.release_prepared(backup_id, cut, reason).await;
        tracing::warn!(backup = backup_id, server = %self.cfg.name, reason, held_us = released.held_us, "lock released without commit; backup dropped");
        Some(released)
    }

    async fn release_prepared(&self, backup_id: &str, cut: PreparedCut, reason: &str) -> Released {
        let held = cut.lock.held_for();
        let held = match cut.lock.release().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(backup = backup_id, error = %e, "unlock failed; the connection was closed, which releases the lock");
                held
            }
        };
        drop(cut.snapshots);
        self.record(backup_id, reason, held)
    }

    fn record(&self, backup_id: &str, reason: &str, held: Duration) -> Released {
        let r = Released {
            backup_id: backup_id.into(),
            reason: reason.into(),
            held_us: held.as_micros() as u64,
            released_at_unix_us: unix_micros(SystemTime::now()),
        };
        *self.last_release.lock().expect("release lock") = Some(r.clone());
        r
    }

    fn gone(&self, backup_id: &str) -> Error {
        let why = match self.last_release.lock().expect("release lock").as_ref() {
            Some(r) if r.backup_id == backup_id && r.reason == COMMIT => {
                "it was committed and is no longer held (transferred, aborted or expired)".into()
            }
            Some(r) if r.backup_id == backup_id => format!(
                "its lock was already released ({}) and its snapshots dropped: this server did not hold its lock until COMMIT",
                r.reason
            ),
            _ => "this agent has no such backup in progress".into(),
        };
        Error::BadState {
            backup_id: backup_id.into(),
            reason: why,
        }
    }

    /// Releases the lock and keeps the snapshots for Transfer, if the lock
    /// is still held: the reply is this agent's share of the barrier proof.
    /// Repeating it (a reply lost on the way) answers with the release
    /// already done by the first Commit. A lock already released any other
    /// way fails with `BadState` naming the reason; so does a failed unlock
    /// or a snapshot not at the captured position (the backup is dropped).
    pub async fn commit(self: &Arc<Self>, backup_id: &str) -> Result<CommitInfo> {
        if let Some(point) = self.commit_point(backup_id).await {
            return point;
        }
        let mut slot = self.session.lock().await;
        let Some(session) = slot.as_mut().filter(|s| s.backup_id == backup_id) else {
            return Err(self.gone(backup_id));
        };
        if let Some(done) = &session.committed {
            return Ok(done.clone());
        }
        let Stage::Prepared(cut) = std::mem::replace(&mut session.stage, Stage::Transferring)
        else {
            return Err(Error::BadState {
                backup_id: backup_id.into(),
                reason: "it is not prepared".into(),
            });
        };
        match cut.commit(self.own_server()?.address()).await {
            Ok(committed) => {
                let released = self.record(backup_id, COMMIT, committed.held);
                session.lock_record.held_us = released.held_us;
                let info = CommitInfo {
                    released: released.clone(),
                    snapshot_positions: committed.snapshot_positions.clone(),
                };
                session.committed = Some(info.clone());
                session.stage = Stage::Committed(committed);
                session.claim = None;
                if let Some(n) = session.notify.take() {
                    let _ = n.send(released.clone());
                }
                tracing::info!(
                    backup = backup_id,
                    held_us = released.held_us,
                    "committed: lock released; snapshots kept"
                );
                let agent = self.clone();
                let id = backup_id.to_string();
                let ttl = self.cfg.snapshot_ttl;
                tokio::spawn(async move {
                    tokio::time::sleep(ttl).await;
                    agent.drop_stale(&id).await;
                });
                Ok(info)
            }
            Err(e) => {
                let session = slot.take().expect("present");
                let released = self.record(backup_id, "error", Duration::ZERO);
                if let Some(n) = session.notify {
                    let _ = n.send(released);
                }
                Err(e)
            }
        }
    }

    async fn drop_stale(&self, backup_id: &str) {
        let mut slot = self.session.lock().await;
        if matches!(slot.as_ref(), Some(s) if s.backup_id == backup_id && matches!(s.stage, Stage::Committed(_)))
        {
            tracing::warn!(backup = backup_id, ttl = ?self.cfg.snapshot_ttl, "no transfer started in time; snapshots dropped");
            *slot = None;
        }
    }

    /// Releases the lock if held and drops the snapshots. Aborting a backup
    /// this agent does not have is not an error. Returns whether a lock was held.
    pub async fn abort(&self, backup_id: &str, reason: &str) -> bool {
        if let Some(was_held) = self.abort_point(backup_id, reason).await {
            return was_held;
        }
        self.drop_base(backup_id);
        let mut slot = self.session.lock().await;
        if !matches!(slot.as_ref(), Some(s) if s.backup_id == backup_id) {
            return false;
        }
        let mut session = slot.take().expect("checked above");
        match session.stage {
            Stage::Prepared(cut) => {
                let released = self.release_prepared(backup_id, cut, "abort").await;
                session.extra.release().await;
                tracing::info!(
                    backup = backup_id,
                    reason,
                    held_us = released.held_us,
                    "aborted: lock released, snapshots dropped"
                );
                if let Some(n) = session.notify {
                    let _ = n.send(released);
                }
                true
            }
            Stage::Committed(_) => {
                session.extra.release().await;
                tracing::info!(backup = backup_id, reason, "aborted: snapshots dropped");
                false
            }
            Stage::Transferring => {
                // The transfer task owns the snapshots; put the session back.
                *slot = Some(session);
                false
            }
        }
    }

    /// Where a sink keeps this server's artifact of a backup.
    fn artifact_prefix(&self, backup_id: &str) -> String {
        format!(
            "{}/{}",
            crate::format::fs_name(backup_id),
            crate::format::fs_name(&self.cfg.name)
        )
    }

    /// The agent's own database server, or why there is none.
    fn own_server(&self) -> Result<&Server> {
        self.cfg.server.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "agent {} is a media agent: it has no database server of its own (it holds disk pools and loads backups into named targets)",
                self.cfg.name
            ))
        })
    }

    /// What this agent knows about itself to open sinks.
    pub fn local(&self) -> crate::sink::Local {
        crate::sink::Local {
            agent: self.cfg.name.clone(),
            host_local: self.cfg.sink_dir.clone(),
            pools: self.cfg.pools.clone(),
            transport: self.cfg.transport.clone(),
        }
    }

    pub async fn status(&self) -> AgentStatus {
        // A prepare holds the session while it arms and locks; status does
        // not wait for it.
        let slot = self.session.try_lock();
        let (state, backup_id, held) = match slot.as_deref() {
            Err(_) => ("preparing", None, None),
            Ok(None) => ("idle", None, None),
            Ok(Some(s)) => match &s.stage {
                Stage::Prepared(c) => (
                    "prepared",
                    Some(s.backup_id.clone()),
                    Some(c.lock.held_for().as_micros() as u64),
                ),
                Stage::Committed(_) => ("committed", Some(s.backup_id.clone()), None),
                Stage::Transferring => ("transferring", Some(s.backup_id.clone()), None),
            },
        };
        drop(slot);
        // A restore point holding the lock: the lock is held; beside an
        // idle backup slot it shows as prepared.
        let (state, backup_id, held) = match self.point_status() {
            Some((point, us)) if state == "idle" => ("prepared", Some(point), Some(us)),
            Some((_, us)) => (state, backup_id, Some(us)),
            None => (state, backup_id, held),
        };
        let mut server = self.info.lock().expect("info lock").clone();
        if server.is_none()
            && let Some(own) = &self.cfg.server
            && let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(2),
                own.connect("detect server for status"),
            )
            .await
            && let Ok(info) = ServerInfo::detect(&mut conn, own.address()).await
        {
            *self.info.lock().expect("info lock") = Some(info.clone());
            server = Some(info);
        }
        AgentStatus {
            state,
            backup_id,
            lock_held_for_us: held,
            last_release: self.last_release.lock().expect("release lock").clone(),
            server,
        }
    }

    /// Releases anything held; called on shutdown.
    pub async fn release_all(&self) {
        let id = self
            .session
            .lock()
            .await
            .as_ref()
            .map(|s| s.backup_id.clone());
        if let Some(id) = id {
            self.abort(&id, "agent shutting down").await;
        }
        self.abort_any_point("agent shutting down").await;
    }
}

/// Resolves when the receiving side of `tx` is dropped (the caller went away).
pub async fn receiver_dropped<T: Send + 'static>(tx: mpsc::Sender<T>) {
    tx.closed().await
}
