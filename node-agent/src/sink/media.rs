//! A disk pool on another agent (a media agent), reached over
//! `lockstep.media.v1` (served by [`crate::grpc::media`]).
//!
//! A writer sends the object in CRC-32C-checked chunks and keeps the bytes
//! the media agent has not yet acknowledged (acks come only after an fsync)
//! in a bounded window; `write` waits while the window is full. When the
//! stream breaks (connection reset, the agent restarting) the writer
//! reconnects with backoff for a bounded time, reopens the Put at the last
//! acknowledged offset and resends only the window. `finish` sends the size
//! and SHA-256 of the whole object, which the media agent checks before it
//! makes the object visible. Readers verify every chunk and reconnect at the
//! offset they reached. `abort` has the media agent discard the partial
//! file; a writer merely dropped leaves it (invisible, like a dropped
//! [`super::disk::DiskWriter`]'s) until the key is written again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockstep_proto::media as pb;
use lockstep_proto::media::media_store_client::MediaStoreClient;
use lockstep_proto::tls::Transport;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use super::{ByteStream, ObjectInfo, ObjectWriter, Store, check_key};

mod writer;
use crate::error::{Error, Result};
use crate::grpc::media::{MAX_CHUNK, MAX_MESSAGE};
pub use writer::MediaWriter;

/// How a [`MediaStore`] writes and recovers.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// Bytes sent but not yet acknowledged that a writer keeps to resend.
    pub window: usize,
    /// Bytes per chunk (at most 4 MiB).
    pub chunk: usize,
    /// How long a broken stream or call is retried before the write fails.
    pub retry_for: Duration,
    /// Mutual TLS (the agent's own certificate) or plaintext.
    pub transport: Transport,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            window: 16 << 20,
            chunk: 1 << 20,
            retry_for: Duration::from_secs(60),
            transport: Transport::Plaintext,
        }
    }
}

/// First and longest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A disk pool held by another agent.
#[derive(Debug, Clone)]
pub struct MediaStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    channel: Channel,
    addr: String,
    pool: String,
    label: String,
    opts: MediaOptions,
    /// Bytes writers sent again after a broken stream.
    resent: AtomicU64,
}

/// A pool's space, as the media agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// An object's state on the media agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// The finished object's size.
    pub size: Option<u64>,
    /// The partial file's length.
    pub partial: Option<u64>,
}

/// Codes a stream or call is retried on: the transport broke or the agent
/// asked to come back later.
fn transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => true,
        // h2 and hyper report a connection torn down mid-stream this way.
        Code::Internal => {
            let m = status.message();
            m.contains("h2 protocol error") || m.contains("transport error")
        }
        _ => false,
    }
}

impl MediaStore {
    /// Connects to the agent at `addr` holding the pool at `path`, and
    /// checks that it serves that pool.
    pub async fn connect(
        addr: &str,
        path: &str,
        label: String,
        transport: Transport,
    ) -> Result<MediaStore> {
        let opts = MediaOptions {
            transport,
            ..MediaOptions::default()
        };
        MediaStore::connect_with(addr, path, label, opts).await
    }

    /// [`MediaStore::connect`] with explicit options.
    pub async fn connect_with(
        addr: &str,
        path: &str,
        label: String,
        opts: MediaOptions,
    ) -> Result<MediaStore> {
        if opts.chunk == 0 || opts.chunk > MAX_CHUNK || opts.window < opts.chunk {
            return Err(Error::Config(format!(
                "{label}: chunk must be 1..={MAX_CHUNK} bytes and at most the window, got chunk {} window {}",
                opts.chunk, opts.window
            )));
        }
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| Error::Config(format!("{label}: bad media agent address {addr:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = opts.transport.connect_lazy(endpoint);
        let store = MediaStore {
            inner: Arc::new(Inner {
                channel,
                addr: addr.to_string(),
                pool: path.to_string(),
                label,
                opts,
                resent: AtomicU64::new(0),
            }),
        };
        // One call, not retried: a sink that is not there fails the open.
        let reply = store
            .client()
            .usage(pb::UsageRequest {
                pool: store.inner.pool.clone(),
            })
            .await;
        reply.map_err(|s| store.err("", "open the pool", &s))?;
        Ok(store)
    }

    /// Bytes writers of this store sent a second time after broken streams.
    pub fn resent_bytes(&self) -> u64 {
        self.inner.resent.load(Ordering::Relaxed)
    }

    /// The pool's space.
    pub async fn usage(&self) -> Result<Usage> {
        let pool = self.inner.pool.clone();
        let r = self
            .call("", "measure the pool", |mut c| {
                let pool = pool.clone();
                async move { c.usage(pb::UsageRequest { pool }).await }
            })
            .await?;
        Ok(Usage {
            used_bytes: r.used_bytes,
            free_bytes: r.free_bytes,
            total_bytes: r.total_bytes,
        })
    }

    /// An object's size and its partial file's length.
    pub async fn stat(&self, key: &str) -> Result<ObjectStat> {
        let req = pb::StatRequest {
            pool: self.inner.pool.clone(),
            key: key.to_string(),
        };
        let r = self
            .call(key, "stat", |mut c| {
                let req = req.clone();
                async move { c.stat(req).await }
            })
            .await?;
        Ok(ObjectStat {
            size: r.size,
            partial: r.partial,
        })
    }

    fn client(&self) -> MediaStoreClient<Channel> {
        MediaStoreClient::new(self.inner.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn err(&self, key: &str, action: &'static str, status: &Status) -> Error {
        Error::Sink {
            sink: self.inner.label.clone(),
            key: key.to_string(),
            action,
            reason: format!(
                "media agent at {}: {:?}: {}",
                self.inner.addr,
                status.code(),
                status.message()
            ),
        }
    }

    /// A unary call, retried with backoff on transient errors for up to
    /// `retry_for`.
    async fn call<T, F, Fut>(&self, key: &str, action: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut(MediaStoreClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.inner.opts.retry_for;
        let mut backoff = BACKOFF.0;
        loop {
            match f(self.client()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if transient(&s) && Instant::now() + backoff < deadline => {
                    tracing::debug!(sink = %self.inner.label, key, status = %s, "media call failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
                Err(s) => return Err(self.err(key, action, &s)),
            }
        }
    }

    /// Opens a Get at `offset`.
    async fn open_get(
        &self,
        key: &str,
        offset: u64,
    ) -> std::result::Result<Streaming<pb::Chunk>, Status> {
        let req = pb::GetRequest {
            pool: self.inner.pool.clone(),
            key: key.to_string(),
            offset,
        };
        Ok(self.client().get(req).await?.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MediaStore {
    fn describe(&self) -> String {
        self.inner.label.clone()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MediaWriter::create(self.clone(), key).await?))
    }

    async fn read(&self, key: &str, offset: u64) -> Result<ByteStream> {
        check_key(key)
            .map_err(|reason| self.err(key, "read", &Status::invalid_argument(reason)))?;
        let first = self
            .call(key, "read", |_| async move {
                self.open_get(key, offset).await.map(tonic::Response::new)
            })
            .await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(read_task(self.clone(), key.to_string(), offset, first, tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.stat(key).await?.size)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let req = pb::ListRequest {
            pool: self.inner.pool.clone(),
            prefix: prefix.to_string(),
        };
        let r = self
            .call(prefix, "list", |mut c| {
                let req = req.clone();
                async move { c.list(req).await }
            })
            .await?;
        Ok(r.objects
            .into_iter()
            .map(|o| ObjectInfo {
                key: o.key,
                size: o.size,
            })
            .collect())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let req = pb::DeleteRequest {
            pool: self.inner.pool.clone(),
            prefix: prefix.to_string(),
        };
        let r = self
            .call(prefix, "delete", |mut c| {
                let req = req.clone();
                async move { c.delete(req).await }
            })
            .await?;
        Ok(r.deleted)
    }
}

/// Feeds a Get into a reader's channel, checking each chunk, and reopens
/// the Get at the offset reached when the stream breaks.
async fn read_task(
    store: MediaStore,
    key: String,
    mut offset: u64,
    first: Streaming<pb::Chunk>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) {
    let io_err = |what: String| {
        std::io::Error::other(format!("{}: cannot read {key}: {what}", store.inner.label))
    };
    let mut stream = Some(first);
    let mut broke_at: Option<Instant> = None;
    let mut backoff = BACKOFF.0;
    loop {
        let next = match &mut stream {
            Some(s) => s.message().await,
            None => match store.open_get(&key, offset).await {
                Ok(s) => {
                    stream = Some(s);
                    continue;
                }
                Err(s) => Err(s),
            },
        };
        match next {
            Ok(Some(c)) => {
                broke_at = None;
                backoff = BACKOFF.0;
                if c.offset != offset {
                    let _ = tx
                        .send(Err(io_err(format!(
                            "the media agent sent a chunk at offset {}, expected {offset}",
                            c.offset
                        ))))
                        .await;
                    return;
                }
                let crc = crc32c::crc32c(&c.data);
                if crc != c.crc32c {
                    let _ = tx
                        .send(Err(io_err(format!(
                            "chunk at offset {offset} has CRC-32C {crc:08x}, the media agent says {:08x}",
                            c.crc32c
                        ))))
                        .await;
                    return;
                }
                offset += c.data.len() as u64;
                if tx.send(Ok(c.data)).await.is_err() {
                    return; // the reader is gone
                }
            }
            Ok(None) => return,
            Err(s) => {
                stream = None;
                let since = *broke_at.get_or_insert_with(Instant::now);
                if !transient(&s) || since.elapsed() >= store.inner.opts.retry_for {
                    let _ = tx
                        .send(Err(io_err(format!(
                            "media agent at {}: {:?}: {}",
                            store.inner.addr,
                            s.code(),
                            s.message()
                        ))))
                        .await;
                    return;
                }
                tracing::warn!(sink = %store.inner.label, key, offset, status = %s, "media read broke; reopening");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

#[cfg(test)]
mod tests;
