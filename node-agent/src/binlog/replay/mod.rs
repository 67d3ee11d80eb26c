//! Applying archived binlog files to a target server up to an exact
//! position: the replay half of point-in-time recovery.
//!
//! - [`scan`]: reads the files natively first (headers, CRC32, start and
//!   stop as event and transaction boundaries, every transaction's GTID,
//!   the GTID position at the stop).
//! - `relay`: the default method. The files become the target's relay logs
//!   of a connection of our own ([`CONNECTION`]) and the server's SQL
//!   thread applies them up to the stop position.
//! - `pipe`: the fallback, one `mariadb-binlog | mariadb` session over every
//!   file, for targets whose relay logs this host cannot write.
//!
//! A replay resumes by itself: it starts at the first transaction whose
//! GTID the target's `gtid_slave_pos` does not hold yet. Afterwards the
//! target's `gtid_slave_pos` is its position before the replay with every
//! domain of the stop position taken from there, and its `gtid_binlog_pos`
//! is the stop position's when its binlog held no GTID (see
//! docs/archive.md, "Replay").

mod pipe;
mod relay;
pub mod scan;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::error::{Error, MysqlContext, Result};
use crate::mysql::{Server, literal};
use crate::progress::Progress;
use scan::{GtidPos, Scanned};

pub use relay::CONNECTION;

/// How the events reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The files as the target's relay logs, applied by its SQL thread.
    Relay,
    /// `mariadb-binlog | mariadb`, one session over every file.
    Pipe,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Relay => "relay",
            Method::Pipe => "pipe",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// Complete binlog files (each from its magic), named as on the source
    /// server, in order. They may come from another host (the source host
    /// may be gone); they sit in a local directory of the agent.
    pub files: Vec<PathBuf>,
    /// An event boundary in files[0] where replay starts (e.g. a backup's cut
    /// position: the base holds everything before it).
    pub start_pos: u64,
    /// A transaction boundary in the last file: everything before it is
    /// applied, nothing at or after it.
    pub stop_pos: u64,
    /// None: Relay when this host can write the target's relay logs
    /// (its @@datadir / relay_log_basename is local and writable), else Pipe.
    pub method: Option<Method>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub server: String,
    pub method: Method,
    /// Binlog bytes applied by this run (from where it resumed to the stop).
    pub bytes: u64,
    /// The whole call: scan, preparation, applying, GTID state.
    pub duration: Duration,
    /// Applying alone (the SQL thread's run, or the pipe's).
    pub apply_duration: Duration,
    /// Transactions applied by this run.
    pub transactions: u64,
    /// Transactions of the range the target already had (a resumed replay).
    pub skipped: u64,
    /// Where this run started (file, offset): the plan's start, or the
    /// first transaction the target did not have.
    pub started_at: (String, u64),
    /// The GTID position of the stop position (the source's
    /// `gtid_binlog_pos` at that moment).
    pub point: String,
    /// The target's gtid_slave_pos after the replay.
    pub gtid_slave_pos: String,
    /// The target's gtid_binlog_pos after the replay (empty without a
    /// binlog).
    pub gtid_binlog_pos: String,
    /// Why the method differs from the one asked for, or why the
    /// target's gtid_binlog_pos is not the point's.
    pub warnings: Vec<String>,
}

/// What the target is before a replay.
struct TargetState {
    server_id: u32,
    slave_pos: GtidPos,
    log_bin: bool,
}

/// Applies `plan` to `target`. See the module comment.
pub async fn replay(
    target: &Server,
    plan: &ReplayPlan,
    progress: &Progress,
) -> Result<ReplayReport> {
    let started = Instant::now();
    let addr = target.address().to_string();
    let files = plan.files.clone();
    let (start, stop) = (plan.start_pos, plan.stop_pos);
    let scanned = tokio::task::spawn_blocking(move || scan::scan(&files, start, stop))
        .await
        .map_err(|e| Error::Cancelled(format!("binlog scan stopped: {e}")))?
        .map_err(|e| on_server(e, &addr))?;

    tracing::debug!(server = %addr, transactions = scanned.transactions.len(), elapsed = ?started.elapsed(), "binlogs scanned");
    let mut conn = target.connect("connect for binlog replay").await?;
    let state = target_state(&mut conn, &addr).await?;
    let skipped = scanned
        .transactions
        .iter()
        .take_while(|t| state.slave_pos.contains(&t.gtid))
        .count();
    let last = scanned.names.len() - 1;
    let from = match scanned.transactions.get(skipped) {
        Some(t) => (t.file, t.offset),
        // Nothing left to apply.
        None if skipped > 0 => (last, plan.stop_pos),
        None => (0, plan.start_pos),
    };
    let bytes = scanned.bytes_from(from.0, from.1);
    let pending = (scanned.transactions.len() - skipped) as u64;
    let mut warnings = Vec::new();
    if skipped > 0 {
        tracing::info!(server = %addr, skipped, file = %scanned.names[from.0], offset = from.1, "resuming a replay: the target has the first transactions already");
    }

    let mut method = plan.method.unwrap_or(Method::Relay);
    if method == Method::Relay && scanned.server_ids.contains(&state.server_id) {
        let why = format!(
            "the binlogs hold transactions of server id {}, the target's own; its SQL thread would skip them",
            state.server_id
        );
        if plan.method == Some(Method::Relay) {
            return Err(Error::Replay {
                server: addr,
                file: scanned.names[from.0].clone(),
                position: from.1,
                reason: format!("cannot replay through relay logs: {why}"),
            });
        }
        warnings.push(format!("replayed with mariadb-binlog | mariadb: {why}"));
        method = Method::Pipe;
    }
    let place = if method == Method::Relay && pending > 0 {
        match relay::prepare(&mut conn, &addr, &scanned.names[from.0]).await? {
            Ok(place) => Some(place),
            Err(why) if plan.method.is_none() => {
                warnings.push(format!("replayed with mariadb-binlog | mariadb: {why}"));
                method = Method::Pipe;
                None
            }
            Err(why) => {
                return Err(Error::Replay {
                    server: addr,
                    file: scanned.names[from.0].clone(),
                    position: from.1,
                    reason: format!("cannot replay through relay logs: {why}"),
                });
            }
        }
    } else {
        None
    };

    tracing::debug!(server = %addr, method = method.as_str(), elapsed = ?started.elapsed(), "replay prepared");
    let applying = Instant::now();
    if pending > 0 {
        let job = Job {
            addr: &addr,
            files: &plan.files,
            scanned: &scanned,
            from,
            stop: plan.stop_pos,
            initial: &state.slave_pos,
            progress,
        };
        match place {
            Some(place) => relay::run(&mut conn, place, &job).await?,
            None => pipe::run(target, &mut conn, &job).await?,
        }
    }

    let apply_duration = applying.elapsed();
    tracing::debug!(server = %addr, elapsed = ?started.elapsed(), "events applied");
    // The GTID state of the point.
    let want = state.slave_pos.merged(&scanned.point);
    let now: String = conn
        .query_first("SELECT @@GLOBAL.gtid_slave_pos")
        .await
        .on(&addr, "read gtid_slave_pos after the replay")?
        .unwrap_or_default();
    if GtidPos::parse(&now).ok().as_ref() != Some(&want) {
        tracing::debug!(server = %addr, now = %now, want = %want, "setting gtid_slave_pos");
        conn.query_drop(format!(
            "SET GLOBAL gtid_slave_pos = {}",
            literal(&want.to_string())
        ))
        .await
        .on(&addr, "set gtid_slave_pos to the replayed position")?;
    }
    let mut binlog_pos = String::new();
    if state.log_bin {
        let (binlog_state, pos): (String, String) = conn
            .query_first("SELECT @@GLOBAL.gtid_binlog_state, @@GLOBAL.gtid_binlog_pos")
            .await
            .on(&addr, "read gtid_binlog_state")?
            .unwrap_or_default();
        binlog_pos = pos;
        let point_ok = GtidPos::parse(&binlog_pos).ok().as_ref() == Some(&scanned.point);
        if !point_ok && binlog_state.trim().is_empty() && !scanned.point.is_empty() {
            tracing::debug!(server = %addr, elapsed = ?started.elapsed(), "setting gtid_binlog_state");
            conn.query_drop(format!(
                "SET GLOBAL gtid_binlog_state = {}",
                literal(&scanned.point.to_string())
            ))
            .await
            .on(&addr, "set gtid_binlog_state to the replayed position")?;
            binlog_pos = scanned.point.to_string();
        } else if !point_ok && !scanned.point.is_empty() {
            warnings.push(format!(
                "gtid_binlog_pos stays {binlog_pos:?}, not the point's {}: the target's binlog already holds GTIDs, and setting it needs RESET MASTER",
                scanned.point
            ));
        }
    }
    let slave_pos: String = conn
        .query_first("SELECT @@GLOBAL.gtid_slave_pos")
        .await
        .on(&addr, "read gtid_slave_pos after the replay")?
        .unwrap_or_default();
    tracing::debug!(server = %addr, elapsed = ?started.elapsed(), "GTID state set");
    let _ = conn.disconnect().await;
    for w in &warnings {
        tracing::warn!(server = %addr, "{w}");
    }
    Ok(ReplayReport {
        server: addr,
        method,
        bytes,
        duration: started.elapsed(),
        apply_duration,
        transactions: pending,
        skipped: skipped as u64,
        started_at: (scanned.names[from.0].clone(), from.1),
        point: scanned.point.to_string(),
        gtid_slave_pos: slave_pos,
        gtid_binlog_pos: binlog_pos,
        warnings,
    })
}

/// One run of a method.
struct Job<'a> {
    addr: &'a str,
    files: &'a [PathBuf],
    scanned: &'a Scanned,
    /// (file index, offset) where this run starts.
    from: (usize, u64),
    stop: u64,
    /// The target's gtid_slave_pos before the run.
    initial: &'a GtidPos,
    progress: &'a Progress,
}

impl Job<'_> {
    fn last(&self) -> usize {
        self.scanned.names.len() - 1
    }

    /// Bytes applied once the target is at (file, offset).
    fn applied(&self, file: usize, offset: u64) -> u64 {
        self.scanned
            .bytes_from(self.from.0, self.from.1)
            .saturating_sub(self.scanned.bytes_from(file, offset))
    }
}

/// A scan error, naming the target it was for.
fn on_server(e: Error, addr: &str) -> Error {
    match e {
        Error::Replay {
            file,
            position,
            reason,
            ..
        } => Error::Replay {
            server: addr.to_string(),
            file,
            position,
            reason,
        },
        e => e,
    }
}

async fn target_state(conn: &mut mysql_async::Conn, addr: &str) -> Result<TargetState> {
    let row: Option<(u32, String, u8)> = conn
        .query_first("SELECT @@server_id, @@GLOBAL.gtid_slave_pos, @@log_bin")
        .await
        .on(addr, "read the target's GTID state")?;
    let (server_id, slave_pos, log_bin) = row.unwrap_or_default();
    let slave_pos = GtidPos::parse(&slave_pos).map_err(|e| Error::Unsupported {
        server: addr.to_string(),
        version: String::new(),
        reason: format!("gtid_slave_pos {slave_pos:?} does not parse: {e}"),
    })?;
    Ok(TargetState {
        server_id,
        slave_pos,
        log_bin: log_bin != 0,
    })
}
