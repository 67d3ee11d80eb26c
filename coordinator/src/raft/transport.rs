//! Raft messages over gRPC: per-peer sender tasks (bounded queues, backoff,
//! never blocking the raft task) and the `RaftTransport` service that feeds
//! received messages to the raft task.
//!
//! Wire rule: every raft-rs `Message` crosses the wire as opaque bytes in
//! raft-rs's own (rust-protobuf) encoding inside our prost `RaftBatch`.

use std::collections::BTreeMap;
use std::time::Duration;

use lockstep_proto::raft::raft_transport_client::RaftTransportClient;
use lockstep_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
use lockstep_proto::raft::{RaftAck, RaftBatch};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span, trace, warn};

use super::error::{Error, Result};

/// Largest gRPC message either side accepts (snapshots travel in one).
const MAX_GRPC_MESSAGE: usize = 512 * 1024 * 1024;
/// Most raft messages sent in one RPC.
const MAX_BATCH: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Start one sender task per peer other than `id`, on `tracker`.
    pub(crate) fn spawn(
        id: u64,
        peers: &BTreeMap<u64, String>,
        queue: usize,
        inbound: mpsc::Sender<Inbound>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let mut queues = BTreeMap::new();
        let voters: Vec<u64> = peers.keys().copied().collect();
        for (&to, url) in peers.iter().filter(|(to, _)| **to != id) {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::Config(format!("peer {to} URL {url:?}: {e}")))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(RPC_TIMEOUT);
            let client = RaftTransportClient::new(endpoint.connect_lazy())
                .max_encoding_message_size(MAX_GRPC_MESSAGE)
                .max_decoding_message_size(MAX_GRPC_MESSAGE);
            let (tx, rx) = mpsc::channel(queue);
            queues.insert(to, tx);
            let task = PeerTask {
                from: id,
                to,
                voters: voters.clone(),
                url: url.clone(),
                client,
                rx,
                inbound: inbound.clone(),
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

struct PeerTask {
    from: u64,
    to: u64,
    voters: Vec<u64>,
    url: String,
    client: RaftTransportClient<Channel>,
    rx: mpsc::Receiver<Message>,
    inbound: mpsc::Sender<Inbound>,
}

impl PeerTask {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                m = self.rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let snapshots = batch
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                .count();
            let mut messages = Vec::with_capacity(batch.len());
            for m in &batch {
                match m.write_to_bytes() {
                    Ok(b) => messages.push(b),
                    Err(e) => warn!(error = %e, "encode raft message; dropped"),
                }
            }
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
            let ok = result.is_ok();
            for _ in 0..snapshots {
                let _ = self
                    .inbound
                    .send(Inbound::SnapshotSent { to: self.to, ok })
                    .await;
            }
            match result {
                Ok(_) => {
                    if failing {
                        debug!(url = %self.url, "peer reachable again");
                    }
                    failing = false;
                    backoff = BACKOFF_MIN;
                }
                Err(status) => {
                    if failing {
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
}

/// The `lockstep.raft.v1.RaftTransport` service of one node: decodes raft
/// messages and queues them for the raft task.
#[derive(Debug, Clone)]
pub struct TransportService {
    id: u64,
    /// This node's voters, ascending.
    voters: Vec<u64>,
    inbound: mpsc::Sender<Inbound>,
}

impl TransportService {
    pub(crate) fn new(id: u64, voters: Vec<u64>, inbound: mpsc::Sender<Inbound>) -> Self {
        Self {
            id,
            voters,
            inbound,
        }
    }

    /// The tonic service to add to a gRPC server.
    pub fn into_server(self) -> RaftTransportServer<TransportService> {
        RaftTransportServer::new(self)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE)
    }
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let batch = request.into_inner();
        if batch.to != self.id {
            return Err(Status::failed_precondition(format!(
                "raft batch from node {} for node {} reached node {}",
                batch.from, batch.to, self.id
            )));
        }
        if !batch.voters.is_empty() && batch.voters != self.voters {
            let msg = format!(
                "coordinators disagree on membership: coordinator {} has voters {:?}, coordinator {} has {:?}; give every coordinator the same peers",
                batch.from, batch.voters, self.id, self.voters
            );
            warn!(from = batch.from, "{msg}");
            return Err(Status::failed_precondition(msg));
        }
        if batch.from == self.id || !self.voters.contains(&batch.from) {
            let msg = format!(
                "raft batch from node {}, which is not a peer of coordinator {} (voters {:?})",
                batch.from, self.id, self.voters
            );
            warn!(from = batch.from, "{msg}");
            return Err(Status::permission_denied(msg));
        }
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
            messages.push(msg);
        }
        for msg in messages {
            // Waiting here is safe: the raft task never waits on the network.
            self.inbound
                .send(Inbound::Message(Box::new(msg)))
                .await
                .map_err(|_| Status::unavailable(format!("raft node {} is stopped", self.id)))?;
        }
        Ok(Response::new(RaftAck {}))
    }
}
