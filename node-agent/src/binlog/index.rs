//! The event index: binlog bytes → one [`TxnEntry`] per transaction (where
//! it starts and ends, its GTID, time, kinds of change, tables, rows, a
//! one-line summary), and the [`Filter`] that `search-binlog` applies.
//!
//! [`Indexer`] takes a file's bytes in order, in pieces that start on an
//! event boundary (the archiver's segments); [`index_file`] and
//! [`index_path`] read whole files. Every event's length, end position
//! (`log_pos`) and, when the file has them, CRC32 are checked: a corrupt
//! event is an error naming the file and offset. Event types not listed
//! below are skipped.
//!
//! A transaction starts at a MariaDB GTID event (or a MySQL GTID event, or
//! without GTIDs at `BEGIN` or at a lone statement) and ends at its XID, a
//! `COMMIT`/`ROLLBACK` query, an XA PREPARE, or, when standalone (DDL), its
//! one statement. One cut off by the end of a file (a crash) never
//! committed and gives no entry.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::event::{self, HEADER_LEN, Header, MAGIC, kind};
use super::rows::{self, Change, TableMap};
use super::statement::{self, What};
use crate::error::{Error, IoContext as _, Result};

/// Longest DDL statement or statement text in a summary, in characters.
const STATEMENT_MAX: usize = 200;
/// Longest summary, in characters.
const SUMMARY_MAX: usize = 300;
/// Statements kept for a transaction's summary.
const TEXTS_MAX: usize = 3;
/// (change, table) descriptions in a summary.
const CHANGES_MAX: usize = 4;

/// MariaDB GTID event flags (`flags2`).
const GTID_STANDALONE: u8 = 0x01;
const GTID_DDL: u8 = 0x20;
/// MySQL's GTID and anonymous GTID events.
const MYSQL_GTID: u8 = 33;
const MYSQL_ANONYMOUS_GTID: u8 = 34;
/// MariaDB's `log_bin_compress` query event.
const QUERY_COMPRESSED: u8 = 165;
const TABLE_MAP: u8 = 19;
/// The table id of a rows event that only ends a statement (no rows).
const DUMMY_TABLE_ID: u64 = 0x00ff_ffff;

/// What kind of change a transaction makes.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Insert,
    Update,
    Delete,
    /// Schema and account changes (CREATE, ALTER, DROP, RENAME, TRUNCATE,
    /// GRANT, REVOKE), or a GTID event flagged DDL.
    Ddl,
    /// Anything else: XA COMMIT, ANALYZE, SET, …
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Ddl => "ddl",
            Kind::Other => "other",
        }
    }
}

/// One transaction of a binlog file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TxnEntry {
    pub file: String,
    /// Offset of the transaction's first event (its GTID event): stopping a
    /// replay here restores everything before this transaction.
    pub pos: u64,
    /// Offset just past its last event (its COMMIT / XID).
    pub end: u64,
    /// MariaDB GTID "domain-server-seq" (MySQL: "uuid:n"), if any.
    pub gtid: Option<String>,
    pub server_id: u32,
    /// Unix seconds of its first event.
    pub time: u32,
    /// Sorted, each once.
    pub kinds: Vec<Kind>,
    /// "db.t" touched (from Table_map, or the statement); "db.*" for a
    /// database created, altered or dropped.
    pub tables: Vec<String>,
    /// Rows changed, as far as counted (row events only; an update counts
    /// each row once).
    pub rows: u64,
    /// One line: the DDL statement; otherwise e.g. "insert 3 rows into
    /// db.t: INSERT INTO t …" (the Annotate_rows statements, truncated).
    pub summary: String,
}

/// A transaction being read.
#[derive(Debug)]
struct Open {
    pos: u64,
    gtid: Option<String>,
    server_id: u32,
    time: u32,
    /// Ends after its first statement.
    standalone: bool,
    /// A MySQL GTID: standalone unless its first statement is BEGIN.
    first_decides: bool,
    /// The GTID event says DDL.
    ddl_flag: bool,
    kinds: Vec<Kind>,
    tables: Vec<String>,
    /// Rows per (change, table), in order; `None` when not counted.
    changes: Vec<(Change, String, Option<u64>)>,
    rows: u64,
    texts: Vec<String>,
    more_texts: usize,
    ddl: Option<String>,
}

impl Open {
    fn new(pos: u64, h: &Header, gtid: Option<String>) -> Open {
        Open {
            pos,
            gtid,
            server_id: h.server_id,
            time: h.timestamp,
            standalone: false,
            first_decides: false,
            ddl_flag: false,
            kinds: Vec::new(),
            tables: Vec::new(),
            changes: Vec::new(),
            rows: 0,
            texts: Vec::new(),
            more_texts: 0,
            ddl: None,
        }
    }

    fn kind(&mut self, k: Kind) {
        if let Err(at) = self.kinds.binary_search(&k) {
            self.kinds.insert(at, k);
        }
    }

    fn table(&mut self, t: &str) {
        if !self.tables.iter().any(|x| x == t) {
            self.tables.push(t.to_string());
        }
    }

    fn text(&mut self, sql: &str) {
        if self.texts.len() < TEXTS_MAX {
            self.texts.push(statement::one_line(sql, STATEMENT_MAX));
        } else {
            self.more_texts += 1;
        }
    }

    fn change(&mut self, change: Change, table: String, count: Option<u64>) {
        self.kind(match change {
            Change::Insert => Kind::Insert,
            Change::Update => Kind::Update,
            Change::Delete => Kind::Delete,
        });
        self.table(&table);
        self.rows += count.unwrap_or(0);
        match self.changes.last_mut() {
            Some((c, t, n)) if *c == change && *t == table => {
                *n = n.zip(count).map(|(a, b)| a + b);
            }
            _ => self.changes.push((change, table, count)),
        }
    }

    /// Takes one statement of a Query event (`None`: compressed).
    fn statement(&mut self, what: What, sql: Option<&str>, db: &str) {
        let what = if self.ddl_flag && what == What::Other {
            What::Ddl
        } else {
            what
        };
        let kind = match what {
            What::Begin | What::End | What::Control => return,
            What::Insert => Kind::Insert,
            What::Update => Kind::Update,
            What::Delete => Kind::Delete,
            What::Ddl => Kind::Ddl,
            What::Other => Kind::Other,
        };
        self.kind(kind);
        let Some(sql) = sql else {
            self.text("(a compressed statement)");
            return;
        };
        for t in statement::tables(sql, db) {
            self.table(&t);
        }
        if kind == Kind::Ddl && self.ddl.is_none() {
            self.ddl = Some(statement::one_line(sql, STATEMENT_MAX));
        } else {
            self.text(sql);
        }
    }

    fn finish(mut self, file: &str, end: u64) -> TxnEntry {
        if self.kinds.is_empty() {
            self.kinds.push(Kind::Other);
        }
        let summary = match &self.ddl {
            Some(ddl) => ddl.clone(),
            None => self.summary(),
        };
        TxnEntry {
            file: file.to_string(),
            pos: self.pos,
            end,
            gtid: self.gtid,
            server_id: self.server_id,
            time: self.time,
            kinds: self.kinds,
            tables: self.tables,
            rows: self.rows,
            summary,
        }
    }

    fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .changes
            .iter()
            .take(CHANGES_MAX)
            .map(|(change, table, n)| {
                let n = match n {
                    Some(1) => "1 row".to_string(),
                    Some(n) => format!("{n} rows"),
                    None => "rows".to_string(),
                };
                match change {
                    Change::Insert => format!("insert {n} into {table}"),
                    Change::Update => format!("update {n} in {table}"),
                    Change::Delete => format!("delete {n} from {table}"),
                }
            })
            .collect();
        if self.changes.len() > CHANGES_MAX {
            parts.push(format!("{} more", self.changes.len() - CHANGES_MAX));
        }
        let mut texts = self.texts.join("; ");
        if self.more_texts > 0 {
            texts.push_str(&format!(" (+{} more statements)", self.more_texts));
        }
        let line = match (parts.is_empty(), texts.is_empty()) {
            (false, false) => format!("{}: {texts}", parts.join(", ")),
            (false, true) => parts.join(", "),
            (true, false) => texts,
            (true, true) => "empty transaction".to_string(),
        };
        statement::one_line(&line, SUMMARY_MAX)
    }
}

/// Indexes one binlog file fed in order. Keeps the file's checksum length
/// and post-header lengths (from its Format_description), the Table_map
/// events of the open transaction, and a transaction left open at the end
/// of a piece.
#[derive(Debug)]
pub struct Indexer {
    /// The file's name, for entries.
    file: String,
    /// How errors name the file (its path when read from disk).
    label: String,
    /// Checksum bytes per event; `None` until a Format_description (or the
    /// first event of a piece fed without one) tells.
    checksum: Option<usize>,
    /// Post-header length per event type (index: type − 1).
    post_headers: Vec<u8>,
    tables: HashMap<u64, TableMap>,
    open: Option<Open>,
    /// Offset just past the last event taken.
    next: Option<u64>,
}

impl Indexer {
    pub fn new(file: &str) -> Self {
        Indexer {
            file: file.to_string(),
            label: file.to_string(),
            checksum: None,
            post_headers: Vec::new(),
            tables: HashMap::new(),
            open: None,
            next: None,
        }
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::BinlogEvent {
            file: self.label.clone(),
            offset,
            reason: reason.into(),
        }
    }

    /// `bytes` start at `offset` (0 = the file's magic) on an event boundary
    /// and end at a transaction boundary; returns the transactions completed.
    ///
    /// A piece that does not continue the previous one drops a transaction
    /// the previous piece left open. Fed past the start of a file without
    /// its Format_description, the indexer tells whether events carry a
    /// CRC32 from the first event (a false match has odds of 2^-32).
    pub fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<Vec<TxnEntry>> {
        let mut at = 0usize;
        if offset == 0 {
            self.start(bytes.get(..4))?;
            at = 4;
        }
        let mut out = Vec::new();
        while at < bytes.len() {
            let off = offset + at as u64;
            let rest = &bytes[at..];
            let h = self.header(off, rest)?;
            let len = h.event_len as usize;
            let Some(ev) = rest.get(..len) else {
                return Err(self.corrupt(
                    off,
                    format!(
                        "an event of {len} bytes runs past the end of the data ({} bytes left)",
                        rest.len()
                    ),
                ));
            };
            out.extend(self.event(off, ev)?);
            at += len;
        }
        Ok(out)
    }

    /// Starts the file over at its magic.
    fn start(&mut self, magic: Option<&[u8]>) -> Result<()> {
        if magic != Some(&MAGIC[..]) {
            return Err(self.corrupt(0, "not a binlog file (no \\xfebin magic)"));
        }
        self.checksum = None;
        self.post_headers.clear();
        self.tables.clear();
        self.open = None;
        self.next = Some(4);
        Ok(())
    }

    fn header(&self, offset: u64, bytes: &[u8]) -> Result<Header> {
        Header::parse(bytes).ok_or_else(|| {
            if bytes.len() < HEADER_LEN {
                self.corrupt(
                    offset,
                    format!("a truncated event header ({} bytes)", bytes.len()),
                )
            } else {
                self.corrupt(offset, "an event length shorter than its header")
            }
        })
    }

    fn post_header_len(&self, code: u8) -> u8 {
        let default = match code {
            kind::QUERY | QUERY_COMPRESSED => 13,
            rows::kind::WRITE_V2..=rows::kind::DELETE_V2 => 10,
            _ => 8,
        };
        usize::from(code)
            .checked_sub(1)
            .and_then(|i| self.post_headers.get(i).copied())
            .filter(|&n| n != 0)
            .unwrap_or(default)
    }

    /// Takes one whole event at `offset`; returns the transaction it ends.
    pub fn event(&mut self, offset: u64, ev: &[u8]) -> Result<Option<TxnEntry>> {
        let h = self.header(offset, ev)?;
        if h.event_len as usize != ev.len() {
            return Err(self.corrupt(
                offset,
                format!(
                    "an event says it is {} bytes long but is {}",
                    h.event_len,
                    ev.len()
                ),
            ));
        }
        let end = offset + ev.len() as u64;
        if self.next != Some(offset) {
            // A new starting point: what was open is not continued.
            self.open = None;
            self.tables.clear();
        }
        if h.kind == kind::FORMAT_DESCRIPTION {
            let crc = event::checksum_len(ev).map_err(|e| self.corrupt(offset, e))?;
            self.checksum = Some(crc);
            let body_end = ev.len().saturating_sub(5);
            self.post_headers = ev
                .get(HEADER_LEN + 57..body_end)
                .unwrap_or_default()
                .to_vec();
            self.tables.clear();
            self.open = None;
        }
        let crc = *self
            .checksum
            .get_or_insert_with(|| if event::checksum_ok(ev, 4) { 4 } else { 0 });
        if ev.len() < HEADER_LEN + crc {
            return Err(self.corrupt(offset, "an event shorter than its header and checksum"));
        }
        if !event::checksum_ok(ev, crc) {
            return Err(self.corrupt(
                offset,
                format!(
                    "checksum mismatch in an event of type {} ({} bytes)",
                    h.kind,
                    ev.len()
                ),
            ));
        }
        // log_pos is the end of the event, modulo 4 GiB.
        if h.log_pos != 0 && h.log_pos != end as u32 {
            return Err(self.corrupt(
                offset,
                format!(
                    "an event of type {} says it ends at {} but ends at {end}",
                    h.kind, h.log_pos
                ),
            ));
        }
        self.next = Some(end);
        let body = &ev[HEADER_LEN..ev.len() - crc];
        self.take(offset, end, &h, body)
            .map_err(|reason| self.corrupt(offset, reason))
    }

    fn take(
        &mut self,
        offset: u64,
        end: u64,
        h: &Header,
        body: &[u8],
    ) -> Result<Option<TxnEntry>, String> {
        match h.kind {
            kind::GTID => {
                let seq = le(body, 0, 8, "GTID sequence number")?;
                let domain = le(body, 8, 4, "GTID domain")?;
                let flags = *body.get(12).ok_or("a GTID event without flags")?;
                let mut open =
                    Open::new(offset, h, Some(format!("{domain}-{}-{seq}", h.server_id)));
                open.standalone = flags & GTID_STANDALONE != 0;
                open.ddl_flag = flags & GTID_DDL != 0;
                self.begin(open);
            }
            MYSQL_GTID | MYSQL_ANONYMOUS_GTID => {
                let sid = body.get(1..17).ok_or("a short MySQL GTID event")?;
                let gno = le(body, 17, 8, "MySQL GTID number")?;
                let gtid = (h.kind == MYSQL_GTID).then(|| format!("{}:{gno}", uuid_text(sid)));
                let mut open = Open::new(offset, h, gtid);
                open.first_decides = true;
                self.begin(open);
            }
            kind::ANNOTATE_ROWS => {
                if let Some(open) = &mut self.open {
                    open.text(&String::from_utf8_lossy(body));
                }
            }
            TABLE_MAP => {
                let (id, map) = rows::parse_table_map(body, self.post_header_len(h.kind))?;
                self.tables.insert(id, map);
            }
            code if rows::change_of(code).is_some() => {
                let r = rows::parse_rows(code, body, self.post_header_len(code), |id| {
                    self.tables.get(&id)
                })?;
                if r.table_id == DUMMY_TABLE_ID {
                    return Ok(None);
                }
                let table = self
                    .tables
                    .get(&r.table_id)
                    .map_or_else(|| format!("(table id {})", r.table_id), |t| t.name.clone());
                self.open
                    .get_or_insert_with(|| Open::new(offset, h, None))
                    .change(r.change, table, r.count);
            }
            kind::QUERY | QUERY_COMPRESSED => {
                let (db, sql) = query(body, self.post_header_len(h.kind))?;
                let sql = (h.kind == kind::QUERY).then(|| String::from_utf8_lossy(sql));
                let what = sql.as_deref().map_or(What::Other, statement::classify);
                let open = match self.open.as_mut() {
                    Some(open) => {
                        if open.first_decides {
                            open.first_decides = false;
                            open.standalone = what != What::Begin;
                        }
                        open
                    }
                    None => match what {
                        What::End | What::Control => return Ok(None),
                        _ => {
                            let mut open = Open::new(offset, h, None);
                            open.standalone = what != What::Begin;
                            self.open.insert(open)
                        }
                    },
                };
                open.statement(what, sql.as_deref(), &String::from_utf8_lossy(db));
                if what == What::End || (open.standalone && what != What::Begin) {
                    return Ok(self.finish(end));
                }
            }
            kind::XID => return Ok(self.finish(end)),
            kind::XA_PREPARE => {
                if let Some(open) = &mut self.open {
                    open.text("XA PREPARE");
                }
                return Ok(self.finish(end));
            }
            kind::ROTATE | kind::STOP => {
                self.open = None;
                self.tables.clear();
            }
            // Format_description (read above), Gtid_list, Binlog_checkpoint,
            // Intvar, Rand, User_var and anything unknown.
            _ => {}
        }
        Ok(None)
    }

    fn begin(&mut self, open: Open) {
        if let Some(old) = self.open.replace(open) {
            tracing::debug!(file = %self.label, pos = old.pos, "a transaction without an end");
        }
        self.tables.clear();
    }

    fn finish(&mut self, end: u64) -> Option<TxnEntry> {
        let entry = self.open.take().map(|o| o.finish(&self.file, end));
        self.tables.clear();
        entry
    }
}

/// An unsigned little-endian integer of `n` bytes at `at`.
fn le(b: &[u8], at: usize, n: usize, what: &str) -> Result<u64, String> {
    let s = b
        .get(at..at + n)
        .ok_or_else(|| format!("a short event: no {what}"))?;
    Ok(s.iter().rev().fold(0u64, |v, x| (v << 8) | u64::from(*x)))
}

fn uuid_text(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The default database and the statement of a Query event body.
fn query(body: &[u8], post_len: u8) -> Result<(&[u8], &[u8]), String> {
    let post = usize::from(post_len);
    if post < 11 || body.len() < post {
        return Err(format!(
            "a Query event of {} bytes is too short",
            body.len()
        ));
    }
    let db_len = usize::from(body[8]);
    let vars = if post >= 13 {
        usize::from(u16::from_le_bytes([body[11], body[12]]))
    } else {
        0
    };
    let db_at = post + vars;
    let db = body
        .get(db_at..db_at + db_len)
        .ok_or("a Query event's database name runs past its end")?;
    let sql = body.get(db_at + db_len + 1..).unwrap_or_default();
    Ok((db, sql))
}

/// Reads up to `buf.len()` bytes; fewer only at the end of the file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Indexes one binlog file, reading it an event at a time. Errors name the
/// file by `path`.
pub fn index_file(path: &Path) -> Result<Vec<TxnEntry>> {
    let mut out = Vec::new();
    index_file_with(path, &mut |e| out.push(e))?;
    Ok(out)
}

/// [`index_file`], handing each entry to `each` as it is read (memory stays
/// flat however large the file).
pub fn index_file_with(path: &Path, each: &mut dyn FnMut(TxnEntry)) -> Result<()> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut ix = Indexer::new(&name);
    ix.label = path.display().to_string();
    let file = std::fs::File::open(path).on_file(path, "open binlog file")?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 4];
    let n = read_full(&mut r, &mut magic).on_file(path, "read binlog file")?;
    ix.start(magic.get(..n))?;
    let mut offset = 4u64;
    let mut ev = vec![0u8; HEADER_LEN];
    loop {
        // Every event read is at least a header long.
        ev.truncate(HEADER_LEN);
        let n = read_full(&mut r, &mut ev).on_file(path, "read binlog file")?;
        if n == 0 {
            return Ok(());
        }
        let h = ix.header(offset, &ev[..n])?;
        ev.resize(h.event_len as usize, 0);
        let n = read_full(&mut r, &mut ev[HEADER_LEN..]).on_file(path, "read binlog file")?;
        if HEADER_LEN + n < ev.len() {
            return Err(ix.corrupt(
                offset,
                format!(
                    "an event of {} bytes is cut off by the end of the file after {} bytes",
                    ev.len(),
                    HEADER_LEN + n
                ),
            ));
        }
        if let Some(e) = ix.event(offset, &ev)? {
            each(e);
        }
        offset += ev.len() as u64;
    }
}

/// Indexes `path`: one binlog file, or every binlog of a directory (an
/// archive directory or a server's datadir: files named `base.NNNNNN` that
/// start with the binlog magic), in order of base name and number.
pub fn index_path(path: &Path) -> Result<Vec<TxnEntry>> {
    let mut out = Vec::new();
    index_path_with(path, &mut |e| out.push(e))?;
    Ok(out)
}

/// [`index_path`], handing each entry to `each` as it is read.
pub fn index_path_with(path: &Path, each: &mut dyn FnMut(TxnEntry)) -> Result<()> {
    let meta = std::fs::metadata(path).on_file(path, "read")?;
    if !meta.is_dir() {
        return index_file_with(path, each);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).on_file(path, "list directory")? {
        let entry = entry.on_file(path, "list directory")?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((base, n)) = super::local::parse_name(&name) {
            files.push((base.to_string(), n, entry.path()));
        }
    }
    files.sort();
    for (_, _, file) in files {
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(&file).on_file(&file, "open binlog file")?;
        let n = read_full(&mut f, &mut magic).on_file(&file, "read binlog file")?;
        if magic[..n] != MAGIC {
            tracing::debug!(file = %file.display(), "not a binlog; skipped");
            continue;
        }
        index_file_with(&file, each)?;
    }
    Ok(())
}

/// Which transactions `search-binlog` shows; every field given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// `db.t`, `db.*` (any table of db) or `t` (t in any database);
    /// case-insensitive. An entry for a whole database (`db.*`) matches
    /// every table of it.
    pub table: Option<String>,
    pub kind: Option<Kind>,
    /// Case-insensitive substring of the summary or a table.
    pub grep: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<u32>,
    /// Unix seconds, inclusive.
    pub until: Option<u32>,
}

impl Filter {
    pub fn matches(&self, e: &TxnEntry) -> bool {
        if self.since.is_some_and(|s| e.time < s) || self.until.is_some_and(|u| e.time > u) {
            return false;
        }
        if self.kind.is_some_and(|k| !e.kinds.contains(&k)) {
            return false;
        }
        if let Some(want) = &self.table
            && !e.tables.iter().any(|t| table_matches(want, t))
        {
            return false;
        }
        if let Some(g) = &self.grep {
            let g = g.to_lowercase();
            if !e.summary.to_lowercase().contains(&g)
                && !e.tables.iter().any(|t| t.to_lowercase().contains(&g))
            {
                return false;
            }
        }
        true
    }
}

/// Whether a table filter (`db.t`, `db.*`, `t`) matches an entry's table
/// (`db.t`, or `db.*` for a whole database).
fn table_matches(want: &str, have: &str) -> bool {
    let (hdb, ht) = have.split_once('.').unwrap_or(("", have));
    match want.split_once('.') {
        Some((wdb, wt)) => {
            wdb.eq_ignore_ascii_case(hdb) && (wt == "*" || ht == "*" || wt.eq_ignore_ascii_case(ht))
        }
        None => want.eq_ignore_ascii_case(ht),
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
