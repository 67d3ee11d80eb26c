//! [`MediaWriter`]: one object streamed to a media agent with a Put, kept
//! resumable by a window of unacknowledged bytes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use lockstep_proto::media as pb;
use lockstep_proto::media::put_request::Msg;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::{BACKOFF, MediaStore, transient};
use crate::error::{Error, Result};
use crate::sink::{ObjectWriter, check_key};

/// An object being written to a media agent.
#[derive(Debug)]
pub struct MediaWriter {
    store: MediaStore,
    key: String,
    stream: Option<PutStream>,
    /// Chunks sent and not yet acknowledged, by offset, oldest first.
    window: VecDeque<(u64, Bytes)>,
    /// Bytes written but not yet sent (less than a chunk).
    pending: BytesMut,
    /// The durable offset the media agent last acknowledged.
    acked: u64,
    /// Bytes sent (the end of the window).
    sent: u64,
    /// Where the last explicit ack request was sent.
    sync_asked: Option<u64>,
    hasher: Option<Sha256>,
    /// Set once `finish` has sent the size and checksum.
    finishing: Option<pb::PutFinish>,
    /// The media agent acknowledged `done`.
    done: bool,
    /// Bytes this writer sent a second time.
    resent: u64,
}

#[derive(Debug)]
struct PutStream {
    tx: mpsc::Sender<pb::PutRequest>,
    acks: Streaming<pb::PutAck>,
}

impl MediaWriter {
    pub(super) async fn create(store: MediaStore, key: &str) -> Result<MediaWriter> {
        check_key(key)
            .map_err(|reason| store.err(key, "create", &Status::invalid_argument(reason)))?;
        let mut w = MediaWriter {
            store,
            key: key.to_string(),
            stream: None,
            window: VecDeque::new(),
            pending: BytesMut::new(),
            acked: 0,
            sent: 0,
            sync_asked: None,
            hasher: Some(Sha256::new()),
            finishing: None,
            done: false,
            resent: 0,
        };
        // A first open that fails transiently is retried like a broken stream.
        match w.open(0).await {
            Ok(s) => w.stream = Some(s),
            Err(s) => w.recover(s).await?,
        }
        Ok(w)
    }

    /// Bytes this writer sent a second time after broken streams.
    pub fn resent_bytes(&self) -> u64 {
        self.resent
    }

    /// The offset the media agent last acknowledged as durable.
    pub fn acknowledged(&self) -> u64 {
        self.acked
    }

    fn err(&self, action: &'static str, status: &Status) -> Error {
        self.store.err(&self.key, action, status)
    }

    /// Opens a Put continuing at `resume_at`; the media agent's first ack
    /// confirms the offset.
    async fn open(&self, resume_at: u64) -> std::result::Result<PutStream, Status> {
        let (tx, rx) = mpsc::channel(8);
        let open = pb::PutRequest {
            msg: Some(Msg::Open(pb::PutOpen {
                pool: self.store.inner.pool.clone(),
                key: self.key.clone(),
                resume_at,
            })),
        };
        tx.send(open)
            .await
            .map_err(|_| Status::internal("put request channel closed"))?;
        let mut acks = self
            .store
            .client()
            .put(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match acks.message().await? {
            Some(ack) if ack.durable == resume_at && !ack.done => Ok(PutStream { tx, acks }),
            other => Err(Status::internal(format!(
                "the media agent answered an open at {resume_at} with {other:?}"
            ))),
        }
    }

    async fn send(&mut self, msg: Msg) -> std::result::Result<(), Status> {
        let Some(s) = &self.stream else {
            return Err(Status::unavailable("no stream"));
        };
        s.tx.send(pb::PutRequest { msg: Some(msg) })
            .await
            .map_err(|_| Status::unavailable("the Put stream closed"))
    }

    fn chunk(offset: u64, data: Bytes, sync: bool) -> Msg {
        Msg::Chunk(pb::Chunk {
            offset,
            crc32c: crc32c::crc32c(&data),
            data,
            sync,
        })
    }

    /// Sends one chunk, first waiting for room in the window.
    async fn push(&mut self, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        while !self.window.is_empty()
            && self.sent - self.acked + len > self.store.inner.opts.window as u64
        {
            if self.sync_asked != Some(self.sent) {
                self.sync_asked = Some(self.sent);
                if let Err(s) = self.send(Self::chunk(self.sent, Bytes::new(), true)).await {
                    self.recover(s).await?;
                    continue;
                }
            }
            self.next_ack().await?;
        }
        let offset = self.sent;
        self.window.push_back((offset, data.clone()));
        self.sent += len;
        if let Err(s) = self.send(Self::chunk(offset, data, false)).await {
            // Recovery resends the whole window, this chunk included.
            self.recover(s).await?;
        }
        Ok(())
    }

    /// Waits for the next ack (recovering a broken stream on the way).
    async fn next_ack(&mut self) -> Result<()> {
        loop {
            if self.done {
                return Ok(());
            }
            let next = match &mut self.stream {
                Some(s) => s.acks.message().await,
                None => Err(Status::unavailable("no stream")),
            };
            match next {
                Ok(Some(ack)) => return self.on_ack(ack),
                Ok(None) => {
                    self.recover(Status::unavailable("the media agent ended the Put stream"))
                        .await?
                }
                Err(s) => self.recover(s).await?,
            }
        }
    }

    fn on_ack(&mut self, ack: pb::PutAck) -> Result<()> {
        if ack.durable < self.acked || ack.durable > self.sent {
            return Err(self.err(
                "write",
                &Status::internal(format!(
                    "the media agent acknowledged offset {} but {} was acknowledged and {} sent",
                    ack.durable, self.acked, self.sent
                )),
            ));
        }
        self.acked = ack.durable;
        while let Some((off, data)) = self.window.front_mut() {
            let end = *off + data.len() as u64;
            if end <= self.acked {
                self.window.pop_front();
            } else {
                if *off < self.acked {
                    let cut = (self.acked - *off) as usize;
                    *data = data.slice(cut..);
                    *off = self.acked;
                }
                break;
            }
        }
        if ack.done {
            if self.finishing.is_none() || ack.durable != self.sent {
                return Err(self.err(
                    "write",
                    &Status::internal("the media agent said done before finish"),
                ));
            }
            self.done = true;
        }
        Ok(())
    }

    /// After a broken stream: reconnect with backoff (for up to
    /// `retry_for`), reopen at the acknowledged offset and resend the
    /// window (and `finish` if it was sent). Fails at once on a
    /// non-transient error.
    async fn recover(&mut self, cause: Status) -> Result<()> {
        self.stream = None;
        if !transient(&cause) {
            return Err(self.err("write", &cause));
        }
        let started = Instant::now();
        let retry_for = self.store.inner.opts.retry_for;
        let mut backoff = BACKOFF.0;
        let mut last = cause;
        tracing::warn!(sink = %self.store.inner.label, key = %self.key, acked = self.acked, sent = self.sent, status = %last, "media stream broke; resuming");
        loop {
            if started.elapsed() >= retry_for {
                return Err(self.err(
                    "write",
                    &Status::new(
                        last.code(),
                        format!(
                            "could not resume at offset {} within {retry_for:?}: {}",
                            self.acked,
                            last.message()
                        ),
                    ),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
            match self.open(self.acked).await {
                Ok(s) => self.stream = Some(s),
                Err(s) if s.code() == Code::AlreadyExists && self.finishing.is_some() => {
                    // The object was committed but its `done` was lost.
                    return self.check_finished().await;
                }
                Err(s) if transient(&s) => {
                    last = s;
                    continue;
                }
                Err(s) => return Err(self.err("resume", &s)),
            }
            self.sync_asked = None;
            let window: Vec<(u64, Bytes)> = self.window.iter().cloned().collect();
            let mut resent = 0u64;
            let mut broke = None;
            for (off, data) in window {
                let len = data.len() as u64;
                if let Err(s) = self.send(Self::chunk(off, data, false)).await {
                    broke = Some(s);
                    break;
                }
                resent += len;
            }
            if broke.is_none()
                && let Some(f) = self.finishing.clone()
                && let Err(s) = self.send(Msg::Finish(f)).await
            {
                broke = Some(s);
            }
            self.resent += resent;
            self.store.inner.resent.fetch_add(resent, Ordering::Relaxed);
            match broke {
                None => {
                    tracing::info!(sink = %self.store.inner.label, key = %self.key, resumed_at = self.acked, resent, "media stream resumed");
                    return Ok(());
                }
                Some(s) => {
                    self.stream = None;
                    last = s;
                }
            }
        }
    }

    /// Reads back an object that appeared while `finish` waited for its
    /// ack, and accepts it only if it is byte for byte what was sent.
    async fn check_finished(&mut self) -> Result<()> {
        let Some(f) = self.finishing.clone() else {
            return Err(self.err("finish", &Status::internal("not finishing")));
        };
        let mut stream = crate::sink::Store::read(&self.store, &self.key, 0).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(piece) = stream.next().await {
            let piece =
                piece.map_err(|e| self.err("read back", &Status::unavailable(e.to_string())))?;
            size += piece.len() as u64;
            hasher.update(&piece);
        }
        if size != f.size || hasher.finalize().as_slice() != &f.sha256[..] {
            return Err(self.err(
                "finish",
                &Status::already_exists(
                    "another object appeared under this key while it was written",
                ),
            ));
        }
        tracing::info!(sink = %self.store.inner.label, key = %self.key, size, "the object was stored before its ack was lost; read back and verified");
        self.acked = size;
        self.window.clear();
        self.done = true;
        Ok(())
    }

    /// Tells the media agent to drop the partial file (best effort, retried
    /// while the Put this writer just dropped is still ending there).
    async fn discard(&mut self) {
        self.stream = None;
        let req = pb::DiscardRequest {
            pool: self.store.inner.pool.clone(),
            key: self.key.clone(),
        };
        let discarded = self
            .store
            .call(&self.key, "discard", |mut c| {
                let req = req.clone();
                async move { c.discard(req).await }
            })
            .await;
        if let Err(e) = discarded {
            tracing::warn!(error = %e, "could not discard a partial object");
        }
    }
}

#[async_trait::async_trait]
impl ObjectWriter for MediaWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Err(self.err("write", &Status::failed_precondition("already finished")));
        };
        hasher.update(&data);
        self.pending.extend_from_slice(&data);
        let chunk = self.store.inner.opts.chunk;
        while self.pending.len() >= chunk {
            let piece = self.pending.split_to(chunk).freeze();
            self.push(piece).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        if !self.pending.is_empty() {
            let piece = self.pending.split().freeze();
            self.push(piece).await?;
        }
        let Some(hasher) = self.hasher.take() else {
            return Err(self.err("finish", &Status::failed_precondition("already finished")));
        };
        let f = pb::PutFinish {
            size: self.sent,
            sha256: Bytes::copy_from_slice(&hasher.finalize()),
        };
        self.finishing = Some(f.clone());
        if let Err(s) = self.send(Msg::Finish(f)).await {
            self.recover(s).await?;
        }
        while !self.done {
            self.next_ack().await?;
        }
        Ok(self.sent)
    }

    async fn abort(mut self: Box<Self>) {
        self.discard().await;
        self.done = true;
    }
}
