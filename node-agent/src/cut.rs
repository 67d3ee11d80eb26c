//! Phase one of the cut on one server: pre-flight, pre-flush, lock, open the
//! snapshots and capture the position — and the guard that releases the lock.
//!
//! Order matters and is kept in [`arm`] then [`Armed::lock`] (together:
//! [`prepare`]): every connection is opened before the lock, so the time
//! inside the lock is only the K `START TRANSACTION WITH CONSISTENT
//! SNAPSHOT` round trips and the position query.

use std::time::{Duration, Instant, SystemTime};

use futures::future::try_join_all;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, MysqlContext, Result};
use crate::flavour::{LockMethod, ServerInfo};
use crate::mysql::Server;

/// What a prepare may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    /// Refuse if a write or DDL has been running longer than this.
    #[serde(with = "humantime_serde")]
    pub preflight: Duration,
    /// Cancel our lock statement if it is not granted within this time.
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
    /// Run `FLUSH NO_WRITE_TO_BINLOG TABLES` before locking.
    pub preflush: bool,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            preflight: Duration::from_secs(1),
            lock_wait: Duration::from_millis(500),
            preflush: true,
        }
    }
}

/// A binlog position: file, offset and GTID set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub binlog_file: String,
    pub binlog_pos: u64,
    pub gtid_set: String,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.binlog_file, self.binlog_pos)?;
        if !self.gtid_set.is_empty() {
            write!(f, " (gtid {})", self.gtid_set)?;
        }
        Ok(())
    }
}

/// How long each step of the prepare took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareTimings {
    pub preflight_us: u64,
    pub lock_wait_us: u64,
    pub capture_us: u64,
    /// Unix time in microseconds at which the lock was granted.
    pub locked_at_unix_us: i64,
}

/// A held server lock. Release it with [`HeldLock::release`]; if it is
/// dropped instead, its connection closes and the server drops the lock.
#[derive(Debug)]
pub struct HeldLock {
    conn: Option<Conn>,
    method: LockMethod,
    server: String,
    locked_at: Instant,
}

impl HeldLock {
    pub fn method(&self) -> LockMethod {
        self.method
    }

    pub fn held_for(&self) -> Duration {
        self.locked_at.elapsed()
    }

    /// Runs a statement on the lock's own connection, inside the lock
    /// (a physical backup flushes InnoDB's log buffer this way).
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        let conn = self
            .conn
            .as_mut()
            .expect("a HeldLock owns its connection until released");
        conn.query_drop(sql).await.on(&self.server, sql)
    }

    /// Releases the lock and returns how long it was held. If the unlock
    /// statement fails, the connection is closed, which releases it too.
    pub async fn release(mut self) -> Result<Duration> {
        let mut conn = self
            .conn
            .take()
            .expect("a HeldLock owns its connection until released");
        let result = conn.query_drop(self.method.unlock_sql()).await;
        let held = self.locked_at.elapsed();
        match result {
            Ok(()) => {
                // The lock connection has no further use; closing it is off
                // the critical path (the release instant is taken now).
                tokio::spawn(async move {
                    let _ = conn.disconnect().await;
                });
                Ok(held)
            }
            Err(e) => {
                drop(conn);
                Err(Error::mysql(
                    &self.server,
                    "release the lock (connection closed instead)",
                    e,
                ))
            }
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if self.conn.is_some() {
            tracing::warn!(server = %self.server, "lock guard dropped without release; closing its connection releases the lock");
        }
    }
}

/// K connections inside one consistent snapshot each, all at the same point.
#[derive(Debug)]
pub struct Snapshots {
    pub conns: Vec<Conn>,
}

impl Snapshots {
    /// `binlog_snapshot_file/_position` as each connection sees it (MariaDB).
    pub async fn positions(&mut self, server: &str, info: &ServerInfo) -> Result<Vec<Position>> {
        let Some(sql) = info.snapshot_position_sql() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(self.conns.len());
        for conn in &mut self.conns {
            let rows: Vec<(String, String)> = conn
                .query(sql)
                .await
                .on(server, "read binlog_snapshot_file/_position")?;
            let mut pos = Position::default();
            for (name, value) in rows {
                match name.to_ascii_lowercase().as_str() {
                    "binlog_snapshot_file" => pos.binlog_file = value,
                    "binlog_snapshot_position" => pos.binlog_pos = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            out.push(pos);
        }
        Ok(out)
    }

    /// Checks every snapshot sits exactly at `captured` (file and offset).
    pub async fn verify(
        &mut self,
        server: &str,
        info: &ServerInfo,
        captured: &Position,
    ) -> Result<Vec<Position>> {
        let seen = self.positions(server, info).await?;
        for (i, p) in seen.iter().enumerate() {
            if p.binlog_file != captured.binlog_file || p.binlog_pos != captured.binlog_pos {
                return Err(Error::SnapshotMismatch {
                    server: server.into(),
                    connection: i,
                    seen: format!("{}:{}", p.binlog_file, p.binlog_pos),
                    captured: format!("{}:{}", captured.binlog_file, captured.binlog_pos),
                });
            }
        }
        Ok(seen)
    }
}

/// What a successful prepare hands over: the lock (still held), the snapshots
/// and the captured position.
#[derive(Debug)]
pub struct PreparedCut {
    pub lock: HeldLock,
    pub snapshots: Snapshots,
    pub position: Position,
    pub info: ServerInfo,
    pub timings: PrepareTimings,
}

/// A cut whose lock has been released: the snapshots stay open for the dump.
#[derive(Debug)]
pub struct CommittedCut {
    pub snapshots: Snapshots,
    pub position: Position,
    pub info: ServerInfo,
    pub timings: PrepareTimings,
    pub method: LockMethod,
    pub held: Duration,
    pub released_at_unix_us: i64,
    /// `binlog_snapshot_*` of every snapshot connection (MariaDB), already
    /// checked to equal `position`.
    pub snapshot_positions: Vec<Position>,
}

impl PreparedCut {
    /// Releases the lock, then checks every snapshot sits at the captured
    /// position. The lock is released even if the check fails.
    pub async fn commit(self, server: &str) -> Result<CommittedCut> {
        let PreparedCut {
            lock,
            mut snapshots,
            position,
            info,
            timings,
        } = self;
        let method = lock.method();
        let held = lock.release().await?;
        let released_at_unix_us = unix_micros(SystemTime::now());
        let snapshot_positions = snapshots.verify(server, &info, &position).await?;
        Ok(CommittedCut {
            snapshots,
            position,
            info,
            timings,
            method,
            held,
            released_at_unix_us,
            snapshot_positions,
        })
    }
}

/// Options of one prepare.
#[derive(Debug, Clone, Copy)]
pub struct PrepareOptions {
    pub budgets: Budgets,
    pub lock_method: LockMethod,
    /// 0: none (a restore point: the position only).
    pub snapshot_connections: usize,
    /// The snapshot connections' `wait_timeout`: how long the server keeps
    /// one that sits idle (between Commit and Transfer, or between dump
    /// queries) before it closes it and ends its snapshot.
    pub snapshot_idle: Duration,
    /// The agent releases the lock after this long; the server closes the
    /// lock connection a little later if the agent cannot ([`server_backstop`]).
    pub lease: Duration,
}

/// The margin between the agent's lease and the server-side backstop.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(2);

/// The lock connection's `wait_timeout`: the lease, rounded up to whole
/// seconds, plus a margin so the agent's own release normally comes first.
pub fn server_backstop(lease: Duration) -> Duration {
    Duration::from_secs(lease.as_secs_f64().ceil() as u64) + BACKSTOP_MARGIN
}

/// Phase one on one server. On error nothing stays locked: the lock
/// connection is released or closed before returning.
pub async fn prepare(server: &Server, opts: PrepareOptions) -> Result<PreparedCut> {
    arm(server, opts).await?.lock().await
}

/// A server made ready to lock: every connection open, pre-flight passed,
/// tables pre-flushed. Nothing is locked; dropping it closes the connections.
/// Arming every server first and then locking them all at once keeps the
/// slow part of PREPARE out of the cluster's freeze window.
#[derive(Debug)]
pub struct Armed {
    addr: String,
    lock_conn: Conn,
    watchdog: Conn,
    snaps: Vec<Conn>,
    info: ServerInfo,
    method: LockMethod,
    lock_wait: Duration,
    preflight_us: u64,
}

/// Everything of phase one before the lock. With no snapshot connections
/// (a restore point: the position only) and BACKUP STAGE, the pre-flush is
/// skipped: nothing reads the tables, and BLOCK_COMMIT does not flush them.
pub async fn arm(server: &Server, opts: PrepareOptions) -> Result<Armed> {
    let addr = server.address();
    let started = Instant::now();
    let k = opts.snapshot_connections;

    // Every connection is opened outside the lock.
    let mut lock_conn = server.connect("open lock connection").await?;
    let info = ServerInfo::detect(&mut lock_conn, addr).await?;
    info.require_binlog(addr)?;
    let method = info.resolve_lock_method(addr, opts.lock_method)?;
    let mut watchdog = server.connect("open watchdog connection").await?;
    let snaps = try_join_all((0..k).map(|_| async {
        let mut c = server.connect_data("open snapshot connection").await?;
        c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .on(addr, "set snapshot isolation level")?;
        let idle = opts.snapshot_idle.as_secs().max(1);
        c.query_drop(format!("SET SESSION wait_timeout = {idle}"))
            .await
            .on(addr, "set snapshot wait_timeout")?;
        Ok::<_, Error>(c)
    }))
    .await?;

    preflight(&mut lock_conn, addr, &info, opts.budgets.preflight).await?;
    let lock_wait_secs = opts.budgets.lock_wait.as_secs_f64().ceil().max(1.0) as u64;
    // The server's own backstop for the lease: an agent that is frozen
    // (SIGSTOP, a paused VM) keeps its TCP connection open, and only the
    // server's idle timeout then ends the lock. The connection is idle at
    // most a lease while it waits for Go and a lease while it holds.
    let idle_secs = server_backstop(opts.lease).as_secs();
    lock_conn
        .query_drop(format!(
            "SET SESSION lock_wait_timeout = {lock_wait_secs}, wait_timeout = {idle_secs}, \
             net_read_timeout = {idle_secs}, net_write_timeout = {idle_secs}"
        ))
        .await
        .on(addr, "set lock_wait_timeout and the idle timeouts")?;
    let position_only = k == 0 && method == LockMethod::BackupStage;
    if opts.budgets.preflush && !position_only {
        run_bounded(
            &mut lock_conn,
            &mut watchdog,
            addr,
            &["FLUSH NO_WRITE_TO_BINLOG TABLES"],
            opts.budgets.lock_wait,
        )
        .await
        .map_err(|e| match e {
            Error::LockTimeout {
                server, budget_ms, ..
            } => Error::LockTimeout {
                server,
                method: "pre-flush (FLUSH NO_WRITE_TO_BINLOG TABLES)",
                budget_ms,
            },
            e => e,
        })?;
    }
    Ok(Armed {
        addr: addr.to_string(),
        lock_conn,
        watchdog,
        snaps,
        info,
        method,
        lock_wait: opts.budgets.lock_wait,
        preflight_us: micros(started.elapsed()),
    })
}

impl Armed {
    /// The rest of phase one: lock, open the snapshots, capture the position.
    pub async fn lock(self) -> Result<PreparedCut> {
        let Armed {
            addr,
            mut lock_conn,
            mut watchdog,
            mut snaps,
            info,
            method,
            lock_wait,
            preflight_us,
        } = self;
        let addr = addr.as_str();
        // The lock.
        let lock_started = Instant::now();
        let blocking_since = match run_bounded(
            &mut lock_conn,
            &mut watchdog,
            addr,
            method.lock_sql(),
            lock_wait,
        )
        .await
        {
            Ok(sent) => sent,
            Err(e) => {
                // A lock that was granted at the last moment, or a BACKUP STAGE left at
                // START, must not outlive us: unlock, and if that fails close.
                if lock_conn.query_drop(method.unlock_sql()).await.is_err() {
                    drop(lock_conn);
                }
                return Err(match e {
                    Error::LockTimeout {
                        server, budget_ms, ..
                    } => Error::LockTimeout {
                        server,
                        method: method_name(method),
                        budget_ms,
                    },
                    e => e,
                });
            }
        };
        let locked_at = Instant::now();
        // Hold time counts from the blocking statement, not from its answer:
        // that is how long writers may have waited.
        let locked_at_unix_us =
            unix_micros(SystemTime::now()) - micros(blocking_since.elapsed()) as i64;
        let lock = HeldLock {
            conn: Some(lock_conn),
            method,
            server: addr.into(),
            locked_at: blocking_since,
        };
        drop(watchdog);

        // Inside the lock: snapshots, then the position.
        let captured = capture(lock, &mut snaps, addr, &info).await?;
        let (lock, position) = captured;
        let timings = PrepareTimings {
            preflight_us,
            lock_wait_us: micros(locked_at - lock_started),
            capture_us: micros(locked_at.elapsed()),
            locked_at_unix_us,
        };
        Ok(PreparedCut {
            lock,
            snapshots: Snapshots { conns: snaps },
            position,
            info,
            timings,
        })
    }
}

/// Opens the snapshots and reads the position while `lock` is held; releases
/// the lock before returning an error.
async fn capture(
    mut lock: HeldLock,
    snaps: &mut [Conn],
    addr: &str,
    info: &ServerInfo,
) -> Result<(HeldLock, Position)> {
    let inner = async {
        try_join_all(
            snaps
                .iter_mut()
                .map(|c| c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")),
        )
        .await
        .on(addr, "start consistent snapshot")?;
        let conn = lock.conn.as_mut().expect("held lock has its connection");
        let status: Option<mysql_async::Row> = conn
            .query_first(info.binlog_status_sql())
            .await
            .on(addr, "read binlog position")?;
        let status = status.ok_or_else(|| Error::BinlogOff {
            server: addr.into(),
        })?;
        let binlog_file: String = status.get(0).unwrap_or_default();
        let binlog_pos: u64 = status.get(1).unwrap_or_default();
        let gtid_set: Option<String> = conn
            .query_first(info.gtid_sql())
            .await
            .on(addr, "read GTID position")?;
        Ok::<_, Error>(Position {
            binlog_file,
            binlog_pos,
            gtid_set: gtid_set.unwrap_or_default(),
        })
    };
    match inner.await {
        Ok(p) => Ok((lock, p)),
        Err(e) => {
            if let Err(unlock) = lock.release().await {
                tracing::warn!(server = addr, error = %unlock, "release after failed capture");
            }
            Err(e)
        }
    }
}

/// Runs `stmts` on `conn`; if they have not finished within `budget`, kills
/// the running one from `watchdog` (`KILL QUERY`) and reports a lock timeout.
/// Returns when the last statement was sent: from then on writers may be
/// blocked (FTWRL queues them while it waits; BLOCK_COMMIT blocks commits
/// before it flushes the binlog and returns).
async fn run_bounded(
    conn: &mut Conn,
    watchdog: &mut Conn,
    addr: &str,
    stmts: &[&str],
    budget: Duration,
) -> Result<Instant> {
    let id = conn.id();
    let work = async {
        let mut last_sent = Instant::now();
        for s in stmts {
            last_sent = Instant::now();
            conn.query_drop(*s).await?;
        }
        Ok::<_, mysql_async::Error>(last_sent)
    };
    tokio::pin!(work);
    let timeout = |server: &str| Error::LockTimeout {
        server: server.into(),
        method: "lock",
        budget_ms: budget.as_millis() as u64,
    };
    tokio::select! {
        r = &mut work => match r {
            Ok(sent) => Ok(sent),
            // 1205: lock_wait_timeout, our backstop.
            Err(mysql_async::Error::Server(e)) if e.code == 1205 => Err(timeout(addr)),
            Err(e) => Err(Error::mysql(addr, stmts.join("; "), e)),
        },
        _ = tokio::time::sleep(budget) => {
            tracing::warn!(server = addr, thread = id, budget_ms = budget.as_millis() as u64, "lock not granted in time; killing our lock statement");
            watchdog.query_drop(format!("KILL QUERY {id}")).await.on(addr, "kill our queued lock statement")?;
            // Wait for the killed statement to return so the connection is usable.
            let _ = work.await;
            Err(timeout(addr))
        }
    }
}

/// (thread id, user, command, elapsed ms, statement) from the processlist.
type RunningStatement = (u64, Option<String>, String, u64, Option<Vec<u8>>);

/// Refuses if a statement that would make the lock queue has run longer
/// than `budget`.
async fn preflight(conn: &mut Conn, addr: &str, info: &ServerInfo, budget: Duration) -> Result<()> {
    let rows: Vec<RunningStatement> = conn
        .query(info.running_statements_sql())
        .await
        .on(addr, "list running statements (pre-flight)")?;
    for (id, user, _command, elapsed_ms, stmt) in rows {
        if elapsed_ms < budget.as_millis() as u64 {
            continue;
        }
        let stmt = String::from_utf8_lossy(&stmt.unwrap_or_default()).into_owned();
        let Some(kind) = blocking_kind(&stmt, info.readers_block_lock()) else {
            continue;
        };
        let shown: String = stmt.chars().take(200).collect();
        return Err(Error::LongStatement {
            server: addr.into(),
            thread_id: id,
            user: user.unwrap_or_default(),
            kind,
            seconds: elapsed_ms as f64 / 1000.0,
            budget_ms: budget.as_millis() as u64,
            statement: shown,
        });
    }
    Ok(())
}

/// Classifies a running statement by whether the lock would queue behind it.
pub fn blocking_kind(stmt: &str, readers_block: bool) -> Option<&'static str> {
    let first = first_keyword(stmt).to_ascii_uppercase();
    match first.as_str() {
        "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD" | "CALL" => Some("write statement"),
        "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "RENAME" | "OPTIMIZE" | "REPAIR" | "ANALYZE" => {
            Some("DDL statement")
        }
        "FLUSH" | "LOCK" | "BACKUP" => Some("lock statement"),
        "SELECT" | "WITH" if readers_block => Some("query"),
        _ => None,
    }
}

/// The first keyword of a statement, skipping whitespace, `( ` and comments.
fn first_keyword(stmt: &str) -> &str {
    let mut s = stmt;
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else if s.starts_with("--") || s.starts_with('#') {
            s = s.split_once('\n').map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    let end = s
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    &s[..end]
}

fn method_name(m: LockMethod) -> &'static str {
    match m {
        LockMethod::BackupStage => "BACKUP STAGE BLOCK_COMMIT",
        LockMethod::Ftwrl | LockMethod::Auto => "FLUSH TABLES WITH READ LOCK",
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

pub(crate) fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statements() {
        assert_eq!(
            blocking_kind("INSERT INTO t SELECT SLEEP(5)", false),
            Some("write statement")
        );
        assert_eq!(
            blocking_kind("  /* app */ update t set a=1", false),
            Some("write statement")
        );
        assert_eq!(
            blocking_kind("-- x\nALTER TABLE t ADD c INT", false),
            Some("DDL statement")
        );
        assert_eq!(blocking_kind("(SELECT 1) UNION (SELECT 2)", false), None);
        assert_eq!(blocking_kind("SELECT SLEEP(100)", true), Some("query"));
        assert_eq!(
            blocking_kind("FLUSH TABLES WITH READ LOCK", false),
            Some("lock statement")
        );
        assert_eq!(blocking_kind("SHOW PROCESSLIST", true), None);
        assert_eq!(blocking_kind("", true), None);
    }
}
