//! The archive directory on disk: which files it holds, where the newest one
//! ends (its last complete, checksummed event), cutting a torn tail, and
//! appending events with fsync.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::binlog::event::{self, Groups, HEADER_LEN, Header, MAGIC, kind};
use crate::error::{Error, IoContext, Result};

/// A binlog file name as the server writes it: `<basename>.<digits>` with at
/// least six digits. Returns (basename, number).
pub fn parse_name(name: &str) -> Option<(&str, u64)> {
    let (base, digits) = name.rsplit_once('.')?;
    if base.is_empty()
        || digits.len() < 6
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || name.contains('/')
        || name.starts_with('.')
    {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

/// Where the archive of a directory stands after a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No binlog file yet.
    Empty,
    /// Continue `file` at `offset` (the end of its last complete event).
    Append {
        file: String,
        offset: u64,
        checksum_len: usize,
        /// Commit groups at `offset` (inside one, or between two).
        groups: Groups,
        /// The last group boundary at or before `offset`.
        boundary: u64,
    },
    /// The newest file is closed (it ends with a Rotate event): start `next`.
    Next { closed: String, next: String },
}

fn archive_error(dir: &Path, reason: impl Into<String>) -> Error {
    Error::BinlogArchive {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// The binlog files in `dir` (by number), checking they share one basename.
pub fn list(dir: &Path) -> Result<Vec<(u64, String)>> {
    let mut files = Vec::new();
    let mut base: Option<String> = None;
    for entry in std::fs::read_dir(dir).on_file(dir, "list the archive directory")? {
        let entry = entry.on_file(dir, "list the archive directory")?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((b, n)) = parse_name(name) else {
            continue;
        };
        match &base {
            None => base = Some(b.to_string()),
            Some(have) if have != b => {
                return Err(archive_error(
                    dir,
                    format!(
                        "holds binlogs of two basenames ({have} and {b}); one directory archives one server"
                    ),
                ));
            }
            Some(_) => {}
        }
        files.push((n, name.to_string()));
    }
    files.sort();
    Ok(files)
}

/// Scans the newest file of `dir`: every event must have a sane header,
/// end where its `log_pos` says and carry a good checksum. A torn or
/// corrupt tail (an agent or host crash mid-write) is cut off, and the cut
/// is fsynced.
pub fn scan(dir: &Path) -> Result<Resume> {
    let files = list(dir)?;
    let Some((_, name)) = files.last() else {
        return Ok(Resume::Empty);
    };
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .on_file(&path, "open the newest archived binlog")?;
    let len = file.metadata().on_file(&path, "stat")?.len();
    if len < MAGIC.len() as u64 {
        // Created, then torn before its magic: start it again.
        file.set_len(0).on_file(&path, "truncate")?;
        file.write_all(&MAGIC)
            .on_file(&path, "write the binlog magic")?;
        file.sync_all().on_file(&path, "fsync")?;
        return Ok(Resume::Append {
            file: name.clone(),
            offset: MAGIC.len() as u64,
            checksum_len: 0,
            groups: Groups::default(),
            boundary: MAGIC.len() as u64,
        });
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).on_file(&path, "read")?;
    if magic != MAGIC {
        return Err(archive_error(
            dir,
            format!("{name} is not a binlog file (bad magic)"),
        ));
    }
    let mut offset = MAGIC.len() as u64;
    let mut checksum_len = 0;
    let mut groups = Groups::default();
    let mut boundary = offset;
    let mut last_kind = None;
    let mut last_rotate = None;
    let mut event = Vec::new();
    let torn = loop {
        if offset == len {
            break None;
        }
        event.resize(HEADER_LEN, 0);
        if len - offset < HEADER_LEN as u64 {
            break Some("a partial event header");
        }
        reader.read_exact(&mut event).on_file(&path, "read")?;
        let Some(h) = Header::parse(&event) else {
            break Some("an event header with a bad length");
        };
        if u64::from(h.event_len) > len - offset {
            break Some("a partial event");
        }
        if u64::from(h.log_pos) != offset + u64::from(h.event_len) {
            break Some("an event whose end position disagrees with its place");
        }
        event.resize(h.event_len as usize, 0);
        reader
            .read_exact(&mut event[HEADER_LEN..])
            .on_file(&path, "read")?;
        if h.kind == kind::FORMAT_DESCRIPTION {
            checksum_len = match event::checksum_len(&event) {
                Ok(n) => n,
                Err(_) => break Some("an unreadable Format_description event"),
            };
        }
        if !event::checksum_ok(&event, checksum_len) {
            break Some("an event with a bad checksum");
        }
        offset += u64::from(h.event_len);
        if groups.after(&event, checksum_len) {
            boundary = offset;
        }
        last_kind = Some(h.kind);
        if h.kind == kind::ROTATE {
            last_rotate = event::rotate_target(&event, checksum_len)
                .ok()
                .map(|(next, _)| next);
        }
    };
    drop(reader);
    if let Some(why) = torn {
        tracing::warn!(
            file = %path.display(),
            valid = offset,
            cut = len - offset,
            "archived binlog ends with {why}; cutting the tail after the last complete event"
        );
        file.set_len(offset)
            .on_file(&path, "truncate a torn tail")?;
        file.sync_all().on_file(&path, "fsync")?;
    }
    if last_kind == Some(kind::ROTATE) {
        let next = last_rotate.ok_or_else(|| {
            archive_error(dir, format!("{name} ends with an unreadable Rotate event"))
        })?;
        if parse_name(&next).is_none() {
            return Err(archive_error(
                dir,
                format!("{name} rotates to {next:?}, not a binlog name"),
            ));
        }
        return Ok(Resume::Next {
            closed: name.clone(),
            next,
        });
    }
    Ok(Resume::Append {
        file: name.clone(),
        offset,
        checksum_len,
        groups,
        boundary,
    })
}

/// One archived binlog being written. Bytes go to `pending` first and reach
/// the file in [`LocalFile::sync`] (one write and one fsync per batch of
/// commit groups) or [`LocalFile::spill`] (a write, no fsync, to keep memory
/// bounded).
#[derive(Debug)]
pub struct LocalFile {
    pub name: String,
    pub path: PathBuf,
    file: Arc<std::fs::File>,
    /// Bytes in the file (written, maybe not yet fsynced).
    written: u64,
    /// Bytes waiting to be written.
    pending: Vec<u8>,
    /// Position up to which the file is fsynced.
    pub synced: u64,
}

impl LocalFile {
    /// Creates `name` in `dir` with the binlog magic (an existing file of at
    /// most the magic is replaced; a longer one is refused).
    pub fn create(dir: &Path, name: &str) -> Result<LocalFile> {
        let path = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() > MAGIC.len() as u64
        {
            return Err(archive_error(
                dir,
                format!(
                    "{name} already exists with {} bytes; refusing to overwrite it",
                    meta.len()
                ),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .on_file(&path, "create an archived binlog")?;
        sync_dir(dir)?;
        Ok(LocalFile {
            name: name.to_string(),
            path,
            file: Arc::new(file),
            written: 0,
            pending: MAGIC.to_vec(),
            synced: 0,
        })
    }

    /// Opens `name` to append at `offset` (its length after [`scan`]).
    pub fn append(dir: &Path, name: &str, offset: u64) -> Result<LocalFile> {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .on_file(&path, "open an archived binlog")?;
        let len = file.metadata().on_file(&path, "stat")?.len();
        if len != offset {
            return Err(archive_error(
                dir,
                format!("{name} is {len} bytes, expected {offset} (changed under the archiver?)"),
            ));
        }
        file.seek(SeekFrom::Start(offset)).on_file(&path, "seek")?;
        Ok(LocalFile {
            name: name.to_string(),
            path,
            file: Arc::new(file),
            written: offset,
            pending: Vec::new(),
            synced: offset,
        })
    }

    /// The position after the last event taken.
    pub fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Bytes taken but not yet fsynced.
    pub fn unsynced(&self) -> u64 {
        self.end() - self.synced
    }

    pub fn push(&mut self, event: &[u8]) {
        self.pending.extend_from_slice(event);
    }

    /// Bytes waiting in memory.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Writes what is pending, without fsync.
    pub async fn spill(&mut self) -> Result<()> {
        self.flush(false).await
    }

    /// Writes what is pending and fsyncs the file.
    pub async fn sync(&mut self) -> Result<()> {
        self.flush(true).await
    }

    async fn flush(&mut self, fsync: bool) -> Result<()> {
        if self.pending.is_empty() && (!fsync || self.synced == self.written) {
            return Ok(());
        }
        let data = std::mem::take(&mut self.pending);
        let file = Arc::clone(&self.file);
        let path = self.path.clone();
        let written = data.len() as u64;
        let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            (&*file)
                .write_all(&data)
                .on_file(&path, "write an archived binlog")?;
            if fsync {
                file.sync_data()
                    .on_file(&path, "fsync an archived binlog")?;
            }
            Ok(data)
        })
        .await
        .map_err(|e| {
            Error::io(
                &self.path,
                "write an archived binlog",
                std::io::Error::other(e),
            )
        })??;
        self.written += written;
        if fsync {
            self.synced = self.written;
        }
        // Keep the buffer's allocation for the next batch.
        self.pending = data;
        self.pending.clear();
        Ok(())
    }
}

/// Fsyncs a directory, so a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .on_file(dir, "fsync the archive directory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::event::build::*;

    /// A file as the server writes one: magic, FD, a transaction, a DDL,
    /// and optionally a Rotate. Returns the bytes and the end of each event.
    fn sample(rotate: bool) -> (Vec<u8>, Vec<u64>) {
        let mut file = MAGIC.to_vec();
        let mut ends = Vec::new();
        let mut add = |file: &mut Vec<u8>, kind: u8, body: &[u8]| {
            let len = (HEADER_LEN + body.len() + 4) as u64;
            let end = file.len() as u64 + len;
            let flags = if kind == event::kind::FORMAT_DESCRIPTION {
                1
            } else {
                0
            };
            file.extend(event(kind, 1700, end as u32, flags, body, true));
            ends.push(end);
        };
        add(
            &mut file,
            event::kind::FORMAT_DESCRIPTION,
            &format_description_body(true),
        );
        add(&mut file, event::kind::GTID_LIST, &[0; 4]);
        add(&mut file, event::kind::GTID, &gtid_body(1, 1, 0));
        add(&mut file, event::kind::QUERY, &query_body("db", "BEGIN"));
        add(&mut file, 0x17, &[5; 40]);
        add(&mut file, event::kind::XID, &[1; 8]);
        add(&mut file, event::kind::GTID, &gtid_body(2, 1, 1));
        add(
            &mut file,
            event::kind::QUERY,
            &query_body("db", "CREATE TABLE t (a INT)"),
        );
        if rotate {
            add(
                &mut file,
                event::kind::ROTATE,
                &rotate_body("bin.000008", 4),
            );
        }
        (file, ends)
    }

    #[test]
    fn names_follow_the_server() {
        assert_eq!(parse_name("mysql-bin.000012"), Some(("mysql-bin", 12)));
        assert_eq!(parse_name("a.b.1234567"), Some(("a.b", 1_234_567)));
        for bad in [
            "mysql-bin.index",
            "mysql-bin.00001",
            ".x.000001",
            "x.00000a",
            "000001",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn scan_resumes_after_the_last_complete_event() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (bytes, ends) = sample(false);
        std::fs::write(dir.path().join("bin.000007"), &bytes).expect("write");
        std::fs::write(dir.path().join("bin.000006"), b"older").expect("write");
        let whole = scan(dir.path()).expect("scan");
        let Resume::Append {
            file,
            offset,
            checksum_len,
            groups,
            boundary,
        } = whole
        else {
            panic!("expected to append, got {whole:?}");
        };
        assert_eq!(file, "bin.000007");
        assert_eq!(
            (offset, checksum_len, boundary),
            (bytes.len() as u64, 4, bytes.len() as u64)
        );
        assert!(!groups.in_group());

        // Torn in the middle of the row event: cut back to the BEGIN, which
        // is inside a group whose last boundary is the Gtid_list.
        let torn_at = ends[4] as usize - 10;
        std::fs::write(dir.path().join("bin.000007"), &bytes[..torn_at]).expect("write");
        let torn = scan(dir.path()).expect("scan");
        let Resume::Append {
            offset,
            groups,
            boundary,
            ..
        } = torn
        else {
            panic!("expected to append, got {torn:?}");
        };
        assert_eq!((offset, boundary), (ends[3], ends[1]));
        assert!(groups.in_group());
        let len = std::fs::metadata(dir.path().join("bin.000007"))
            .expect("stat")
            .len();
        assert_eq!(len, ends[3], "the torn tail is cut from the file");

        // Zeros after a crash (a length of 0 in the header) and a flipped
        // byte (a bad checksum) are cut too.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 100]);
        std::fs::write(dir.path().join("bin.000007"), &zeros).expect("write");
        assert!(
            matches!(scan(dir.path()).expect("scan"), Resume::Append { offset, .. } if offset == bytes.len() as u64)
        );
        let mut flipped = bytes.clone();
        flipped[ends[5] as usize - 6] ^= 0x40;
        std::fs::write(dir.path().join("bin.000007"), &flipped).expect("write");
        assert!(
            matches!(scan(dir.path()).expect("scan"), Resume::Append { offset, .. } if offset == ends[4])
        );
    }

    #[test]
    fn scan_moves_past_a_closed_file_and_refuses_strangers() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(scan(dir.path()).expect("scan"), Resume::Empty);
        let (bytes, _) = sample(true);
        std::fs::write(dir.path().join("bin.000007"), &bytes).expect("write");
        assert_eq!(
            scan(dir.path()).expect("scan"),
            Resume::Next {
                closed: "bin.000007".into(),
                next: "bin.000008".into()
            }
        );
        std::fs::write(dir.path().join("bin.000008"), &MAGIC[..2]).expect("write");
        assert!(matches!(
            scan(dir.path()).expect("scan"),
            Resume::Append { offset: 4, .. }
        ));
        std::fs::write(dir.path().join("other.000001"), MAGIC).expect("write");
        let err = scan(dir.path()).expect_err("two basenames");
        assert!(err.to_string().contains("two basenames"), "{err}");
    }
}
