//! The relay-log method: the archived binlogs become the relay logs of a
//! replication connection of our own on the target, and the target's SQL
//! thread applies them (about 17× faster than `mariadb-binlog | mariadb`
//! on small transactions).
//!
//! Steps: create the connection once to learn where and under which names
//! the server keeps its relay logs (and that this host can write there),
//! drop it again; copy the files under those names (the last one cut at the
//! stop position) and write the index; `CHANGE MASTER` with both the relay
//! and the master positions (only the relay ones crash MariaDB 10.11.19
//! when `slave_parallel_threads > 0`); `START SLAVE SQL_THREAD UNTIL` the
//! stop position; wait for the executed position with `MASTER_POS_WAIT`
//! and the status (an UNTIL at the very end of the available log never
//! stops the thread); `STOP SLAVE`; `RESET SLAVE
//! ALL`, which deletes the relay logs. The cleanup runs on errors too.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::Job;
use crate::error::{Error, IoContext, MysqlContext, Result};
use crate::mysql::literal;

/// The replication connection a replay uses, so that the target's own
/// (default or named) replication settings stay untouched.
pub const CONNECTION: &str = "lockstep_replay";
/// The master host the connection names; its IO thread never starts.
const FAKE_HOST: &str = "lockstep-replay.invalid";
/// How long one `MASTER_POS_WAIT` waits before the status (progress, an
/// error) is read. Reading `SHOW SLAVE STATUS` often slows the SQL thread
/// down (every 20 ms cost about a quarter of its speed), so the wait for
/// the stop position happens in the server.
const WAIT_SECONDS: f64 = 0.5;

/// Where the target keeps the connection's relay logs.
pub(super) struct Place {
    dir: PathBuf,
    /// File names without the `.NNNNNN` number.
    stem: String,
    /// What the server puts before a file name in its index (`./`).
    prefix: String,
    /// Owner of the server's relay logs (copies get it when we are root).
    owner: (u32, u32),
}

impl Place {
    fn file(&self, n: usize) -> String {
        format!("{}.{n:06}", self.stem)
    }

    fn index(&self) -> PathBuf {
        self.dir.join(format!("{}.index", self.stem))
    }

    /// Our relay files left in the directory.
    fn leftovers(&self) -> Vec<PathBuf> {
        let prefix = format!("{}.", self.stem);
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn stmt_connection() -> String {
    literal(CONNECTION)
}

/// The connection's `SHOW SLAVE STATUS` row, if the connection exists.
async fn status(conn: &mut Conn, addr: &str) -> Result<Option<Row>> {
    let rows: Vec<Row> = conn
        .query("SHOW ALL SLAVES STATUS")
        .await
        .on(addr, "read SHOW ALL SLAVES STATUS")?;
    Ok(rows
        .into_iter()
        .find(|r| text(r, "Connection_name") == CONNECTION))
}

fn text(row: &Row, column: &str) -> String {
    row.get_opt::<Option<String>, _>(column)
        .and_then(|r| r.ok())
        .flatten()
        .unwrap_or_default()
}

fn number(row: &Row, column: &str) -> u64 {
    text(row, column).trim().parse().unwrap_or(0)
}

async fn reset(conn: &mut Conn, addr: &str) -> Result<()> {
    conn.query_drop(format!("RESET SLAVE {} ALL", stmt_connection()))
        .await
        .on(
            addr,
            "drop the replay's replication connection (RESET SLAVE ALL)",
        )
}

/// Finds where the target keeps the connection's relay logs. The outer
/// error is the server's; the inner one says why this host cannot write
/// them (the caller falls back to the pipe or refuses).
pub(super) async fn prepare(
    conn: &mut Conn,
    addr: &str,
    first_file: &str,
) -> Result<std::result::Result<Place, String>> {
    if let Some(row) = status(conn, addr).await? {
        if text(&row, "Slave_SQL_Running") == "Yes" || text(&row, "Slave_IO_Running") == "Yes" {
            return Err(Error::Replay {
                server: addr.to_string(),
                file: text(&row, "Relay_Master_Log_File"),
                position: number(&row, "Exec_Master_Log_Pos"),
                reason: format!(
                    "replication connection '{CONNECTION}' is running: another replay is under way"
                ),
            });
        }
        tracing::info!(server = %addr, "dropping the replication connection a previous replay left");
        reset(conn, addr).await?;
    }
    conn.query_drop(format!(
        "CHANGE MASTER {} TO MASTER_HOST={}, MASTER_LOG_FILE={}, MASTER_LOG_POS=4",
        stmt_connection(),
        literal(FAKE_HOST),
        literal(first_file)
    ))
    .await
    .on(addr, "create the replay's replication connection")?;
    let found = locate(conn, addr).await;
    reset(conn, addr).await?;
    found
}

async fn locate(conn: &mut Conn, addr: &str) -> Result<std::result::Result<Place, String>> {
    let row = status(conn, addr).await?.ok_or_else(|| Error::Replay {
        server: addr.to_string(),
        file: String::new(),
        position: 0,
        reason: format!("CHANGE MASTER did not create connection '{CONNECTION}'"),
    })?;
    let relay_file = text(&row, "Relay_Log_File");
    let (datadir, basename): (String, Option<String>) = conn
        .query_first("SELECT @@datadir, @@relay_log_basename")
        .await
        .on(addr, "read the relay log location")?
        .unwrap_or_default();
    let relay_path = Path::new(&relay_file);
    let (dir, name) = match (relay_path.parent(), relay_path.file_name()) {
        (Some(p), Some(n)) if relay_path.is_absolute() => (p.to_path_buf(), n),
        (_, Some(n)) => {
            let dir = basename
                .as_deref()
                .and_then(|b| Path::new(b).parent())
                .map_or_else(|| PathBuf::from(&datadir), Path::to_path_buf);
            (dir, n)
        }
        _ => {
            return Ok(Err(format!(
                "the server names its relay log {relay_file:?}"
            )));
        }
    };
    let name = name.to_string_lossy().into_owned();
    let Some((stem, _)) = name.rsplit_once('.') else {
        return Ok(Err(format!("relay log name {name:?} has no number")));
    };
    let place = Place {
        dir: dir.clone(),
        stem: stem.to_string(),
        prefix: String::new(),
        owner: (0, 0),
    };
    let index = place.index();
    let Ok(listed) = std::fs::read_to_string(&index) else {
        return Ok(Err(format!(
            "its relay log index {} is not on this host (the server's datadir is {datadir})",
            index.display()
        )));
    };
    let Some(prefix) = listed
        .lines()
        .find_map(|l| l.strip_suffix(name.as_str()))
        .map(str::to_string)
    else {
        return Ok(Err(format!(
            "{} on this host does not list {name}: it is not the server's",
            index.display()
        )));
    };
    use std::os::unix::fs::MetadataExt;
    let owner = match std::fs::metadata(dir.join(&name)) {
        Ok(m) => (m.uid(), m.gid()),
        Err(e) => return Ok(Err(format!("{}: {e}", dir.join(&name).display()))),
    };
    let probe = dir.join(format!("{stem}.lockstep-probe"));
    if let Err(e) = std::fs::write(&probe, b"") {
        return Ok(Err(format!("cannot write in {}: {e}", dir.display())));
    }
    let _ = std::fs::remove_file(&probe);
    Ok(Ok(Place {
        prefix,
        owner,
        ..place
    }))
}

/// Copies the files into place, runs the SQL thread to the stop position,
/// and always cleans up.
pub(super) async fn run(conn: &mut Conn, place: Place, job: &Job<'_>) -> Result<()> {
    let result = apply(conn, &place, job).await;
    let cleanup = cleanup(conn, job.addr, &place).await;
    result?;
    cleanup
}

async fn apply(conn: &mut Conn, place: &Place, job: &Job<'_>) -> Result<()> {
    let addr = job.addr;
    let last = job.last();
    // Copy on a blocking thread.
    let mut copies = Vec::new();
    for (n, i) in (job.from.0..=last).enumerate() {
        let end = if i == last { Some(job.stop) } else { None };
        copies.push((job.files[i].clone(), place.dir.join(place.file(n + 1)), end));
    }
    let index = place.index();
    let lines: String = (1..=copies.len())
        .map(|n| format!("{}{}\n", place.prefix, place.file(n)))
        .collect();
    let owner = place.owner;
    tokio::task::spawn_blocking(move || -> Result<()> {
        for (from, to, end) in &copies {
            copy(from, to, *end, owner)?;
        }
        write_file(&index, lines.as_bytes(), owner)
    })
    .await
    .map_err(|e| Error::Cancelled(format!("relay log copy stopped: {e}")))??;
    tracing::debug!(server = %addr, files = last + 1 - job.from.0, "relay logs in place");

    let first = &job.scanned.names[job.from.0];
    let last_name = &job.scanned.names[last];
    conn.query_drop(format!(
        "CHANGE MASTER {} TO MASTER_HOST={}, MASTER_LOG_FILE={}, MASTER_LOG_POS={}, RELAY_LOG_FILE={}, RELAY_LOG_POS={}",
        stmt_connection(),
        literal(FAKE_HOST),
        literal(first),
        job.from.1,
        literal(&place.file(1)),
        job.from.1
    ))
    .await
    .on(addr, "point the replay's connection at the relay logs")?;
    conn.query_drop(format!(
        "START SLAVE {} SQL_THREAD UNTIL MASTER_LOG_FILE={}, MASTER_LOG_POS={}",
        stmt_connection(),
        literal(last_name),
        job.stop
    ))
    .await
    .on(addr, "start the SQL thread")?;
    let started = std::time::Instant::now();

    let mut reported = 0u64;
    let mut idle_looks = 0;
    loop {
        let row = status(conn, addr).await?.ok_or_else(|| Error::Replay {
            server: addr.to_string(),
            file: first.clone(),
            position: job.from.1,
            reason: format!("connection '{CONNECTION}' vanished while the SQL thread ran"),
        })?;
        let file = text(&row, "Relay_Master_Log_File");
        let pos = number(&row, "Exec_Master_Log_Pos");
        if let Some(i) = job.scanned.names.iter().position(|n| *n == file) {
            let applied = job.applied(i, pos);
            if applied > reported {
                job.progress.add_bytes(applied - reported);
                reported = applied;
            }
        }
        if file == *last_name && pos >= job.stop {
            tracing::debug!(server = %addr, elapsed = ?started.elapsed(), "the SQL thread reached the stop position");
            break;
        }
        // A thread that has read every relay log without reaching the stop
        // would wait forever (events it skipped, a file that is not what
        // the scan saw): after three looks in a row, give up.
        if text(&row, "Slave_SQL_Running_State").contains("read all relay log") {
            idle_looks += 1;
        } else {
            idle_looks = 0;
        }
        if idle_looks >= 3 {
            return Err(Error::Replay {
                server: addr.to_string(),
                file,
                position: pos,
                reason: format!(
                    "the SQL thread read every relay log but executed only up to here, not to the stop position {last_name}:{}",
                    job.stop
                ),
            });
        }
        if text(&row, "Slave_SQL_Running") != "Yes" {
            let errno = number(&row, "Last_SQL_Errno");
            let reason = if errno != 0 {
                format!(
                    "the SQL thread stopped with error {errno}: {}",
                    text(&row, "Last_SQL_Error")
                )
            } else {
                format!(
                    "the SQL thread stopped before the stop position {last_name}:{}",
                    job.stop
                )
            };
            return Err(Error::Replay {
                server: addr.to_string(),
                file,
                position: pos,
                reason,
            });
        }
        // Returns at the stop position, after the timeout (-1), or at once
        // (NULL) when the thread is not running; the status tells which.
        let _: Option<Option<i64>> = conn
            .query_first(format!(
                "SELECT MASTER_POS_WAIT({}, {}, {WAIT_SECONDS}, {})",
                literal(last_name),
                job.stop,
                stmt_connection()
            ))
            .await
            .on(addr, "wait for the SQL thread")?;
    }
    Ok(())
}

/// Stops the thread, drops the connection (the server deletes the relay
/// logs it lists) and removes any copy left.
async fn cleanup(conn: &mut Conn, addr: &str, place: &Place) -> Result<()> {
    let stopped = conn
        .query_drop(format!("STOP SLAVE {}", stmt_connection()))
        .await
        .on(addr, "stop the replay's SQL thread");
    let reset = reset(conn, addr).await;
    for path in place.leftovers() {
        let _ = std::fs::remove_file(path);
    }
    stopped.and(reset)
}

/// Copies `from` to `to` (up to `end` bytes), owned like the server's files.
fn copy(from: &Path, to: &Path, end: Option<u64>, owner: (u32, u32)) -> Result<()> {
    let src = std::fs::File::open(from).on_file(from, "open binlog file")?;
    let mut dst = new_file(to, owner)?;
    let mut reader = src.take(end.unwrap_or(u64::MAX));
    std::io::copy(&mut reader, &mut dst).on_file(to, "copy a binlog into the relay logs")?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], owner: (u32, u32)) -> Result<()> {
    new_file(path, owner)?
        .write_all(bytes)
        .on_file(path, "write the relay log index")
}

fn new_file(path: &Path, owner: (u32, u32)) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o660)
        .open(path)
        .on_file(path, "create a relay log")?;
    // Running as root: hand the file to the server's user. Otherwise the
    // file is ours and its group mode has to do.
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().on_file(path, "create a relay log")?;
    if (meta.uid(), meta.gid()) != owner
        && let Err(e) = std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
    {
        tracing::debug!(file = %path.display(), "cannot give the relay log to the server's user: {e}");
    }
    Ok(file)
}
