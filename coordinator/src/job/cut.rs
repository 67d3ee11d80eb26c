//! The cluster-wide two-phase cut, shared by the backup job and restore
//! points: PREPARE every server in two steps (arm, then GO to all at once),
//! the barrier, and COMMIT everywhere with each agent's proof that it held
//! its lock until then (`held_until_commit`; see the module comment of
//! `job/mod.rs`). A restore point is the same cut with `position_only`: no
//! snapshot connections, nothing to transfer.
//!
//! [`Cut::run`] returns every server's cut entry with its release, or the
//! failure reason naming the server; the caller then aborts everywhere
//! ([`abort_all`]) and records the outcome its own way.

use std::collections::BTreeMap;
use std::future::Future;

use lockstep_proto::agent as agent_pb;
use lockstep_proto::agent::node_agent_client::NodeAgentClient;
use lockstep_proto::agent::prepare_event::Event;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tonic::Streaming;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::{ABORT_TIMEOUT, status_text};
use crate::catalog::CutEntry;
use crate::core::Core;

/// One server taking part in a cut.
#[derive(Debug, Clone)]
pub(super) struct Participant {
    pub(super) name: String,
    pub(super) addr: String,
}

/// One cut: of backup `id`, or of restore point `id` (`position_only`).
pub(super) struct Cut<'a> {
    pub(super) core: &'a Core,
    pub(super) id: &'a str,
    pub(super) term: u64,
    pub(super) position_only: bool,
    /// "logical", "physical" or empty (each server's default).
    pub(super) kind: &'a str,
}

/// An armed server: everything before its lock is done, and the Prepare
/// stream waits for GO.
struct Armed {
    part: Participant,
    client: NodeAgentClient<Channel>,
    stream: Streaming<agent_pb::PrepareEvent>,
}

/// The next event of a Prepare stream; a release or the stream's end is an
/// error naming the server.
async fn next_event(
    name: &str,
    stream: &mut Streaming<agent_pb::PrepareEvent>,
) -> std::result::Result<Event, String> {
    let msg = stream
        .message()
        .await
        .map_err(|s| format!("server {name}: prepare failed: {}", status_text(&s)))?;
    match msg.and_then(|m| m.event) {
        Some(Event::Released(r)) => Err(format!(
            "server {name}: released its lock before PREPARED ({})",
            r.reason
        )),
        Some(e) => Ok(e),
        None => Err(format!(
            "server {name}: the prepare stream ended without PREPARED"
        )),
    }
}

/// A prepared server: its client and the task owning the open Prepare
/// stream that keeps the lock alive. Dropping it closes the stream, which
/// releases the lock if it is still held.
struct Held {
    part: Participant,
    client: NodeAgentClient<Channel>,
    _watch: AbortOnDropHandle<()>,
}

/// Watches a prepared server's Prepare stream: anything arriving on it
/// before COMMIT (a `released` event, an error, its end) means the server
/// lost its lock, and the reason goes to `lost`.
fn watch_prepared(
    name: String,
    mut stream: Streaming<agent_pb::PrepareEvent>,
    lost: mpsc::UnboundedSender<String>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let reason = match stream.message().await {
            Ok(Some(agent_pb::PrepareEvent {
                event: Some(Event::Released(r)),
            })) => format!(
                "server {name}: released its lock ({}) before the cut was committed",
                r.reason
            ),
            Ok(_) => {
                format!("server {name}: the prepare stream ended before the cut was committed")
            }
            Err(s) => format!("server {name}: lost while prepared: {}", status_text(&s)),
        };
        let _ = lost.send(reason);
        // Keep the stream open: COMMIT or ABORT is still to come.
        std::future::pending::<()>().await
    }))
}

impl Cut<'_> {
    /// PREPARE, barrier and COMMIT on every server of `parts`: every
    /// server's position and lock times once each COMMIT proved its lock
    /// was held until then; `Err` names the server that failed it (the
    /// caller aborts everywhere).
    pub(super) async fn run(
        &self,
        parts: &[Participant],
    ) -> std::result::Result<BTreeMap<String, CutEntry>, String> {
        // Phase 1: PREPARE everywhere, in two steps so that the slow part
        // (connections, pre-flight, pre-flush) stays out of the freeze
        // window: arm every server, then GO everywhere at once. The first
        // failure stops the others (dropping their streams releases their
        // locks; the caller aborts all), and a server that loses its lock
        // while the others are still locking (its agent died, its lease ran
        // out) fails the cut at once.
        let deadline = tokio::time::Instant::now() + self.core.config.prepare_timeout;
        let arms = parts.iter().map(|p| self.arm_one(p, deadline));
        let armed = futures::future::try_join_all(arms).await?;
        let (lost_tx, mut lost) = mpsc::unbounded_channel();
        let prepares = armed
            .into_iter()
            .map(|a| self.lock_one(a, lost_tx.clone(), deadline));
        let held: Vec<(Held, CutEntry, u32)> = tokio::select! {
            r = futures::future::try_join_all(prepares) => r?,
            Some(reason) = lost.recv() => return Err(reason),
        };
        if let Ok(reason) = lost.try_recv() {
            return Err(reason);
        }
        // Every server holds its lock: the application file sets are cut
        // now, before any COMMIT lets a server run on.
        let captures = held
            .iter()
            .filter(|(_, _, sets)| *sets > 0)
            .map(|(h, _, _)| self.capture_files(&h.part.name, h.client.clone()));
        tokio::select! {
            r = futures::future::try_join_all(captures) => { r?; }
            Some(reason) = lost.recv() => return Err(reason),
        }
        let held: Vec<(Held, CutEntry)> = held.into_iter().map(|(h, e, _)| (h, e)).collect();
        if self.position_only {
            debug!(servers = held.len(), "every server is prepared; committing");
        } else {
            info!(servers = held.len(), "every server is prepared; committing");
        }

        // Phase 2: COMMIT (unlock) everywhere. Every reply must prove its
        // lock was held until its COMMIT arrived (see the module comment);
        // a lost lock shows up here as a refused COMMIT.
        let commits = held
            .iter()
            .map(|(h, _)| self.commit_one(&h.part.name, h.client.clone()));
        let results = futures::future::join_all(commits).await;
        let mut cut = BTreeMap::new();
        let mut failures = Vec::new();
        for ((h, mut entry), result) in held.into_iter().zip(results) {
            match result {
                Ok(release) => {
                    entry.held_us = Some(release.held_us);
                    entry.released_at_unix_us = Some(release.released_at_unix_us);
                    cut.insert(h.part.name.clone(), entry);
                }
                Err(e) => failures.push(e),
            }
        }
        if !failures.is_empty() {
            return Err(failures.join("; "));
        }
        Ok(cut)
    }

    /// PREPARE one server up to its lock: the agent opens its connections,
    /// runs pre-flight and pre-flush, answers `ready` and waits for Go.
    async fn arm_one(
        &self,
        p: &Participant,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Armed, String> {
        let cfg = &self.core.config;
        let work = async {
            let mut client = self
                .core
                .agent_client(&p.addr)
                .await
                .map_err(|e| format!("server {}: {e}", p.name))?;
            let mut stream = client
                .prepare(agent_pb::PrepareRequest {
                    backup_id: self.id.to_string(),
                    lease_ms: cfg.lease.as_millis() as u64,
                    budgets: None,
                    snapshot_connections: 0,
                    term: self.term,
                    wait_for_go: true,
                    position_only: self.position_only,
                    kind: self.kind.to_string(),
                })
                .await
                .map_err(|s| format!("server {}: prepare refused: {}", p.name, status_text(&s)))?
                .into_inner();
            match next_event(&p.name, &mut stream).await? {
                Event::Ready(_) => Ok(Armed {
                    part: p.clone(),
                    client,
                    stream,
                }),
                other => Err(format!("server {}: expected READY, got {other:?}", p.name)),
            }
        };
        self.by_deadline(p, deadline, work).await
    }

    /// GO to an armed server: it locks and captures; returns the held lock
    /// and its cut entry.
    async fn lock_one(
        &self,
        armed: Armed,
        lost: mpsc::UnboundedSender<String>,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(Held, CutEntry, u32), String> {
        let Armed {
            part: p,
            mut client,
            mut stream,
        } = armed;
        let work = async {
            client
                .go(agent_pb::GoRequest {
                    backup_id: self.id.to_string(),
                    term: self.term,
                })
                .await
                .map_err(|s| format!("server {}: GO failed: {}", p.name, status_text(&s)))?;
            let prepared = match next_event(&p.name, &mut stream).await? {
                Event::Prepared(pr) => pr,
                other => {
                    return Err(format!(
                        "server {}: expected PREPARED, got {other:?}",
                        p.name
                    ));
                }
            };
            let pos = prepared.position.unwrap_or_default();
            let sets = prepared.file_sets;
            Ok((
                CutEntry {
                    binlog_file: pos.binlog_file,
                    binlog_pos: pos.binlog_pos,
                    gtid: pos.gtid_set,
                    lock_method: prepared.lock_method,
                    lock_wait_us: prepared.lock_wait_us,
                    capture_us: prepared.capture_us,
                    locked_at_unix_us: prepared.locked_at_unix_us,
                    held_us: None,
                    released_at_unix_us: None,
                    kind: crate::catalog::stored_kind(&prepared.kind),
                    provider: prepared.provider,
                    snapshot_us: prepared.snapshot_us,
                },
                sets,
            ))
        };
        let (entry, sets) = self.by_deadline(&p, deadline, work).await?;
        let watch = watch_prepared(p.name.clone(), stream, lost);
        Ok((
            Held {
                part: p,
                client,
                _watch: watch,
            },
            entry,
            sets,
        ))
    }

    /// Before the cut: TAKE BASE on every server at once. A server whose
    /// physical backups use `mariadb-backup` copies its base now (minutes
    /// for a big server, bounded by `transfer_timeout`); the others answer
    /// at once, as does an agent too old to know the call. Nothing is
    /// locked meanwhile.
    pub(super) async fn take_bases(
        &self,
        parts: &[Participant],
    ) -> std::result::Result<(), String> {
        let limit = self.core.config.transfer_timeout;
        let bases = parts.iter().map(|p| async move {
            let mut client = self
                .core
                .agent_client(&p.addr)
                .await
                .map_err(|e| format!("server {}: {e}", p.name))?;
            let call = client.take_base(agent_pb::TakeBaseRequest {
                backup_id: self.id.to_string(),
                term: self.term,
                kind: self.kind.to_string(),
            });
            let reply = match tokio::time::timeout(limit, call).await {
                Err(_) => {
                    return Err(format!(
                        "server {}: its mariadb-backup base was not taken within {limit:?}",
                        p.name
                    ));
                }
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => return Ok(()),
                Ok(Err(s)) => {
                    return Err(format!(
                        "server {}: taking its base failed: {}",
                        p.name,
                        status_text(&s)
                    ));
                }
                Ok(Ok(r)) => r.into_inner(),
            };
            if reply.taken {
                info!(server = %p.name, file = %reply.binlog_file, pos = reply.binlog_pos, bytes = reply.bytes, took_ms = reply.took_ms, "mariadb-backup base taken before the cut");
            }
            Ok(())
        });
        futures::future::try_join_all(bases).await.map(|_| ())
    }

    /// CAPTURE FILES on one prepared server: its application file sets
    /// are cut while every server of the cut is locked.
    async fn capture_files(
        &self,
        name: &str,
        mut client: NodeAgentClient<Channel>,
    ) -> std::result::Result<(), String> {
        let reply = tokio::time::timeout(
            self.core.config.commit_timeout,
            client.capture_files(agent_pb::CaptureFilesRequest {
                backup_id: self.id.to_string(),
                term: self.term,
            }),
        )
        .await
        .map_err(|_| {
            format!(
                "server {name}: its file sets were not captured within {:?}",
                self.core.config.commit_timeout
            )
        })?
        .map_err(|s| {
            format!(
                "server {name}: capturing its file sets failed: {}",
                status_text(&s)
            )
        })?
        .into_inner();
        info!(server = name, took_us = reply.took_us, sets = ?reply.sets, "file sets captured");
        Ok(())
    }

    /// Runs one server's PREPARE step, failing it at the PREPARE deadline.
    async fn by_deadline<T>(
        &self,
        p: &Participant,
        deadline: tokio::time::Instant,
        work: impl Future<Output = std::result::Result<T, String>>,
    ) -> std::result::Result<T, String> {
        tokio::time::timeout_at(deadline, work).await.map_err(|_| {
            format!(
                "server {} did not prepare within {:?}",
                p.name, self.core.config.prepare_timeout
            )
        })?
    }

    /// COMMIT on one server: it releases its lock and proves it held it
    /// until then. Returns the release.
    pub(super) async fn commit_one(
        &self,
        name: &str,
        mut client: NodeAgentClient<Channel>,
    ) -> std::result::Result<agent_pb::CommitReply, String> {
        let reply = tokio::time::timeout(
            self.core.config.commit_timeout,
            client.commit(agent_pb::CommitRequest {
                backup_id: self.id.to_string(),
                term: self.term,
            }),
        )
        .await
        .map_err(|_| {
            format!(
                "server {name}: COMMIT not answered within {:?}; the cut cannot be proven",
                self.core.config.commit_timeout
            )
        })?
        .map_err(|s| {
            format!(
                "server {name}: COMMIT refused, the cut cannot be proven: {}",
                status_text(&s)
            )
        })?
        .into_inner();
        if !reply.held_until_commit {
            return Err(format!(
                "server {name}: its agent does not confirm that it held its lock until COMMIT (an agent older than this coordinator?); the cut cannot be proven"
            ));
        }
        Ok(reply)
    }
}

/// ABORT on every participant, in parallel, best effort (each agent's lease
/// is the backstop).
pub(super) async fn abort_all(
    core: &Core,
    id: &str,
    term: u64,
    parts: &[Participant],
    reason: &str,
) {
    let aborts = parts.iter().map(|p| async move {
        let call = async {
            let mut client = core.agent_client(&p.addr).await?;
            client
                .abort(agent_pb::AbortRequest {
                    backup_id: id.to_string(),
                    reason: reason.to_string(),
                    term,
                })
                .await
                .map_err(|s| s.message().to_string())
        };
        match tokio::time::timeout(ABORT_TIMEOUT, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(server = %p.name, error = %e, "abort failed; its lease releases the lock")
            }
            Err(_) => warn!(server = %p.name, "abort not answered; its lease releases the lock"),
        }
    });
    futures::future::join_all(aborts).await;
}
