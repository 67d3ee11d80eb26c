//! Sinks: where artifacts are stored. Every kind sits behind one small trait,
//! [`Store`], of flat objects named by relative keys (`<backup>/<server>/db/t.00000.tsv.zst`):
//!
//! - [`disk`]: a directory on this host (the host-local default, and the
//!   disk pools a media agent holds for others).
//! - [`media`]: a disk pool on another agent, reached over gRPC (chunked,
//!   checksummed, resumable).
//! - [`s3`]: S3-compatible object storage through `object_store`.
//!
//! [`artifact`] is one server's snapshot in a store (what dumps write and
//! restores read); [`crypt`] encrypts its files for sinks that ask for it;
//! [`frames`] compresses and decompresses big objects as independent zstd
//! frames on several threads.
//! [`open`] turns a catalog's sink description (`SinkSpec`) into a store.
//! An object written through [`ObjectWriter`] is visible under its key only
//! once [`ObjectWriter::finish`] returned: the sink has it durably then (the
//! disk store fsyncs file and directory, the media agent fsyncs before it
//! acknowledges, S3 completes the multipart upload). A writer dropped or
//! aborted before that leaves nothing under the key.
//!
//! Dumps write through a store and restores read through one, so the bytes
//! never stage on the source host whatever the sink.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use lockstep_proto::agent as pb;

use crate::error::{Error, Result};

pub mod artifact;
pub mod crypt;
pub mod disk;
pub mod frames;
pub mod media;
pub mod s3;

/// Where the binlog archive keeps its segments in a sink:
/// `binlog/<cluster>/<server>/<file>/<start>-<end>` (see `binlog::ship`).
/// Scans of artifacts skip these keys.
pub const BINLOG_PREFIX: &str = "binlog/";

/// A stream of an object's bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// A place artifacts are stored: flat objects under relative keys.
#[async_trait::async_trait]
pub trait Store: Send + Sync + Debug {
    /// Names the sink in errors and logs: its kind, name and where it is.
    fn describe(&self) -> String;
    /// Names one object in errors: its full path or URL where it has one.
    fn locate(&self, key: &str) -> String {
        format!("{key} in {}", self.describe())
    }
    /// Starts a new object at `key`. Nothing is visible under `key` until
    /// the writer's `finish` returns; an existing object is never replaced
    /// (creating one that exists fails at `finish` at the latest).
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Reads an object from byte `offset` to its end.
    async fn read(&self, key: &str, offset: u64) -> Result<ByteStream>;
    /// The size of an object, `None` if there is none under `key`.
    async fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes every object whose key starts with `prefix` (a whole copy:
    /// `<backup>/<server>/`); returns how many there were.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64>;
}

/// An object being written.
#[async_trait::async_trait]
pub trait ObjectWriter: Send + Debug {
    /// Appends bytes. They may be buffered until a later write or `finish`.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Makes the object durable and visible under its key; returns its size.
    async fn finish(self: Box<Self>) -> Result<u64>;
    /// Drops what was written (best effort). Dropping an unfinished writer
    /// also leaves nothing under the key, but a disk or media sink keeps
    /// its partial file (a later write of the key replaces it).
    async fn abort(self: Box<Self>);
}

/// Writes a whole small object.
pub async fn put(store: &dyn Store, key: &str, bytes: Bytes) -> Result<u64> {
    let mut w = store.create(key).await?;
    if let Err(e) = w.write(bytes).await {
        w.abort().await;
        return Err(e);
    }
    w.finish().await
}

/// Reads a whole object into memory (manifests, schema files); refuses one
/// larger than `limit` bytes.
pub async fn get(store: &dyn Store, key: &str, limit: u64) -> Result<Vec<u8>> {
    let failed = |reason: String| Error::Sink {
        sink: store.describe(),
        key: key.to_string(),
        action: "read",
        reason,
    };
    collect(
        store.read(key, 0).await?,
        limit,
        |e| failed(e.to_string()),
        || {
            failed(format!(
                "larger than {limit} bytes; not a file lockstep wrote"
            ))
        },
    )
    .await
}

/// Reads a stream whole, up to `limit` bytes: `read_failed` names a read
/// error, `too_large` one past the limit.
pub async fn collect(
    mut stream: ByteStream,
    limit: u64,
    read_failed: impl Fn(std::io::Error) -> Error,
    too_large: impl Fn() -> Error,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece.map_err(&read_failed)?);
        if out.len() as u64 > limit {
            return Err(too_large());
        }
    }
    Ok(out)
}

/// A store's object as a blocking reader, for decoders running on a
/// blocking thread. Call it on the runtime; read from it off the runtime.
pub fn blocking_reader(stream: ByteStream) -> impl std::io::Read + Send {
    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream))
}

/// Joins a key prefix and a relative path with one `/`.
pub fn join(prefix: &str, rel: &str) -> String {
    let p = prefix.trim_end_matches('/');
    let r = rel.trim_start_matches('/');
    if p.is_empty() {
        r.to_string()
    } else {
        format!("{p}/{r}")
    }
}

/// Checks a key before it reaches a filesystem or a bucket: relative,
/// no `.`/`..` or empty components, no NUL.
pub fn check_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.starts_with('/') || key.contains('\0') || key.contains('\\') {
        return Err(format!("{key:?} is not a relative key"));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("{key:?} has an empty, `.` or `..` component"));
    }
    Ok(())
}

/// A shared store.
pub type SharedStore = Arc<dyn Store>;

/// What an agent knows about itself when it opens a sink.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The agent's name (its server's name, or a media agent's).
    pub agent: String,
    /// The host-local sink directory (`--sink-dir`).
    pub host_local: std::path::PathBuf,
    /// The disk pools this agent holds for others (`--pool`).
    pub pools: Vec<std::path::PathBuf>,
    /// How this agent reaches media agents (mutual TLS or plaintext).
    pub transport: lockstep_proto::tls::Transport,
}

impl Local {
    /// `path` if this agent may hold a disk pool there: its host-local
    /// directory, or one of (or below one of) its `--pool` directories.
    pub fn pool_dir(&self, path: &str) -> Result<std::path::PathBuf> {
        let p = std::path::Path::new(path);
        let clean = p.is_absolute()
            && !p
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if clean && (p == self.host_local || self.pools.iter().any(|pool| p.starts_with(pool))) {
            return Ok(p.to_path_buf());
        }
        Err(Error::Config(format!(
            "agent {} holds no disk pool at {path:?}; its pools are {} (start it with --pool {path})",
            self.agent,
            std::iter::once(&self.host_local)
                .chain(&self.pools)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Opens the sink `spec` describes (none: the host-local directory).
pub async fn open(spec: Option<&pb::SinkSpec>, local: &Local) -> Result<SharedStore> {
    use pb::sink_spec::Kind;
    let name = spec.map(|s| s.name.as_str()).unwrap_or_default();
    match spec.and_then(|s| s.kind.as_ref()) {
        None => Ok(Arc::new(disk::DiskStore::new(
            &local.host_local,
            format!(
                "host-local sink {} on agent {}",
                local.host_local.display(),
                local.agent
            ),
        ))),
        Some(Kind::Disk(d)) => {
            let label = format!("sink {name} (disk pool {} on agent {})", d.path, d.agent);
            if d.agent == local.agent {
                let dir = local.pool_dir(&d.path)?;
                Ok(Arc::new(disk::DiskStore::new(dir, label)))
            } else {
                Ok(Arc::new(
                    media::MediaStore::connect(
                        &d.agent_addr,
                        &d.path,
                        label,
                        local.transport.clone(),
                    )
                    .await?,
                ))
            }
        }
        Some(Kind::S3(s)) => {
            let label = format!("sink {name} (s3://{}/{})", s.bucket, s.prefix);
            Ok(Arc::new(s3::S3Store::new(s, label)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_and_clean() {
        assert!(check_key("b1/s1/db/t.00000.tsv.zst").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(join("p/", "/a/b"), "p/a/b");
        assert_eq!(join("", "a"), "a");
    }
}
