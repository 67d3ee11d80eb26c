//! Raft messages over gRPC: per-peer sender tasks (bounded queues, backoff,
//! never blocking the raft task) and the `RaftTransport` service that feeds
//! received messages to the raft task.
//!
//! Wire rule: every raft-rs `Message` crosses the wire as opaque bytes in
//! raft-rs's own (rust-protobuf) encoding inside our prost `RaftBatch`.
//! A batch never exceeds the message limit (`max_message_size`, 64 MiB);
//! snapshot messages leave the batches for the chunked `SendSnapshot` stream
//! (`snapshot_stream.rs`), on a task and connection of their own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use lockstep_proto::raft::raft_transport_client::RaftTransportClient;
use lockstep_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
use lockstep_proto::raft::{RaftAck, RaftBatch, SnapshotChunk};
use lockstep_proto::tls::Caller;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, debug, error, info_span, trace, warn};

use super::error::{Error, Result};
use super::snapshot_stream::{self, SnapshotSender};

/// Most raft messages sent in one RPC.
const MAX_BATCH: usize = 256;
/// Bytes a batch's own fields take (ids, voters), at most.
const BATCH_OVERHEAD: usize = 256;
/// Bytes each message adds to a batch besides its encoding (tag, length).
const MESSAGE_OVERHEAD: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The sizes the transport works with (from [`super::RaftConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest gRPC message either way.
    pub(crate) max_message: usize,
    /// Bytes of snapshot data per chunk.
    pub(crate) chunk: usize,
    /// Largest snapshot data this node accepts.
    pub(crate) max_snapshot: u64,
    /// Capacity of each per-peer outgoing queue.
    pub(crate) peer_queue: usize,
}

/// The certificate identity of raft node `id`: `coordinator-ID`.
pub fn peer_identity(id: u64) -> String {
    format!("coordinator-{id}")
}

/// Counters of a node's transport service (read by tests).
#[derive(Debug, Default)]
pub(crate) struct TransportStats {
    /// Chunks carrying snapshot data received, in any stream.
    pub(crate) snapshot_chunks: AtomicU64,
    /// Complete snapshots reassembled and handed to the raft task.
    pub(crate) snapshots_received: AtomicU64,
    /// Snapshots refused for being over `max_snapshot_size`.
    pub(crate) snapshots_refused: AtomicU64,
    /// Batches this node failed to send (peer down, or a batch over the
    /// receiver's message limit).
    pub(crate) batch_send_failures: AtomicU64,
}

/// What reaches the raft task from the network side.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A raft message from a peer, to `step`.
    Message(Box<Message>),
    /// Whether a snapshot message to `to` was delivered.
    SnapshotSent { to: u64, ok: bool },
    /// Sending to `to` failed.
    Unreachable { to: u64 },
}

/// The outgoing side: one bounded queue per peer.
#[derive(Debug)]
pub(crate) struct Peers {
    queues: BTreeMap<u64, mpsc::Sender<Message>>,
}

/// What happened to an outgoing message handed to [`Peers::send`].
pub(crate) enum Sent {
    Queued,
    /// Dropped (queue full, peer unknown or stopped); raft will retry.
    Dropped,
}

impl Peers {
    /// Start one sender task per peer other than `config.id`, on `tracker`.
    pub(crate) fn spawn(
        config: &super::RaftConfig,
        limits: Limits,
        stats: Arc<TransportStats>,
        inbound: mpsc::Sender<Inbound>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let (id, peers, transport) = (config.id, &config.peers, &config.transport);
        let mut queues = BTreeMap::new();
        let voters: Vec<u64> = peers.keys().copied().collect();
        for (&to, url) in peers.iter().filter(|(to, _)| **to != id) {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::Config(format!("peer {to} URL {url:?}: {e}")))?
                .connect_timeout(Duration::from_secs(2));
            let client = RaftTransportClient::new(
                transport.connect_lazy(endpoint.clone().timeout(RPC_TIMEOUT)),
            )
            .max_encoding_message_size(limits.max_message)
            .max_decoding_message_size(limits.max_message);
            let (tx, rx) = mpsc::channel(limits.peer_queue);
            queues.insert(to, tx);
            let snapshots = SnapshotSender {
                from: id,
                to,
                voters: voters.clone(),
                url: url.clone(),
                chunk: limits.chunk,
                client: snapshot_stream::client(transport, endpoint, limits.max_message),
                inbound: inbound.clone(),
                failures: Arc::new(AtomicU32::new(0)),
            };
            let task = PeerTask {
                from: id,
                to,
                voters: voters.clone(),
                url: url.clone(),
                max_message: limits.max_message,
                client,
                rx,
                inbound: inbound.clone(),
                snapshots,
                snapshot: None,
                tracker: tracker.clone(),
                oversized: None,
                stats: stats.clone(),
            };
            tracker.spawn(task.run(shutdown.clone()).instrument(info_span!(
                "raft_peer",
                node = id,
                peer = to
            )));
        }
        Ok(Peers { queues })
    }

    /// Queue `msg` for its destination without waiting.
    pub(crate) fn send(&self, msg: Message) -> Sent {
        let Some(queue) = self.queues.get(&msg.to) else {
            warn!(to = msg.to, "raft message for an unknown peer dropped");
            return Sent::Dropped;
        };
        match queue.try_send(msg) {
            Ok(()) => Sent::Queued,
            Err(TrySendError::Full(m)) => {
                trace!(to = m.to, "peer queue full, raft message dropped");
                Sent::Dropped
            }
            Err(TrySendError::Closed(_)) => Sent::Dropped,
        }
    }
}

fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
}

struct PeerTask {
    from: u64,
    to: u64,
    voters: Vec<u64>,
    url: String,
    max_message: usize,
    client: RaftTransportClient<Channel>,
    rx: mpsc::Receiver<Message>,
    inbound: mpsc::Sender<Inbound>,
    /// Sends snapshot messages, on their own task and connection.
    snapshots: SnapshotSender,
    /// The snapshot being sent, if any.
    snapshot: Option<JoinHandle<()>>,
    tracker: TaskTracker,
    /// Index of the last message dropped for its size (logged once).
    oversized: Option<u64>,
    stats: Arc<TransportStats>,
}

impl PeerTask {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        // A message taken from the queue that did not fit the last batch.
        let mut next: Option<Message> = None;
        loop {
            let first = match next.take() {
                Some(m) => m,
                None => tokio::select! {
                    () = shutdown.cancelled() => return,
                    m = self.rx.recv() => match m {
                        Some(m) => m,
                        None => return,
                    },
                },
            };
            if is_snapshot(&first) {
                self.start_snapshot(first, &shutdown).await;
                continue;
            }
            let (messages, rest) = self.batch(first);
            next = rest;
            if messages.is_empty() {
                continue;
            }
            trace!(
                messages = messages.len(),
                bytes = messages.iter().map(Vec::len).sum::<usize>(),
                "send raft batch"
            );
            let request = RaftBatch {
                from: self.from,
                to: self.to,
                messages,
                voters: self.voters.clone(),
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.client.send(request) => r,
            };
            match result {
                Ok(_) => {
                    if failing {
                        debug!(url = %self.url, "peer reachable again");
                    }
                    failing = false;
                    backoff = BACKOFF_MIN;
                }
                Err(status) => {
                    self.stats
                        .batch_send_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) {
                        // The receiver's message limit is smaller than ours:
                        // retrying the same messages fails again.
                        error!(url = %self.url, code = ?status.code(), error = %status.message(), "raft batch to coordinator {} refused for its size; its messages are dropped", self.to);
                    } else if failing {
                        debug!(url = %self.url, error = %status.message(), "send raft messages");
                    } else {
                        warn!(url = %self.url, code = ?status.code(), error = %status.message(), "send raft messages; retrying with backoff");
                    }
                    failing = true;
                    let _ = self.inbound.try_send(Inbound::Unreachable { to: self.to });
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Encode `first` and whatever else is queued (snapshots excepted) into
    /// one batch that fits one transport message; returns the batch and a
    /// message taken from the queue for the next one.
    fn batch(&mut self, first: Message) -> (Vec<Vec<u8>>, Option<Message>) {
        let mut messages = Vec::new();
        let mut bytes = BATCH_OVERHEAD;
        let mut pending = Some(first);
        loop {
            let m = match pending.take() {
                Some(m) => m,
                None if messages.len() >= MAX_BATCH => return (messages, None),
                None => match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => return (messages, None),
                },
            };
            if is_snapshot(&m) {
                return (messages, Some(m));
            }
            let encoded = match m.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "encode raft message; dropped");
                    continue;
                }
            };
            let size = encoded.len() + MESSAGE_OVERHEAD;
            if bytes + size <= self.max_message {
                bytes += size;
                messages.push(encoded);
            } else if messages.is_empty() {
                self.drop_oversized(&m, encoded.len());
            } else {
                return (messages, Some(m));
            }
        }
    }

    /// A single message larger than the transport carries: only an entry
    /// appended before the entry limit existed (or under a larger
    /// `max_message_size`) makes one. Sending it would fail every time.
    fn drop_oversized(&mut self, m: &Message, size: usize) {
        let index = m.get_entries().first().map_or(m.index, |e| e.index);
        if self.oversized == Some(index) {
            debug!(index, bytes = size, "oversized raft message dropped again");
            return;
        }
        self.oversized = Some(index);
        error!(
            url = %self.url,
            msg_type = ?m.get_msg_type(),
            index,
            bytes = size,
            limit = self.max_message,
            "raft message to coordinator {} of {size} bytes exceeds the transport limit of {} bytes and is dropped; replication to it cannot pass the entry at index {index}",
            self.to,
            self.max_message
        );
    }

    /// Send a snapshot message on its own task (one at a time per peer);
    /// it reports the outcome to the raft task itself.
    async fn start_snapshot(&mut self, msg: Message, shutdown: &CancellationToken) {
        if self.snapshot.as_ref().is_some_and(|h| !h.is_finished()) {
            debug!("a snapshot to this peer is still being sent; the new one is reported failed");
            let _ = self
                .inbound
                .send(Inbound::SnapshotSent {
                    to: self.to,
                    ok: false,
                })
                .await;
            return;
        }
        let task = self.snapshots.clone();
        self.snapshot = Some(
            self.tracker.spawn(
                task.run(msg, shutdown.clone())
                    .instrument(info_span!("raft_snapshot", peer = self.to)),
            ),
        );
    }
}

/// The `lockstep.raft.v1.RaftTransport` service of one node: decodes raft
/// messages and queues them for the raft task.
#[derive(Debug, Clone)]
pub struct TransportService {
    pub(super) id: u64,
    /// This node's voters, ascending.
    voters: Vec<u64>,
    pub(super) limits: Limits,
    pub(super) stats: Arc<TransportStats>,
    inbound: mpsc::Sender<Inbound>,
}

impl TransportService {
    pub(crate) fn new(
        id: u64,
        voters: Vec<u64>,
        limits: Limits,
        stats: Arc<TransportStats>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Self {
        Self {
            id,
            voters,
            limits,
            stats,
            inbound,
        }
    }

    /// The tonic service to add to a gRPC server.
    pub fn into_server(self) -> RaftTransportServer<TransportService> {
        let max = self.limits.max_message;
        RaftTransportServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    /// Refuse traffic not meant for this node or from outside its group
    /// (`what` names it in the errors).
    pub(crate) fn check_sender(
        &self,
        caller: &Caller,
        what: &str,
        from: u64,
        to: u64,
        voters: &[u64],
    ) -> Result<(), Status> {
        // With mutual TLS only node N's own certificate speaks for node N:
        // another coordinator (or anything else our CA signed) cannot forge
        // its votes, heartbeats or entries.
        if let Some(identity) = caller.identity()
            && identity != peer_identity(from)
        {
            let msg = format!(
                "{what} claiming to be from node {from} was sent by identity '{identity}'; \
                 only '{}' may speak for node {from}",
                peer_identity(from)
            );
            warn!(from, identity, "refused: {msg}");
            return Err(Status::permission_denied(msg));
        }
        if to != self.id {
            return Err(Status::failed_precondition(format!(
                "{what} from node {from} for node {to} reached node {}",
                self.id
            )));
        }
        if !voters.is_empty() && voters != self.voters {
            let msg = format!(
                "coordinators disagree on membership: coordinator {from} has voters {voters:?}, coordinator {} has {:?}; give every coordinator the same peers",
                self.id, self.voters
            );
            warn!(from, "{msg}");
            return Err(Status::failed_precondition(msg));
        }
        if from == self.id || !self.voters.contains(&from) {
            let msg = format!(
                "{what} from node {from}, which is not a peer of coordinator {} (voters {:?})",
                self.id, self.voters
            );
            warn!(from, "{msg}");
            return Err(Status::permission_denied(msg));
        }
        Ok(())
    }

    /// Hand a checked message to the raft task.
    async fn deliver(&self, msg: Message) -> Result<(), Status> {
        // Waiting here is safe: the raft task never waits on the network.
        self.inbound
            .send(Inbound::Message(Box::new(msg)))
            .await
            .map_err(|_| Status::unavailable(format!("raft node {} is stopped", self.id)))
    }
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let caller = Caller::of(&request);
        let batch = request.into_inner();
        self.check_sender(&caller, "raft batch", batch.from, batch.to, &batch.voters)?;
        // Decode and check the whole batch before any of it reaches raft.
        let mut messages = Vec::with_capacity(batch.messages.len());
        for bytes in &batch.messages {
            let msg = Message::parse_from_bytes(bytes).map_err(|e| {
                Status::invalid_argument(format!(
                    "decode raft message from node {}: {e}",
                    batch.from
                ))
            })?;
            if msg.from != batch.from || msg.to != self.id {
                return Err(Status::invalid_argument(format!(
                    "raft message from node {} to node {} in a batch from node {} to node {}",
                    msg.from, msg.to, batch.from, self.id
                )));
            }
            // Senders of this version stream snapshots; older ones put them
            // in batches, which the message limit bounds.
            if is_snapshot(&msg) {
                let size = msg.get_snapshot().data.len() as u64;
                snapshot_stream::check_size(self, batch.from, size)?;
                self.stats
                    .snapshots_received
                    .fetch_add(1, Ordering::Relaxed);
            }
            messages.push(msg);
        }
        for msg in messages {
            self.deliver(msg).await?;
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn send_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let caller = Caller::of(&request);
        let msg = snapshot_stream::receive(self, &caller, request.into_inner()).await?;
        self.deliver(msg).await?;
        Ok(Response::new(RaftAck {}))
    }
}
