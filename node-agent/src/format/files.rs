//! Hashing snapshot files as they are written or read (size and sha256
//! for the manifest), `SHA256SUMS`, and fsyncing directories.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::manifest::FileEntry;
use crate::error::{IoContext, Result};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .on_file(dir, "fsync directory")
}

/// Fsyncs each ancestor of `dir` up to and including `up_to`: the entries
/// of directories `create_dir_all` created below `up_to`.
pub fn sync_ancestors(dir: &Path, up_to: &Path) -> Result<()> {
    let mut current = dir;
    while current != up_to {
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => {
                sync_dir(parent)?;
                current = parent;
            }
            _ => break,
        }
    }
    Ok(())
}

/// A file being read: counts and hashes every byte that passes through.
/// Its [`ReadDigest`] gives the count and the hash, also once the reader
/// itself has moved to another thread.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

/// The count and hash of what a [`HashingReader`] read.
#[derive(Debug)]
pub struct ReadDigest(Arc<Mutex<(Sha256, u64)>>);

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> (HashingReader<R>, ReadDigest) {
        let state = Arc::new(Mutex::new((Sha256::new(), 0)));
        (
            HashingReader {
                inner,
                state: state.clone(),
            },
            ReadDigest(state),
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self
            .state
            .lock()
            .map_err(|_| std::io::Error::other("a hashing reader panicked"))?;
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        Ok(n)
    }
}

impl ReadDigest {
    /// The bytes read so far and their hex sha256.
    pub fn finish(self) -> (u64, String) {
        match self.0.lock() {
            Ok(mut state) => {
                let hasher = std::mem::take(&mut state.0);
                (state.1, hex::encode(hasher.finalize()))
            }
            Err(_) => (0, String::new()),
        }
    }
}

/// A file being written: counts and hashes every byte on its way to `W`.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    rel: String,
}

impl<W: Write> HashingWriter<W> {
    /// Hashes what goes to `inner`, the file `rel` of a snapshot.
    pub fn new(inner: W, rel: &str) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
            rel: rel.into(),
        }
    }

    /// Flushes; returns the inner writer and the file's manifest entry.
    pub fn finish(mut self) -> std::io::Result<(W, FileEntry)> {
        self.inner.flush()?;
        Ok((
            self.inner,
            FileEntry {
                path: self.rel,
                size: self.size,
                sha256: hex::encode(self.hasher.finalize()),
            },
        ))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `SHA256SUMS` text for `sha256sum -c`.
pub fn sha256sums(entries: &[FileEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}  {}\n", e.sha256, e.path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_the_directories_above_a_tree() {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("backup/server");
        std::fs::create_dir_all(&root).expect("mkdir");
        sync_ancestors(&root, top.path()).expect("backup/ and the top");
        let gone = top.path().join("missing/deeper");
        let err = sync_ancestors(&gone, top.path())
            .expect_err("missing")
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn hashes_what_passes_through() {
        let mut w = HashingWriter::new(Vec::new(), "db/a.sql");
        w.write_all(b"hel").expect("write");
        w.write_all(b"lo").expect("write");
        let (bytes, entry) = w.finish().expect("finish");
        assert_eq!(bytes, b"hello");
        assert_eq!(entry.path, "db/a.sql");
        assert_eq!(entry.size, 5);
        assert_eq!(entry.sha256, sha256_hex(b"hello"));
        assert_eq!(
            sha256sums(&[entry]),
            format!("{}  db/a.sql\n", sha256_hex(b"hello"))
        );
    }
}
