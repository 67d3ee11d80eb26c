//! A directory tree to a sink as one `.tar.zst` object and back. The tar
//! is written and read on a blocking thread, straight into (or out of) the
//! object: local memory holds the compressor's window and one buffer of the
//! object writer, and nothing is staged on local disk.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::manifest::FileEntry;
use crate::format::physical::{TreeFile, extract_tree, write_tree};
use crate::progress::Progress;
use crate::sink::artifact::{Artifact, BlockingWriter, ZstdObject};
use crate::sink::frames::{self, FrameReader};
use tokio_util::sync::CancellationToken;

/// Counts the bytes of the tar stream into [`Progress`], and stops it
/// once `cancel` fires (the blocking thread outlives a dropped caller).
struct Counting<T> {
    inner: T,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

impl<T> Counting<T> {
    fn check(&self) -> std::io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        Ok(())
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check()?;
        let n = self.inner.write(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        let n = self.inner.read(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }
}

/// Writes the tree under `root` (leaving out what `skip` says, given each
/// relative path) as the object `rel` of `out`: a pax tar compressed with
/// zstd at `zstd_level` (frame checksum on). Returns the object's manifest
/// entry (size and sha256 of the stored, compressed bytes, like every other
/// file of an artifact) and the tree's entries. `progress` counts the tar's
/// bytes (uncompressed). On an error or once `cancel` fires (then
/// [`Error::Cancelled`]) the object is dropped.
pub async fn store_tree(
    out: &Artifact,
    rel: &str,
    root: PathBuf,
    skip: fn(&str) -> bool,
    zstd_level: i32,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<(FileEntry, Vec<TreeFile>)> {
    let stop = cancel.clone();
    let object = BlockingWriter::new(out.create(rel).await?);
    let sink = out.describe();
    let rel = rel.to_string();
    tokio::task::spawn_blocking(move || {
        // Frames compressed on several threads, beside this thread's
        // reading and hashing of the files; a restore decompresses them on
        // as many.
        let mut obj = ZstdObject::frames(object, sink, &rel, zstd_level, frames::workers())?;
        let mut counted = Counting {
            inner: &mut obj,
            progress,
            cancel: stop.clone(),
        };
        let files = match write_tree(&root, &skip, &mut counted) {
            Ok((_, files)) => files,
            Err(e) => {
                obj.abort();
                if stop.is_cancelled() {
                    return Err(Error::Cancelled(format!(
                        "archiving {} into {rel}",
                        root.display()
                    )));
                }
                return Err(e);
            }
        };
        Ok((obj.finish()?, files))
    })
    .await
    .map_err(|e| Error::Cancelled(format!("the writer of the archive stopped: {e}")))?
}

/// Extracts the object `rel` of `from` (a `.tar.zst` [`store_tree`] wrote)
/// into `target`, checking every file against `expected` (see
/// [`extract_tree`]). Returns the bytes of the regular files. Errors name
/// the archive, and the file where one is at fault. Once `cancel` fires
/// it stops with [`Error::Cancelled`], `target` half written.
pub async fn load_tree(
    from: &Artifact,
    rel: &str,
    target: PathBuf,
    expected: Vec<TreeFile>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<u64> {
    let stop = cancel.clone();
    let archive = format!("{} in {}", rel, from.describe());
    let named = {
        let archive = archive.clone();
        move |e: Error| Error::Archive {
            archive,
            source: Box::new(e),
        }
    };
    let stream = from.read(rel).await.map_err(named.clone())?;
    let reader = crate::sink::blocking_reader(stream);
    tokio::task::spawn_blocking(move || {
        // Reading and decompressing on other threads (several, for an
        // archive of frames), hashing and writing the files on this one.
        let dec = FrameReader::start(reader, frames::workers()).map_err(|e| Error::Tree {
            path: target.clone(),
            reason: format!("cannot start decompressing: {e}"),
        })?;
        let input = Counting {
            inner: dec,
            progress,
            cancel: stop.clone(),
        };
        let extracted = extract_tree(input, &target, &expected);
        if extracted.is_err() && stop.is_cancelled() {
            return Err(Error::Cancelled(format!(
                "extracting into {}",
                target.display()
            )));
        }
        extracted
    })
    .await
    .map_err(|e| Error::Cancelled(format!("the reader of {archive} stopped: {e}")))?
    .map_err(named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::physical::skip_for_datadir;
    use std::os::unix::fs::PermissionsExt;

    fn make_tree(root: &std::path::Path) {
        std::fs::create_dir_all(root.join("db/sub")).expect("mkdir");
        std::fs::write(root.join("ibdata1"), vec![7u8; 3 << 20]).expect("write");
        std::fs::write(root.join("db/t.ibd"), b"rows").expect("write");
        std::fs::write(root.join("db/#sql-ib12.ibd"), b"temp").expect("write");
        std::fs::write(root.join("mysqld.pid"), b"123").expect("write");
        std::fs::write(root.join("db/sub/empty"), b"").expect("write");
        std::fs::set_permissions(
            root.join("db/t.ibd"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
    }

    #[tokio::test]
    async fn a_tree_goes_to_a_sink_and_back() {
        let top = tempfile::tempdir().expect("tempdir");
        let (src, sink, dst) = (
            top.path().join("src"),
            top.path().join("sink"),
            top.path().join("dst"),
        );
        make_tree(&src);
        std::fs::create_dir_all(&sink).expect("mkdir");
        let art = Artifact::in_directory(&sink);
        let progress = Arc::new(Progress::default());
        let (entry, files) = store_tree(
            &art,
            "datadir.tar.zst",
            src.clone(),
            skip_for_datadir,
            3,
            progress.clone(),
            &CancellationToken::new(),
        )
        .await
        .expect("store");
        let stored = std::fs::read(sink.join("datadir.tar.zst")).expect("the object");
        assert_eq!(entry.size, stored.len() as u64);
        assert_eq!(entry.sha256, crate::format::files::sha256_hex(&stored));
        // 3 MiB of one byte compresses to almost nothing.
        assert!(entry.size < 64 * 1024, "{}", entry.size);
        assert!(progress.snapshot().bytes > 3 << 20);
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            ["db", "db/sub", "db/sub/empty", "db/t.ibd", "ibdata1"]
        );
        let loaded = load_tree(
            &art,
            "datadir.tar.zst",
            dst.clone(),
            files,
            Arc::new(Progress::default()),
            &CancellationToken::new(),
        )
        .await
        .expect("load");
        assert_eq!(loaded, (3 << 20) + 4);
        assert_eq!(std::fs::read(dst.join("db/t.ibd")).expect("read"), b"rows");
        let mode = std::fs::metadata(dst.join("db/t.ibd"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert!(!dst.join("mysqld.pid").exists());
        assert!(!dst.join("db/#sql-ib12.ibd").exists());
    }

    #[tokio::test]
    async fn a_corrupted_object_fails_naming_it() {
        let top = tempfile::tempdir().expect("tempdir");
        let (src, sink) = (top.path().join("src"), top.path().join("sink"));
        make_tree(&src);
        // Incompressible bytes, so a flip lands in a file's data.
        let noise: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("db/noise.ibd"), &noise).expect("write");
        std::fs::create_dir_all(&sink).expect("mkdir");
        let art = Artifact::in_directory(&sink);
        let (_, files) = store_tree(
            &art,
            "datadir.tar.zst",
            src,
            skip_for_datadir,
            3,
            Arc::new(Progress::default()),
            &CancellationToken::new(),
        )
        .await
        .expect("store");
        let object = sink.join("datadir.tar.zst");
        let mut bytes = std::fs::read(&object).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&object, &bytes).expect("write");
        let err = load_tree(
            &art,
            "datadir.tar.zst",
            top.path().join("dst"),
            files,
            Arc::new(Progress::default()),
            &CancellationToken::new(),
        )
        .await
        .expect_err("a flipped byte");
        let text = crate::error::error_text(&err);
        assert!(text.contains("datadir.tar.zst"), "{text}");
        assert!(matches!(err, Error::Archive { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_cancelled_store_leaves_no_object() {
        let top = tempfile::tempdir().expect("tempdir");
        let (src, sink) = (top.path().join("src"), top.path().join("sink"));
        make_tree(&src);
        std::fs::create_dir_all(&sink).expect("mkdir");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = store_tree(
            &Artifact::in_directory(&sink),
            "datadir.tar.zst",
            src,
            skip_for_datadir,
            3,
            Arc::new(Progress::default()),
            &cancel,
        )
        .await
        .expect_err("cancelled");
        assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
        assert!(!sink.join("datadir.tar.zst").exists());
    }
}
