//! What a replay needs to know about its files before it touches the
//! target, read natively: every event's header checked (length, `log_pos`,
//! CRC32), the start and stop positions checked as event and transaction
//! boundaries, the GTID of every transaction and where its group starts, and
//! the GTID position at the stop position (the last file's Gtid_list event
//! plus the GTIDs after it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::binlog::event::{self, Groups, HEADER_LEN, Header, MAGIC, kind};
use crate::error::{Error, Result};

/// One MariaDB GTID: domain, server id, sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gtid {
    pub domain: u32,
    pub server_id: u32,
    pub seq: u64,
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server_id, self.seq)
    }
}

impl std::str::FromStr for Gtid {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Gtid, String> {
        let mut parts = s.trim().splitn(3, '-');
        let mut next = |what: &str| {
            parts
                .next()
                .ok_or_else(|| format!("GTID {s:?} has no {what}"))
        };
        let bad = |e: std::num::ParseIntError| format!("GTID {s:?}: {e}");
        Ok(Gtid {
            domain: next("domain")?.parse().map_err(bad)?,
            server_id: next("server id")?.parse().map_err(bad)?,
            seq: next("sequence number")?.parse().map_err(bad)?,
        })
    }
}

/// A GTID position as `gtid_slave_pos` holds it: the last GTID of each
/// domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, Gtid>);

impl GtidPos {
    /// Parses `"0-1-5,2-2-9"` (empty: no domain).
    pub fn parse(s: &str) -> std::result::Result<GtidPos, String> {
        let mut pos = GtidPos::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            pos.apply(part.parse()?);
        }
        Ok(pos)
    }

    /// Records `g` as the last GTID of its domain.
    pub fn apply(&mut self, g: Gtid) {
        self.0.insert(g.domain, g);
    }

    /// Whether a transaction with GTID `g` counts as applied: its domain is
    /// at `g`'s sequence number or past it.
    pub fn contains(&self, g: &Gtid) -> bool {
        self.0.get(&g.domain).is_some_and(|have| have.seq >= g.seq)
    }

    /// `self`, with every domain of `other` taken from `other`.
    pub fn merged(&self, other: &GtidPos) -> GtidPos {
        let mut out = self.clone();
        for g in other.0.values() {
            out.apply(*g);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for GtidPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.values().map(Gtid::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Where one transaction starts: its GTID event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxAt {
    /// Index of the file in the plan.
    pub file: usize,
    /// Offset of the GTID event in that file.
    pub offset: u64,
    pub gtid: Gtid,
}

/// What a scan of the plan's files found.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// File names (the last path component), as on the source server.
    pub names: Vec<String>,
    /// Where each file's replayed range starts and ends: `start_pos` in the
    /// first, 4 in the others; `stop_pos` in the last, the length of the
    /// others.
    pub ranges: Vec<(u64, u64)>,
    /// Every transaction between the start and stop positions, in order.
    pub transactions: Vec<TxAt>,
    /// The server ids of those transactions.
    pub server_ids: BTreeSet<u32>,
    /// The GTID position at the stop position (the source's
    /// `gtid_binlog_pos` at that moment), when the last file has a
    /// Gtid_list event.
    pub point: GtidPos,
}

impl Scanned {
    /// Bytes from (file, offset) to the stop position.
    pub fn bytes_from(&self, file: usize, offset: u64) -> u64 {
        self.ranges
            .iter()
            .enumerate()
            .skip(file)
            .map(|(i, &(start, end))| {
                let from = if i == file { offset } else { start };
                end.saturating_sub(from)
            })
            .sum()
    }
}

fn bad(path: &Path, position: u64, reason: impl Into<String>) -> Error {
    Error::Replay {
        server: "(scan)".into(),
        file: path.display().to_string(),
        position,
        reason: reason.into(),
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end of file.
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 if n == 0 => return Ok(false),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ends {} bytes into an event header", n),
                ));
            }
            k => n += k,
        }
    }
    Ok(true)
}

/// Scans `files` from `start_pos` in the first to `stop_pos` in the last.
pub fn scan(files: &[PathBuf], start_pos: u64, stop_pos: u64) -> Result<Scanned> {
    let Some(last) = files.len().checked_sub(1) else {
        return Err(Error::Config(
            "a replay plan needs at least one binlog file".into(),
        ));
    };
    let mut out = Scanned {
        names: Vec::new(),
        ranges: Vec::new(),
        transactions: Vec::new(),
        server_ids: BTreeSet::new(),
        point: GtidPos::default(),
    };
    for (i, path) in files.iter().enumerate() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad(path, 0, "the path has no UTF-8 file name"))?;
        if out.names.iter().any(|n| n == name) {
            return Err(bad(path, 0, "the plan names this file twice"));
        }
        out.names.push(name.to_string());
        let start = if i == 0 { start_pos } else { 4 };
        let stop = (i == last).then_some(stop_pos);
        let end = scan_file(path, i, start, stop, i == last, &mut out)?;
        out.ranges.push((start, end));
    }
    if files.len() == 1 && stop_pos < start_pos {
        return Err(bad(
            &files[0],
            stop_pos,
            format!("the stop position {stop_pos} is before the start position {start_pos}"),
        ));
    }
    Ok(out)
}

/// Scans one file; returns where its replayed range ends.
fn scan_file(
    path: &Path,
    index: usize,
    start: u64,
    stop: Option<u64>,
    is_last: bool,
    out: &mut Scanned,
) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open binlog file", e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)
        .map_err(|e| Error::io(path, "read binlog file", e))?;
    if magic != MAGIC {
        return Err(bad(path, 0, "not a binlog file (no \\xfebin magic)"));
    }
    let mut at: u64 = 4;
    let mut crc = 0usize;
    let mut groups = Groups::default();
    let mut seen_start = start == 4;
    let mut event = Vec::with_capacity(4096);
    // The position of the last file at its Gtid_list event, then every
    // GTID up to the stop position.
    let mut point = GtidPos::default();
    loop {
        if at == start {
            seen_start = true;
            if groups.in_group() {
                return Err(bad(
                    path,
                    start,
                    "the start position is inside a transaction, not between two",
                ));
            }
        }
        if stop == Some(at) {
            if !seen_start {
                return Err(bad(
                    path,
                    at,
                    format!("the stop position {at} is before the start position {start}"),
                ));
            }
            if groups.in_group() {
                return Err(bad(
                    path,
                    at,
                    "the stop position is inside a transaction, not at its end",
                ));
            }
            break;
        }
        if stop.is_some_and(|s| at > s) {
            return Err(bad(
                path,
                stop.unwrap_or(at),
                "the stop position is not an event boundary (it falls inside an event)",
            ));
        }
        if !seen_start && at > start {
            return Err(bad(
                path,
                start,
                "the start position is not an event boundary (it falls inside an event)",
            ));
        }
        let mut header = [0u8; HEADER_LEN];
        let more = read_exact_or_eof(&mut r, &mut header)
            .map_err(|e| Error::io(path, "read binlog file", e))?;
        if !more {
            if let Some(s) = stop {
                return Err(bad(
                    path,
                    at,
                    format!("the file ends at {at}, before the stop position {s}"),
                ));
            }
            if !seen_start {
                return Err(bad(
                    path,
                    at,
                    format!("the file ends at {at}, before the start position {start}"),
                ));
            }
            break;
        }
        let h = Header::parse(&header)
            .ok_or_else(|| bad(path, at, "an event header with a length below 19 bytes"))?;
        let len = u64::from(h.event_len);
        if u64::from(h.log_pos) != at + len {
            return Err(bad(
                path,
                at,
                format!(
                    "an event of type {} and {len} bytes says it ends at {}: the file is corrupt or not a server's binlog",
                    h.kind, h.log_pos
                ),
            ));
        }
        event.clear();
        event.extend_from_slice(&header);
        event.resize(h.event_len as usize, 0);
        r.read_exact(&mut event[HEADER_LEN..]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad(
                    path,
                    at,
                    format!("the file ends inside an event of {len} bytes (torn or truncated)"),
                )
            } else {
                Error::io(path, "read binlog file", e)
            }
        })?;
        if h.kind == kind::FORMAT_DESCRIPTION {
            crc = event::checksum_len(&event).map_err(|e| bad(path, at, e))?;
        }
        if !event::checksum_ok(&event, crc) {
            return Err(bad(
                path,
                at,
                format!("event of type {} fails its CRC32", h.kind),
            ));
        }
        let in_range = at >= start;
        match h.kind {
            kind::GTID_LIST if is_last => {
                for g in gtid_list(&event, crc).map_err(|e| bad(path, at, e))? {
                    point.apply(g);
                }
            }
            kind::GTID => {
                let gtid = gtid_event(&event, h.server_id).map_err(|e| bad(path, at, e))?;
                if is_last {
                    point.apply(gtid);
                }
                if in_range {
                    out.transactions.push(TxAt {
                        file: index,
                        offset: at,
                        gtid,
                    });
                    out.server_ids.insert(h.server_id);
                }
            }
            _ => {}
        }
        groups.after(&event, crc);
        at += len;
    }
    if is_last {
        out.point = point;
    }
    Ok(at)
}

/// The GTID of a GTID event (body: seq 8, domain 4, flags 1, ...).
fn gtid_event(event: &[u8], server_id: u32) -> std::result::Result<Gtid, String> {
    let body = event
        .get(HEADER_LEN..HEADER_LEN + 12)
        .ok_or("a GTID event is too short")?;
    Ok(Gtid {
        seq: u64::from_le_bytes(body[..8].try_into().expect("8 bytes")),
        domain: u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")),
        server_id,
    })
}

/// The GTIDs of a Gtid_list event (count 4 bytes, the top 4 bits flags;
/// then domain 4, server id 4, seq 8 each).
fn gtid_list(event: &[u8], crc: usize) -> std::result::Result<Vec<Gtid>, String> {
    let body = &event[HEADER_LEN..event.len().saturating_sub(crc)];
    let count = body
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) & 0x0fff_ffff)
        .ok_or("a Gtid_list event is too short")? as usize;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 16;
        let e = body
            .get(at..at + 16)
            .ok_or("a Gtid_list event is shorter than its count says")?;
        out.push(Gtid {
            domain: u32::from_le_bytes(e[..4].try_into().expect("4 bytes")),
            server_id: u32::from_le_bytes(e[4..8].try_into().expect("4 bytes")),
            seq: u64::from_le_bytes(e[8..16].try_into().expect("8 bytes")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::event::build::*;

    /// A binlog file of `events` (bodies), each given its real `log_pos`.
    fn file(dir: &Path, name: &str, events: &[(u8, Vec<u8>)]) -> PathBuf {
        let mut bytes = MAGIC.to_vec();
        for (k, body) in events {
            let len = (HEADER_LEN + body.len() + 4) as u32;
            let pos = bytes.len() as u32 + len;
            bytes.extend(event(*k, 1, pos, 0, body, true));
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    fn gtid_list_body(list: &[(u32, u32, u64)]) -> Vec<u8> {
        let mut b = (list.len() as u32).to_le_bytes().to_vec();
        for (d, s, n) in list {
            b.extend(d.to_le_bytes());
            b.extend(s.to_le_bytes());
            b.extend(n.to_le_bytes());
        }
        b
    }

    fn txn(seq: u64) -> Vec<(u8, Vec<u8>)> {
        vec![
            (kind::GTID, gtid_body(seq, 3, 0)),
            (kind::QUERY, query_body("d", "BEGIN")),
            (kind::XID, vec![0; 8]),
        ]
    }

    #[test]
    fn gtid_positions_parse_merge_and_contain() {
        let p = GtidPos::parse("0-1-5, 2-2-9").expect("parse");
        assert_eq!(p.to_string(), "0-1-5,2-2-9");
        assert!(p.contains(&"0-7-5".parse().expect("gtid")));
        assert!(!p.contains(&"0-1-6".parse().expect("gtid")));
        assert!(!p.contains(&"1-1-1".parse().expect("gtid")));
        let q = GtidPos::parse("2-3-10,4-4-1").expect("parse");
        assert_eq!(p.merged(&q).to_string(), "0-1-5,2-3-10,4-4-1");
        assert!(GtidPos::parse("").expect("empty").is_empty());
        assert!(GtidPos::parse("0-1").is_err());
        assert!(GtidPos::parse("a-1-2").is_err());
    }

    #[test]
    fn scan_finds_transactions_point_and_refuses_bad_positions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = (kind::FORMAT_DESCRIPTION, format_description_body(true));
        let mut a = vec![fd.clone(), (kind::GTID_LIST, gtid_list_body(&[(3, 7, 4)]))];
        a.extend(txn(5));
        a.extend(txn(6));
        a.push((kind::ROTATE, rotate_body("b.000002", 4)));
        let f1 = file(dir.path(), "b.000001", &a);
        let mut b = vec![
            fd,
            (kind::GTID_LIST, gtid_list_body(&[(3, 7, 6), (9, 9, 2)])),
        ];
        b.extend(txn(7));
        b.extend(txn(8));
        let f2 = file(dir.path(), "b.000002", &b);

        // Event offsets: FD at 4, then the list, then transactions.
        let bytes1 = std::fs::read(&f1).expect("read");
        let offsets = |bytes: &[u8]| {
            let mut at = 4usize;
            let mut v = Vec::new();
            while at < bytes.len() {
                v.push(at as u64);
                at += Header::parse(&bytes[at..]).expect("header").event_len as usize;
            }
            v.push(at as u64);
            v
        };
        let o1 = offsets(&bytes1);
        let o2 = offsets(&std::fs::read(&f2).expect("read"));
        // Start at the second transaction of file 1, stop after the first of file 2.
        let files = vec![f1.clone(), f2.clone()];
        let s = scan(&files, o1[5], o2[5]).expect("scan");
        let seqs: Vec<u64> = s.transactions.iter().map(|t| t.gtid.seq).collect();
        assert_eq!(seqs, vec![6, 7]);
        assert_eq!(s.transactions[1].file, 1);
        assert_eq!(s.transactions[1].offset, o2[2]);
        assert_eq!(s.point.to_string(), "3-7-7,9-9-2");
        assert_eq!(s.names, vec!["b.000001", "b.000002"]);
        assert_eq!(
            s.bytes_from(0, o1[5]),
            (bytes1.len() as u64 - o1[5]) + (o2[5] - 4)
        );

        let err = |r: Result<Scanned>| r.expect_err("refused").to_string();
        let e = err(scan(&files, o1[5] + 3, o2[5]));
        assert!(e.contains("not an event boundary"), "{e}");
        let e = err(scan(&files, o1[6], o2[5]));
        assert!(e.contains("inside a transaction"), "{e}");
        let e = err(scan(&files, o1[5], o2[4]));
        assert!(
            e.contains("inside a transaction") && e.contains("b.000002"),
            "{e}"
        );
        let e = err(scan(&files, o1[5], o2[8] + 100));
        assert!(e.contains("before the stop position"), "{e}");

        // A flipped byte is caught by the CRC32, naming file and offset.
        let mut broken = std::fs::read(&f2).expect("read");
        broken[o2[3] as usize + HEADER_LEN + 2] ^= 0x40;
        std::fs::write(&f2, broken).expect("write");
        let e = err(scan(&files, o1[5], o2[5]));
        assert!(
            e.contains("b.000002") && e.contains(&o2[3].to_string()) && e.contains("CRC32"),
            "{e}"
        );
    }
}
