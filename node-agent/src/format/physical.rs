//! Physical artifacts: a directory tree (a snapshot of a server's datadir,
//! or an application file set) as one POSIX pax tar, which the caller
//! compresses (`physical::stream`: zstd), with every file's size, sha256
//! and mode listed in the manifest ([`TreeFile`]).
//!
//! The tar is plain ustar with pax extended headers (`x` entries) where
//! ustar's fields are too small: paths and symlink targets longer than 100
//! bytes (`path`, `linkpath`) and files of 8 GiB or more (`size`). GNU tar,
//! bsdtar and Python's tarfile read it. Entries come in a stable order: a
//! directory before its contents, names sorted bytewise. Ownership is
//! recorded in the headers but not restored: the restoring agent owns what
//! it writes.
//!
//! Reading ([`extract_tree`]) trusts nothing in the stream: every entry must
//! be one the manifest lists, under a directory the same extraction made
//! (so no path and no symlink leads out of the target), with the size and
//! sha256 the manifest gives.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::format::files::HashingReader;
use crate::physical::settings::ServerSettings;

/// ustar's numeric size field holds at most 11 octal digits.
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
/// ustar's name and linkname fields.
const USTAR_NAME_LEN: usize = 100;
/// Read and write buffer per file.
const BUF: usize = 1 << 20;

/// What an entry of a tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeKind {
    Regular,
    Dir,
    Symlink,
}

/// One entry of a tree, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFile {
    /// Relative to the tree's root, '/'-separated.
    pub path: String,
    /// Bytes (0 for directories and symlinks).
    pub size: u64,
    /// Of the content (empty for directories and symlinks).
    pub sha256: String,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// A symlink's target, as stored (not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub kind: TreeKind,
}

/// The manifest section of a physical backup of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Physical {
    /// The snapshot provider ("btrfs", "reflink", ...).
    pub provider: String,
    /// How long taking the snapshot took, inside the lock.
    pub snapshot_us: u64,
    /// Bytes the snapshot covered.
    pub snapshot_bytes: u64,
    /// Bytes free on the volume when it was taken.
    pub free_bytes: u64,
    /// The `.tar.zst` object, relative to the artifact.
    pub archive: String,
    /// Every entry of the archive.
    pub files: Vec<TreeFile>,
    /// How the server was set up: what a restore needs to start it.
    pub settings: ServerSettings,
    /// Settings that weaken the copy, for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Provider `mariabackup`: where the base (`archive`, an mbstream) is
    /// consistent; `binlogs` (objects of the artifact, in order) carry the
    /// server from there to the cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::physical::mariabackup::BasePosition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binlogs: Vec<String>,
}

/// An application file set captured with a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSetRecord {
    /// The set's name in the agent's configuration.
    pub name: String,
    /// The original absolute path.
    pub path: String,
    /// "snapshot" (read from a filesystem snapshot) or "copy" (copied
    /// inside the lock).
    pub how: String,
    /// The `.tar.zst` object, relative to the artifact.
    pub archive: String,
    /// Bytes of the regular files.
    pub bytes: u64,
    pub files: Vec<TreeFile>,
}

/// Files of a datadir that a snapshot copy leaves out:
///
/// - `#sql*`: temporary tables of statements running at the snapshot
///   (`ALTER TABLE` copies, internal temporary tables). MariaDB's backup
///   documentation says to delete them in a snapshot copy; recovery drops
///   what refers to them.
/// - `*.pid`, `*.sock`, `*.sock.lock`: the live server's pid file and
///   socket (locks): meaningless, even misleading, to a server started on
///   the copy.
/// - `ibtmp1`: InnoDB's temporary tablespace, deleted and recreated at
///   every start; it can be large and holds nothing durable.
/// - `lockstep-*`: lockstep's own scratch and logs (such as the log of an
///   earlier recovery). A table's files never match: MariaDB encodes `-` in
///   file names as `@002d`.
pub fn skip_for_datadir(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with("#sql")
        || name.ends_with(".pid")
        || name.ends_with(".sock")
        || name.ends_with(".sock.lock")
        || name.starts_with("lockstep-")
        || rel == "ibtmp1"
}

fn tree_error(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
    Error::Tree {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Writes the tree under `root` (not `root` itself) to `out` as a pax tar;
/// returns `out` and the entries, each regular file hashed as it streams
/// (read once). `skip` gets each relative path (a skipped directory is
/// skipped whole). Sockets, fifos and devices are left out (logged).
/// Symlinks are stored, never followed.
pub fn write_tree<W: Write>(
    root: &Path,
    skip: &dyn Fn(&str) -> bool,
    out: W,
) -> Result<(W, Vec<TreeFile>)> {
    let mut builder = tar::Builder::new(out);
    let mut files = Vec::new();
    walk(root, "", skip, &mut builder, &mut files)?;
    let out = builder
        .into_inner()
        .on_file(root, "finish the archive of")?;
    Ok((out, files))
}

fn walk<W: Write>(
    dir: &Path,
    prefix: &str,
    skip: &dyn Fn(&str) -> bool,
    builder: &mut tar::Builder<W>,
    files: &mut Vec<TreeFile>,
) -> Result<()> {
    let mut entries = fs::read_dir(dir)
        .on_file(dir, "list directory")?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .on_file(dir, "list directory")?;
    entries.sort();
    for name in entries {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            return Err(tree_error(
                &path,
                "the file name is not UTF-8; a tree holds UTF-8 names only",
            ));
        };
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if skip(&rel) {
            tracing::debug!(file = %path.display(), "left out of the archive");
            continue;
        }
        let meta = fs::symlink_metadata(&path).on_file(&path, "stat")?;
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let mut header = tar::Header::new_ustar();
        header.set_mode(mode);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            set_name(&mut header, &format!("{rel}/"), &mut pax, &path)?;
            append(builder, &mut header, &pax, io::empty(), &path)?;
            files.push(TreeFile {
                path: rel.clone(),
                size: 0,
                sha256: String::new(),
                mode,
                link: None,
                kind: TreeKind::Dir,
            });
            walk(&path, &rel, skip, builder, files)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).on_file(&path, "read symlink")?;
            let Some(target) = target.to_str().map(str::to_string) else {
                return Err(tree_error(&path, "the symlink's target is not UTF-8"));
            };
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            set_name(&mut header, &rel, &mut pax, &path)?;
            set_link(&mut header, &target, &mut pax, &path)?;
            append(builder, &mut header, &pax, io::empty(), &path)?;
            files.push(TreeFile {
                path: rel,
                size: 0,
                sha256: String::new(),
                mode,
                link: Some(target),
                kind: TreeKind::Symlink,
            });
        } else if ft.is_file() {
            let file = File::open(&path).on_file(&path, "open")?;
            let size = file.metadata().on_file(&path, "stat")?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            if size > USTAR_MAX_SIZE {
                pax.push(("size", size.to_string().into_bytes()));
            }
            set_name(&mut header, &rel, &mut pax, &path)?;
            let (mut reader, digest) =
                HashingReader::new(BufReader::with_capacity(BUF, &file).take(size));
            append(builder, &mut header, &pax, &mut reader, &path)?;
            let (read, sha256) = digest.finish();
            let now = file.metadata().on_file(&path, "stat")?.len();
            if read != size || now != size {
                return Err(tree_error(
                    &path,
                    format!(
                        "changed while it was archived ({size} bytes when opened, {} read, {now} now); a tree must be frozen (a snapshot) while it is read",
                        read
                    ),
                ));
            }
            files.push(TreeFile {
                path: rel,
                size,
                sha256,
                mode,
                link: None,
                kind: TreeKind::Regular,
            });
        } else {
            let what = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "device"
            };
            tracing::info!(file = %path.display(), "a {what} is not archived");
        }
    }
    Ok(())
}

/// Puts `name` in the header, or a pax `path` record when it is too long
/// (the header then holds its first 100 bytes, for readers without pax).
fn set_name(
    header: &mut tar::Header,
    name: &str,
    pax: &mut Vec<(&str, Vec<u8>)>,
    path: &Path,
) -> Result<()> {
    if name.len() <= USTAR_NAME_LEN {
        // Raw bytes: `set_path` would split and validate, which pax makes
        // unnecessary.
        let ustar = header.as_ustar_mut().expect("a ustar header");
        ustar.name = [0; USTAR_NAME_LEN];
        ustar.name[..name.len()].copy_from_slice(name.as_bytes());
        return Ok(());
    }
    if name.contains('\n') {
        return Err(tree_error(path, "the file name holds a newline"));
    }
    let ustar = header.as_ustar_mut().expect("a ustar header");
    ustar
        .name
        .copy_from_slice(&name.as_bytes()[..USTAR_NAME_LEN]);
    pax.push(("path", name.as_bytes().to_vec()));
    Ok(())
}

fn set_link(
    header: &mut tar::Header,
    target: &str,
    pax: &mut Vec<(&str, Vec<u8>)>,
    path: &Path,
) -> Result<()> {
    let ustar = header.as_ustar_mut().expect("a ustar header");
    ustar.linkname = [0; USTAR_NAME_LEN];
    let n = target.len().min(USTAR_NAME_LEN);
    ustar.linkname[..n].copy_from_slice(&target.as_bytes()[..n]);
    if target.len() > USTAR_NAME_LEN {
        if target.contains('\n') {
            return Err(tree_error(path, "the symlink's target holds a newline"));
        }
        pax.push(("linkpath", target.as_bytes().to_vec()));
    }
    Ok(())
}

fn append<W: Write, R: Read>(
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    pax: &[(&str, Vec<u8>)],
    data: R,
    path: &Path,
) -> Result<()> {
    if !pax.is_empty() {
        builder
            .append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice())))
            .on_file(path, "archive")?;
    }
    header.set_cksum();
    builder.append(header, data).on_file(path, "archive")
}

/// A relative path that stays inside its root: no `/` at the start, no
/// empty, `.` or `..` component, no NUL.
fn check_rel(rel: &str) -> std::result::Result<(), &'static str> {
    if rel.is_empty() {
        return Err("an empty path");
    }
    if rel.starts_with('/') {
        return Err("an absolute path");
    }
    if rel.contains('\0') {
        return Err("a path with a NUL byte");
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("a path with an empty, `.` or `..` component");
    }
    Ok(())
}

/// Bytes written to a restored file between two nudges of the kernel's
/// writeback (see [`Restored`]).
const WRITEBACK_STEP: u64 = 16 << 20;

/// A file being restored. Every [`WRITEBACK_STEP`] bytes it asks the kernel
/// to start writing out the bytes behind it (`posix_fadvise(DONTNEED)`
/// starts writeback of dirty pages and drops the pages already written), so
/// the disk works while the archive is still being read, the sync at the
/// end finds little left, and a big restore does not push the host's
/// running servers out of the page cache.
struct Restored<'f> {
    file: &'f File,
    written: u64,
    started: u64,
}

impl<'f> Restored<'f> {
    fn new(file: &'f File) -> Restored<'f> {
        Restored {
            file,
            written: 0,
            started: 0,
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        (&mut &*self.file).write_all(data)?;
        self.written += data.len() as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            self.start_writeback()?;
        }
        Ok(())
    }

    fn start_writeback(&mut self) -> io::Result<()> {
        if let Some(len) = std::num::NonZeroU64::new(self.written - self.started) {
            rustix::fs::fadvise(
                self.file,
                self.started,
                Some(len),
                rustix::fs::Advice::DontNeed,
            )?;
        }
        self.started = self.written;
        Ok(())
    }

    /// Starts the writeback of the rest.
    fn done(mut self) -> io::Result<()> {
        self.start_writeback()
    }
}

/// SHA-256 of the files being restored, computed on a thread of its own
/// beside the thread that writes them. Buffers go there and come back.
struct HashThread {
    tx: std::sync::mpsc::SyncSender<Option<Vec<u8>>>,
    digests: std::sync::mpsc::Receiver<String>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl HashThread {
    fn start() -> io::Result<HashThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(4);
        let (digest_tx, digests) = std::sync::mpsc::channel();
        let (spare_tx, spare) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Some(buf) => {
                            hasher.update(&buf);
                            let _ = spare_tx.send(buf);
                        }
                        None => {
                            let digest = hex::encode(std::mem::take(&mut hasher).finalize());
                            if digest_tx.send(digest).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(HashThread { tx, digests, spare })
    }

    /// A buffer of [`BUF`] bytes to read into.
    fn buffer(&self) -> Vec<u8> {
        match self.spare.try_recv() {
            Ok(mut buf) => {
                buf.resize(BUF, 0);
                buf
            }
            Err(_) => vec![0u8; BUF],
        }
    }

    /// Adds `buf` to the current file's hash.
    fn update(&self, buf: Vec<u8>) {
        // The thread is gone only if it panicked: finish() reports that.
        let _ = self.tx.send(Some(buf));
    }

    /// The hex SHA-256 of what was added since the last call.
    fn finish(&self) -> String {
        let _ = self.tx.send(None);
        self.digests
            .recv()
            .unwrap_or_else(|_| "(the hashing thread stopped)".to_string())
    }
}

/// Extracts a tar [`write_tree`] wrote into `target` (created if missing;
/// nothing in it is replaced: an entry that exists is an error). Each
/// regular file's size and sha256 are checked as it is written; at the end
/// every entry of `expected` must have arrived, and nothing else may have.
/// Directory modes are applied last; the files are synced. Returns the
/// bytes of the regular files. On an error `target` holds part of the
/// tree: the caller removes it.
pub fn extract_tree<R: Read>(input: R, target: &Path, expected: &[TreeFile]) -> Result<u64> {
    let mut wanted: HashMap<&str, &TreeFile> = HashMap::with_capacity(expected.len());
    for f in expected {
        check_rel(&f.path).map_err(|why| {
            tree_error(
                target.join(&f.path),
                format!("the manifest lists {why}: {:?}", f.path),
            )
        })?;
        wanted.insert(f.path.as_str(), f);
    }
    fs::create_dir_all(target).on_file(target, "create directory")?;
    let mut seen: HashSet<String> = HashSet::with_capacity(expected.len());
    // Directories this extraction created: the only places it writes into.
    let mut made: HashSet<String> = HashSet::from([String::new()]);
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    let mut bytes = 0u64;
    let mut last = String::from("(the start)");
    let mut archive = tar::Archive::new(input);
    let read_failed = |last: &str, e: io::Error| {
        tree_error(
            target,
            format!("cannot read the archive after entry {last}: {e}"),
        )
    };
    let hasher = HashThread::start().on_file(target, "start hashing")?;
    for entry in archive.entries().map_err(|e| read_failed(&last, e))? {
        let mut entry = entry.map_err(|e| read_failed(&last, e))?;
        let raw = entry.path_bytes().into_owned();
        let Ok(name) = String::from_utf8(raw) else {
            return Err(tree_error(
                target,
                format!("the archive holds an entry after {last} whose name is not UTF-8"),
            ));
        };
        let rel = name.trim_end_matches('/').to_string();
        let path = target.join(&rel);
        check_rel(&rel).map_err(|why| {
            tree_error(
                target,
                format!("the archive holds {why}: {name:?}; refusing to write outside the target"),
            )
        })?;
        let Some(want) = wanted.get(rel.as_str()).copied() else {
            return Err(tree_error(
                &path,
                "is in the archive but not in the manifest",
            ));
        };
        if !seen.insert(rel.clone()) {
            return Err(tree_error(&path, "appears twice in the archive"));
        }
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        if !made.contains(parent) {
            return Err(tree_error(
                &path,
                format!("its directory {parent:?} did not come before it in the archive"),
            ));
        }
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => TreeKind::Regular,
            tar::EntryType::Directory => TreeKind::Dir,
            tar::EntryType::Symlink => TreeKind::Symlink,
            other => {
                return Err(tree_error(
                    &path,
                    format!("has entry type {other:?} in the archive, which lockstep never writes"),
                ));
            }
        };
        if kind != want.kind {
            return Err(tree_error(
                &path,
                format!(
                    "is a {kind:?} in the archive but a {:?} in the manifest",
                    want.kind
                ),
            ));
        }
        match kind {
            TreeKind::Dir => {
                fs::create_dir(&path).on_file(&path, "create directory")?;
                made.insert(rel.clone());
                dirs.push((path, want.mode));
            }
            TreeKind::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                if link != want.link {
                    return Err(tree_error(
                        &path,
                        format!(
                            "links to {link:?} in the archive but to {:?} in the manifest",
                            want.link
                        ),
                    ));
                }
                let to = want.link.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(to, &path).on_file(&path, "create symlink")?;
            }
            TreeKind::Regular => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .on_file(&path, "create")?;
                let mut out = Restored::new(&file);
                let mut size = 0u64;
                loop {
                    let mut buf = hasher.buffer();
                    let n = entry.read(&mut buf).map_err(|e| {
                        tree_error(&path, format!("cannot read it from the archive: {e}"))
                    })?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    size += n as u64;
                    out.write(&buf).on_file(&path, "write")?;
                    hasher.update(buf);
                }
                out.done().on_file(&path, "write")?;
                let actual = hasher.finish();
                if actual != want.sha256 || size != want.size {
                    return Err(Error::Checksum {
                        path,
                        expected: want.sha256.clone(),
                        actual,
                        expected_size: want.size,
                        actual_size: size,
                    });
                }
                if let Ok(mtime) = entry.header().mtime() {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    file.set_modified(at).on_file(&path, "set the mtime of")?;
                }
                file.set_permissions(fs::Permissions::from_mode(want.mode))
                    .on_file(&path, "set the mode of")?;
                bytes += size;
            }
        }
        last = rel;
    }
    // Past the end-of-archive blocks: read to the end, so a decoder below
    // checks its trailer (zstd's frame checksum).
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| read_failed(&last, e))?;
    let mut missing: Vec<&str> = wanted
        .keys()
        .copied()
        .filter(|p| !seen.contains(*p))
        .collect();
    if !missing.is_empty() {
        missing.sort_unstable();
        let more = missing.len() - 1;
        return Err(tree_error(
            target.join(missing[0]),
            format!(
                "is in the manifest but not in the archive{}",
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    // Deepest first, so a read-only directory is set after its contents.
    for (dir, mode) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .on_file(dir, "set the mode of")?;
    }
    let root = File::open(target).on_file(target, "open")?;
    rustix::fs::syncfs(&root)
        .map_err(io::Error::from)
        .on_file(target, "sync the filesystem of")?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree with nested dirs, a name over 100 bytes, a symlink (long
    /// target), an empty file, a 0600 file and what a datadir copy skips.
    fn make_tree(root: &Path) -> String {
        let long = format!("{}/{}.ibd", "d".repeat(64), "t".repeat(64));
        fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
        fs::create_dir_all(root.join("d".repeat(64))).expect("mkdir");
        fs::write(root.join(&long), b"long name").expect("write");
        fs::write(root.join("a/b/c/data"), vec![1u8; 70_000]).expect("write");
        fs::write(root.join("a/empty"), b"").expect("write");
        fs::write(root.join("a/secret"), b"key").expect("write");
        fs::set_permissions(root.join("a/secret"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        std::os::unix::fs::symlink(format!("../{}", "x".repeat(120)), root.join("a/link"))
            .expect("symlink");
        fs::write(root.join("a/#sql-alter-1.frm"), b"tmp").expect("write");
        fs::write(root.join("lockstep-recover.err"), b"log").expect("write");
        long
    }

    fn archive(root: &Path) -> (Vec<u8>, Vec<TreeFile>) {
        write_tree(root, &skip_for_datadir, Vec::new()).expect("write_tree")
    }

    #[test]
    fn a_tree_round_trips() {
        let top = tempfile::tempdir().expect("tempdir");
        let src = top.path().join("src");
        let long = make_tree(&src);
        let (tar, files) = archive(&src);
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c",
                "a/b/c/data",
                "a/empty",
                "a/link",
                "a/secret",
                &"d".repeat(64),
                &long
            ]
        );
        let dst = top.path().join("dst");
        let bytes = extract_tree(tar.as_slice(), &dst, &files).expect("extract");
        assert_eq!(bytes, 70_000 + 3 + 9);
        assert_eq!(fs::read(dst.join(&long)).expect("read"), b"long name");
        assert_eq!(
            fs::read(dst.join("a/b/c/data")).expect("read").len(),
            70_000
        );
        assert_eq!(fs::read(dst.join("a/empty")).expect("read"), b"");
        let mode = fs::metadata(dst.join("a/secret")).expect("stat").mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert_eq!(
            fs::read_link(dst.join("a/link")).expect("readlink"),
            PathBuf::from(format!("../{}", "x".repeat(120)))
        );
        assert!(!dst.join("a/#sql-alter-1.frm").exists());
        assert!(!dst.join("lockstep-recover.err").exists());
        // Written again, the same tree gives the same listing.
        assert_eq!(archive(&dst).1, files);
    }

    #[test]
    fn skips_what_a_datadir_copy_must_not_hold() {
        for skipped in [
            "#sql-ib12.ibd",
            "db/#sql-alter-4b-2.frm",
            "mysqld.pid",
            "mysqld.sock",
            "mysql.sock.lock",
            "lockstep-recover.err",
            "ibtmp1",
        ] {
            assert!(skip_for_datadir(skipped), "{skipped}");
        }
        for kept in [
            "ibdata1",
            "db/t.ibd",
            "mysql-bin.000001",
            "db/ibtmp1",
            "aria_log.00000001",
        ] {
            assert!(!skip_for_datadir(kept), "{kept}");
        }
    }

    #[test]
    fn a_flipped_byte_names_the_file_and_both_checksums() {
        let top = tempfile::tempdir().expect("tempdir");
        let src = top.path().join("src");
        make_tree(&src);
        let (mut tar, files) = archive(&src);
        let data = files
            .iter()
            .find(|f| f.path == "a/b/c/data")
            .expect("listed");
        // The file's bytes are the only run of 1s this long.
        let at = tar
            .windows(512)
            .position(|w| w.iter().all(|b| *b == 1))
            .expect("the data in the tar");
        tar[at + 100] ^= 0xff;
        let err =
            extract_tree(tar.as_slice(), &top.path().join("dst"), &files).expect_err("flipped");
        let text = err.to_string();
        assert!(text.contains("a/b/c/data"), "{text}");
        assert!(text.contains(&data.sha256), "{text}");
        assert!(matches!(err, Error::Checksum { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_or_unexpected_entry_is_refused() {
        let top = tempfile::tempdir().expect("tempdir");
        let src = top.path().join("src");
        make_tree(&src);
        let (tar, files) = archive(&src);
        // The manifest lists a file the archive lacks.
        let mut more = files.clone();
        more.push(TreeFile {
            path: "a/ghost".into(),
            size: 1,
            sha256: "00".into(),
            mode: 0o644,
            link: None,
            kind: TreeKind::Regular,
        });
        let text = extract_tree(tar.as_slice(), &top.path().join("d1"), &more)
            .expect_err("missing")
            .to_string();
        assert!(
            text.contains("a/ghost") && text.contains("not in the archive"),
            "{text}"
        );
        // The archive holds a file the manifest does not list.
        let fewer: Vec<TreeFile> = files
            .iter()
            .filter(|f| f.path != "a/empty")
            .cloned()
            .collect();
        let text = extract_tree(tar.as_slice(), &top.path().join("d2"), &fewer)
            .expect_err("unexpected")
            .to_string();
        assert!(
            text.contains("a/empty") && text.contains("not in the manifest"),
            "{text}"
        );
        // Nothing in the target is replaced.
        let text = extract_tree(tar.as_slice(), &top.path().join("d2"), &files)
            .expect_err("exists")
            .to_string();
        assert!(text.contains("d2/a"), "{text}");
    }

    /// A tar with one entry named `name` (raw header bytes, as a hostile
    /// archive would have it), and its manifest.
    fn hostile(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"x"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        h.as_ustar_mut().expect("ustar").name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_ustar_mut().expect("ustar").linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).expect("append");
        b.into_inner().expect("finish")
    }

    #[test]
    fn paths_that_leave_the_target_are_refused() {
        let top = tempfile::tempdir().expect("tempdir");
        let dst = top.path().join("dst");
        for name in ["../escape", "a/../../escape", "/etc/escape"] {
            let tar = hostile(name, tar::EntryType::Regular, None);
            let listed = vec![TreeFile {
                path: name.into(),
                size: 1,
                sha256: crate::format::files::sha256_hex(b"x"),
                mode: 0o644,
                link: None,
                kind: TreeKind::Regular,
            }];
            let text = extract_tree(tar.as_slice(), &dst, &[])
                .expect_err(name)
                .to_string();
            assert!(text.contains("refusing to write outside"), "{name}: {text}");
            // Even when a manifest lists it.
            let text = extract_tree(tar.as_slice(), &dst, &listed)
                .expect_err(name)
                .to_string();
            assert!(text.contains("the manifest lists"), "{name}: {text}");
        }
        assert!(!top.path().join("escape").exists());
        // A file under a symlink to elsewhere is not written through it.
        let mut b = tar::Builder::new(Vec::new());
        for part in [
            hostile("out", tar::EntryType::Symlink, Some("/tmp")),
            hostile("out/escape", tar::EntryType::Regular, None),
        ] {
            let mut a = tar::Archive::new(part.as_slice());
            for e in a.entries().expect("entries") {
                let mut e = e.expect("entry");
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("read");
                b.append(&h, data.as_slice()).expect("append");
            }
        }
        let tar = b.into_inner().expect("finish");
        let listed = vec![
            TreeFile {
                path: "out".into(),
                size: 0,
                sha256: String::new(),
                mode: 0o777,
                link: Some("/tmp".into()),
                kind: TreeKind::Symlink,
            },
            TreeFile {
                path: "out/escape".into(),
                size: 1,
                sha256: crate::format::files::sha256_hex(b"x"),
                mode: 0o644,
                link: None,
                kind: TreeKind::Regular,
            },
        ];
        let text = extract_tree(tar.as_slice(), &top.path().join("d3"), &listed)
            .expect_err("through a symlink")
            .to_string();
        assert!(text.contains("did not come before it"), "{text}");
        assert!(!Path::new("/tmp/escape").exists());
    }

    #[test]
    fn tree_entries_serialise_compactly() {
        let f = TreeFile {
            path: "db/t.ibd".into(),
            size: 4,
            sha256: "ab".into(),
            mode: 0o640,
            link: None,
            kind: TreeKind::Regular,
        };
        let json = serde_json::to_string(&f).expect("json");
        assert_eq!(
            json,
            r#"{"path":"db/t.ibd","size":4,"sha256":"ab","mode":416,"kind":"regular"}"#
        );
        assert_eq!(serde_json::from_str::<TreeFile>(&json).expect("parse"), f);
    }
}
