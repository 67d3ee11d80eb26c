//! One server's artifact in a store: the objects under a key prefix
//! (`<backup>/<server>/`), with `manifest.json` naming every file and its
//! sha256. Dumps write an artifact, restores and verification read one; both
//! go through here, whatever the sink.

use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{ByteStream, ObjectWriter, SharedStore, check_key, join};
use crate::error::{Error, Result};
use crate::format::files::sha256_hex;
use crate::format::manifest::{FILE_NAME, FileEntry, Manifest};

/// Manifests and schema files are read whole; anything larger is not ours.
const SMALL_FILE_LIMIT: u64 = 1 << 30;

/// The objects of one server's snapshot in a store.
#[derive(Debug, Clone)]
pub struct Artifact {
    store: SharedStore,
    prefix: String,
}

impl Artifact {
    /// The artifact under `prefix` (`""` for a store that is the artifact,
    /// such as a directory given by hand).
    pub fn new(store: SharedStore, prefix: impl Into<String>) -> Artifact {
        Artifact {
            store,
            prefix: prefix.into().trim_matches('/').to_string(),
        }
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

    fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// Refuses to write into a location that already holds objects.
    pub async fn claim(&self) -> Result<()> {
        let existing = self.store.list(&self.list_prefix()).await?;
        if let Some(first) = existing.first() {
            return Err(self.bad(format!(
                "is not empty: it holds {} object(s) (e.g. {}); refusing to write a backup into it",
                existing.len(),
                first.key
            )));
        }
        Ok(())
    }

    /// Removes every object of the artifact (what a failed dump wrote).
    pub async fn discard(&self) {
        if let Err(e) = self.store.delete_prefix(&self.list_prefix()).await {
            tracing::warn!(artifact = %self.describe(), error = %e, "could not remove the files of a failed dump; no manifest was written, so it is not a backup");
        }
    }

    /// Starts writing a file of the artifact.
    pub async fn create(&self, rel: &str) -> Result<Box<dyn ObjectWriter>> {
        self.store.create(&self.key(rel)?).await
    }

    /// Writes a whole small file; returns its manifest entry.
    pub async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<FileEntry> {
        let entry = FileEntry {
            path: rel.to_string(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        super::put(self.store.as_ref(), &self.key(rel)?, Bytes::from(bytes)).await?;
        Ok(entry)
    }

    /// Reads a file of the artifact.
    pub async fn read(&self, rel: &str) -> Result<ByteStream> {
        self.store.read(&self.key(rel)?, 0).await
    }

    /// Reads a whole small file (schema files).
    pub async fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        super::get(self.store.as_ref(), &self.key(rel)?, SMALL_FILE_LIMIT).await
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
            let piece = piece.map_err(|e| Error::Sink {
                sink: self.store.describe(),
                key: key.clone(),
                action: "read",
                reason: e.to_string(),
            })?;
            hasher.update(&piece);
            size += piece.len() as u64;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != entry.sha256 || size != entry.size {
            return Err(Error::Checksum {
                path: PathBuf::from(self.store.locate(&key)),
                expected: entry.sha256.clone(),
                actual,
                expected_size: entry.size,
                actual_size: size,
            });
        }
        Ok(())
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
        to: &Artifact,
        progress: &crate::progress::Progress,
    ) -> Result<(Manifest, String)> {
        let (manifest, sha256) = self.manifest().await?;
        let raw = self.read_small(FILE_NAME).await?;
        if sha256_hex(&raw) != sha256 {
            return Err(self.bad("the manifest changed while it was being read".into()));
        }
        to.claim().await?;
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
                let piece = piece.map_err(|e| Error::Sink {
                    sink: self.store.describe(),
                    key: key.clone(),
                    action: "read",
                    reason: e.to_string(),
                })?;
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
        let actual = hex::encode(hasher.finalize());
        if actual != entry.sha256 || size != entry.size {
            out.abort().await;
            return Err(Error::Checksum {
                path: PathBuf::from(self.store.locate(&key)),
                expected: entry.sha256.clone(),
                actual,
                expected_size: entry.size,
                actual_size: size,
            });
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
    for o in &objects {
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
