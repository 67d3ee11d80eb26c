//! One server's artifact in a store: the objects under a key prefix
//! (`<backup>/<server>/`), with `manifest.json` naming every file and its
//! sha256. Dumps write an artifact, restores and verification read one; both
//! go through here, whatever the sink.

use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::crypt::{DataKey, EncryptingWriter, KeyFile, decrypt_stream};
use super::frames;
use super::{BINLOG_PREFIX, ByteStream, ObjectWriter, SharedStore, check_key, join};
use crate::error::{Error, Result};
use crate::format::files::sha256_hex;
use crate::format::manifest::{FILE_NAME, FileEntry, Manifest};

/// Manifests and schema files are read whole; anything larger is not ours.
const SMALL_FILE_LIMIT: u64 = 1 << 30;

/// Beside the manifest in an encrypted copy: the scheme and the copy's data
/// key, wrapped by the operator's key (docs/format.md).
pub const ENCRYPTION_FILE: &str = "encryption.json";
const SCHEME: &str = "lockstep-chacha20poly1305-v1";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct EncryptionRecord {
    scheme: String,
    backup_id: String,
    key_id: String,
    wrapped_key: String,
}

/// The objects of one server's snapshot in a store. Every file the manifest
/// lists is encrypted when the copy is (`manifest.json` and
/// `encryption.json` never are).
#[derive(Debug, Clone)]
pub struct Artifact {
    store: SharedStore,
    prefix: String,
    /// The copy's data key, once sealed or unlocked.
    key: Option<DataKey>,
    /// Seal the copy when it is claimed: the operator's key and the backup.
    seal: Option<(std::sync::Arc<KeyFile>, String)>,
}

impl Artifact {
    /// The artifact under `prefix` (`""` for a store that is the artifact,
    /// such as a directory given by hand).
    pub fn new(store: SharedStore, prefix: impl Into<String>) -> Artifact {
        Artifact {
            store,
            prefix: prefix.into().trim_matches('/').to_string(),
            key: None,
            seal: None,
        }
    }

    /// The snapshot directory `dir` itself (a copy given by path: the
    /// standalone commands, or a host-local location older catalogs
    /// recorded as a directory).
    pub fn in_directory(dir: &std::path::Path) -> Artifact {
        let label = format!("directory {}", dir.display());
        Artifact::new(
            std::sync::Arc::new(super::disk::DiskStore::new(dir, label)),
            "",
        )
    }

    /// The same artifact, to be written encrypted: [`Artifact::claim`]
    /// makes a data key for it and stores it wrapped by `key_file`.
    pub fn sealed_with(mut self, key_file: std::sync::Arc<KeyFile>, backup_id: &str) -> Artifact {
        self.seal = Some((key_file, backup_id.to_string()));
        self
    }

    /// Whether the files are encrypted (once sealed or unlocked).
    pub fn encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// Reads the copy's `encryption.json`, if it has one, and unwraps its
    /// data key with `key_file`. A copy that is encrypted and no key file,
    /// or the wrong one, is refused naming the key ids: before anything is
    /// read or loaded.
    pub async fn unlock(&mut self, key_file: Option<&KeyFile>) -> Result<()> {
        let at = self.key(ENCRYPTION_FILE)?;
        if self.store.size(&at).await?.is_none() {
            return Ok(());
        }
        let raw = super::get(self.store.as_ref(), &at, 1 << 20).await?;
        let rec: EncryptionRecord = serde_json::from_slice(&raw)
            .map_err(|e| self.bad(format!("{ENCRYPTION_FILE} is malformed: {e}")))?;
        if rec.scheme != SCHEME {
            return Err(self.bad(format!(
                "is encrypted with scheme {:?}, which this lockstep does not know",
                rec.scheme
            )));
        }
        let Some(key_file) = key_file else {
            return Err(self.bad(format!(
                "is encrypted (key id {}); this agent has no --key-file to open it",
                rec.key_id
            )));
        };
        self.key = Some(key_file.unwrap(&rec.wrapped_key, &rec.backup_id)?);
        Ok(())
    }

    /// Whether `rel` is stored encrypted in an encrypted copy.
    fn sealed_file(&self, rel: &str) -> Option<&DataKey> {
        self.key
            .as_ref()
            .filter(|_| rel != FILE_NAME && rel != ENCRYPTION_FILE)
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The key prefix: what the catalog records as the copy's location.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Names the artifact in errors: sink and location.
    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            self.store.describe()
        } else {
            format!("{}, {}", self.store.describe(), self.prefix)
        }
    }

    /// The key of a file of the artifact, refusing paths that leave it.
    pub fn key(&self, rel: &str) -> Result<String> {
        check_key(rel).map_err(|reason| self.bad(format!("lists file {rel:?}: {reason}")))?;
        Ok(join(&self.prefix, rel))
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadBackup {
            path: PathBuf::from(self.describe()),
            reason,
        }
    }

    fn read_failed(&self, key: &str, e: std::io::Error) -> Error {
        Error::Sink {
            sink: self.store.describe(),
            key: key.to_string(),
            action: "read",
            reason: e.to_string(),
        }
    }

    /// `Ok` if what was read of `key` (hashed into `hasher`, `size` bytes)
    /// is the file `entry` lists.
    fn matches(&self, entry: &FileEntry, key: &str, hasher: Sha256, size: u64) -> Result<()> {
        self.check_read(entry, key, hex::encode(hasher.finalize()), size)
    }

    /// Fails unless `size` bytes with hex sha256 `actual`, read from the
    /// listed file `entry`, are what the manifest lists.
    pub fn verify_read(&self, entry: &FileEntry, actual: String, size: u64) -> Result<()> {
        self.check_read(entry, &self.key(&entry.path)?, actual, size)
    }

    fn check_read(&self, entry: &FileEntry, key: &str, actual: String, size: u64) -> Result<()> {
        if actual != entry.sha256 || size != entry.size {
            return Err(Error::Checksum {
                path: PathBuf::from(self.store.locate(key)),
                expected: entry.sha256.clone(),
                actual,
                expected_size: entry.size,
                actual_size: size,
            });
        }
        Ok(())
    }

    fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// Refuses to write into a location that already holds objects; for a
    /// copy to be sealed, stores its wrapped data key first.
    pub async fn claim(&mut self) -> Result<()> {
        self.claim_inner(false).await
    }

    /// Like [`Artifact::claim`], but what an interrupted earlier attempt
    /// left (objects and no manifest: never a backup) is removed first.
    pub async fn claim_replacing_incomplete(&mut self) -> Result<()> {
        self.claim_inner(true).await
    }

    async fn claim_inner(&mut self, replace_incomplete: bool) -> Result<()> {
        let mut existing = self.store.list(&self.list_prefix()).await?;
        let manifest = self.key(FILE_NAME)?;
        if replace_incomplete && !existing.is_empty() && !existing.iter().any(|o| o.key == manifest)
        {
            tracing::warn!(artifact = %self.describe(), objects = existing.len(), "removing what an interrupted copy left (no manifest) before copying again");
            self.store.delete_prefix(&self.list_prefix()).await?;
            existing = self.store.list(&self.list_prefix()).await?;
        }
        if let Some(first) = existing.first() {
            return Err(self.bad(format!(
                "is not empty: it holds {} object(s) (e.g. {}); refusing to write a backup into it",
                existing.len(),
                first.key
            )));
        }
        if let Some((key_file, backup_id)) = self.seal.take() {
            let key = DataKey::generate();
            let rec = EncryptionRecord {
                scheme: SCHEME.into(),
                backup_id: backup_id.clone(),
                key_id: key_file.id().to_string(),
                wrapped_key: key_file.wrap(&key, &backup_id),
            };
            let bytes = serde_json::to_vec_pretty(&rec).expect("a record always serialises");
            super::put(
                self.store.as_ref(),
                &self.key(ENCRYPTION_FILE)?,
                Bytes::from(bytes),
            )
            .await?;
            self.key = Some(key);
        }
        Ok(())
    }

    /// Removes every object of the artifact (what a failed dump wrote).
    pub async fn discard(&self) {
        if let Err(e) = self.store.delete_prefix(&self.list_prefix()).await {
            tracing::warn!(artifact = %self.describe(), error = %e, "could not remove the files of a failed dump; no manifest was written, so it is not a backup");
        }
    }

    /// Starts writing a file of the artifact (encrypted in a sealed copy).
    pub async fn create(&self, rel: &str) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.store.create(&self.key(rel)?).await?;
        Ok(match self.sealed_file(rel) {
            Some(key) => Box::new(EncryptingWriter::new(inner, key, rel)),
            None => inner,
        })
    }

    /// Writes a whole small file; returns its manifest entry.
    pub async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<FileEntry> {
        let entry = FileEntry {
            path: rel.to_string(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        let mut w = self.create(rel).await?;
        if let Err(e) = w.write(Bytes::from(bytes)).await {
            w.abort().await;
            return Err(e);
        }
        w.finish().await?;
        Ok(entry)
    }

    /// Reads a file of the artifact (decrypted in an encrypted copy).
    pub async fn read(&self, rel: &str) -> Result<ByteStream> {
        let stream = self.store.read(&self.key(rel)?, 0).await?;
        Ok(match self.sealed_file(rel) {
            Some(key) => decrypt_stream(stream, key.clone(), rel.to_string()),
            None => stream,
        })
    }

    /// Reads a whole small file (schema files, the manifest).
    pub async fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        let key = self.key(rel)?;
        super::collect(
            self.read(rel).await?,
            SMALL_FILE_LIMIT,
            |e| self.read_failed(&key, e),
            || {
                self.bad(format!(
                    "file {rel} is larger than {SMALL_FILE_LIMIT} bytes; not a file lockstep wrote"
                ))
            },
        )
        .await
    }

    /// Reads and checks the manifest; returns it with its sha256. A missing
    /// manifest means the location is not a (complete) backup.
    pub async fn manifest(&self) -> Result<(Manifest, String)> {
        let key = self.key(FILE_NAME)?;
        if self.store.size(&key).await?.is_none() {
            let reason = if self.store.list(&self.list_prefix()).await?.is_empty() {
                "holds nothing (no such backup here)".to_string()
            } else {
                format!(
                    "has no {FILE_NAME}: it is not a complete lockstep backup (a dump that did not finish leaves no manifest)"
                )
            };
            return Err(self.bad(reason));
        }
        let bytes = self.read_small(FILE_NAME).await?;
        let at = PathBuf::from(format!("{}: {FILE_NAME}", self.describe()));
        let manifest = Manifest::parse(&bytes, &at)?;
        Ok((manifest, sha256_hex(&bytes)))
    }

    /// Writes the manifest, last: once it is stored, the artifact is whole.
    pub async fn write_manifest(&self, m: &Manifest) -> Result<FileEntry> {
        let bytes = serde_json::to_vec_pretty(m).expect("a manifest always serialises");
        self.put(FILE_NAME, bytes).await
    }

    /// Re-reads one file and checks its size and sha256 against `entry`.
    pub async fn verify_file(&self, entry: &FileEntry) -> Result<()> {
        let key = self.key(&entry.path)?;
        if self.store.size(&key).await?.is_none() {
            return Err(self.bad(format!(
                "file {} listed in the manifest is missing",
                entry.path
            )));
        }
        let mut stream = self.read(&entry.path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| self.read_failed(&key, e))?;
            hasher.update(&piece);
            size += piece.len() as u64;
        }
        self.matches(entry, &key, hasher, size)
    }
}

/// A blocking [`std::io::Write`] over an [`ObjectWriter`], for encoders that
/// run on a blocking thread (zstd). Buffers up to 1 MiB per write to the
/// store. Create it on the runtime; write to it off the runtime.
#[derive(Debug)]
pub struct BlockingWriter {
    inner: Option<Box<dyn ObjectWriter>>,
    handle: tokio::runtime::Handle,
    buf: Vec<u8>,
}

const BLOCKING_BUF: usize = 1 << 20;

impl BlockingWriter {
    pub fn new(inner: Box<dyn ObjectWriter>) -> BlockingWriter {
        BlockingWriter {
            inner: Some(inner),
            handle: tokio::runtime::Handle::current(),
            buf: Vec::with_capacity(BLOCKING_BUF),
        }
    }

    fn push(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(BLOCKING_BUF),
        ));
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| Error::Cancelled("object already finished".into()))?;
        self.handle.block_on(inner.write(data))
    }

    /// Writes what is buffered and makes the object durable.
    pub fn finish(mut self) -> Result<u64> {
        self.push()?;
        let inner = self
            .inner
            .take()
            .ok_or_else(|| Error::Cancelled("object already finished".into()))?;
        self.handle.block_on(inner.finish())
    }

    /// Drops the object.
    pub fn abort(mut self) {
        if let Some(inner) = self.inner.take() {
            self.handle.block_on(inner.abort());
        }
    }
}

/// A compressed file of an artifact being written on a blocking thread:
/// zstd over the sha256 of the stored bytes over the object. Finish it to
/// make it durable and get its manifest entry; on any failure abort it, so
/// no partial object is left under its key.
pub struct ZstdObject {
    enc: Compressor,
    sink: String,
    rel: String,
}

type Hashing = crate::format::files::HashingWriter<BlockingWriter>;

/// One zstd frame streamed on the calling thread, or frames of
/// [`frames::FRAME_BYTES`] compressed on several (see [`frames`]).
enum Compressor {
    Stream(zstd::Encoder<'static, Hashing>),
    Frames(frames::FrameWriter<Hashing>),
}

impl std::fmt::Debug for ZstdObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdObject")
            .field("sink", &self.sink)
            .field("rel", &self.rel)
            .finish_non_exhaustive()
    }
}

impl ZstdObject {
    /// Starts compressing into `object`, the file `rel` of the artifact in
    /// `sink` (as errors name them), at `level`, as one zstd frame.
    pub fn new(object: BlockingWriter, sink: String, rel: &str, level: i32) -> Result<ZstdObject> {
        let hashing = Hashing::new(object, rel);
        match zstd::Encoder::new(hashing, level) {
            Ok(enc) => Ok(ZstdObject {
                enc: Compressor::Stream(enc),
                sink,
                rel: rel.to_string(),
            }),
            Err(e) => Err(sink_error(sink, rel, "start compressing", e)),
        }
    }

    /// Like [`ZstdObject::new`], as independent frames (each with its
    /// content size and checksum) compressed on `workers` threads, which
    /// [`frames::FrameReader`] decompresses on as many.
    pub fn frames(
        object: BlockingWriter,
        sink: String,
        rel: &str,
        level: i32,
        workers: usize,
    ) -> Result<ZstdObject> {
        let hashing = Hashing::new(object, rel);
        match frames::FrameWriter::new(hashing, level, workers) {
            Ok(enc) => Ok(ZstdObject {
                enc: Compressor::Frames(enc),
                sink,
                rel: rel.to_string(),
            }),
            Err(e) => Err(sink_error(sink, rel, "start compressing", e)),
        }
    }

    /// An I/O error of `action` on this object, naming the sink and file.
    pub fn fail(&self, action: &'static str, e: std::io::Error) -> Error {
        sink_error(self.sink.clone(), &self.rel, action, e)
    }

    /// Ends the compression and makes the object durable; returns its
    /// entry (the stored bytes' size and sha256).
    pub fn finish(self) -> Result<FileEntry> {
        let (sink, rel) = (self.sink, self.rel);
        let hashing = match self.enc {
            Compressor::Stream(enc) => enc.finish(),
            Compressor::Frames(enc) => enc.finish(),
        };
        let (object, entry) = hashing
            .map_err(|e| sink_error(sink.clone(), &rel, "finish compressing", e))?
            .finish()
            .map_err(|e| sink_error(sink, &rel, "write", e))?;
        object.finish()?;
        Ok(entry)
    }

    /// Drops the object.
    pub fn abort(self) {
        let hashing = match self.enc {
            Compressor::Stream(enc) => enc.finish().ok(),
            Compressor::Frames(enc) => Some(enc.abandon()),
        };
        if let Some((object, _)) = hashing.and_then(|w| w.finish().ok()) {
            object.abort();
        }
    }
}

impl std::io::Write for ZstdObject {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match &mut self.enc {
            Compressor::Stream(enc) => enc.write(data),
            Compressor::Frames(enc) => enc.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.enc {
            Compressor::Stream(enc) => enc.flush(),
            Compressor::Frames(enc) => enc.flush(),
        }
    }
}

fn sink_error(sink: String, rel: &str, action: &'static str, e: std::io::Error) -> Error {
    Error::Sink {
        sink,
        key: rel.to_string(),
        action,
        reason: e.to_string(),
    }
}

impl std::io::Write for BlockingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BLOCKING_BUF {
            self.push().map_err(std::io::Error::other)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Artifact {
    /// Copies every file and then the manifest (byte for byte) into `to`,
    /// which must hold nothing; each file's sha256 is checked on the way.
    /// On any failure what was written to `to` is removed.
    pub async fn copy_to(
        &self,
        mut to: Artifact,
        progress: &crate::progress::Progress,
    ) -> Result<(Manifest, String)> {
        let (manifest, sha256) = self.manifest().await?;
        let raw = self.read_small(FILE_NAME).await?;
        if sha256_hex(&raw) != sha256 {
            return Err(self.bad("the manifest changed while it was being read".into()));
        }
        to.claim_replacing_incomplete().await?;
        let to = &to;
        let result = async {
            for entry in &manifest.files {
                self.copy_file(to, entry, progress).await?;
            }
            to.put(FILE_NAME, raw).await
        }
        .await;
        if let Err(e) = result {
            to.discard().await;
            return Err(e);
        }
        Ok((manifest, sha256))
    }

    /// Writes the listed file `entry` to the local file `path` (created,
    /// fsynced), checking its size and sha256 as [`Artifact::copy_to`]
    /// does.
    pub async fn fetch_to(&self, entry: &FileEntry, path: &std::path::Path) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let key = self.key(&entry.path)?;
        let mut stream = self.read(&entry.path).await?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| Error::io(path, "create", e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| self.read_failed(&key, e))?;
            hasher.update(&piece);
            size += piece.len() as u64;
            file.write_all(&piece)
                .await
                .map_err(|e| Error::io(path, "write", e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| Error::io(path, "sync", e))?;
        self.matches(entry, &key, hasher, size)
    }

    async fn copy_file(
        &self,
        to: &Artifact,
        entry: &FileEntry,
        progress: &crate::progress::Progress,
    ) -> Result<()> {
        let key = self.key(&entry.path)?;
        let mut stream = self.read(&entry.path).await?;
        let mut out = to.create(&entry.path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let copied = async {
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| self.read_failed(&key, e))?;
                hasher.update(&piece);
                size += piece.len() as u64;
                progress.add_bytes(piece.len() as u64);
                out.write(piece).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = copied {
            out.abort().await;
            return Err(e);
        }
        if let Err(e) = self.matches(entry, &key, hasher, size) {
            out.abort().await;
            return Err(e);
        }
        out.finish().await?;
        Ok(())
    }
}

/// What a sink holds, read from its keys and manifests.
#[derive(Debug, Default)]
pub struct Scanned {
    /// (location, manifest sha256, manifest bytes) per artifact.
    pub artifacts: Vec<(String, String, Vec<u8>)>,
    /// Locations with objects but no manifest.
    pub incomplete: Vec<String>,
    pub objects: u64,
    pub bytes: u64,
}

/// Lists a store: every artifact (a location holding `manifest.json`) with
/// its manifest unless `usage_only`, and the totals. Artifacts sit at
/// `<backup>/<server>/`.
pub async fn scan(store: &SharedStore, usage_only: bool) -> Result<Scanned> {
    let objects = store.list("").await?;
    let mut out = Scanned {
        objects: objects.len() as u64,
        bytes: objects.iter().map(|o| o.size).sum(),
        ..Scanned::default()
    };
    if usage_only {
        return Ok(out);
    }
    let location_of =
        |key: &str| -> String { key.splitn(3, '/').take(2).collect::<Vec<_>>().join("/") };
    let mut with_manifest = std::collections::BTreeSet::new();
    let mut all = std::collections::BTreeSet::new();
    // The binlog archive's segments are not artifacts.
    for o in objects.iter().filter(|o| !o.key.starts_with(BINLOG_PREFIX)) {
        let loc = location_of(&o.key);
        all.insert(loc.clone());
        if o.key == join(&loc, FILE_NAME) {
            with_manifest.insert(loc);
        }
    }
    for loc in &with_manifest {
        let a = Artifact::new(store.clone(), loc.as_str());
        let bytes = a.read_small(FILE_NAME).await?;
        out.artifacts.push((loc.clone(), sha256_hex(&bytes), bytes));
    }
    out.incomplete = all.difference(&with_manifest).cloned().collect();
    Ok(out)
}
