//! Continuous archiving in the daemon: the [`Archiver`] writes the server's
//! binlogs into the agent's local archive directory; the shipper stores
//! what is durable there in the cluster's primary sink as **segments** and
//! records each in the catalog; a supervisor restarts the archiver after
//! errors and continues after a purged binlog, reporting the gap.
//!
//! A segment is a byte range of one binlog file, from where the catalog's
//! archive of the file ends to the last fsynced commit-group boundary (or
//! the file's end once the archiver moved past it), stored under
//! `binlog/<cluster>/<server>/<file>/<start>-<end>` (offsets zero-padded).
//! The catalog is the only record of what is shipped: after a restart the
//! shipper asks it where the archive ends and continues from there, so a
//! segment stored but not recorded (a crash between the two) is stored
//! again over the same key. A round starts when the archiver has made more
//! bytes durable (at most one per [`SHIP_GAP`]); each segment is also
//! stored in the policy's copy sinks. With every shipment, or at least every
//! second, the shipper reports the head (the server's position, the local
//! archive's, the lag).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockstep_proto::coordinator as pb;
use mysql_async::prelude::Queryable;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::binlog::archive::{ArchiveConfig, ArchiveProgress, Archiver};
use crate::binlog::index::{Indexer, TxnEntry};
use crate::binlog::local;
use crate::error::{Error, Result, error_text};
use crate::mysql::Server;
use crate::register::LeaderClient;
use crate::sink::{self, BINLOG_PREFIX, Local, SharedStore};

/// The shortest time between two shipping rounds: a round starts when the
/// archiver has made more bytes durable, but not sooner than this after
/// the previous one.
pub const SHIP_GAP: Duration = Duration::from_millis(50);
/// How often the head (the server's own position) is read and reported
/// when nothing is shipped.
const HEAD_EVERY: Duration = Duration::from_secs(1);
/// Pause before restarting an archiver that stopped on an error.
const RESTART_AFTER: Duration = Duration::from_secs(5);
/// Bytes read from the local file per write to the sink.
const CHUNK: usize = 1 << 20;

/// What the daemon archives, and where.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    /// The local archive directory of this server's binlogs.
    pub dir: PathBuf,
    /// The replica server id the archiver presents; `None`: 4 000 000 000
    /// plus the server's own id modulo 100 000 000.
    pub replica_server_id: Option<u32>,
}

/// The default replica server id for a server.
pub fn default_replica_id(server_id: u32) -> u32 {
    4_000_000_000 + server_id % 100_000_000
}

/// Shared between the supervisor and the shipper.
#[derive(Debug, Default)]
struct Shared {
    /// A gap the supervisor skipped over: carried by the next segment that
    /// starts a file.
    gap: Mutex<Option<String>>,
}

/// Runs the archiver and the shipper until `cancel`.
pub async fn run(
    server: Server,
    settings: ArchiveSettings,
    cluster: String,
    name: String,
    coordinators: Vec<String>,
    local: Local,
    cancel: CancellationToken,
) {
    let shared = Arc::new(Shared::default());
    let (progress_tx, progress_rx) = watch::channel(ArchiveProgress::default());
    let supervisor = supervise(
        server.clone(),
        settings.clone(),
        shared.clone(),
        progress_tx,
        cancel.clone(),
    );
    let shipper = Shipper {
        server,
        dir: settings.dir,
        cluster,
        name,
        leader: LeaderClient::new(coordinators, local.transport.clone()),
        local,
        shared,
        state: None,
        pending: Default::default(),
        last_head: None,
        indexer: None,
        head_conn: None,
    };
    tokio::join!(supervisor, shipper.run(progress_rx, cancel));
}

/// Runs the archiver, restarting it after errors; a purged binlog is
/// reported as a gap and the archive continues with the server's oldest
/// binlog.
async fn supervise(
    server: Server,
    settings: ArchiveSettings,
    shared: Arc<Shared>,
    progress: watch::Sender<ArchiveProgress>,
    cancel: CancellationToken,
) {
    let mut skip_to = None;
    while !cancel.is_cancelled() {
        let replica_id = match settings.replica_server_id {
            Some(id) => id,
            None => match server_id(&server).await {
                Ok(id) => default_replica_id(id),
                Err(e) => {
                    failed(&progress, &e);
                    pause(&cancel, RESTART_AFTER).await;
                    continue;
                }
            },
        };
        let mut config = ArchiveConfig::new(&settings.dir, replica_id);
        config.skip_to = skip_to.take();
        let archiver = Archiver::new(server.clone(), config);
        let mut rx = archiver.progress();
        let forward = {
            let tx = progress.clone();
            async move {
                while rx.changed().await.is_ok() {
                    let p = rx.borrow_and_update().clone();
                    tx.send_replace(p);
                }
            }
        };
        let result = tokio::select! {
            r = archiver.run(cancel.clone()) => r,
            _ = forward => Ok(()),
        };
        match result {
            Ok(()) => {}
            Err(Error::BinlogPurged { server: s, file }) => {
                match oldest_binlog(&server).await {
                    Ok(oldest) => {
                        let reason = format!(
                            "binlog {file} was purged on server {s} before it was archived; the archive continues with {oldest}"
                        );
                        tracing::error!(server = %s, %file, %oldest, "{reason}");
                        *shared.gap.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                        skip_to = Some(oldest);
                        continue;
                    }
                    Err(e) => failed(&progress, &e),
                }
                pause(&cancel, RESTART_AFTER).await;
            }
            Err(e) => {
                failed(&progress, &e);
                pause(&cancel, RESTART_AFTER).await;
            }
        }
    }
}

fn failed(progress: &watch::Sender<ArchiveProgress>, e: &Error) {
    tracing::error!(error = %e, "binlog archiving stopped; restarting in {RESTART_AFTER:?}");
    progress.send_modify(|p| {
        p.connected = false;
        p.last_error = Some(e.to_string());
    });
}

async fn pause(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

async fn server_id(server: &Server) -> Result<u32> {
    let mut conn = server.connect("read server_id").await?;
    let id: Option<u32> = conn
        .query_first("SELECT @@server_id")
        .await
        .map_err(|e| Error::mysql(server.address(), "SELECT @@server_id", e))?;
    Ok(id.unwrap_or(0))
}

/// The server's binlogs with their sizes, oldest first.
async fn binlogs(server: &Server) -> Result<Vec<(String, u64)>> {
    let mut conn = server.connect("list binlogs").await?;
    list_binlogs(server, &mut conn).await
}

async fn list_binlogs(server: &Server, conn: &mut mysql_async::Conn) -> Result<Vec<(String, u64)>> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| Error::mysql(server.address(), "SHOW BINARY LOGS", e))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect())
}

async fn oldest_binlog(server: &Server) -> Result<String> {
    binlogs(server)
        .await?
        .into_iter()
        .next()
        .map(|(f, _)| f)
        .ok_or_else(|| Error::BinlogDump {
            server: server.address().to_string(),
            reason: "the server has no binary logs (is log_bin on?)".into(),
            retryable: true,
        })
}

/// Where the catalog's archive ends, and the sink to write to.
struct Catalogued {
    file: String,
    end: u64,
    closed: bool,
    sink_name: String,
    store: SharedStore,
    /// The policy's copy sinks: (catalog name, store).
    copies: Vec<(String, SharedStore)>,
}

struct Shipper {
    server: Server,
    dir: PathBuf,
    cluster: String,
    name: String,
    leader: LeaderClient,
    local: Local,
    shared: Arc<Shared>,
    state: Option<Catalogued>,
    /// Server positions the sink did not reach when seen, oldest first,
    /// with when they were seen.
    pending: std::collections::VecDeque<(String, u64, Instant)>,
    last_head: Option<Instant>,
    /// The event index of the file being shipped, and where it stands.
    indexer: Option<(String, u64, Indexer)>,
    /// The session the head is read on.
    head_conn: Option<mysql_async::Conn>,
}

/// The next range to ship: a file, from where, to where, and whether that
/// end is the file's end.
#[derive(Debug, PartialEq, Eq)]
struct Range {
    file: String,
    start: u64,
    end: u64,
    closed: bool,
    gap: Option<String>,
}

impl Shipper {
    async fn run(
        mut self,
        mut progress: watch::Receiver<ArchiveProgress>,
        cancel: CancellationToken,
    ) {
        let mut last_error = String::new();
        let mut last_round = Instant::now();
        loop {
            // A round when the archive made something durable (at most one
            // per SHIP_GAP), or at least every HEAD_EVERY for the head.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = progress.changed() => {}
                _ = tokio::time::sleep(HEAD_EVERY) => {}
            }
            let gap = SHIP_GAP.saturating_sub(last_round.elapsed());
            if !gap.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(gap) => {}
                }
            }
            last_round = Instant::now();
            let p = progress.borrow_and_update().clone();
            if let Err(e) = self.tick(&p).await {
                let text = error_text(&e);
                if text != last_error {
                    tracing::warn!(server = %self.name, error = %text, "binlog shipping failed; retrying");
                    last_error = text;
                }
                // Ask the catalog again: it may have moved on (another
                // report landed) or the sink policy changed.
                self.state = None;
            } else {
                last_error.clear();
            }
        }
    }

    async fn tick(&mut self, p: &ArchiveProgress) -> Result<()> {
        if self.state.is_none() {
            let reply = self
                .leader
                .call("ArchiveState", |mut c| {
                    let req = pb::ArchiveStateRequest {
                        cluster: self.cluster.clone(),
                        name: self.name.clone(),
                    };
                    async move { c.archive_state(req).await }
                })
                .await
                .map_err(|s| coordinator_error("ArchiveState", s))?;
            self.state = Some(self.catalogued(reply).await?);
        }
        let mut shipped = false;
        while let Some(range) = self.next_range(p)? {
            self.ship(range, p).await?;
            shipped = true;
        }
        if !shipped && self.last_head.is_none_or(|t| t.elapsed() >= HEAD_EVERY) {
            self.report(Vec::new(), p).await?;
        }
        Ok(())
    }

    async fn catalogued(&self, r: pb::ArchiveStateReply) -> Result<Catalogued> {
        if r.sink.as_ref().is_some_and(|s| s.encrypt) {
            return Err(Error::Config(format!(
                "sink {} encrypts what is stored in it; the binlog archive cannot write encrypted segments yet",
                r.sink_name
            )));
        }
        let store = sink::open(r.sink.as_ref(), &self.local).await?;
        let mut copies = Vec::new();
        for spec in &r.copies {
            match sink::open(Some(spec), &self.local).await {
                Ok(s) => copies.push((spec.name.clone(), s)),
                Err(e) => {
                    tracing::warn!(sink = %spec.name, error = %e, "cannot open a copy sink for the binlog archive; segments go without this copy")
                }
            }
        }
        Ok(Catalogued {
            file: r.file,
            end: r.end,
            closed: r.closed,
            sink_name: r.sink_name,
            store,
            copies,
        })
    }

    /// What to ship next, from the local files and the archiver's progress.
    fn next_range(&self, p: &ArchiveProgress) -> Result<Option<Range>> {
        let Some(st) = &self.state else {
            return Ok(None);
        };
        let files = local::list(&self.dir)?;
        let upper = |name: &str| -> Result<(u64, bool)> {
            let len = std::fs::metadata(self.dir.join(name))
                .map_err(|e| Error::io(self.dir.join(name), "stat", e))?
                .len();
            Ok(shippable(name, len, p))
        };
        if !st.file.is_empty() && !st.closed && files.iter().any(|(_, f)| *f == st.file) {
            let (end, closed) = upper(&st.file)?;
            if end > st.end || (closed && end == st.end && end > 0) {
                return Ok(Some(Range {
                    file: st.file.clone(),
                    start: st.end,
                    end,
                    closed,
                    gap: None,
                }));
            }
            return Ok(None);
        }
        // The next file: the first local one after the catalog's last.
        let Some((_, next)) = files
            .iter()
            .find(|(_, f)| st.file.is_empty() || later(f, &st.file))
        else {
            return Ok(None);
        };
        let (end, closed) = upper(next)?;
        if end == 0 {
            return Ok(None);
        }
        let mut gap = self
            .shared
            .gap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !st.file.is_empty() && !st.closed && gap.is_none() {
            gap = Some(format!(
                "{} is archived only to {} and this agent's archive does not hold it",
                st.file, st.end
            ));
        }
        Ok(Some(Range {
            file: next.clone(),
            start: 0,
            end,
            closed,
            gap,
        }))
    }

    /// Stores one range as a segment and records it.
    async fn ship(&mut self, r: Range, p: &ArchiveProgress) -> Result<()> {
        let st = self.state.as_ref().expect("state is known before shipping");
        let key = format!(
            "{BINLOG_PREFIX}{}/{}/{}/{:012}-{:012}",
            self.cluster, self.name, r.file, r.start, r.end
        );
        let path = self.dir.join(&r.file);
        let sha256 = store_range(&st.store, &key, &path, r.start, r.end).await?;
        let sink = st.sink_name.clone();
        // The copies: one that fails does not hold the archive back (the
        // segment is recorded without it).
        let mut copies = Vec::new();
        for (name, store) in &st.copies {
            match store_range(store, &key, &path, r.start, r.end).await {
                Ok(sha) if sha == sha256 => copies.push(name.clone()),
                Ok(_) => {
                    tracing::warn!(sink = %name, %key, "the local archive changed while it was copied; no copy recorded")
                }
                Err(e) => {
                    tracing::warn!(sink = %name, %key, error = %e, "could not copy a binlog segment")
                }
            }
        }
        // Its transactions, for the segment's times and GTIDs (the search
        // reads the segments themselves).
        let mut indexer = match self.indexer.take() {
            Some((f, at, ix)) if f == r.file && at == r.start => ix,
            _ => Indexer::new(&r.file),
        };
        let txns = {
            let path = path.clone();
            let (start, end) = (r.start, r.end);
            let (ix, txns) =
                tokio::task::spawn_blocking(move || index_range(&path, start, end, indexer))
                    .await
                    .map_err(|e| Error::Cancelled(format!("indexing stopped: {e}")))??;
            indexer = ix;
            txns
        };
        self.indexer = Some((r.file.clone(), r.end, indexer));
        let times = txns.iter().map(|t| t.time).filter(|t| *t > 0);
        let gtids: Vec<&str> = txns.iter().filter_map(|t| t.gtid.as_deref()).collect();
        let segment = pb::BinlogSegment {
            file: r.file.clone(),
            start: r.start,
            end: r.end,
            closed: r.closed,
            sha256,
            sink,
            key,
            first_time: times.clone().min().unwrap_or(0),
            last_time: times.max().unwrap_or(0),
            first_gtid: gtids.first().map(|g| g.to_string()).unwrap_or_default(),
            last_gtid: gtids.last().map(|g| g.to_string()).unwrap_or_default(),
            gap: r.gap.clone().unwrap_or_default(),
            copies,
            ..Default::default()
        };
        self.report(vec![segment], p).await?;
        if r.gap.is_some() {
            *self.shared.gap.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(())
    }

    /// Reports segments (maybe none) and the head; takes the catalog's
    /// answer as the new state.
    async fn report(
        &mut self,
        segments: Vec<pb::BinlogSegment>,
        p: &ArchiveProgress,
    ) -> Result<()> {
        let head = self.head(p).await;
        let req = pb::ReportArchiveRequest {
            cluster: self.cluster.clone(),
            name: self.name.clone(),
            segments,
            head: Some(head),
        };
        let reply = self
            .leader
            .call("ReportArchive", |mut c| {
                let req = req.clone();
                async move { c.report_archive(req).await }
            })
            .await
            .map_err(|s| coordinator_error("ReportArchive", s))?;
        self.last_head = Some(Instant::now());
        let st = self
            .state
            .as_mut()
            .expect("state is known before reporting");
        let copies: Vec<&str> = reply.copies.iter().map(|c| c.name.as_str()).collect();
        let had: Vec<&str> = st.copies.iter().map(|(n, _)| n.as_str()).collect();
        if reply.sink_name != st.sink_name || copies != had {
            // The sink policy changed: open the sinks again next round.
            self.state = None;
            return Ok(());
        }
        st.file = reply.file;
        st.end = reply.end;
        st.closed = reply.closed;
        Ok(())
    }

    /// Where the server, the local archive and the sink stand.
    async fn head(&mut self, p: &ArchiveProgress) -> pb::ArchiveHead {
        let mut head = pb::ArchiveHead {
            local_file: p.file.clone(),
            local_pos: p.durable,
            connected: p.connected,
            last_error: p.last_error.clone().unwrap_or_default(),
            ..Default::default()
        };
        // One session for the head, kept between reports.
        if self.head_conn.is_none() {
            match self.server.connect("report the archive's head").await {
                Ok(c) => self.head_conn = Some(c),
                Err(e) => {
                    head.last_error = error_text(&e);
                    return head;
                }
            }
        }
        let conn = self.head_conn.as_mut().expect("connected above");
        let logs = match list_binlogs(&self.server, conn).await {
            Ok(l) => l,
            Err(e) => {
                self.head_conn = None;
                head.last_error = error_text(&e);
                return head;
            }
        };
        if let Some((file, size)) = logs.last() {
            head.server_file = file.clone();
            head.server_pos = *size;
        }
        let (file, end, closed) = self.state.as_ref().map_or((String::new(), 0, false), |s| {
            (s.file.clone(), s.end, s.closed)
        });
        head.lag_bytes = logs
            .iter()
            .map(|(f, size)| {
                if file.is_empty() || later(f, &file) {
                    *size
                } else if *f == file && !closed {
                    size.saturating_sub(end)
                } else {
                    0
                }
            })
            .sum();
        // The lag in time: how long the oldest server position the sink
        // does not reach yet has been known.
        if !head.server_file.is_empty()
            && self.pending.back().is_none_or(|(f, p, _)| {
                (f.as_str(), *p) != (head.server_file.as_str(), head.server_pos)
            })
        {
            self.pending
                .push_back((head.server_file.clone(), head.server_pos, Instant::now()));
        }
        let reached = |f: &str, p: u64| {
            !file.is_empty() && (later(&file, f) || (file == f && (closed || end >= p)))
        };
        while self.pending.front().is_some_and(|(f, p, _)| reached(f, *p)) {
            self.pending.pop_front();
        }
        if head.lag_bytes == 0 {
            self.pending.clear();
        }
        head.lag_ms = self
            .pending
            .front()
            .map_or(0, |(_, _, t)| t.elapsed().as_millis() as u64);
        if let Some((oldest, _)) = logs.first()
            && (file.is_empty() || later(oldest, &file) || (*oldest == file && !closed))
            && head.lag_bytes > 0
        {
            head.warnings.push(format!(
                "server {}: its oldest binlog {oldest} is not archived yet; a PURGE or expiry now would leave a gap",
                self.server.address()
            ));
        }
        head
    }
}

/// Reads events `start..end` of an archived binlog into `indexer`; returns
/// it and the transactions that ended there. A range that is not whole
/// events is an error naming the file and offset.
fn index_range(
    path: &Path,
    start: u64,
    end: u64,
    mut indexer: Indexer,
) -> Result<(Indexer, Vec<TxnEntry>)> {
    use std::io::{Read, Seek};
    let mut f = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).map_err(|e| Error::io(path, "open the archived binlog", e))?,
    );
    f.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io(path, "seek", e))?;
    let mut at = start;
    let mut out = Vec::new();
    if at == 0 && end >= 4 {
        let mut magic = [0u8; 4];
        f.read_exact(&mut magic)
            .map_err(|e| Error::io(path, "read", e))?;
        indexer.feed(0, &magic)?;
        at = 4;
    }
    let mut ev = Vec::new();
    while at < end {
        ev.resize(crate::binlog::event::HEADER_LEN, 0);
        f.read_exact(&mut ev)
            .map_err(|e| Error::io(path, "read", e))?;
        let len = crate::binlog::event::Header::parse(&ev)
            .map(|h| h.event_len as usize)
            .filter(|l| (at + *l as u64) <= end)
            .ok_or_else(|| Error::BinlogArchive {
                dir: path.to_path_buf(),
                reason: format!("no whole event at offset {at} (the range ends at {end})"),
            })?;
        ev.resize(len, 0);
        f.read_exact(&mut ev[crate::binlog::event::HEADER_LEN..])
            .map_err(|e| Error::io(path, "read", e))?;
        out.extend(indexer.event(at, &ev)?);
        at += len as u64;
    }
    Ok((indexer, out))
}

/// How much of local file `name` (`len` bytes) may be shipped, and whether
/// that is the whole file: files older than the archiver's current one are
/// complete; the current one counts up to its last fsynced commit-group
/// boundary, unless the archiver closed it; nothing else is known yet (as
/// before the archiver has said where it stands).
fn shippable(name: &str, len: u64, p: &ArchiveProgress) -> (u64, bool) {
    if name == p.file {
        if p.closed {
            (len, true)
        } else {
            (p.durable.min(len), false)
        }
    } else if later(&p.file, name) {
        (len, true)
    } else {
        (0, false)
    }
}

/// `a` comes after `b` in binlog order (same basename, higher number).
fn later(a: &str, b: &str) -> bool {
    match (local::parse_name(a), local::parse_name(b)) {
        (Some((ab, an)), Some((bb, bn))) => ab == bb && an > bn,
        _ => false,
    }
}

fn coordinator_error(what: &str, s: tonic::Status) -> Error {
    Error::Config(format!("{what}: {} ({:?})", s.message(), s.code()))
}

/// Stores bytes `start..end` of `path` under `key`; returns their sha256.
/// An object already under `key` with the same bytes (stored before a
/// crash, never recorded) is kept.
async fn store_range(
    store: &SharedStore,
    key: &str,
    path: &Path,
    start: u64,
    end: u64,
) -> Result<String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(path, "open the archived binlog", e))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Error::io(path, "seek", e))?;
    let mut left = end - start;
    let mut hash = Sha256::new();
    let mut writer = if store.size(key).await?.is_some() {
        None
    } else {
        Some(store.create(key).await?)
    };
    while left > 0 {
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        file.read_exact(&mut buf)
            .await
            .map_err(|e| Error::io(path, "read the archived binlog", e))?;
        hash.update(&buf);
        left -= buf.len() as u64;
        if let Some(w) = writer.as_mut()
            && let Err(e) = w.write(Bytes::from(buf)).await
        {
            if let Some(w) = writer.take() {
                w.abort().await;
            }
            return Err(e);
        }
    }
    let sha = hex::encode(hash.finalize());
    match writer {
        Some(w) => {
            w.finish().await?;
        }
        None => {
            // Already there: it must be these bytes.
            let stored = sink::get(store.as_ref(), key, end - start).await?;
            if crate::format::files::sha256_hex(&stored) != sha {
                return Err(Error::Sink {
                    sink: store.describe(),
                    key: key.to_string(),
                    action: "store",
                    reason: "an object with other bytes is already stored under this key".into(),
                });
            }
        }
    }
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_archiver_made_durable_is_shipped() {
        let unknown = ArchiveProgress::default();
        assert_eq!(shippable("b.000001", 328, &unknown), (0, false));
        let writing = ArchiveProgress {
            file: "b.000002".into(),
            durable: 100,
            ..Default::default()
        };
        assert_eq!(shippable("b.000001", 328, &writing), (328, true));
        assert_eq!(shippable("b.000002", 150, &writing), (100, false));
        assert_eq!(shippable("b.000003", 4, &writing), (0, false));
        let closed = ArchiveProgress {
            closed: true,
            ..writing
        };
        assert_eq!(shippable("b.000002", 150, &closed), (150, true));
    }

    #[test]
    fn binlog_order_and_replica_ids() {
        assert!(later("b.000010", "b.000009"));
        assert!(!later("b.000009", "b.000009"));
        assert!(!later("c.000010", "b.000009"));
        assert_eq!(default_replica_id(1), 4_000_000_001);
        assert_eq!(
            default_replica_id(u32::MAX),
            4_000_000_000 + u32::MAX % 100_000_000
        );
    }
}
