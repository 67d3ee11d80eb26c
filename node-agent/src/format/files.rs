//! Writing snapshot files with their size and sha256, and checking them.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::manifest::FileEntry;
use crate::error::{Error, IoContext, Result};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the
/// new one: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = (|| {
        let mut f = File::create(&tmp).on_file(&tmp, "create")?;
        f.write_all(bytes).on_file(&tmp, "write")?;
        f.sync_all().on_file(&tmp, "fsync")?;
        std::fs::rename(&tmp, path).on_file(path, "rename into place")?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .on_file(dir, "fsync directory")
}

/// Makes the names in a freshly written tree durable: fsyncs every
/// directory below and including `root` (their entries name the data
/// files; the files themselves are fsynced when they are closed).
pub fn sync_tree(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root).on_file(root, "list directory")? {
        let entry = entry.on_file(root, "list directory")?;
        if entry.file_type().on_file(&entry.path(), "stat")?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(root)
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

/// Writes a whole small file and returns its entry.
pub fn write_file(root: &Path, rel: &str, bytes: &[u8]) -> Result<FileEntry> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).on_file(parent, "create directory")?;
    }
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .on_file(&path, "create")?;
    let mut w = HashingWriter::new(file, rel);
    w.write_all(bytes).on_file(&path, "write")?;
    let (file, entry) = w.finish().on_file(&path, "write")?;
    file.sync_all().on_file(&path, "fsync")?;
    Ok(entry)
}

/// Checks one file against its manifest entry.
pub fn verify_file(root: &Path, entry: &FileEntry) -> Result<()> {
    let path = super::manifest::Manifest::file_path(root, &entry.path)?;
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BadBackup {
                path: root.to_path_buf(),
                reason: format!("file {} listed in the manifest is missing", entry.path),
            });
        }
        Err(e) => return Err(Error::io(path, "open", e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).on_file(&path, "read")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != entry.sha256 || size != entry.size {
        return Err(Error::Checksum {
            path,
            expected: entry.sha256.clone(),
            actual,
            expected_size: entry.size,
            actual_size: size,
        });
    }
    Ok(())
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
    fn syncs_a_tree_and_the_directories_above_it() {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("backup/server");
        write_file(&root, "db1/t.tsv", b"1").expect("write");
        write_file(&root, "db2/deep/u.tsv", b"2").expect("write");
        sync_tree(&root).expect("every directory of the tree");
        sync_ancestors(&root, top.path()).expect("backup/ and the top");
        let gone = root.join("missing");
        let err = sync_tree(&gone).expect_err("missing").to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn writes_hashes_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = write_file(dir.path(), "db/a.sql", b"hello").expect("write");
        assert_eq!(entry.size, 5);
        assert_eq!(entry.sha256, sha256_hex(b"hello"));
        verify_file(dir.path(), &entry).expect("intact file verifies");
        // Never overwrite an existing file.
        assert!(write_file(dir.path(), "db/a.sql", b"x").is_err());
        std::fs::write(dir.path().join("db/a.sql"), b"hellO").expect("corrupt");
        let err = verify_file(dir.path(), &entry)
            .expect_err("corrupt")
            .to_string();
        assert!(
            err.contains("db/a.sql") && err.contains("checksum mismatch"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("db/a.sql")).expect("rm");
        let err = verify_file(dir.path(), &entry)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("db/a.sql") && err.contains("missing"), "{err}");
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("m.json");
        write_atomic(&p, b"one").expect("first");
        write_atomic(&p, b"two").expect("second");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
    }
}
