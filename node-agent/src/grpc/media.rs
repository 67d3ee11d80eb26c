//! `lockstep.media.v1.MediaStore` handlers: the disk pools this agent holds
//! for other agents, served over [`crate::sink::disk::DiskStore`].
//!
//! A Put writes the partial file through a [`DiskWriter`], checks every
//! chunk's offset and CRC-32C, fsyncs before every acknowledgement, and at
//! `finish` checks the size and SHA-256 of the whole object before it commits
//! (fsync, link into place, fsync the directories). A broken stream keeps the
//! partial file (fsynced) for a Put that resumes at an acknowledged offset.
//! See docs/protocol.md, "Media streams".

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use lockstep_proto::media as pb;
use lockstep_proto::media::media_store_server::{MediaStore, MediaStoreServer};
use lockstep_proto::media::put_request::Msg;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::sink::disk::{DiskStore, DiskWriter};
use crate::sink::{Local, ObjectWriter, Store, check_key};

/// The largest chunk a Put may carry (and the message size the service
/// accepts, plus room for the envelope).
pub const MAX_CHUNK: usize = 4 << 20;
/// The server fsyncs and acknowledges at least this often, in bytes.
pub const ACK_EVERY: u64 = 4 << 20;
/// Bytes per Get chunk.
const GET_CHUNK: usize = 1 << 20;

/// The gRPC message size limit both sides set: a full chunk and its envelope.
pub const MAX_MESSAGE: usize = MAX_CHUNK + (64 << 10);

/// Serves this agent's disk pools (see [`Local::pool_dir`]).
#[derive(Debug, Clone)]
pub struct MediaService {
    local: Local,
    /// Partial files a Put is writing now: a second Put of the same key
    /// waits (ABORTED, which writers retry) until the first has ended.
    writing: Arc<Mutex<HashSet<PathBuf>>>,
}

/// The service, ready for a tonic router.
pub fn media_service(local: Local) -> MediaStoreServer<MediaService> {
    MediaStoreServer::new(MediaService::new(local))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

impl MediaService {
    pub fn new(local: Local) -> MediaService {
        MediaService {
            local,
            writing: Arc::default(),
        }
    }

    /// The pool at `path`, if this agent holds one there.
    fn pool(&self, path: &str) -> Result<Pool, Status> {
        let dir = self
            .local
            .pool_dir(path)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(Pool {
            label: format!("disk pool {path} on media agent {}", self.local.agent),
            store: DiskStore::new(
                dir,
                format!("disk pool {path} on media agent {}", self.local.agent),
            ),
        })
    }
}

/// One request's pool.
struct Pool {
    store: DiskStore,
    label: String,
}

impl Pool {
    fn key(&self, key: &str) -> Result<(), Status> {
        check_key(key).map_err(|reason| {
            Status::invalid_argument(format!("{}: bad key: {reason}", self.label))
        })
    }

    /// A store error as a status: a full filesystem is RESOURCE_EXHAUSTED
    /// naming the pool and key, anything else INTERNAL with its file.
    fn fail(&self, key: &str, action: &str, e: Error) -> Status {
        if is_full(&e) {
            Status::resource_exhausted(format!(
                "{} is full: cannot {action} {key}: {e}",
                self.label
            ))
        } else {
            Status::internal(format!("{}: cannot {action} {key}: {e}", self.label))
        }
    }

    /// The partial file of `key`: the rule [`DiskStore`] names it by.
    fn partial_path(&self, key: &str) -> Result<PathBuf, Status> {
        self.store
            .partial_path(key)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

fn is_full(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
}

/// Marks a partial file as being written until dropped.
struct Writing {
    set: Arc<Mutex<HashSet<PathBuf>>>,
    path: PathBuf,
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MediaStore for MediaService {
    type PutStream = BoxStream<pb::PutAck>;
    type GetStream = BoxStream<pb::Chunk>;

    async fn put(
        &self,
        request: Request<Streaming<pb::PutRequest>>,
    ) -> Result<Response<Self::PutStream>, Status> {
        let mut inbound = request.into_inner();
        let open = match inbound.message().await? {
            Some(pb::PutRequest {
                msg: Some(Msg::Open(open)),
            }) => open,
            _ => return Err(Status::invalid_argument("a Put stream starts with `open`")),
        };
        let pool = self.pool(&open.pool)?;
        pool.key(&open.key)?;
        let partial = pool.partial_path(&open.key)?;
        let guard = {
            let mut set = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            if !set.insert(partial.clone()) {
                return Err(Status::aborted(format!(
                    "{}: {} is being written by another stream; try again when it has ended",
                    pool.label, open.key
                )));
            }
            Writing {
                set: self.writing.clone(),
                path: partial.clone(),
            }
        };
        let (writer, hasher) = open_writer(&pool, &open, &partial).await?;
        let (tx, rx) = mpsc::channel(16);
        let _ = tx
            .send(Ok(pb::PutAck {
                durable: open.resume_at,
                done: false,
            }))
            .await;
        tracing::debug!(pool = %pool.label, key = %open.key, resume_at = open.resume_at, "put opened");
        tokio::spawn(async move {
            let _guard = guard;
            let key = open.key.clone();
            if let Err(status) = run_put(&pool, &key, writer, hasher, inbound, &tx).await {
                tracing::warn!(pool = %pool.label, key, %status, "put refused");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        pool.key(&r.key)?;
        match pool.store.size(&r.key).await {
            Ok(Some(size)) if size >= r.offset => {}
            Ok(Some(size)) => {
                return Err(Status::out_of_range(format!(
                    "{}: {} has {size} bytes; cannot read from offset {}",
                    pool.label, r.key, r.offset
                )));
            }
            Ok(None) => {
                return Err(Status::not_found(format!(
                    "{}: no object {}",
                    pool.label, r.key
                )));
            }
            Err(e) => return Err(pool.fail(&r.key, "stat", e)),
        }
        let bytes = pool
            .store
            .read(&r.key, r.offset)
            .await
            .map_err(|e| pool.fail(&r.key, "read", e))?;
        let label = pool.label.clone();
        let key = r.key.clone();
        let mut offset = r.offset;
        let chunks = bytes.flat_map(move |piece| {
            let out: Vec<Result<pb::Chunk, Status>> = match piece {
                Ok(data) => data
                    .chunks(GET_CHUNK)
                    .map(|c| {
                        let data = data.slice_ref(c);
                        let chunk = pb::Chunk {
                            offset,
                            crc32c: crc32c::crc32c(&data),
                            data,
                            sync: false,
                        };
                        offset += c.len() as u64;
                        Ok(chunk)
                    })
                    .collect(),
                Err(e) => vec![Err(Status::internal(format!(
                    "{label}: cannot read {key} at offset {offset}: {e}"
                )))],
            };
            futures::stream::iter(out)
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatReply>, Status> {
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        pool.key(&r.key)?;
        let size = pool
            .store
            .size(&r.key)
            .await
            .map_err(|e| pool.fail(&r.key, "stat", e))?;
        let partial = pool
            .store
            .partial_len(&r.key)
            .await
            .map_err(|e| pool.fail(&r.key, "stat", e))?;
        Ok(Response::new(pb::StatReply { size, partial }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        check_prefix(&pool, &r.prefix)?;
        let objects = pool
            .store
            .list(&r.prefix)
            .await
            .map_err(|e| pool.fail(&r.prefix, "list", e))?
            .into_iter()
            .map(|o| pb::ObjectInfo {
                key: o.key,
                size: o.size,
            })
            .collect();
        Ok(Response::new(pb::ListReply { objects }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        if r.prefix.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{}: refusing to delete with an empty prefix (the whole pool)",
                pool.label
            )));
        }
        check_prefix(&pool, &r.prefix)?;
        let deleted = pool
            .store
            .delete_prefix(&r.prefix)
            .await
            .map_err(|e| pool.fail(&r.prefix, "delete", e))?;
        tracing::info!(pool = %pool.label, prefix = %r.prefix, deleted, "deleted objects");
        Ok(Response::new(pb::DeleteReply { deleted }))
    }

    async fn discard(
        &self,
        request: Request<pb::DiscardRequest>,
    ) -> Result<Response<pb::DiscardReply>, Status> {
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        pool.key(&r.key)?;
        let partial = pool.partial_path(&r.key)?;
        if self
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&partial)
        {
            // Its writer may have just gone; a retry finds the Put ended.
            return Err(Status::aborted(format!(
                "{}: {} is being written by a stream; try again when it has ended",
                pool.label, r.key
            )));
        }
        let discarded = match tokio::fs::remove_file(&partial).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(pool.fail(&r.key, "discard", Error::io(&partial, "remove", e))),
        };
        Ok(Response::new(pb::DiscardReply { discarded }))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageReply>, Status> {
        let r = request.into_inner();
        let pool = self.pool(&r.pool)?;
        let used_bytes = pool
            .store
            .list("")
            .await
            .map_err(|e| pool.fail("", "list", e))?
            .iter()
            .map(|o| o.size)
            .sum();
        let (free_bytes, total_bytes) = filesystem_space(pool.store.root())
            .map_err(|e| Status::internal(format!("{}: {e}", pool.label)))?;
        Ok(Response::new(pb::UsageReply {
            used_bytes,
            free_bytes,
            total_bytes,
        }))
    }
}

/// Opens the writer a Put continues: a new partial file, or the existing one
/// cut back to `resume_at` with the hash of what it keeps.
async fn open_writer(
    pool: &Pool,
    open: &pb::PutOpen,
    partial: &Path,
) -> Result<(DiskWriter, Sha256), Status> {
    let key = &open.key;
    let exists = pool
        .store
        .size(key)
        .await
        .map_err(|e| pool.fail(key, "stat", e))?;
    if exists.is_some() {
        return Err(Status::already_exists(format!(
            "{}: an object already exists under {key}; it is never replaced",
            pool.label
        )));
    }
    if open.resume_at == 0 {
        let w = pool
            .store
            .create_file(key)
            .await
            .map_err(|e| pool.fail(key, "create", e))?;
        return Ok((w, Sha256::new()));
    }
    let have = pool
        .store
        .partial_len(key)
        .await
        .map_err(|e| pool.fail(key, "stat", e))?;
    match have {
        Some(len) if len >= open.resume_at => {}
        have => {
            return Err(Status::failed_precondition(format!(
                "{}: cannot resume {key} at offset {}: the media agent has only {} bytes of it",
                pool.label,
                open.resume_at,
                have.unwrap_or(0)
            )));
        }
    }
    let w = pool
        .store
        .resume(key, open.resume_at)
        .await
        .map_err(|e| pool.fail(key, "resume", e))?;
    let path = partial.to_path_buf();
    let len = open.resume_at;
    let hasher = tokio::task::spawn_blocking(move || hash_prefix(&path, len))
        .await
        .map_err(|e| Status::internal(format!("hash task stopped: {e}")))?
        .map_err(|e| pool.fail(key, "hash", e))?;
    Ok((w, hasher))
}

/// SHA-256 state over the first `len` bytes of `path`.
fn hash_prefix(path: &Path, len: u64) -> crate::Result<Sha256> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open partial file", e))?;
    let mut hasher = Sha256::new();
    let mut limited = std::io::BufReader::with_capacity(1 << 20, file).take(len);
    let copied = std::io::copy(&mut limited, &mut hasher)
        .map_err(|e| Error::io(path, "read partial file", e))?;
    if copied != len {
        return Err(Error::io(
            path,
            "read partial file",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{copied} bytes, not {len}"),
            ),
        ));
    }
    Ok(hasher)
}

/// The rest of a Put after `open`: chunks, acks, finish.
async fn run_put(
    pool: &Pool,
    key: &str,
    mut writer: DiskWriter,
    mut hasher: Sha256,
    mut inbound: Streaming<pb::PutRequest>,
    tx: &mpsc::Sender<Result<pb::PutAck, Status>>,
) -> Result<(), Status> {
    let mut unsynced = 0u64;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m.msg,
            Ok(None) | Err(_) => {
                // The writer went away without finishing: keep what it sent,
                // durably, for a Put that resumes.
                let durable = writer.sync().await.ok();
                tracing::info!(pool = %pool.label, key, ?durable, "put stream ended before finish; partial file kept");
                return Ok(());
            }
        };
        match msg {
            Some(Msg::Chunk(c)) => {
                let at = writer.written();
                if c.offset != at {
                    let _ = writer.sync().await;
                    return Err(Status::data_loss(format!(
                        "{}: chunk of {key} at offset {} refused: the media agent has {at} bytes",
                        pool.label, c.offset
                    )));
                }
                if c.data.len() > MAX_CHUNK {
                    return Err(Status::invalid_argument(format!(
                        "{}: chunk of {key} at offset {} has {} bytes, more than {MAX_CHUNK}",
                        pool.label,
                        c.offset,
                        c.data.len()
                    )));
                }
                let crc = crc32c::crc32c(&c.data);
                if crc != c.crc32c {
                    let _ = writer.sync().await;
                    return Err(Status::data_loss(format!(
                        "{}: chunk of {key} at offset {} refused: CRC-32C {crc:08x}, the sender says {:08x}",
                        pool.label, c.offset, c.crc32c
                    )));
                }
                hasher.update(&c.data);
                unsynced += c.data.len() as u64;
                writer
                    .write(c.data)
                    .await
                    .map_err(|e| pool.fail(key, "write", e))?;
                if c.sync || unsynced >= ACK_EVERY {
                    let durable = writer
                        .sync()
                        .await
                        .map_err(|e| pool.fail(key, "fsync", e))?;
                    unsynced = 0;
                    if tx
                        .send(Ok(pb::PutAck {
                            durable,
                            done: false,
                        }))
                        .await
                        .is_err()
                    {
                        return Ok(()); // the writer is gone; the file is durable
                    }
                }
            }
            Some(Msg::Finish(f)) => {
                let size = writer.written();
                let sha = hasher.finalize();
                if f.size != size || &f.sha256[..] != sha.as_slice() {
                    writer.discard().await;
                    return Err(Status::data_loss(format!(
                        "{}: {key} refused at finish: the media agent has {size} bytes with sha256 {}, the sender says {} bytes with sha256 {}; the partial file is dropped",
                        pool.label,
                        hex::encode(sha),
                        f.size,
                        hex::encode(&f.sha256)
                    )));
                }
                let size = writer.commit().await.map_err(|e| match e {
                    Error::Sink { reason, .. } if reason.contains("already exists") => {
                        Status::already_exists(format!(
                            "{}: an object already exists under {key}; it is never replaced",
                            pool.label
                        ))
                    }
                    e => pool.fail(key, "commit", e),
                })?;
                tracing::info!(pool = %pool.label, key, size, "object stored");
                let _ = tx
                    .send(Ok(pb::PutAck {
                        durable: size,
                        done: true,
                    }))
                    .await;
                return Ok(());
            }
            Some(Msg::Open(_)) | None => {
                let _ = writer.sync().await;
                return Err(Status::invalid_argument(format!(
                    "{}: a Put of {key} may open only once",
                    pool.label
                )));
            }
        }
    }
}

/// A list or delete prefix: "" or a relative key prefix.
fn check_prefix(pool: &Pool, prefix: &str) -> Result<(), Status> {
    let trimmed = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Ok(());
    }
    check_key(trimmed)
        .map_err(|reason| Status::invalid_argument(format!("{}: bad prefix: {reason}", pool.label)))
}

/// (free, total) bytes of the filesystem holding `dir` (or, before the pool
/// directory exists, its nearest existing ancestor).
fn filesystem_space(dir: &Path) -> Result<(u64, u64), String> {
    let mut at = dir;
    loop {
        match rustix::fs::statvfs(at) {
            Ok(s) => {
                return Ok((
                    s.f_bavail.saturating_mul(s.f_frsize),
                    s.f_blocks.saturating_mul(s.f_frsize),
                ));
            }
            Err(rustix::io::Errno::NOENT) => match at.parent() {
                Some(p) => at = p,
                None => return Err(format!("statvfs {}: no such directory", dir.display())),
            },
            Err(e) => return Err(format!("statvfs {}: {e}", dir.display())),
        }
    }
}
