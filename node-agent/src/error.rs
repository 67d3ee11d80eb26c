//! The agent's one error type. Every variant names the thing that failed: the
//! server (by address, never with its password), the backup, the file.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid MySQL URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },

    #[error("server {server}: cannot {action}: {source}")]
    Mysql {
        server: String,
        action: String,
        #[source]
        source: mysql_async::Error,
    },

    #[error(
        "server {server}: binary logging is off (log_bin=0); lockstep needs the binlog to capture a position. Start the server with --log-bin"
    )]
    BinlogOff { server: String },

    #[error("server {server}: unsupported server {version:?}: {reason}")]
    Unsupported {
        server: String,
        version: String,
        reason: String,
    },

    #[error(
        "server {server}: refusing to lock: thread {thread_id} (user {user}) has run a {kind} for {seconds:.1}s, longer than the pre-flight budget of {budget_ms} ms, and the lock would queue behind it: {statement}"
    )]
    LongStatement {
        server: String,
        thread_id: u64,
        user: String,
        kind: &'static str,
        seconds: f64,
        budget_ms: u64,
        statement: String,
    },

    #[error(
        "server {server}: {method} was not granted within the lock-wait budget of {budget_ms} ms; our lock statement was cancelled and nothing is locked"
    )]
    LockTimeout {
        server: String,
        method: &'static str,
        budget_ms: u64,
    },

    #[error("{0}")]
    DdlYield(Box<crate::ddl_guard::Yielded>),

    #[error(
        "server {server}: snapshot connection {connection} sees binlog position {seen} but the captured position is {captured}; the cut is not consistent"
    )]
    SnapshotMismatch {
        server: String,
        connection: usize,
        seen: String,
        captured: String,
    },

    #[error("backup {backup_id}: {reason}")]
    BadState { backup_id: String, reason: String },

    #[error(
        "the agent is busy with backup {current}; finish or abort it before starting backup {requested}"
    )]
    Busy { current: String, requested: String },

    #[error("file {}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("backup {}: {reason}", path.display())]
    BadBackup { path: PathBuf, reason: String },

    #[error("file {}: checksum mismatch: manifest says sha256 {expected} ({expected_size} bytes), file has {actual} ({actual_size} bytes)", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },

    #[error(
        "server {server}: target is not empty: it holds {holds}; pass --force to load into it anyway"
    )]
    TargetNotEmpty {
        server: String,
        /// What it holds: "database(s) a, b", "3 entries".
        holds: String,
    },

    #[error("server {server}: table {table}: restored {actual} rows but the backup has {expected}")]
    RowCount {
        server: String,
        table: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "refusing a call from coordinator term {term}: a leader of term {current} has taken over (the caller was deposed)"
    )]
    StaleTerm { term: u64, current: u64 },

    #[error(
        "the server's lock is held by {holder}: {requested} was refused (one cut at a time; retry when it is released)"
    )]
    LockHeld { holder: String, requested: String },

    #[error("{sink}: cannot {action} {key}: {reason}")]
    Sink {
        sink: String,
        key: String,
        action: &'static str,
        reason: String,
    },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("binlog {file} was purged on server {server} before it was archived")]
    BinlogPurged { server: String, file: String },

    #[error("server {server}: binlog dump: {reason}")]
    BinlogDump {
        server: String,
        reason: String,
        /// A broken connection or a server going away, not a refusal.
        retryable: bool,
    },

    #[error("binlog archive {}: {reason}", dir.display())]
    BinlogArchive { dir: PathBuf, reason: String },

    #[error("binlog {file} at offset {offset}: {reason}")]
    BinlogEvent {
        file: String,
        offset: u64,
        reason: String,
    },

    #[error("server {server}: binlog replay at {file}:{position}: {reason}")]
    Replay {
        server: String,
        /// The binlog file (a path when the file itself is at fault, a
        /// name as on the source server when the target refused an event).
        file: String,
        position: u64,
        reason: String,
    },

    #[error("cancelled: {0}")]
    Cancelled(String),

    #[error("{}: {reason}", path.display())]
    Tree { path: PathBuf, reason: String },

    #[error("archive {archive}: {source}")]
    Archive {
        archive: String,
        #[source]
        source: Box<Error>,
    },

    #[error(
        "server {server}: {setting} is {} and lies outside the datadir {}; a snapshot of the datadir would miss it (move it inside the datadir)", path.display(), datadir.display()
    )]
    OutsideDatadir {
        server: String,
        setting: &'static str,
        path: PathBuf,
        datadir: PathBuf,
    },

    #[error("recovery of the restored datadir {}: {reason}{}", datadir.display(), if log_tail.is_empty() { String::new() } else { format!("; the last lines of its error log:\n{log_tail}") })]
    Recover {
        datadir: PathBuf,
        reason: String,
        log_tail: String,
    },
}

impl Error {
    pub(crate) fn mysql(
        server: &str,
        action: impl Into<String>,
        source: mysql_async::Error,
    ) -> Self {
        Error::Mysql {
            server: server.to_string(),
            action: action.into(),
            source,
        }
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.into(),
            action,
            source,
        }
    }

    /// The server or agent declined for now (a long statement, a lock not
    /// granted in time, another backup running, a dump that gave way to
    /// DDL); the same request may work later.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::LongStatement { .. }
                | Error::LockTimeout { .. }
                | Error::Busy { .. }
                | Error::LockHeld { .. }
                | Error::DdlYield(_)
        )
    }

    /// Errors a caller may retry unchanged: refusals, and a server that was
    /// briefly unreachable rather than misconfigured.
    pub fn is_retryable(&self) -> bool {
        self.is_refusal()
            || matches!(
                self,
                Error::Mysql {
                    source: mysql_async::Error::Io(_) | mysql_async::Error::Driver(_),
                    ..
                } | Error::BinlogDump {
                    retryable: true,
                    ..
                }
            )
    }
}

/// Adds "which server, doing what" to a mysql_async result.
pub(crate) trait MysqlContext<T> {
    fn on(self, server: &str, action: &str) -> Result<T>;
}

impl<T> MysqlContext<T> for std::result::Result<T, mysql_async::Error> {
    fn on(self, server: &str, action: &str) -> Result<T> {
        self.map_err(|e| Error::mysql(server, action, e))
    }
}

/// Adds "which file, doing what" to an io result.
pub(crate) trait IoContext<T> {
    fn on_file(self, path: &std::path::Path, action: &'static str) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn on_file(self, path: &std::path::Path, action: &'static str) -> Result<T> {
        self.map_err(|e| Error::io(path, action, e))
    }
}

/// An error and its causes on one line, leaving out a cause whose text the
/// line already holds (a server error is quoted by the error that wraps
/// it, and again by the driver's own wrapper).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    // The driver's own messages repeat their kind ("Input/output error:
    // Input/output error: ..."): say each part once.
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}
