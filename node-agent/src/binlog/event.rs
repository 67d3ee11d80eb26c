//! Binlog events as bytes: the common header, the few bodies the archiver
//! reads (Rotate, Format_description, GTID, Query), which events of a dump
//! stream are not part of the server's file, and where commit groups end.
//!
//! Nothing here decodes rows; the archiver writes every event unchanged.

/// `\xfebin`, the first four bytes of every binlog file.
pub const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
/// Bytes of the common event header (binlog format v4).
pub const HEADER_LEN: usize = 19;
/// Bytes of a CRC32 checksum at the end of an event.
const CRC_LEN: usize = 4;

/// Event type codes the archiver looks at (MariaDB's `Log_event_type`).
pub mod kind {
    pub const QUERY: u8 = 2;
    pub const STOP: u8 = 3;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const HEARTBEAT: u8 = 27;
    pub const XA_PREPARE: u8 = 38;
    pub const ANNOTATE_ROWS: u8 = 0xa0;
    pub const BINLOG_CHECKPOINT: u8 = 0xa1;
    pub const GTID: u8 = 0xa2;
    pub const GTID_LIST: u8 = 0xa3;
}

/// `LOG_EVENT_BINLOG_IN_USE_F`: set in the Format_description event of a
/// binlog the server still writes; cleared on disk when the file is closed.
/// The checksum is computed as if it were clear.
pub const FLAG_IN_USE: u16 = 0x01;
/// `LOG_EVENT_ARTIFICIAL_F`: made up for the stream, never in a file.
pub const FLAG_ARTIFICIAL: u16 = 0x20;
/// Offset of the flags in the header.
pub const FLAGS_OFFSET: usize = 17;
/// `FL_STANDALONE` in a MariaDB GTID event: the group is one statement with
/// no COMMIT/XID after it.
const GTID_STANDALONE: u8 = 0x01;

/// The common header of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub timestamp: u32,
    pub kind: u8,
    pub server_id: u32,
    /// Length of the whole event, header and checksum included.
    pub event_len: u32,
    /// Position of the end of this event in its file (0 for events that
    /// are not in a file).
    pub log_pos: u32,
    pub flags: u16,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes; `None` if there are fewer or
    /// the length field is shorter than a header.
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN {
            return None;
        }
        let header = Header {
            timestamp: le_u32(b, 0),
            kind: b[4],
            server_id: le_u32(b, 5),
            event_len: le_u32(b, 9),
            log_pos: le_u32(b, 13),
            flags: u16::from_le_bytes([b[17], b[18]]),
        };
        (header.event_len as usize >= HEADER_LEN).then_some(header)
    }
}

/// What one event of a dump stream is to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A heartbeat: the server is alive and has nothing new.
    Heartbeat,
    /// The artificial Rotate the server sends when a dump starts and when it
    /// moves to the next file: which file the following events belong to and
    /// where in it they start.
    FakeRotate { file: String, position: u64 },
    /// The Format_description the server resends when a dump starts past
    /// the beginning of a file (`log_pos` 0): it is already in the file.
    ResentFormat,
    /// Any other artificial event (flag 0x20); not in the file.
    Artificial,
    /// An event of the file, to be written as it is.
    InFile,
}

/// Sorts one event of a dump stream (the OK byte already removed).
pub fn classify(event: &[u8]) -> Result<StreamEvent, String> {
    let h = Header::parse(event).ok_or_else(|| {
        format!(
            "an event of {} bytes is shorter than its header or says so",
            event.len()
        )
    })?;
    if h.event_len as usize != event.len() {
        return Err(format!(
            "an event of type {} says it is {} bytes long but {} arrived",
            h.kind,
            h.event_len,
            event.len()
        ));
    }
    Ok(match h.kind {
        kind::HEARTBEAT => StreamEvent::Heartbeat,
        kind::ROTATE if h.timestamp == 0 || h.flags & FLAG_ARTIFICIAL != 0 || h.log_pos == 0 => {
            // The fake Rotate that opens a dump comes before any
            // Format_description, so whether it carries a checksum is told
            // by the checksum itself (a false match has odds of 2^-32).
            let crc = if checksum_ok(event, CRC_LEN) {
                CRC_LEN
            } else {
                0
            };
            let (file, position) = rotate_target(event, crc)?;
            StreamEvent::FakeRotate { file, position }
        }
        kind::FORMAT_DESCRIPTION if h.log_pos == 0 => StreamEvent::ResentFormat,
        _ if h.flags & FLAG_ARTIFICIAL != 0 => StreamEvent::Artificial,
        _ => StreamEvent::InFile,
    })
}

/// The next file and position a Rotate event names.
pub fn rotate_target(event: &[u8], checksum_len: usize) -> Result<(String, u64), String> {
    let body_end = event.len().saturating_sub(checksum_len);
    if body_end < HEADER_LEN + 8 {
        return Err(format!(
            "a Rotate event of {} bytes is too short",
            event.len()
        ));
    }
    let pos = u64::from_le_bytes(
        event[HEADER_LEN..HEADER_LEN + 8]
            .try_into()
            .expect("an 8-byte slice"),
    );
    let name = &event[HEADER_LEN + 8..body_end];
    let name = std::str::from_utf8(name)
        .map_err(|_| format!("a Rotate event names a file that is not UTF-8: {name:?}"))?;
    Ok((name.to_string(), pos))
}

/// Checksum bytes at the end of every event of a file, from its
/// Format_description event: 4 when its checksum algorithm is CRC32, else 0.
/// The algorithm byte sits 5 bytes before the end (MariaDB 5.3+, MySQL 5.6+).
pub fn checksum_len(format_description: &[u8]) -> Result<usize, String> {
    let n = format_description.len();
    if n < HEADER_LEN + 57 + 5 {
        return Err(format!(
            "a Format_description event of {n} bytes is too short"
        ));
    }
    match format_description[n - 5] {
        0 => Ok(0),
        1 => Ok(CRC_LEN),
        alg => Err(format!("unknown binlog checksum algorithm {alg}")),
    }
}

/// Whether the CRC32 at the end of `event` matches (always true without
/// checksums). A Format_description event's checksum is computed with the
/// in-use flag clear.
pub fn checksum_ok(event: &[u8], checksum_len: usize) -> bool {
    if checksum_len == 0 {
        return true;
    }
    if event.len() < HEADER_LEN + CRC_LEN {
        return false;
    }
    let (body, crc) = event.split_at(event.len() - CRC_LEN);
    let want = le_u32(crc, 0);
    let mut hasher = crc32fast::Hasher::new();
    if body[4] == kind::FORMAT_DESCRIPTION {
        hasher.update(&body[..FLAGS_OFFSET]);
        hasher.update(&[body[FLAGS_OFFSET] & !(FLAG_IN_USE as u8)]);
        hasher.update(&body[FLAGS_OFFSET + 1..]);
    } else {
        hasher.update(body);
    }
    hasher.finalize() == want
}

/// Follows commit groups through a file, to tell after each event whether
/// the file is at a group boundary (the place to fsync and call durable).
///
/// A MariaDB group starts with a GTID event and ends with an XID event, a
/// `COMMIT`/`ROLLBACK` query, or an XA PREPARE; a standalone group (DDL) is
/// its GTID and one statement. Events outside a group (Format_description,
/// Gtid_list, Binlog_checkpoint, Rotate, Stop) end where they end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    in_group: bool,
    standalone: bool,
}

impl Groups {
    /// Takes one in-file event; returns whether a group boundary follows it.
    pub fn after(&mut self, event: &[u8], checksum_len: usize) -> bool {
        let Some(h) = Header::parse(event) else {
            return !self.in_group;
        };
        match h.kind {
            kind::GTID => {
                self.in_group = true;
                self.standalone = event
                    .get(HEADER_LEN + 12)
                    .is_some_and(|f| f & GTID_STANDALONE != 0);
            }
            kind::XID | kind::XA_PREPARE => self.in_group = false,
            kind::QUERY
                if self.in_group && (self.standalone || ends_group(event, checksum_len)) =>
            {
                self.in_group = false;
            }
            // A file ends (rotation, shutdown): nothing of a group follows.
            kind::ROTATE | kind::STOP => self.in_group = false,
            _ => {}
        }
        !self.in_group
    }

    /// Whether the last event taken left the file inside a group.
    pub fn in_group(&self) -> bool {
        self.in_group
    }
}

/// Whether a Query event's statement is `COMMIT` or `ROLLBACK`.
fn ends_group(event: &[u8], checksum_len: usize) -> bool {
    // Post-header: thread id 4, exec time 4, db length 1, error code 2,
    // status-vars length 2; then status vars, db, NUL, statement.
    let post = HEADER_LEN + 13;
    if event.len() < post + checksum_len {
        return false;
    }
    let db_len = event[HEADER_LEN + 8] as usize;
    let vars_len = u16::from_le_bytes([event[HEADER_LEN + 11], event[HEADER_LEN + 12]]) as usize;
    let start = post + vars_len + db_len + 1;
    let end = event.len() - checksum_len;
    let Some(sql) = event.get(start..end) else {
        return false;
    };
    let sql = sql.trim_ascii();
    sql.eq_ignore_ascii_case(b"COMMIT") || sql.eq_ignore_ascii_case(b"ROLLBACK")
}

/// Builds events for tests: a header, a body, and a CRC32 when asked.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    pub fn event(
        kind: u8,
        timestamp: u32,
        log_pos: u32,
        flags: u16,
        body: &[u8],
        crc: bool,
    ) -> Vec<u8> {
        let len = HEADER_LEN + body.len() + if crc { CRC_LEN } else { 0 };
        let mut e = Vec::with_capacity(len);
        e.extend_from_slice(&timestamp.to_le_bytes());
        e.push(kind);
        e.extend_from_slice(&7u32.to_le_bytes());
        e.extend_from_slice(&(len as u32).to_le_bytes());
        e.extend_from_slice(&log_pos.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(body);
        if crc {
            let mut h = crc32fast::Hasher::new();
            if kind == kind::FORMAT_DESCRIPTION {
                let mut copy = e.clone();
                copy[FLAGS_OFFSET] &= !(FLAG_IN_USE as u8);
                h.update(&copy);
            } else {
                h.update(&e);
            }
            e.extend_from_slice(&h.finalize().to_le_bytes());
        }
        e
    }

    /// A Format_description body (v4, "10.11.0-MariaDB", CRC32 or none).
    pub fn format_description_body(crc: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&4u16.to_le_bytes());
        let mut version = b"10.11.0-MariaDB".to_vec();
        version.resize(50, 0);
        b.extend_from_slice(&version);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(19);
        b.extend_from_slice(&[0u8; 40]);
        b.push(u8::from(crc));
        if !crc {
            // Without a checksum the algorithm byte is followed by 4 bytes
            // all the same, as the server writes them.
            b.extend_from_slice(&[0u8; 4]);
        }
        b
    }

    pub fn rotate_body(file: &str, pos: u64) -> Vec<u8> {
        let mut b = pos.to_le_bytes().to_vec();
        b.extend_from_slice(file.as_bytes());
        b
    }

    pub fn gtid_body(seq: u64, domain: u32, flags: u8) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&domain.to_le_bytes());
        b.push(flags);
        b.extend_from_slice(&[0u8; 6]);
        b
    }

    pub fn query_body(db: &str, sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(db.len() as u8);
        b.extend_from_slice(&0u16.to_le_bytes());
        let vars = [0u8, 0, 0, 0, 0];
        b.extend_from_slice(&(vars.len() as u16).to_le_bytes());
        b.extend_from_slice(&vars);
        b.extend_from_slice(db.as_bytes());
        b.push(0);
        b.extend_from_slice(sql.as_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn header_parses_fields_and_rejects_short_input() {
        let e = event(kind::XID, 1700, 500, 0, &[1, 2, 3, 4, 5, 6, 7, 8], true);
        let h = Header::parse(&e).expect("a header");
        assert_eq!(h.timestamp, 1700);
        assert_eq!(h.kind, kind::XID);
        assert_eq!(h.server_id, 7);
        assert_eq!(h.event_len as usize, e.len());
        assert_eq!(h.log_pos, 500);
        assert_eq!(h.flags, 0);
        assert_eq!(Header::parse(&e[..18]), None);
        let mut zero = e.clone();
        zero[9..13].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Header::parse(&zero), None, "a length below the header size");
    }

    #[test]
    fn skip_rules_sort_stream_events() {
        let fake = event(
            kind::ROTATE,
            0,
            0,
            FLAG_ARTIFICIAL,
            &rotate_body("b.000002", 4),
            false,
        );
        assert_eq!(
            classify(&fake).expect("classify"),
            StreamEvent::FakeRotate {
                file: "b.000002".into(),
                position: 4
            }
        );
        // A fake Rotate under checksums: the name stops before the CRC.
        let fake = event(
            kind::ROTATE,
            0,
            0,
            FLAG_ARTIFICIAL,
            &rotate_body("b.000003", 1234),
            true,
        );
        assert_eq!(
            classify(&fake).expect("classify"),
            StreamEvent::FakeRotate {
                file: "b.000003".into(),
                position: 1234
            }
        );
        // The real Rotate at the end of a file is in the file.
        let real = event(
            kind::ROTATE,
            1700,
            900,
            0,
            &rotate_body("b.000002", 4),
            true,
        );
        assert_eq!(classify(&real).expect("classify"), StreamEvent::InFile);
        assert_eq!(
            rotate_target(&real, 4).expect("target"),
            ("b.000002".into(), 4)
        );

        let hb = event(kind::HEARTBEAT, 0, 900, FLAG_ARTIFICIAL, b"b.000002", true);
        assert_eq!(classify(&hb).expect("classify"), StreamEvent::Heartbeat);

        let fd = format_description_body(true);
        let resent = event(kind::FORMAT_DESCRIPTION, 1700, 0, 0, &fd, true);
        assert_eq!(
            classify(&resent).expect("classify"),
            StreamEvent::ResentFormat
        );
        let first = event(
            kind::FORMAT_DESCRIPTION,
            1700,
            4 + 19 + fd.len() as u32 + 4,
            FLAG_IN_USE,
            &fd,
            true,
        );
        assert_eq!(classify(&first).expect("classify"), StreamEvent::InFile);

        let list = event(kind::GTID_LIST, 0, 0, FLAG_ARTIFICIAL, &[0; 4], true);
        assert_eq!(classify(&list).expect("classify"), StreamEvent::Artificial);

        let mut short = event(kind::XID, 1, 100, 0, &[0; 8], true);
        short.pop();
        assert!(
            classify(&short).is_err(),
            "a length that disagrees with the bytes"
        );
    }

    #[test]
    fn checksum_length_and_crc() {
        let with = event(
            kind::FORMAT_DESCRIPTION,
            1,
            120,
            FLAG_IN_USE,
            &format_description_body(true),
            true,
        );
        assert_eq!(checksum_len(&with).expect("alg"), 4);
        assert!(
            checksum_ok(&with, 4),
            "the FD checksum ignores the in-use flag"
        );
        let without = event(
            kind::FORMAT_DESCRIPTION,
            1,
            120,
            0,
            &format_description_body(false),
            false,
        );
        assert_eq!(checksum_len(&without).expect("alg"), 0);

        let mut xid = event(kind::XID, 1, 100, 0, &[9; 8], true);
        assert!(checksum_ok(&xid, 4));
        xid[20] ^= 1;
        assert!(!checksum_ok(&xid, 4), "a flipped bit");
    }

    #[test]
    fn groups_end_at_xid_commit_and_standalone_statements() {
        let mut g = Groups::default();
        let gtid = event(kind::GTID, 1, 10, 0, &gtid_body(5, 1, 0), true);
        let begin = event(kind::QUERY, 1, 10, 0, &query_body("db", "BEGIN"), true);
        let rows = event(0x17, 1, 10, 0, &[0; 12], true);
        let xid = event(kind::XID, 1, 10, 0, &[0; 8], true);
        assert!(!g.after(&gtid, 4));
        assert!(!g.after(&begin, 4));
        assert!(!g.after(&rows, 4));
        assert!(g.after(&xid, 4), "XID ends a transaction");

        // A non-transactional group ends with a COMMIT query.
        let commit = event(kind::QUERY, 1, 10, 0, &query_body("db", "COMMIT"), true);
        assert!(!g.after(&gtid, 4));
        assert!(!g.after(&begin, 4));
        assert!(g.after(&commit, 4));

        // DDL: a standalone GTID and one statement.
        let ddl_gtid = event(
            kind::GTID,
            1,
            10,
            0,
            &gtid_body(6, 1, GTID_STANDALONE),
            true,
        );
        let ddl = event(
            kind::QUERY,
            1,
            10,
            0,
            &query_body("db", "CREATE TABLE t (a INT)"),
            true,
        );
        assert!(!g.after(&ddl_gtid, 4));
        assert!(g.after(&ddl, 4));

        // Outside a group every event is a boundary; without checksums too.
        let list = event(kind::GTID_LIST, 1, 10, 0, &[0; 4], false);
        assert!(g.after(&list, 0));
        let commit = event(kind::QUERY, 1, 10, 0, &query_body("", "commit"), false);
        assert!(!g.after(&event(kind::GTID, 1, 10, 0, &gtid_body(7, 1, 0), false), 0));
        assert!(g.after(&commit, 0));
    }
}
