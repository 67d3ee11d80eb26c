//! The archiver: one task per server that streams its binlogs into a
//! directory, byte for byte, resuming after restarts and reconnecting after
//! broken connections.
//!
//! Files are named as on the server. Each holds the magic and the events as
//! received; the stream's own events (the fake Rotate at the start of each
//! file, the Format_description resent when a dump starts mid-file,
//! heartbeats, any other artificial event) are skipped. Every event of a file
//! must end where its `log_pos` says, so a gap or a foreign stream is caught
//! at the first event. The file is fsynced at commit-group boundaries (when
//! the stream pauses, or at least every [`SYNC_EVERY`] / [`SYNC_BYTES`]) and
//! at every rotation; [`ArchiveProgress::durable`] is the last fsynced
//! boundary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::binlog::dump::DumpClient;
use crate::binlog::event::{self, Groups, Header, StreamEvent, kind};
use crate::binlog::local::{self, LocalFile, Resume};
use crate::error::{Error, Result};
use crate::mysql::Server;

/// Longest time a commit group waits for its fsync while events keep
/// coming.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);
/// Most bytes taken before an fsync while events keep coming.
pub const SYNC_BYTES: u64 = 16 << 20;
/// Most bytes held in memory before they are written (without fsync).
const SPILL_BYTES: usize = 1 << 20;
/// First pause before reconnecting; doubled up to `ArchiveConfig::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What to archive and where.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The directory of this server's archived binlogs (one server per
    /// directory).
    pub dir: PathBuf,
    /// The server id the archiver presents as a replica; unique among the
    /// server's replicas (a second dump with the same id makes the server
    /// end the first).
    pub replica_server_id: u32,
    /// The binlog to start with when the directory is empty (archived whole,
    /// from its beginning); `None`: the oldest the server has. Once the
    /// directory holds files, the archive continues from them.
    pub start_file: Option<String>,
    /// Heartbeat period asked of the server; a connection silent for three
    /// periods (plus 1 s) counts as dead.
    pub heartbeat: Duration,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// Continue with this file at its beginning even though the archive
    /// holds older files that do not lead to it: the files between were
    /// purged on the server before they were archived (a gap the caller has
    /// reported). Ignored when the archive already holds this file.
    pub skip_to: Option<String>,
}

impl ArchiveConfig {
    pub fn new(dir: impl Into<PathBuf>, replica_server_id: u32) -> Self {
        Self {
            dir: dir.into(),
            replica_server_id,
            start_file: None,
            heartbeat: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
            skip_to: None,
        }
    }
}

/// Where an archiver stands; sent on a watch channel after every fsync and
/// on every connection change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveProgress {
    /// The file being written.
    pub file: String,
    /// Position in `file` up to which whole commit groups are fsynced.
    pub durable: u64,
    /// Files closed (fsynced through their Rotate event) since start.
    pub files_closed: u64,
    /// Events and bytes written since start.
    pub events: u64,
    pub bytes: u64,
    /// Connections made (the first, then one per reconnect).
    pub connections: u64,
    pub connected: bool,
    /// `file` is closed: it ends with its Rotate event.
    pub closed: bool,
    /// The last error that broke a connection, if any.
    pub last_error: Option<String>,
}

/// Archives one server's binlogs; see the module doc. Create, take
/// [`Archiver::progress`], then [`Archiver::run`].
#[derive(Debug)]
pub struct Archiver {
    server: Server,
    config: ArchiveConfig,
    progress: watch::Sender<ArchiveProgress>,
}

/// The archive's position between connections.
struct State {
    file: Option<LocalFile>,
    /// The current file ended with a Rotate to this file.
    next: Option<String>,
    checksum_len: usize,
    groups: Groups,
    /// Last commit-group boundary in the current file.
    boundary: u64,
    last_sync: Instant,
}

impl Archiver {
    pub fn new(server: Server, config: ArchiveConfig) -> Self {
        Self {
            server,
            config,
            progress: watch::Sender::new(ArchiveProgress::default()),
        }
    }

    /// Progress updates.
    pub fn progress(&self) -> watch::Receiver<ArchiveProgress> {
        self.progress.subscribe()
    }

    fn dir_error(&self, reason: impl Into<String>) -> Error {
        Error::BinlogArchive {
            dir: self.config.dir.clone(),
            reason: reason.into(),
        }
    }

    /// Runs until cancelled (then writes and fsyncs what it took and returns
    /// `Ok`) or until an error that retrying cannot fix: a purged binlog, a
    /// refused login, a gap in the stream, a local file that is not ours.
    /// Broken connections and server restarts are retried with backoff.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let result = self.archive(cancel).await;
        if let Err(e) = &result {
            tracing::error!(server = %self.server.address(), dir = %self.config.dir.display(), error = %e, "binlog archiver stopped");
            self.progress.send_modify(|p| {
                p.connected = false;
                p.last_error = Some(e.to_string());
            });
        }
        result
    }

    async fn archive(&self, cancel: CancellationToken) -> Result<()> {
        let dir = self.config.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(&dir, "create the archive directory", e))?;
        let resume = local::scan(&dir)?;
        tracing::info!(server = %self.server.address(), dir = %dir.display(), ?resume, "binlog archiver starting");
        let mut state = State {
            file: None,
            next: None,
            checksum_len: 0,
            groups: Groups::default(),
            boundary: 0,
            last_sync: Instant::now(),
        };
        match resume {
            Resume::Empty => {}
            Resume::Append {
                file,
                offset,
                checksum_len,
                groups,
                boundary,
            } => {
                let f = LocalFile::append(&dir, &file, offset)?;
                self.progress.send_modify(|p| {
                    p.file = file.clone();
                    p.durable = boundary;
                });
                state.file = Some(f);
                state.checksum_len = checksum_len;
                state.boundary = boundary;
                state.groups = groups;
            }
            Resume::Next { closed, next } => {
                self.progress.send_modify(|p| {
                    p.file = closed.clone();
                    p.closed = true;
                });
                state.next = Some(next);
            }
        }
        if let Some(skip) = &self.config.skip_to {
            let current = state.file.as_ref().map(|f| f.name.clone());
            let behind = |name: &str| {
                matches!((local::parse_name(name), local::parse_name(skip)),
                    (Some((b, n)), Some((sb, sn))) if b == sb && n < sn)
            };
            let next_behind = state.next.as_deref().is_none_or(behind);
            if current.as_deref().is_none_or(behind) && next_behind {
                tracing::warn!(server = %self.server.address(), skip_to = %skip, "continuing the archive after a gap");
                if state.file.is_some() {
                    self.close(&mut state).await?;
                }
                state.next = Some(skip.clone());
            }
        }

        let mut backoff = FIRST_BACKOFF;
        loop {
            let connections = self.progress.borrow().connections;
            let outcome = tokio::select! {
                _ = cancel.cancelled() => Ok(()),
                r = self.session(&mut state, &cancel) => r,
            };
            // Whatever happened, what was taken is written and fsynced.
            let synced = self.sync(&mut state).await;
            if self.progress.borrow().connections > connections {
                // This session got as far as a dump: a fresh failure.
                backoff = FIRST_BACKOFF;
            }
            match outcome {
                Ok(()) if cancel.is_cancelled() => {
                    self.progress.send_modify(|p| p.connected = false);
                    return synced;
                }
                // The server ended the dump: as a broken connection.
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(server = %self.server.address(), error = %e, ?backoff, "binlog dump broke; reconnecting");
                    self.progress.send_modify(|p| {
                        p.connected = false;
                        p.last_error = Some(e.to_string());
                    });
                }
                Err(e) => return Err(e),
            }
            synced?;
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// One connection: log in, ask for the dump where the archive stands,
    /// and take events until the connection breaks.
    async fn session(&self, state: &mut State, cancel: &CancellationToken) -> Result<()> {
        let mut client = DumpClient::connect(&self.server).await?;
        client.prepare(self.config.heartbeat).await?;
        client.register(self.config.replica_server_id).await?;
        let (file, offset) = match (&state.file, &state.next) {
            (_, Some(next)) => (next.clone(), 4),
            (Some(f), None) => (f.name.clone(), f.end()),
            (None, None) => (self.config.start_file.clone().unwrap_or_default(), 4),
        };
        let offset = u32::try_from(offset).map_err(|_| {
            self.dir_error(format!(
                "{file} is past 4 GiB; COM_BINLOG_DUMP cannot ask for offset {offset}"
            ))
        })?;
        client
            .start_dump(self.config.replica_server_id, &file, offset)
            .await?;
        tracing::info!(server = %self.server.address(), file, offset, "binlog dump started");
        self.progress.send_modify(|p| {
            p.connections += 1;
            p.connected = true;
        });
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let Some(ev) = client.next_event().await? else {
                tracing::info!(server = %self.server.address(), "the server ended the binlog dump");
                return Ok(());
            };
            self.take(state, &ev).await?;
            if let Some(f) = state.file.as_mut() {
                let at_boundary = state.boundary == f.end();
                let due = !client.event_buffered()
                    || state.last_sync.elapsed() >= SYNC_EVERY
                    || f.unsynced() >= SYNC_BYTES;
                if at_boundary && f.unsynced() > 0 && due {
                    self.sync(state).await?;
                } else if f.pending_len() >= SPILL_BYTES {
                    f.spill().await?;
                }
            }
        }
    }

    /// Takes one event of the stream.
    async fn take(&self, state: &mut State, ev: &[u8]) -> Result<()> {
        let server = self.server.address();
        let stream_error = |reason: String| Error::BinlogDump {
            server: server.to_string(),
            reason,
            retryable: false,
        };
        match event::classify(ev).map_err(&stream_error)? {
            StreamEvent::Heartbeat | StreamEvent::Artificial => Ok(()),
            StreamEvent::ResentFormat => {
                state.checksum_len = event::checksum_len(ev).map_err(&stream_error)?;
                Ok(())
            }
            StreamEvent::FakeRotate { file, position } => {
                self.start_file(state, &file, position).await
            }
            StreamEvent::InFile => {
                let h = Header::parse(ev).expect("classify checked the header");
                let Some(f) = state.file.as_mut() else {
                    return Err(stream_error(format!(
                        "an event of type {} arrived before the server named its file",
                        h.kind
                    )));
                };
                let len = ev.len() as u64;
                if u64::from(h.log_pos) != f.end() + len {
                    return Err(stream_error(format!(
                        "an event of type {} at {}:{} ends at {} but is {len} bytes long: a gap, or not the file archived so far",
                        h.kind,
                        f.name,
                        f.end(),
                        h.log_pos
                    )));
                }
                if h.kind == kind::FORMAT_DESCRIPTION {
                    state.checksum_len = event::checksum_len(ev).map_err(&stream_error)?;
                }
                f.push(ev);
                self.progress.send_modify(|p| {
                    p.events += 1;
                    p.bytes += len;
                });
                if state.groups.after(ev, state.checksum_len) {
                    state.boundary = f.end();
                }
                if h.kind == kind::ROTATE {
                    let (next, _) =
                        event::rotate_target(ev, state.checksum_len).map_err(&stream_error)?;
                    if local::parse_name(&next).is_none() {
                        return Err(stream_error(format!(
                            "{} rotates to {next:?}, not a binlog name",
                            f.name
                        )));
                    }
                    self.close(state).await?;
                    state.next = Some(next);
                }
                Ok(())
            }
        }
    }

    /// The server names the file its next events belong to.
    async fn start_file(&self, state: &mut State, file: &str, position: u64) -> Result<()> {
        let server = self.server.address();
        let stream_error = |reason: String| Error::BinlogDump {
            server: server.to_string(),
            reason,
            retryable: false,
        };
        if let Some(f) = &state.file
            && f.name == file
        {
            if position != f.end() {
                return Err(stream_error(format!(
                    "the server resumes {file} at {position}, but the archive holds it to {}",
                    f.end()
                )));
            }
            return Ok(());
        }
        let Some((base, number)) = local::parse_name(file) else {
            return Err(stream_error(format!(
                "the server names {file:?}, not a binlog name"
            )));
        };
        // Moving on: the current file ended without a Rotate (the server
        // stopped, or crashed) or with one (expected: the file it named).
        let previous = state
            .file
            .as_ref()
            .map(|f| f.name.clone())
            .or_else(|| Some(self.progress.borrow().file.clone()));
        if let Some(prev) = previous.filter(|p| !p.is_empty())
            && let Some((prev_base, prev_number)) = local::parse_name(&prev)
            && (prev_base != base || number <= prev_number)
        {
            return Err(stream_error(format!(
                "the server moved from {prev} to {file}: not the next binlog (RESET MASTER, or another server?)"
            )));
        }
        if let Some(expected) = &state.next
            && expected != file
        {
            return Err(stream_error(format!(
                "the last archived file rotates to {expected}, but the server continues with {file}: a gap"
            )));
        }
        if position != 4 {
            return Err(stream_error(format!(
                "the server starts {file} at {position}, not at its beginning: the archive would have a gap"
            )));
        }
        if state.file.is_some() {
            tracing::info!(
                server,
                file = state.file.as_ref().map(|f| f.name.as_str()),
                "archived binlog ended without a Rotate (server restart)"
            );
            self.close(state).await?;
        }
        let f = LocalFile::create(&self.config.dir, file)?;
        tracing::info!(server, file, "archiving binlog");
        state.file = Some(f);
        state.next = None;
        state.checksum_len = 0;
        state.groups = Groups::default();
        state.boundary = 0;
        self.progress.send_modify(|p| {
            p.file = file.to_string();
            p.durable = 0;
            p.closed = false;
        });
        Ok(())
    }

    /// Writes and fsyncs the current file up to its last event.
    async fn sync(&self, state: &mut State) -> Result<()> {
        state.last_sync = Instant::now();
        let Some(f) = state.file.as_mut() else {
            return Ok(());
        };
        f.sync().await?;
        let durable = state.boundary.min(f.synced);
        self.progress.send_modify(|p| p.durable = durable);
        Ok(())
    }

    /// Fsyncs and closes the current file.
    async fn close(&self, state: &mut State) -> Result<()> {
        self.sync(state).await?;
        if state.file.take().is_some() {
            self.progress.send_modify(|p| {
                p.files_closed += 1;
                p.closed = true;
            });
        }
        Ok(())
    }
}
