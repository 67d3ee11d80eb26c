//! A sink on a local directory: the host-local default, and the disk pools a
//! media agent holds for other agents.
//!
//! An object is written to a hidden partial file beside its final name
//! (`.NAME.partial`) and appears under its key only when finished: the file
//! is fsynced, linked to its name (never replacing one), and the directories
//! up to the root are fsynced. A partial file survives a crash with whatever
//! was fsynced, so a media agent can resume an interrupted stream at an
//! acknowledged offset ([`DiskStore::resume`]).
//!
//! Directories the store creates are 0700 and its files 0600: a backup
//! holds every row of the database.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use super::{ByteStream, ObjectInfo, ObjectWriter, Store, check_key};
use crate::error::{Error, IoContext, Result};
use crate::format::files::{sync_ancestors, sync_dir};

/// Mode of the directories a store creates: backups are for their owner.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files a store writes.
pub const PRIVATE_FILE: u32 = 0o600;

/// A directory holding objects as files under their keys.
#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
    label: String,
}

impl DiskStore {
    /// A store rooted at `root` (created on the first write). `label` names
    /// it in errors, e.g. "host-local sink /var/lib/lockstep/backups on db1".
    pub fn new(root: impl Into<PathBuf>, label: impl Into<String>) -> DiskStore {
        DiskStore {
            root: root.into(),
            label: label.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file an object's key names, after checking the key.
    pub fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key).map_err(|reason| self.err(key, "resolve", reason))?;
        Ok(self.root.join(key))
    }

    /// The hidden file an unfinished object is written to.
    pub(crate) fn partial_path(&self, key: &str) -> Result<PathBuf> {
        let path = self.path_of(key)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(path.with_file_name(format!(".{name}.partial")))
    }

    fn err(&self, key: &str, action: &'static str, reason: impl ToString) -> Error {
        Error::Sink {
            sink: self.label.clone(),
            key: key.to_string(),
            action,
            reason: reason.to_string(),
        }
    }

    /// Continues the partial file of `key` at `offset`: everything after
    /// `offset` is dropped. Fails if the partial file is shorter than
    /// `offset` (what the writer believes was stored was not).
    pub async fn resume(&self, key: &str, offset: u64) -> Result<DiskWriter> {
        let path = self.path_of(key)?;
        let partial = self.partial_path(key)?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .await
            .on_file(&partial, "open partial file")?;
        let len = file
            .metadata()
            .await
            .on_file(&partial, "stat partial file")?
            .len();
        if len < offset {
            return Err(self.err(
                key,
                "resume",
                format!("only {len} bytes are stored, not the {offset} to resume at"),
            ));
        }
        file.set_len(offset)
            .await
            .on_file(&partial, "truncate partial file")?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .on_file(&partial, "seek partial file")?;
        Ok(DiskWriter {
            store: self.clone(),
            key: key.to_string(),
            path,
            partial,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            written: offset,
        })
    }

    /// Bytes of the partial file of `key`, if there is one.
    pub async fn partial_len(&self, key: &str) -> Result<Option<u64>> {
        let partial = self.partial_path(key)?;
        match tokio::fs::metadata(&partial).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(partial, "stat partial file", e)),
        }
    }

    /// Starts a new object at `key` (dropping a stale partial file).
    pub async fn create_file(&self, key: &str) -> Result<DiskWriter> {
        let path = self.path_of(key)?;
        let partial = self.partial_path(key)?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(self.err(key, "create", "an object already exists under this key"));
        }
        if let Some(parent) = path.parent() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR)
                .create(parent)
                .await
                .on_file(parent, "create directory")?;
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE)
            .open(&partial)
            .await
            .on_file(&partial, "create")?;
        Ok(DiskWriter {
            store: self.clone(),
            key: key.to_string(),
            path,
            partial,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            written: 0,
        })
    }
}

/// An object being written to a [`DiskStore`].
#[derive(Debug)]
pub struct DiskWriter {
    store: DiskStore,
    key: String,
    path: PathBuf,
    partial: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    written: u64,
}

impl DiskWriter {
    /// Bytes written so far (stored or buffered).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and fsyncs what was written; returns the durable length.
    pub async fn sync(&mut self) -> Result<u64> {
        let file = self.file.as_mut().ok_or_else(|| {
            self.store
                .err(&self.key, "sync", "the object is already finished")
        })?;
        file.flush().await.on_file(&self.partial, "write")?;
        file.get_ref()
            .sync_data()
            .await
            .on_file(&self.partial, "fsync")?;
        Ok(self.written)
    }

    async fn append(&mut self, data: &[u8]) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| {
            self.store
                .err(&self.key, "write", "the object is already finished")
        })?;
        file.write_all(data).await.on_file(&self.partial, "write")?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// fsyncs, then links the partial file to its name (never replacing an
    /// object) and makes the names durable up to the store's root.
    pub async fn commit(mut self) -> Result<u64> {
        self.sync().await?;
        self.file = None;
        let (partial, path, root) = (
            self.partial.clone(),
            self.path.clone(),
            self.store.root.clone(),
        );
        let key = self.key.clone();
        let store = self.store.clone();
        let size = self.written;
        tokio::task::spawn_blocking(move || -> Result<u64> {
            match std::fs::hard_link(&partial, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(store.err(
                        &key,
                        "store",
                        "an object already exists under this key",
                    ));
                }
                Err(e) => return Err(Error::io(&path, "link into place", e)),
            }
            std::fs::remove_file(&partial).on_file(&partial, "remove partial file")?;
            let dir = path.parent().unwrap_or(&root);
            sync_dir(dir)?;
            sync_ancestors(dir, &root)?;
            Ok(size)
        })
        .await
        .map_err(|e| Error::Cancelled(format!("store {}: {e}", self.path.display())))?
    }

    /// Removes the partial file.
    pub async fn discard(mut self) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

#[async_trait::async_trait]
impl ObjectWriter for DiskWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.append(&data).await
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        self.commit().await
    }

    async fn abort(self: Box<Self>) {
        self.discard().await
    }
}

#[async_trait::async_trait]
impl Store for DiskStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn locate(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(self.create_file(key).await?))
    }

    async fn read(&self, key: &str, offset: u64) -> Result<ByteStream> {
        let path = self.path_of(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.err(key, "read", "no such object"));
            }
            Err(e) => return Err(Error::io(path, "open", e)),
        };
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .on_file(&path, "seek")?;
        }
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
            file,
            1 << 20,
        )))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, "stat", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = self.files(prefix, false).await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        // Partial files too: what an interrupted writer left.
        let all = self.files(prefix, true).await?;
        let objects = all.iter().filter(|o| !is_hidden(&o.key)).count();
        for o in &all {
            let p = self.root.join(&o.key);
            tokio::fs::remove_file(&p).await.on_file(&p, "remove")?;
        }
        // Remove the directories left empty, deepest first.
        let mut dirs: Vec<PathBuf> = all
            .iter()
            .filter_map(|o| self.root.join(&o.key).parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs.iter().rev() {
            let mut cur = d.as_path();
            while cur != self.root && cur.starts_with(&self.root) {
                if std::fs::remove_dir(cur).is_err() {
                    break;
                }
                cur = cur.parent().unwrap_or(&self.root);
            }
        }
        Ok(objects as u64)
    }
}

impl DiskStore {
    /// The files whose key starts with `prefix` (with `hidden`, partial
    /// files too), walking only the directory the prefix names.
    async fn files(&self, prefix: &str, hidden: bool) -> Result<Vec<ObjectInfo>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        tokio::task::spawn_blocking(move || {
            let start = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            let mut out = Vec::new();
            walk(&root, &start, &prefix, hidden, &mut out).map(|()| out)
        })
        .await
        .map_err(|e| Error::Cancelled(format!("list {}: {e}", self.root.display())))?
    }
}

/// Whether a key names a hidden file (a partial object).
fn is_hidden(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with('.'))
}

/// Collects the files below `dir` whose key starts with `prefix`; hidden
/// files (partial objects) only with `hidden`.
fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    hidden: bool,
    out: &mut Vec<ObjectInfo>,
) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, "list directory", e)),
    };
    for entry in entries {
        let entry = entry.on_file(dir, "list directory")?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (!hidden || name == "." || name == "..") {
            continue; // partial files and temp files are not objects
        }
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let key = rel.to_string_lossy().replace('\\', "/");
        let meta = entry.metadata().on_file(&path, "stat")?;
        if meta.is_dir() {
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &path, prefix, hidden, out)?;
            }
        } else if key.starts_with(prefix)
            || (hidden && name.starts_with('.') && dir_key_matches(root, dir, prefix))
        {
            out.push(ObjectInfo {
                key,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

/// Whether a hidden file in `dir` belongs under `prefix` (its directory does).
fn dir_key_matches(root: &Path, dir: &Path, prefix: &str) -> bool {
    let rel = dir
        .strip_prefix(root)
        .map(|r| r.to_string_lossy().replace('\\', "/"))
        .unwrap_or_default();
    let as_dir = if rel.is_empty() {
        rel
    } else {
        format!("{rel}/")
    };
    as_dir.starts_with(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{get, put};

    #[tokio::test]
    async fn objects_appear_only_when_finished_and_never_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::new(dir.path().join("pool"), "test pool");
        let mut w = store.create("b1/s1/db/t.tsv").await.expect("create");
        w.write(Bytes::from_static(b"hello ")).await.expect("write");
        assert_eq!(store.size("b1/s1/db/t.tsv").await.expect("size"), None);
        assert!(store.list("b1/").await.expect("list").is_empty());
        w.write(Bytes::from_static(b"world")).await.expect("write");
        assert_eq!(w.finish().await.expect("finish"), 11);
        assert_eq!(
            get(&store, "b1/s1/db/t.tsv", 100).await.expect("get"),
            b"hello world"
        );
        let err = put(&store, "b1/s1/db/t.tsv", Bytes::from_static(b"x"))
            .await
            .expect_err("no replace")
            .to_string();
        assert!(
            err.contains("test pool") && err.contains("b1/s1/db/t.tsv"),
            "{err}"
        );
        put(&store, "b1/s2/m.json", Bytes::from_static(b"{}"))
            .await
            .expect("put");
        let keys: Vec<String> = store
            .list("b1/")
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["b1/s1/db/t.tsv", "b1/s2/m.json"]);
        assert_eq!(store.delete_prefix("b1/s1/").await.expect("delete"), 1);
        assert!(
            !dir.path().join("pool/b1/s1").exists(),
            "empty dirs removed"
        );
        assert!(store.path_of("../etc/passwd").is_err());
    }

    #[tokio::test]
    async fn directories_and_files_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::new(dir.path().join("sink"), "test sink");
        put(&store, "b1/s1/db/t.tsv", Bytes::from_static(b"rows"))
            .await
            .expect("put");
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        for d in ["sink", "sink/b1", "sink/b1/s1", "sink/b1/s1/db"] {
            assert_eq!(mode(d), 0o700, "{d}");
        }
        assert_eq!(mode("sink/b1/s1/db/t.tsv"), 0o600);
    }

    #[tokio::test]
    async fn a_partial_object_resumes_at_an_acknowledged_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::new(dir.path(), "pool");
        let mut w = store.create_file("k/obj").await.expect("create");
        w.append(b"0123456789").await.expect("write");
        assert_eq!(w.sync().await.expect("sync"), 10);
        drop(w); // a crash: the partial file stays
        assert_eq!(store.partial_len("k/obj").await.expect("len"), Some(10));
        let err = store
            .resume("k/obj", 11)
            .await
            .expect_err("beyond what is stored");
        assert!(err.to_string().contains("only 10 bytes"), "{err}");
        let mut w = store.resume("k/obj", 4).await.expect("resume");
        w.append(b"abc").await.expect("write");
        assert_eq!(w.commit().await.expect("commit"), 7);
        assert_eq!(get(&store, "k/obj", 100).await.expect("get"), b"0123abc");
        let mut s = store.read("k/obj", 5).await.expect("read at offset");
        let first = futures::StreamExt::next(&mut s)
            .await
            .expect("some")
            .expect("ok");
        assert_eq!(&first[..], b"bc");
    }
}
