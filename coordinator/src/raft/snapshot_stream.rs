//! Raft snapshots over the `SendSnapshot` stream: the sender splits the
//! snapshot data into chunks after a header (the raft message with its data
//! emptied); the receiver checks the header, bounds the size, reassembles,
//! and only a complete snapshot message reaches the raft task.

use lockstep_proto::tls::{Caller, Transport};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockstep_proto::raft::raft_transport_client::RaftTransportClient;
use lockstep_proto::raft::{SnapshotChunk, SnapshotHeader};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};
use tracing::{debug, error, info, warn};

use super::transport::{Inbound, TransportService};

/// How long a receiver waits for the next chunk before giving up.
const CHUNK_IDLE: Duration = Duration::from_secs(30);
/// A transfer may take this long plus a second per MiB of data.
const BASE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause after the first failed snapshot before raft may try again; doubles
/// with every failure in a row.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// The receive buffer grows to the declared size as data arrives, from at
/// most this much up front.
const INITIAL_BUFFER: u64 = 64 << 20;

/// A client for snapshot streams: its own connection, no overall request
/// timeout (each request sets one by size), HTTP/2 keepalive to notice a
/// dead peer mid-stream.
pub(crate) fn client(
    transport: &Transport,
    endpoint: Endpoint,
    max_message: usize,
) -> RaftTransportClient<Channel> {
    let endpoint = endpoint
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10));
    RaftTransportClient::new(transport.connect_lazy(endpoint))
        .max_encoding_message_size(max_message)
        .max_decoding_message_size(max_message)
}

/// Sends snapshot messages to one peer.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotSender {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) voters: Vec<u64>,
    pub(crate) url: String,
    /// Bytes of data per chunk.
    pub(crate) chunk: usize,
    pub(crate) client: RaftTransportClient<Channel>,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Failed snapshots in a row.
    pub(crate) failures: Arc<AtomicU32>,
}

impl SnapshotSender {
    /// Send `msg` (a MsgSnapshot) and report the outcome to the raft task;
    /// a failure is reported after a pause growing with the failures in a
    /// row, so raft-rs (which waits for the report) does not build and send
    /// a refused snapshot over and over.
    pub(crate) async fn run(mut self, msg: Message, shutdown: CancellationToken) {
        let size = msg.get_snapshot().data.len();
        let index = msg.get_snapshot().get_metadata().index;
        let started = std::time::Instant::now();
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = self.send(msg) => r,
        };
        let ok = match result {
            Ok(()) => {
                self.failures.store(0, Ordering::Relaxed);
                info!(to = self.to, index, bytes = size, elapsed = ?started.elapsed(), "raft snapshot sent");
                true
            }
            Err(status) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed);
                let pause = RETRY_MIN
                    .saturating_mul(1 << failures.min(8))
                    .min(RETRY_MAX);
                if status.code() == Code::ResourceExhausted {
                    error!(url = %self.url, index, bytes = size, error = %status.message(), "coordinator {} refused the raft snapshot; it cannot catch up until its max_snapshot_size allows {size} bytes", self.to);
                } else {
                    warn!(url = %self.url, index, bytes = size, code = ?status.code(), error = %status.message(), ?pause, "send raft snapshot; raft retries after a pause");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                false
            }
        };
        let _ = self
            .inbound
            .send(Inbound::SnapshotSent { to: self.to, ok })
            .await;
    }

    async fn send(&mut self, mut msg: Message) -> Result<(), Status> {
        let data = std::mem::take(&mut msg.mut_snapshot().data);
        let message = msg.write_to_bytes().map_err(|e| {
            Status::internal(format!("encode the raft snapshot message header: {e}"))
        })?;
        let len = data.len();
        let header = SnapshotChunk {
            header: Some(SnapshotHeader {
                from: self.from,
                to: self.to,
                voters: self.voters.clone(),
                message,
                data_size: len as u64,
            }),
            data: Vec::new(),
        };
        let chunk = self.chunk.max(1);
        let chunks = (0..len).step_by(chunk).map(move |at| SnapshotChunk {
            header: None,
            data: data[at..(at + chunk).min(len)].to_vec(),
        });
        let mut request =
            Request::new(futures::stream::iter(std::iter::once(header).chain(chunks)));
        request.set_timeout(BASE_DEADLINE + Duration::from_secs((len >> 20) as u64));
        debug!(to = self.to, bytes = len, chunk, "sending raft snapshot");
        self.client.send_snapshot(request).await.map(|_| ())
    }
}

/// Refuse snapshot data over this node's bound.
pub(crate) fn check_size(service: &TransportService, from: u64, size: u64) -> Result<(), Status> {
    let max = service.limits.max_snapshot;
    if size <= max {
        return Ok(());
    }
    service
        .stats
        .snapshots_refused
        .fetch_add(1, Ordering::Relaxed);
    let msg = format!(
        "raft snapshot from coordinator {from} has {size} bytes of data, over the max_snapshot_size of coordinator {} ({max} bytes); raise max_snapshot_size on every coordinator",
        service.id
    );
    warn!(from, "{msg}");
    Err(Status::resource_exhausted(msg))
}

fn invalid(service: &TransportService, from: Option<u64>, what: String) -> Status {
    let sender = from.map_or("an unknown sender".to_string(), |f| {
        format!("coordinator {f}")
    });
    let msg = format!(
        "raft snapshot stream from {sender} to coordinator {}: {what}",
        service.id
    );
    warn!("{msg}");
    Status::invalid_argument(msg)
}

/// The next chunk, waiting at most [`CHUNK_IDLE`].
async fn next_chunk(
    service: &TransportService,
    from: Option<u64>,
    stream: &mut Streaming<SnapshotChunk>,
) -> Result<Option<SnapshotChunk>, Status> {
    let chunk = match tokio::time::timeout(CHUNK_IDLE, stream.message()).await {
        Ok(Ok(chunk)) => chunk,
        Ok(Err(status)) => {
            let msg = format!(
                "receive raft snapshot chunk from {} at coordinator {}: {}",
                from.map_or("an unknown sender".to_string(), |f| format!(
                    "coordinator {f}"
                )),
                service.id,
                status.message()
            );
            warn!("{msg}");
            return Err(Status::new(status.code(), msg));
        }
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "no raft snapshot chunk for {CHUNK_IDLE:?} at coordinator {}",
                service.id
            )));
        }
    };
    if let Some(c) = &chunk
        && !c.data.is_empty()
    {
        service
            .stats
            .snapshot_chunks
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(chunk)
}

/// Receive one snapshot stream: the complete MsgSnapshot, or why not.
pub(crate) async fn receive(
    service: &TransportService,
    caller: &Caller,
    mut stream: Streaming<SnapshotChunk>,
) -> Result<Message, Status> {
    let Some(first) = next_chunk(service, None, &mut stream).await? else {
        return Err(invalid(service, None, "empty stream, no header".into()));
    };
    let Some(header) = first.header else {
        return Err(invalid(
            service,
            None,
            "the first chunk has no header".into(),
        ));
    };
    let from = header.from;
    service.check_sender(caller, "raft snapshot", from, header.to, &header.voters)?;
    let mut msg = Message::parse_from_bytes(&header.message)
        .map_err(|e| invalid(service, Some(from), format!("decode the raft message: {e}")))?;
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return Err(invalid(
            service,
            Some(from),
            format!(
                "the header carries a {:?}, not a MsgSnapshot",
                msg.get_msg_type()
            ),
        ));
    }
    if msg.from != from || msg.to != service.id {
        return Err(invalid(
            service,
            Some(from),
            format!(
                "the header carries a message from node {} to node {}",
                msg.from, msg.to
            ),
        ));
    }
    if !msg.get_snapshot().data.is_empty() {
        return Err(invalid(
            service,
            Some(from),
            "the header's message carries snapshot data; data goes in the chunks".into(),
        ));
    }
    let size = header.data_size;
    check_size(service, from, size)?;
    let mut data = Vec::with_capacity(size.min(INITIAL_BUFFER) as usize);
    let mut chunk = first.data;
    loop {
        if data.len() as u64 + chunk.len() as u64 > size {
            return Err(invalid(
                service,
                Some(from),
                format!("more than the {size} bytes of data its header declared"),
            ));
        }
        data.extend_from_slice(&chunk);
        chunk = match next_chunk(service, Some(from), &mut stream).await? {
            None => break,
            Some(c) if c.header.is_some() => {
                return Err(invalid(
                    service,
                    Some(from),
                    "a second header mid-stream".into(),
                ));
            }
            Some(c) => c.data,
        };
    }
    if data.len() as u64 != size {
        return Err(invalid(
            service,
            Some(from),
            format!(
                "truncated: {} of the {size} bytes of data its header declared",
                data.len()
            ),
        ));
    }
    msg.mut_snapshot().data = data.into();
    service
        .stats
        .snapshots_received
        .fetch_add(1, Ordering::Relaxed);
    debug!(from, bytes = size, "raft snapshot received");
    Ok(msg)
}
