//! The raft task (the only owner of the `RawNode`) and [`RaftNode`], which
//! starts it, hands out the handle and the transport service, and waits for
//! it to stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use lockstep_proto::raft::raft_transport_server::RaftTransportServer;

use super::config::RaftConfig;
use super::error::{Error, Result};
use super::handle::{Command, NodeStatus, RaftHandle, ReadFn, Role};
use super::log::logger;
use super::state_machine::{StateMachine, decode_image};
use super::storage::{LogId, RedbStorage};
use super::transport::{Inbound, Limits, Peers, Sent, TransportService, TransportStats};

/// Entry context of a client proposal (its data goes to the state machine).
const CTX_PROPOSAL: &[u8] = b"p";
/// Entry context of a read barrier (no data, not given to the state machine).
const CTX_BARRIER: &[u8] = b"b";
/// Capacity of the command and inbound queues of the raft task.
const QUEUE: usize = 4096;
/// Most queued items handled between two `Ready` checks.
const MAX_DRAIN: usize = 1024;

/// A running raft node: the raft task plus one sender task per peer.
pub struct RaftNode<S: StateMachine> {
    id: u64,
    handle: RaftHandle<S>,
    service: TransportService,
    raft_task: JoinHandle<Result<()>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Dropping the node stops its tasks.
    _stop_on_drop: DropGuard,
}

impl<S: StateMachine> std::fmt::Debug for RaftNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish()
    }
}

impl<S: StateMachine> RaftNode<S> {
    /// Open (or create) the store in `config.data_dir`, load `state_machine`
    /// from it, and start the raft task and the peer tasks on the current
    /// tokio runtime. They stop when `shutdown` is cancelled, on
    /// [`RaftNode::shutdown`], or when the `RaftNode` is dropped.
    pub fn start(
        config: RaftConfig,
        mut state_machine: S,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        config.validate()?;
        let id = config.id;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Config(format!(
                "create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let voters: Vec<u64> = config.peers.keys().copied().collect();
        let storage = RedbStorage::open(&config.store_path(), &voters)?;
        let loaded = storage.load()?;
        let mut stored = loaded.conf_state.voters.clone();
        stored.sort_unstable();
        if stored != voters {
            return Err(Error::Config(format!(
                "data dir {} belongs to a raft group of voters {stored:?}, but the configured peers are {voters:?}; membership changes are not supported: start this coordinator with the peers it was created with",
                config.data_dir.display()
            )));
        }
        state_machine
            .load(loaded.sm_keys)
            .map_err(|source| Error::Restore {
                index: loaded.applied.index,
                source,
            })?;

        let raft_config = raft::Config {
            id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied: loaded.applied.index,
            // One append message always fits one transport message.
            max_size_per_msg: (1 << 20).min(config.max_entry_size()) as u64,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let raw =
            RawNode::new(&raft_config, storage, &logger()).map_err(|source| Error::Fatal {
                id,
                context: "create raw node",
                source,
            })?;

        let shutdown = shutdown.child_token();
        let tracker = TaskTracker::new();
        let (inbound_tx, inbound_rx) = mpsc::channel(QUEUE);
        let (cmd_tx, cmd_rx) = mpsc::channel(QUEUE);
        let limits = Limits {
            max_message: config.max_message_size,
            chunk: config.snapshot_chunk_size,
            max_snapshot: config.max_snapshot_size,
            peer_queue: config.peer_queue,
        };
        let max_entry = config.max_entry_size();
        let stats = Arc::new(TransportStats::default());
        let peers = Peers::spawn(
            &config,
            limits,
            stats.clone(),
            inbound_tx.clone(),
            &tracker,
            &shutdown,
        )?;
        info!(node = id, applied = loaded.applied.index, voters = ?loaded.conf_state.voters, "raft node starting");

        let task = RaftTask {
            id,
            raw,
            sm: state_machine,
            addrs: config.peers.clone(),
            peers,
            applied: loaded.applied,
            log_start: loaded.log_start,
            conf_state: loaded.conf_state,
            waiters: BTreeMap::new(),
            snapshot_threshold: config.snapshot_threshold,
        };
        let token = shutdown.clone();
        let raft_task = tokio::spawn(
            async move {
                // Stops the peer tasks even if the raft task panics.
                let _stop_peers = token.clone().drop_guard();
                let result = task
                    .run(cmd_rx, inbound_rx, config.tick_interval, &token)
                    .await;
                if let Err(e) = &result {
                    error!(error = ?e, "raft task failed; stopping this raft node");
                }
                result
            }
            .instrument(info_span!("raft", node = id)),
        );
        tracker.close();
        Ok(RaftNode {
            id,
            handle: RaftHandle::new(id, max_entry, cmd_tx),
            service: TransportService::new(id, voters, limits, stats, inbound_tx),
            raft_task,
            tracker,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
        })
    }

    /// A handle for proposals, reads and status.
    pub fn handle(&self) -> RaftHandle<S> {
        self.handle.clone()
    }

    /// The `RaftTransport` tonic service to add to this node's gRPC server
    /// (the one listening on `config.listen_addr`).
    pub fn transport_service(&self) -> RaftTransportServer<TransportService> {
        self.service.clone().into_server()
    }

    /// Counters of this node's transport service.
    #[cfg(test)]
    pub(crate) fn transport_stats(&self) -> Arc<TransportStats> {
        self.service.stats()
    }

    /// Wait until the raft task ends (after cancellation, or on failure) and
    /// the peer tasks with it; returns why the raft task ended.
    pub async fn wait(self) -> Result<()> {
        let result = match self.raft_task.await {
            Ok(r) => r,
            Err(e) => {
                self.shutdown.cancel();
                error!(node = self.id, error = %e, "raft task ended abnormally");
                Err(Error::TaskFailed {
                    id: self.id,
                    reason: e.to_string(),
                })
            }
        };
        self.tracker.wait().await;
        result
    }

    /// Signal this node to stop, then [`RaftNode::wait`] for it.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Someone waiting for the entry at a given index to apply.
enum Waiter<S> {
    Propose {
        term: u64,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    Read {
        term: u64,
        read: ReadFn<S>,
    },
}

impl<S> Waiter<S> {
    fn term(&self) -> u64 {
        match self {
            Waiter::Propose { term, .. } | Waiter::Read { term, .. } => *term,
        }
    }

    fn fail(self, e: Error) {
        match self {
            Waiter::Propose { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Waiter::Read { read, .. } => read(Err(e)),
        }
    }
}

/// What applying one entry produced.
enum Applied {
    Reply(Vec<u8>),
    Nothing,
}

struct RaftTask<S: StateMachine> {
    id: u64,
    raw: RawNode<RedbStorage>,
    sm: S,
    addrs: BTreeMap<u64, String>,
    peers: Peers,
    /// Last applied position, durable.
    applied: LogId,
    /// Last compacted position.
    log_start: LogId,
    conf_state: ConfState,
    /// Proposals and read barriers by log index; matched by (term, index).
    waiters: BTreeMap<u64, Waiter<S>>,
    snapshot_threshold: u64,
}

impl<S: StateMachine> RaftTask<S> {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command<S>>,
        mut inbound: mpsc::Receiver<Inbound>,
        tick: std::time::Duration,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                _ = ticker.tick() => {
                    self.raw.tick();
                }
                Some(item) = inbound.recv() => {
                    self.on_inbound(item);
                    for _ in 0..MAX_DRAIN {
                        match inbound.try_recv() {
                            Ok(item) => self.on_inbound(item),
                            Err(_) => break,
                        }
                    }
                }
                Some(cmd) = cmds.recv() => {
                    self.on_command(cmd);
                    for _ in 0..MAX_DRAIN {
                        match cmds.try_recv() {
                            Ok(cmd) => self.on_command(cmd),
                            Err(_) => break,
                        }
                    }
                }
            }
            if self.raw.has_ready()
                && let Err(e) = blocking(|| self.on_ready())
            {
                break Err(e);
            }
        };
        for (_, w) in std::mem::take(&mut self.waiters) {
            w.fail(Error::Stopped { id: self.id });
        }
        debug!("raft task stopped");
        result
    }

    fn on_inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Message(m) => {
                // raft-rs treats a heartbeat committing past the log as a
                // fatal invariant violation (it panics). No leader sends
                // one; refuse it rather than let a forged or corrupt
                // message stop this coordinator.
                let last = self.raw.raft.raft_log.last_index();
                if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last {
                    warn!(
                        from = m.from,
                        commit = m.commit,
                        last_index = last,
                        "refused a raft heartbeat committing past this node's log"
                    );
                    return;
                }
                if let Err(e) = self.raw.step(*m) {
                    debug!(error = %e, "step raft message");
                }
            }
            Inbound::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Inbound::Unreachable { to } => self.raw.report_unreachable(to),
        }
    }

    fn not_leader(&self) -> Option<Error> {
        if self.raw.raft.state == StateRole::Leader {
            return None;
        }
        let leader_id = Some(self.raw.raft.leader_id).filter(|&l| l != 0);
        Some(Error::NotLeader {
            leader_id,
            leader_addr: leader_id.and_then(|l| self.addrs.get(&l).cloned()),
        })
    }

    /// Append an entry as leader; returns its (term, index).
    fn append(&mut self, ctx: &[u8], data: Vec<u8>) -> Result<(u64, u64)> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw.propose(ctx.to_vec(), data).map_err(Error::Raft)?;
        let index = self.raw.raft.raft_log.last_index();
        if index == before {
            return Err(Error::Raft(raft::Error::ProposalDropped));
        }
        Ok((self.raw.raft.term, index))
    }

    fn on_command(&mut self, cmd: Command<S>) {
        match cmd {
            Command::Propose { data, reply } => match self.append(CTX_PROPOSAL, data) {
                Ok((term, index)) => {
                    self.add_waiter(index, Waiter::Propose { term, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Read {
                linearizable: false,
                read,
            } => read(Ok(&self.sm)),
            Command::Read {
                linearizable: true,
                read,
            } => match self.append(CTX_BARRIER, Vec::new()) {
                Ok((term, index)) => self.add_waiter(index, Waiter::Read { term, read }),
                Err(e) => read(Err(e)),
            },
            Command::Status { reply } => {
                let raft = &self.raw.raft;
                let role = match raft.state {
                    StateRole::Follower => Role::Follower,
                    StateRole::PreCandidate => Role::PreCandidate,
                    StateRole::Candidate => Role::Candidate,
                    StateRole::Leader => Role::Leader,
                };
                let mut voters = self.conf_state.voters.clone();
                voters.sort_unstable();
                let _ = reply.send(NodeStatus {
                    id: self.id,
                    leader_id: Some(raft.leader_id).filter(|&l| l != 0),
                    term: raft.term,
                    commit: raft.raft_log.committed,
                    applied: self.applied.index,
                    role,
                    voters,
                });
            }
        }
    }

    fn add_waiter(&mut self, index: u64, waiter: Waiter<S>) {
        // An older waiter at the same index belongs to an entry that was
        // overwritten: it can never apply.
        if let Some(old) = self.waiters.insert(index, waiter) {
            let term = old.term();
            old.fail(Error::ProposalDropped {
                index,
                term,
                reason: "log position reused by a later leader",
            });
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let (to, is_snapshot) = (
                m.to,
                m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot,
            );
            if let Sent::Dropped = self.peers.send(m)
                && is_snapshot
            {
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
            }
        }
    }

    /// All `Ready` handling, in the order the raft-rs docs give.
    fn on_ready(&mut self) -> Result<()> {
        let mut ready = self.raw.ready();
        // 1. Messages that need nothing durable first (leader appends go out
        //    in parallel with its own disk write).
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        // 2. A snapshot from the leader.
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot())?;
        }
        // 3. Committed entries (durable with the applied index).
        self.apply(ready.take_committed_entries())?;
        // 4 + 5. New entries and hard state, in one durable transaction.
        self.raw.store().append(ready.entries(), ready.hs())?;
        // 6. Messages that promise the above is durable (votes, acks).
        if !ready.persisted_messages().is_empty() {
            self.send(ready.take_persisted_messages());
        }
        // 7. Advance, then the light ready.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let md = snap.get_metadata();
        let at = LogId {
            index: md.index,
            term: md.term,
        };
        info!(
            index = at.index,
            term = at.term,
            bytes = snap.data.len(),
            "installing raft snapshot"
        );
        let entries = decode_image(&snap.data).map_err(|e| Error::Restore {
            index: at.index,
            source: e.into(),
        })?;
        self.sm.load(entries).map_err(|source| Error::Restore {
            index: at.index,
            source,
        })?;
        self.raw.store().install_snapshot(snap)?;
        self.applied = at;
        self.log_start = at;
        self.conf_state = md.get_conf_state().clone();
        let covered: Vec<u64> = self.waiters.range(..=at.index).map(|(i, _)| *i).collect();
        for index in covered {
            if let Some(w) = self.waiters.remove(&index) {
                w.fail(Error::OutcomeUnknown { index });
            }
        }
        Ok(())
    }

    /// Apply committed entries; the state machine image, the applied index
    /// and any new conf state are then written in one transaction (after
    /// the waiters hear their outcome: that write is off the proposer's
    /// critical path).
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let mut last = self.applied;
        let mut outcomes = Vec::new();
        let mut sm_changed = false;
        let mut new_conf = None;
        for e in entries {
            if e.index <= self.applied.index {
                continue;
            }
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.context.as_ref() == CTX_PROPOSAL => {
                    sm_changed = true;
                    let reply = self.sm.apply(e.index, &e.data);
                    Applied::Reply(reply.map_err(|source| Error::Apply {
                        id: self.id,
                        index: e.index,
                        source,
                    })?)
                }
                // Leader no-ops and read barriers.
                EntryType::EntryNormal => Applied::Nothing,
                EntryType::EntryConfChange => {
                    let cc =
                        ConfChange::parse_from_bytes(&e.data).map_err(|source| Error::Decode {
                            what: "conf change entry",
                            source,
                        })?;
                    new_conf = Some(
                        self.raw
                            .apply_conf_change(&cc)
                            .map_err(|source| conf_err(self.id, source))?,
                    );
                    Applied::Nothing
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(|source| {
                        Error::Decode {
                            what: "conf change v2 entry",
                            source,
                        }
                    })?;
                    new_conf = Some(
                        self.raw
                            .apply_conf_change(&cc)
                            .map_err(|source| conf_err(self.id, source))?,
                    );
                    Applied::Nothing
                }
            };
            last = LogId {
                index: e.index,
                term: e.term,
            };
            outcomes.push((last, outcome));
        }
        if last == self.applied {
            return Ok(());
        }
        // Waiters hear first: their entries are committed (durable on a
        // quorum), so the outcome is decided; a crash before the apply below
        // is durable just applies them again from the log on restart.
        for (at, outcome) in outcomes {
            let Some(w) = self.waiters.remove(&at.index) else {
                continue;
            };
            let term = w.term();
            if term != at.term {
                w.fail(Error::ProposalDropped {
                    index: at.index,
                    term,
                    reason: "another leader's entry was committed at its index",
                });
                continue;
            }
            match (w, outcome) {
                (Waiter::Propose { reply, .. }, Applied::Reply(r)) => {
                    let _ = reply.send(Ok(r));
                }
                (Waiter::Propose { reply, .. }, Applied::Nothing) => {
                    let _ = reply.send(Ok(Vec::new()));
                }
                (Waiter::Read { read, .. }, _) => read(Ok(&self.sm)),
            }
        }
        let changes = if sm_changed {
            self.sm.take_changes()
        } else {
            Vec::new()
        };
        self.raw
            .store()
            .record_applied(last, new_conf.as_ref(), &changes)?;
        self.applied = last;
        if let Some(cs) = new_conf {
            self.conf_state = cs;
        }
        self.maybe_compact()
    }

    /// Every `snapshot_threshold` applied entries, drop the applied log but
    /// a tail of a quarter threshold, so followers a few entries behind
    /// still get entries instead of a whole snapshot.
    fn maybe_compact(&mut self) -> Result<()> {
        if self.applied.index.saturating_sub(self.log_start.index) < self.snapshot_threshold {
            return Ok(());
        }
        let index = self.applied.index - self.snapshot_threshold / 4;
        let term = raft::Storage::term(self.raw.store(), index).map_err(|source| Error::Fatal {
            id: self.id,
            context: "read the term of the compaction point",
            source,
        })?;
        let upto = LogId { index, term };
        self.raw.store().compact(upto)?;
        debug!(upto = index, "compacted raft log");
        self.log_start = upto;
        Ok(())
    }
}

fn conf_err(id: u64, source: raft::Error) -> Error {
    Error::Fatal {
        id,
        context: "apply conf change",
        source,
    }
}

/// Run `f`, which does synchronous disk IO (redb commits fsync), without
/// starving the other tasks of a multi-thread runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
