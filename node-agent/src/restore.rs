//! Loading a snapshot into a server, from any sink.
//!
//! Order: verify every checksum (nothing is touched before this passes; a
//! copy in a remote sink is read twice, once to verify and once to load),
//! refuse a non-empty target unless forced, create databases, routines and
//! tables (large InnoDB tables without their secondary indexes), load the
//! data files in parallel, add the deferred indexes, create views, triggers
//! and events, compare row counts, and set the GTID position.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::error::{Error, MysqlContext, Result};
use crate::flavour::ServerInfo;
use crate::format::manifest::{Manifest, Table};
use crate::format::sqlfile;
use crate::mysql::{Server, ident};
use crate::progress::Progress;
use crate::schema;
use crate::sink::artifact::Artifact;

/// Tables with at least this many rows get their secondary indexes built
/// after the data (one sorted build instead of random inserts).
const DEFER_INDEX_ROWS: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub threads: usize,
    /// Load into a server that already has user databases; the backup's
    /// databases are dropped and recreated.
    pub force: bool,
    /// Write the load to the target's binlog (off by default: a restore is
    /// usually the start of a new server, not a change to replicate).
    pub binlog: bool,
    /// Allow `RESET MASTER` on a MySQL 5.7 target with GTIDs (the only way
    /// to set its `gtid_purged`; it erases the target's binary logs).
    pub allow_reset_master: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 4,
            force: false,
            binlog: false,
            allow_reset_master: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadReport {
    pub server: String,
    pub backup_id: String,
    pub source_server: String,
    pub databases: usize,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    /// The GTID position the target now starts replication from, if set.
    pub gtid_slave_pos: Option<String>,
    pub warnings: Vec<String>,
    /// "logical" or "physical".
    pub kind: &'static str,
    /// Physical: the datadir written, InnoDB recovery's time and the
    /// recovered gtid_binlog_pos.
    pub datadir: String,
    pub recovery_ms: u64,
    pub gtid_binlog_pos: String,
    /// File sets restored, `name -> path`.
    pub file_sets: Vec<String>,
}

/// Checks every file of the artifact against its manifest, with `threads`
/// readers. Returns the manifest and its sha256.
pub async fn verify(
    from: &Artifact,
    threads: usize,
    progress: Arc<Progress>,
) -> Result<(Manifest, String)> {
    let (manifest, sha256) = from.manifest().await?;
    progress.set_tables_total(manifest.totals.tables);
    let queue = Arc::new(Mutex::new(
        manifest.files.iter().cloned().collect::<VecDeque<_>>(),
    ));
    let workers = (0..threads.max(1)).map(|_| {
        let queue = queue.clone();
        let from = from.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                let Some(entry) = queue.lock().expect("queue lock").pop_front() else {
                    return Ok(());
                };
                if let Err(e) = from.verify_file(&entry).await {
                    queue.lock().expect("queue lock").clear();
                    return Err(e);
                }
                progress.add_bytes(entry.size);
            }
        })
    });
    for r in futures::future::join_all(workers).await {
        r.map_err(|e| Error::Cancelled(format!("checksum worker stopped: {e}")))??;
    }
    Ok((manifest, sha256))
}

/// Loads the snapshot `from` into `server`.
pub async fn load(
    server: &Server,
    from: &Artifact,
    opts: &LoadOptions,
    progress: Arc<Progress>,
) -> Result<LoadReport> {
    let started = Instant::now();
    let addr = server.address().to_string();
    let threads = opts.threads.max(1);

    let (manifest, _) = verify(from, threads, progress.clone()).await?;
    if manifest.physical.is_some() {
        return Err(Error::BadBackup {
            path: from.describe().into(),
            reason: format!(
                "backup {} of server {} is physical: write it into a datadir (--datadir SERVER=PATH), it cannot be loaded into a running server",
                manifest.backup_id, manifest.server.name
            ),
        });
    }
    let mut control = server.connect("connect for restore").await?;
    let info = ServerInfo::detect(&mut control, &addr).await?;
    let gtid = manifest.position.gtid_set.trim();
    if !gtid.is_empty()
        && info.flavour == manifest.server.info.flavour
        && info.gtid_needs_reset_master()
        && !opts.allow_reset_master
    {
        return Err(Error::Config(format!(
            "target {addr} is MySQL {} with GTIDs: setting its gtid_purged needs RESET MASTER, which erases its binary logs (replicas of it lose their position); pass --allow-reset-master to do it, nothing was changed",
            info.version
        )));
    }
    let existing = schema::list_databases(&mut control, &addr).await?;
    if !existing.is_empty() && !opts.force {
        return Err(Error::TargetNotEmpty {
            server: addr,
            holds: format!("database(s) {}", existing.join(", ")),
        });
    }
    let session = session_sql(&manifest, opts.binlog);
    for stmt in &session {
        control
            .query_drop(stmt.as_str())
            .await
            .on(&addr, "set up restore session")?;
    }
    if opts.force {
        for db in &manifest.databases {
            if existing.contains(&db.name) {
                tracing::warn!(server = %addr, database = %db.name, "--force: dropping existing database");
                control
                    .query_drop(format!("DROP DATABASE {}", ident(&db.name)))
                    .await
                    .on(&addr, &format!("drop existing database {}", db.name))?;
            }
        }
    }

    // Schema before data: databases, routines, tables.
    let mut deferred: Vec<(String, String, Vec<String>)> = Vec::new();
    for db in &manifest.databases {
        let tables: HashMap<&str, &Table> =
            db.tables.iter().map(|t| (t.name.as_str(), t)).collect();
        for stmt in read_statements(from, &db.schema_file).await? {
            let stmt = match create_table_name(&stmt).and_then(|n| tables.get(n.as_str())) {
                Some(t) if defer_indexes(t) => {
                    let (create, indexes) = split_secondary_indexes(&stmt);
                    if !indexes.is_empty() {
                        deferred.push((db.name.clone(), t.name.clone(), indexes));
                    }
                    create
                }
                _ => stmt,
            };
            control
                .query_drop(stmt.as_str())
                .await
                .on(&addr, &format!("run {} of backup", db.schema_file))?;
        }
        if let Some(f) = &db.routines_file {
            run_file(&mut control, &addr, from, f).await?;
        }
        // Restore the session: schema files change sql_mode and character sets.
        for stmt in &session {
            control
                .query_drop(stmt.as_str())
                .await
                .on(&addr, "set up restore session")?;
        }
    }

    // Data.
    let mut jobs: Vec<LoadJob> = Vec::new();
    for db in &manifest.databases {
        for t in &db.tables {
            for c in &t.chunks {
                let size = manifest
                    .files
                    .iter()
                    .find(|f| f.path == c.file)
                    .map_or(0, |f| f.size);
                jobs.push(LoadJob {
                    table: format!("{}.{}", db.name, t.name),
                    file: c.file.clone(),
                    rows: c.rows,
                    size,
                    sql: t
                        .load_statement(&c.file)
                        .map_err(|reason| Error::BadBackup {
                            path: from.describe().into(),
                            reason: format!("manifest: database {}: {reason}", db.name),
                        })?,
                });
            }
        }
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.size));
    let mut chunks_left: HashMap<String, usize> = HashMap::new();
    for j in &jobs {
        *chunks_left.entry(j.table.clone()).or_default() += 1;
    }
    let chunks_left = Arc::new(Mutex::new(chunks_left));
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let mut workers = Vec::new();
    for _ in 0..threads {
        let mut conn = server.connect("open load connection").await?;
        for stmt in &session {
            conn.query_drop(stmt.as_str())
                .await
                .on(&addr, "set up load session")?;
        }
        let (queue, left, progress, addr, from) = (
            queue.clone(),
            chunks_left.clone(),
            progress.clone(),
            addr.clone(),
            from.clone(),
        );
        workers.push(tokio::spawn(async move {
            load_worker(conn, &addr, &from, queue, left, progress).await
        }));
    }
    for r in futures::future::join_all(workers).await {
        r.map_err(|e| Error::Cancelled(format!("load worker stopped: {e}")))??;
    }

    // Deferred secondary indexes, one table per connection at a time.
    let builders = threads.min(deferred.len());
    let queue = Arc::new(Mutex::new(VecDeque::from(deferred)));
    let mut workers = Vec::new();
    for _ in 0..builders {
        let mut conn = server.connect("open index-build connection").await?;
        for stmt in &session {
            conn.query_drop(stmt.as_str())
                .await
                .on(&addr, "set up index-build session")?;
        }
        let (queue, addr) = (queue.clone(), addr.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some((db, table, indexes)) = queue.lock().expect("queue lock").pop_front()
                else {
                    return Ok::<_, Error>(());
                };
                let adds: Vec<String> = indexes.iter().map(|i| format!("ADD {i}")).collect();
                conn.query_drop(format!(
                    "ALTER TABLE {}.{} {}",
                    ident(&db),
                    ident(&table),
                    adds.join(", ")
                ))
                .await
                .on(&addr, &format!("build secondary indexes of {db}.{table}"))?;
            }
        }));
    }
    for r in futures::future::join_all(workers).await {
        r.map_err(|e| Error::Cancelled(format!("index worker stopped: {e}")))??;
    }

    // Objects after data.
    for db in &manifest.databases {
        if let Some(f) = &db.views_file {
            create_views(&mut control, &addr, from, f).await?;
        }
        for f in [&db.triggers_file, &db.events_file].into_iter().flatten() {
            run_file(&mut control, &addr, from, f).await?;
        }
    }
    for stmt in &session {
        control
            .query_drop(stmt.as_str())
            .await
            .on(&addr, "set up restore session")?;
    }

    // Row counts.
    for db in &manifest.databases {
        for t in &db.tables {
            let n: Option<u64> = control
                .query_first(format!(
                    "SELECT COUNT(*) FROM {}.{}",
                    ident(&db.name),
                    ident(&t.name)
                ))
                .await
                .on(&addr, &format!("count rows of {}.{}", db.name, t.name))?;
            let n = n.unwrap_or(0);
            if n != t.rows {
                return Err(Error::RowCount {
                    server: addr,
                    table: format!("{}.{}", db.name, t.name),
                    expected: t.rows,
                    actual: n,
                });
            }
        }
    }

    // Where replication continues from.
    let gtid = manifest.position.gtid_set.trim().to_string();
    let mut gtid_slave_pos = None;
    if !gtid.is_empty() && info.flavour == manifest.server.info.flavour {
        for stmt in info.restore_gtid_sql(&gtid) {
            control
                .query_drop(stmt.as_str())
                .await
                .on(&addr, "set the replication GTID position")?;
        }
        gtid_slave_pos = Some(gtid);
    }
    let _ = control.disconnect().await;

    Ok(LoadReport {
        server: addr,
        backup_id: manifest.backup_id.clone(),
        source_server: format!("{} ({})", manifest.server.name, manifest.server.address),
        databases: manifest.databases.len(),
        tables: manifest.databases.iter().map(|d| d.tables.len()).sum(),
        rows: manifest.totals.rows,
        bytes: manifest.totals.bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        gtid_slave_pos,
        warnings: manifest.warnings.clone(),
        kind: "logical",
        ..LoadReport::default()
    })
}

/// The restore session: the manifest's load settings, without binlogging
/// unless asked.
fn session_sql(manifest: &Manifest, binlog: bool) -> Vec<String> {
    let mut s = manifest.load_session.clone();
    if !binlog {
        s.push("SET SESSION sql_log_bin = 0".into());
    }
    s
}

#[derive(Debug)]
struct LoadJob {
    table: String,
    file: String,
    rows: u64,
    size: u64,
    sql: String,
}

/// How often a chunk rolled back by a deadlock or lock wait timeout is
/// loaded before the restore fails.
const LOAD_ATTEMPTS: u32 = 5;

async fn load_worker(
    mut conn: Conn,
    addr: &str,
    from: &Artifact,
    queue: Arc<Mutex<VecDeque<LoadJob>>>,
    chunks_left: Arc<Mutex<HashMap<String, usize>>>,
    progress: Arc<Progress>,
) -> Result<()> {
    loop {
        let Some(job) = queue.lock().expect("queue lock").pop_front() else {
            let _ = conn.disconnect().await;
            return Ok(());
        };
        let path = format!("{} ({})", job.file, from.describe());
        let mut attempt = 1;
        let result = loop {
            let stream = from.read(&job.file).await?;
            conn.set_infile_handler(infile(std::sync::Mutex::new(stream), path.clone()));
            match conn.query_drop(job.sql.as_str()).await {
                // A deadlock with another chunk of the same table (or a
                // lock wait timeout) rolled this chunk's statement back
                // whole: load it again.
                Err(mysql_async::Error::Server(e))
                    if (e.code == 1213 || e.code == 1205) && attempt < LOAD_ATTEMPTS =>
                {
                    tracing::warn!(server = addr, file = %job.file, table = %job.table, attempt, error = %e.message, "chunk rolled back; loading it again");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt as u64))
                        .await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        if let Err(e) = result {
            queue.lock().expect("queue lock").clear();
            return Err(Error::mysql(
                addr,
                format!("load {} into {}", job.file, job.table),
                e,
            ));
        }
        let loaded = conn.affected_rows();
        if conn.get_warnings() > 0 {
            let warnings: Vec<(String, u32, String)> = conn
                .query("SHOW WARNINGS LIMIT 5")
                .await
                .on(addr, "read load warnings")?;
            let serious: Vec<String> = warnings
                .into_iter()
                .filter(|(level, _, _)| level != "Note")
                .map(|(level, code, msg)| format!("{level} {code}: {msg}"))
                .collect();
            if !serious.is_empty() {
                queue.lock().expect("queue lock").clear();
                return Err(Error::BadBackup {
                    path: path.clone().into(),
                    reason: format!(
                        "loading into {} on {addr} raised warnings: {}",
                        job.table,
                        serious.join("; ")
                    ),
                });
            }
        }
        if loaded != job.rows {
            queue.lock().expect("queue lock").clear();
            return Err(Error::RowCount {
                server: addr.into(),
                table: format!("{} (file {})", job.table, job.file),
                expected: job.rows,
                actual: loaded,
            });
        }
        progress.add_rows(loaded);
        progress.add_bytes(job.size);
        let mut left = chunks_left.lock().expect("chunks lock");
        if let Some(n) = left.get_mut(&job.table) {
            *n -= 1;
            if *n == 0 {
                progress.table_done();
            }
        }
    }
}

/// A LOCAL INFILE source: the object, decompressed on a blocking thread.
async fn infile(
    stream: std::sync::Mutex<crate::sink::ByteStream>,
    path: String,
) -> mysql_async::Result<mysql_async::InfileData> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let reader =
        crate::sink::blocking_reader(stream.into_inner().unwrap_or_else(|p| p.into_inner()));
    tokio::task::spawn_blocking(move || {
        let run = || -> std::io::Result<()> {
            let mut dec = zstd::Decoder::new(reader)?;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = read_full(&mut dec, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Ok(());
                }
            }
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), format!("{path}: {e}"))));
        }
    });
    let stream: mysql_async::InfileData = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(stream)
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The statements of a schema file, byte for byte.
async fn read_statements(from: &Artifact, rel: &str) -> Result<Vec<String>> {
    let bad = |reason: String| Error::BadBackup {
        path: format!("{rel} ({})", from.describe()).into(),
        reason,
    };
    let text = String::from_utf8(from.read_small(rel).await?)
        .map_err(|e| bad(format!("is not UTF-8: {e}")))?;
    sqlfile::split(&text).map_err(bad)
}

/// Runs every statement of a schema file in order.
async fn run_file(conn: &mut Conn, addr: &str, from: &Artifact, rel: &str) -> Result<()> {
    for stmt in read_statements(from, rel).await? {
        conn.query_drop(stmt.as_str())
            .await
            .on(addr, &format!("run {rel} of backup"))?;
    }
    Ok(())
}

/// Creates views; a view whose dependency does not exist yet is retried
/// after the others (the file is already in dependency order, so this only
/// matters for files written by hand).
async fn create_views(conn: &mut Conn, addr: &str, from: &Artifact, rel: &str) -> Result<()> {
    let mut pending = blocks(read_statements(from, rel).await?);
    loop {
        let mut failed = Vec::new();
        let mut last_err = None;
        let before = pending.len();
        for block in pending {
            let mut ok = true;
            for stmt in &block {
                if let Err(e) = conn.query_drop(stmt.as_str()).await {
                    // 1146: no such table; 1356: view references invalid objects.
                    let missing_dep = matches!(&e, mysql_async::Error::Server(s) if s.code == 1146 || s.code == 1356);
                    if !missing_dep {
                        return Err(Error::mysql(addr, format!("run {rel} of backup"), e));
                    }
                    last_err = Some(e);
                    ok = false;
                    break;
                }
            }
            if !ok {
                failed.push(block);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if failed.len() == before {
            let e = last_err.expect("a failed view has an error");
            return Err(Error::mysql(
                addr,
                format!("create views from {rel} (unresolved dependencies)"),
                e,
            ));
        }
        pending = failed;
    }
}

/// Groups statements so each block ends with one object's CREATE, preceded
/// by the SET/USE statements that set up its session.
fn blocks(stmts: Vec<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for s in stmts {
        let upper = s
            .trim_start()
            .get(..4)
            .map(|p| p.to_ascii_uppercase())
            .unwrap_or_default();
        let setup = upper.starts_with("SET ") || upper.starts_with("USE ");
        cur.push(s);
        if !setup {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    // Setup-only statements (like the file's USE) lead every block.
    let lead: Vec<String> = out
        .first()
        .map(|b| {
            b.iter()
                .take_while(|s| s.to_ascii_uppercase().starts_with("USE "))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    out.into_iter()
        .map(|b| {
            if b.first()
                .is_some_and(|s| s.to_ascii_uppercase().starts_with("USE "))
            {
                b
            } else {
                lead.iter().cloned().chain(b).collect()
            }
        })
        .collect()
}

fn defer_indexes(t: &Table) -> bool {
    t.rows >= DEFER_INDEX_ROWS && t.engine.eq_ignore_ascii_case("InnoDB") && !t.has_foreign_keys
}

/// The table name of a `CREATE TABLE `name` (` statement.
fn create_table_name(stmt: &str) -> Option<String> {
    let rest = stmt.strip_prefix("CREATE TABLE `")?;
    let mut name = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '`' {
            if chars.peek() == Some(&'`') {
                chars.next();
                name.push('`');
            } else {
                return Some(name);
            }
        } else {
            name.push(c);
        }
    }
    None
}

/// Splits `SHOW CREATE TABLE` output into the statement without secondary
/// indexes and the index definitions (`KEY ...`, `UNIQUE KEY ...`, ...).
pub fn split_secondary_indexes(create: &str) -> (String, Vec<String>) {
    let lines: Vec<&str> = create.lines().collect();
    let Some(close) = lines.iter().rposition(|l| l.starts_with(')')) else {
        return (create.to_string(), Vec::new());
    };
    if close == 0 {
        return (create.to_string(), Vec::new());
    }
    let mut body = Vec::new();
    let mut indexes = Vec::new();
    for l in &lines[1..close] {
        let item = l.trim().trim_end_matches(',');
        let is_secondary = ["KEY ", "UNIQUE KEY ", "FULLTEXT KEY ", "SPATIAL KEY "]
            .iter()
            .any(|p| item.starts_with(p));
        if is_secondary {
            indexes.push(item.to_string());
        } else {
            body.push(format!("  {item}"));
        }
    }
    if indexes.is_empty() {
        return (create.to_string(), indexes);
    }
    let mut out = String::from(lines[0]);
    out.push('\n');
    out.push_str(&body.join(",\n"));
    out.push('\n');
    out.push_str(&lines[close..].join("\n"));
    (out, indexes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `a` varchar(10) DEFAULT NULL,\n  `b` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `ua` (`a`),\n  KEY `kb` (`b`,`a`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

    #[test]
    fn secondary_indexes_move_out() {
        let (create, idx) = split_secondary_indexes(CREATE);
        assert_eq!(
            create,
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `a` varchar(10) DEFAULT NULL,\n  `b` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        );
        assert_eq!(idx, vec!["UNIQUE KEY `ua` (`a`)", "KEY `kb` (`b`,`a`)"]);
        let plain =
            "CREATE TABLE `p` (\n  `id` int(11) NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB";
        assert_eq!(split_secondary_indexes(plain), (plain.to_string(), vec![]));
    }

    #[test]
    fn table_names_and_blocks() {
        assert_eq!(create_table_name(CREATE).as_deref(), Some("t"));
        assert_eq!(
            create_table_name("CREATE TABLE `a``b` (x int)").as_deref(),
            Some("a`b")
        );
        assert_eq!(create_table_name("CREATE VIEW `v` AS select 1"), None);
        let b = blocks(vec![
            "USE `d`".into(),
            "SET SESSION sql_mode = ''".into(),
            "CREATE VIEW `a` AS select 1".into(),
            "SET SESSION sql_mode = 'x'".into(),
            "CREATE VIEW `b` AS select 2".into(),
        ]);
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[1][0], "USE `d`",
            "every block starts in the right database"
        );
        assert_eq!(
            b[1].last().map(String::as_str),
            Some("CREATE VIEW `b` AS select 2")
        );
    }
}
