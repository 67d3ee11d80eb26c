//! Phase two on one server: stream the snapshot into an artifact in a sink.
//!
//! Schema first (from snapshot connection 0), then the data: every table is
//! cut into primary-key ranges and the K snapshot connections take ranges
//! from one queue, biggest first. Each range becomes one zstd-compressed
//! `LOAD DATA` file, compressed and hashed on a blocking thread while the
//! next rows arrive, and streamed to the sink as it is written (nothing is
//! staged on the host). The manifest is written last; a dump that fails
//! removes what it wrote, so a location without a manifest is never a backup.
//!
//! A [`DdlGuard`] watches the server for the whole dump: DDL waiting on a
//! table the snapshots hold makes the dump give way (see [`crate::ddl_guard`]).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use crate::cut::{Position, Snapshots};
use crate::ddl_guard::{DdlGuard, DdlOptions, Touched};
use crate::error::{Error, MysqlContext, Result};
use crate::flavour::ServerInfo;
use crate::format::files;
use crate::format::manifest::{
    self, Chunk, Database, FileEntry, LockRecord, Manifest, ServerRecord, Table, Totals,
};
use crate::format::{fs_name, sqlfile, tsv};
use crate::mysql::{DATA_SESSION, Server, ident};
use crate::progress::Progress;
use crate::schema::{self, TableDef};
use crate::sink::artifact::{Artifact, BlockingWriter, ZstdObject};

/// Rows buffered before a block is handed to the compressor.
const BLOCK_BYTES: usize = 1 << 20;
/// How much a writer compresses between checks for a cancelled dump.
const CANCEL_CHECK_BYTES: usize = 64 * 1024;
/// How long the workers get to stop after the dump gave way to DDL (their
/// connections were killed, so they fail at their next read).
const UNWIND: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// zstd level of data files.
    pub zstd_level: i32,
    /// Target rows per data file for tables with an integer primary key.
    pub chunk_rows: u64,
    /// What the dump does when DDL waits for a table it holds.
    pub ddl: DdlOptions,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            zstd_level: 1,
            chunk_rows: 250_000,
            ddl: DdlOptions::default(),
        }
    }
}

/// Everything the manifest says about where the data came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub backup_id: String,
    pub server_name: String,
    pub address: String,
    pub info: ServerInfo,
    pub position: Position,
    pub lock: LockRecord,
    pub started_at: String,
    /// The cluster and every server of the cut (empty outside a
    /// coordinated backup).
    pub cluster: String,
    pub cut_servers: Vec<String>,
    /// Application file sets captured at the cut, stored beside the data.
    pub file_sets: Vec<crate::physical::files::Captured>,
}

#[derive(Debug, Clone)]
pub struct DumpResult {
    /// The artifact's location in its sink (its key prefix).
    pub location: String,
    /// The sink, as its errors name it.
    pub sink: String,
    pub manifest: Manifest,
    pub manifest_sha256: String,
}

/// Dumps the snapshots of `server` into `out`, which must hold nothing yet
/// (sealed first if it is to be encrypted).
pub async fn dump(
    origin: Origin,
    snapshots: Snapshots,
    server: &Server,
    mut out: Artifact,
    opts: &DumpOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<DumpResult> {
    out.claim().await?;
    let out = &out;
    let result = guarded(origin, snapshots, server, out, opts, progress, cancel).await;
    if result.is_err() {
        out.discard().await;
    }
    result
}

/// Runs the dump beside a [`DdlGuard`]. When the guard finds DDL the dump
/// must give way to, the snapshot connections are killed (releasing their
/// tables at once), the workers stop, and the dump fails naming the DDL.
async fn guarded(
    origin: Origin,
    snapshots: Snapshots,
    server: &Server,
    out: &Artifact,
    opts: &DumpOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<DumpResult> {
    let backup_id = origin.backup_id.clone();
    let touched = Touched::default();
    let ids: Vec<u32> = snapshots.conns.iter().map(|c| c.id()).collect();
    let mut guard = DdlGuard::open(server, opts.ddl, ids, touched.clone()).await?;
    let stop = cancel.child_token();
    let work = dump_into(
        origin,
        snapshots,
        out,
        opts,
        progress,
        stop.clone(),
        touched,
    );
    tokio::pin!(work);
    let waiter = tokio::select! {
        r = &mut work => {
            guard.close().await;
            return r;
        }
        w = guard.watch() => w,
    };
    stop.cancel();
    guard.release_snapshots().await;
    let err = guard.yield_error(&backup_id, waiter);
    tracing::warn!(error = %err, "dump gave way to DDL");
    if tokio::time::timeout(UNWIND, &mut work).await.is_err() {
        tracing::warn!(backup = %backup_id, "dump workers still running {UNWIND:?} after their connections were killed");
    }
    guard.close().await;
    Err(err)
}

async fn dump_into(
    origin: Origin,
    snapshots: Snapshots,
    out: &Artifact,
    opts: &DumpOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    touched: Touched,
) -> Result<DumpResult> {
    let addr = origin.address.clone();
    let mut conns = snapshots.conns;
    let first = conns
        .first_mut()
        .ok_or_else(|| Error::Config("a dump needs at least one snapshot connection".into()))?;

    // Schema.
    let mut files: Vec<FileEntry> = Vec::new();
    let mut warnings = Vec::new();
    let mut dbs = Vec::new();
    for db in schema::list_databases(first, &addr).await? {
        let s = schema::read_database(first, &addr, &db).await?;
        warnings.extend(s.warnings.iter().cloned());
        dbs.push(s);
    }
    let mut databases = Vec::new();
    let mut jobs = Vec::new();
    // The lowest manifest version whose readers read every schema file right.
    let mut version = manifest::MIN_VERSION;
    for s in &dbs {
        let d = fs_name(&s.name);
        let mut written = Vec::new();
        for (name, text) in [
            ("schema.sql", Some(&s.schema_sql)),
            ("routines.sql", s.routines_sql.as_ref()),
            ("views.sql", s.views_sql.as_ref()),
            ("triggers.sql", s.triggers_sql.as_ref()),
            ("events.sql", s.events_sql.as_ref()),
        ] {
            let Some(t) = text else {
                written.push(None);
                continue;
            };
            let rel = format!("{d}/{name}");
            files.push(out.put(&rel, t.as_bytes().to_vec()).await?);
            version = version.max(sqlfile::version_needed(t));
            written.push(Some(rel));
        }
        let [
            schema_file,
            routines_file,
            views_file,
            triggers_file,
            events_file,
        ]: [Option<String>; 5] = written.try_into().expect("five schema files");
        let schema_file = schema_file.expect("schema is always written");
        let mut tables = Vec::new();
        for t in &s.tables {
            let ranges = plan_ranges(first, &addr, &s.name, t, opts.chunk_rows, &touched).await?;
            let chunks: Vec<Chunk> = ranges
                .iter()
                .enumerate()
                .map(|(i, range)| Chunk {
                    file: format!("{d}/{}.{i:05}.tsv.zst", fs_name(&t.name)),
                    rows: 0,
                    range: range.clone(),
                })
                .collect();
            for (i, c) in chunks.iter().enumerate() {
                jobs.push(ChunkJob {
                    db: s.name.clone(),
                    table: t.name.clone(),
                    db_index: databases.len(),
                    table_index: tables.len(),
                    chunk_index: i,
                    select: select_sql(&s.name, t, &c.range),
                    file: c.file.clone(),
                    weight: t.estimated_rows / chunks.len() as u64,
                });
            }
            tables.push(Table {
                name: t.name.clone(),
                engine: t.engine.clone(),
                rows: 0,
                columns: t.columns.clone(),
                load_sql: load_sql(&s.name, t),
                has_foreign_keys: t.has_foreign_keys(),
                chunks,
            });
        }
        databases.push(Database {
            name: s.name.clone(),
            schema_file,
            routines_file,
            views_file,
            triggers_file,
            events_file,
            tables,
            views: s.views.clone(),
            routines: s.routines.clone(),
            triggers: s.triggers.clone(),
            events: s.events.clone(),
        });
    }
    progress.set_tables_total(databases.iter().map(|d| d.tables.len() as u64).sum());

    // Data: biggest ranges first, so the last one to finish is small.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.weight));
    let remaining: Vec<usize> = databases
        .iter()
        .flat_map(|d| d.tables.iter().map(|t| t.chunks.len()))
        .collect();
    let shared = Arc::new(Shared {
        queue: Mutex::new(jobs.into()),
        remaining: Mutex::new(remaining),
        offsets: databases
            .iter()
            .scan(0, |acc, d| {
                let o = *acc;
                *acc += d.tables.len();
                Some(o)
            })
            .collect(),
        touched,
    });
    let workers = conns.into_iter().map(|conn| {
        let shared = shared.clone();
        let progress = progress.clone();
        let cancel = cancel.clone();
        let out = out.clone();
        let addr = addr.clone();
        let level = opts.zstd_level;
        tokio::spawn(
            async move { worker(conn, &addr, &out, level, shared, progress, cancel).await },
        )
    });
    let mut results = Vec::new();
    let mut first_err = None;
    for w in futures::future::join_all(workers).await {
        match w {
            Ok(Ok(done)) => results.extend(done),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(join) => {
                first_err.get_or_insert(Error::Cancelled(format!("dump worker stopped: {join}")));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    for (job, rows, entry) in results {
        let t = &mut databases[job.db_index].tables[job.table_index];
        t.rows += rows;
        t.chunks[job.chunk_index].rows = rows;
        files.push(entry);
    }

    let (set_files, file_sets) = crate::physical::backup::store_file_sets(
        out,
        &origin.file_sets,
        opts.zstd_level,
        progress.clone(),
        &cancel,
    )
    .await?;
    files.extend(set_files);
    let rows = databases
        .iter()
        .flat_map(|d| &d.tables)
        .map(|t| t.rows)
        .sum();
    for w in &warnings {
        tracing::warn!(server = %addr, "{w}");
    }
    seal(
        out,
        origin,
        Sealed {
            version,
            databases,
            files,
            rows,
            warnings,
            physical: None,
            file_sets,
        },
    )
    .await
}

/// What an artifact holds, for its manifest.
pub(crate) struct Sealed {
    pub version: u32,
    pub databases: Vec<manifest::Database>,
    pub files: Vec<FileEntry>,
    pub rows: u64,
    pub warnings: Vec<String>,
    pub physical: Option<crate::format::physical::Physical>,
    pub file_sets: Vec<crate::format::physical::FileSetRecord>,
}

/// Finishes an artifact whose files are all stored: writes SHA256SUMS and
/// then the manifest that lists them (its presence makes the artifact).
pub(crate) async fn seal(out: &Artifact, origin: Origin, what: Sealed) -> Result<DumpResult> {
    let Sealed {
        version,
        databases,
        mut files,
        rows,
        warnings,
        physical,
        file_sets,
    } = what;
    let version = if physical.is_some() || !file_sets.is_empty() {
        version.max(manifest::PHYSICAL_VERSION)
    } else {
        version
    };
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let totals = Totals {
        rows,
        bytes: files.iter().map(|f| f.size).sum(),
        files: files.len() as u64,
        tables: databases.iter().map(|d| d.tables.len() as u64).sum(),
    };
    let sums = files::sha256sums(&files);
    files.push(out.put("SHA256SUMS", sums.into_bytes()).await?);
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        version,
        backup_id: origin.backup_id,
        tool: format!("lockstep-agent {}", env!("CARGO_PKG_VERSION")),
        started_at: origin.started_at,
        completed_at: crate::now_rfc3339(),
        server: ServerRecord {
            name: origin.server_name,
            address: origin.address,
            info: origin.info,
        },
        position: origin.position,
        lock: origin.lock,
        load_session: load_session(),
        databases,
        files,
        totals,
        warnings,
        cluster: origin.cluster,
        cut_servers: origin.cut_servers,
        physical,
        file_sets,
    };
    // Every file is durable in the sink (its writer finished) before the
    // manifest that lists it is written.
    let entry = out.write_manifest(&manifest).await?;
    Ok(DumpResult {
        location: out.prefix().to_string(),
        sink: out.store().describe(),
        manifest,
        manifest_sha256: entry.sha256,
    })
}

/// Session settings the data files are loaded with; also in the manifest.
pub fn load_session() -> Vec<String> {
    let mut s: Vec<String> = DATA_SESSION.iter().map(|s| s.to_string()).collect();
    s.push("SET SESSION foreign_key_checks = 0, unique_checks = 0".into());
    s.push(
        "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'"
            .into(),
    );
    s
}

#[derive(Debug)]
struct ChunkJob {
    db: String,
    table: String,
    db_index: usize,
    table_index: usize,
    chunk_index: usize,
    select: String,
    file: String,
    weight: u64,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<ChunkJob>>,
    /// Chunks left per table (flattened over databases), to count finished tables.
    remaining: Mutex<Vec<usize>>,
    offsets: Vec<usize>,
    /// The tables each connection's transaction holds, for the DDL guard.
    touched: Touched,
}

type Done = (ChunkJob, u64, FileEntry);

async fn worker(
    mut conn: Conn,
    addr: &str,
    out: &Artifact,
    level: i32,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<Vec<Done>> {
    let mut done = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled("dump cancelled".into()));
        }
        let Some(job) = shared.queue.lock().expect("queue lock").pop_front() else {
            break;
        };
        shared.touched.touch(conn.id(), &job.db, &job.table);
        let result = dump_chunk(&mut conn, addr, out, &job, level, &progress, &cancel).await;
        let (rows, entry) = match result {
            Ok(r) => r,
            Err(e) => {
                // Stop the other workers early.
                shared.queue.lock().expect("queue lock").clear();
                return Err(e);
            }
        };
        {
            let mut rem = shared.remaining.lock().expect("remaining lock");
            let slot = &mut rem[shared.offsets[job.db_index] + job.table_index];
            *slot -= 1;
            if *slot == 0 {
                progress.table_done();
            }
        }
        done.push((job, rows, entry));
    }
    // End the snapshot transaction (releasing its tables); the connection
    // closes after.
    let _ = conn.query_drop("COMMIT").await;
    shared.touched.release(conn.id());
    let _ = conn.disconnect().await;
    Ok(done)
}

async fn dump_chunk(
    conn: &mut Conn,
    addr: &str,
    out: &Artifact,
    job: &ChunkJob,
    level: i32,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(u64, FileEntry)> {
    // A bounded async channel: a slow compressor makes the reader wait
    // without blocking a runtime thread (the DDL guard and gRPC need them).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let rel = job.file.clone();
    let stop = cancel.clone();
    let object = BlockingWriter::new(out.create(&rel).await?);
    let sink = out.describe();
    let writer = tokio::task::spawn_blocking(move || -> Result<FileEntry> {
        let mut obj = ZstdObject::new(object, sink, &rel, level)?;
        let compressed = (|| -> Result<()> {
            while let Some(block) = rx.blocking_recv() {
                // A cancelled dump's files are removed: stop compressing
                // them soon (a slow zstd level takes a second or more per
                // block).
                for piece in block.chunks(CANCEL_CHECK_BYTES) {
                    if stop.is_cancelled() {
                        return Err(Error::Cancelled("dump cancelled".into()));
                    }
                    obj.write_all(piece).map_err(|e| obj.fail("write", e))?;
                }
            }
            Ok(())
        })();
        if let Err(e) = compressed {
            obj.abort();
            return Err(e);
        }
        obj.finish()
    });

    let read = async {
        let what = format!("read rows for {}", job.file);
        let mut result = conn.query_iter(job.select.as_str()).await.on(addr, &what)?;
        let mut buf = Vec::with_capacity(BLOCK_BYTES + 64 * 1024);
        let mut rows = 0u64;
        let mut unreported = 0u64;
        let mut sent_ok = true;
        while let Some(row) = result.next().await.on(addr, &what)? {
            tsv::push_row(
                &mut buf,
                (0..row.len()).map(|i| match row.as_ref(i) {
                    Some(mysql_async::Value::Bytes(b)) => Some(b.as_slice()),
                    _ => None,
                }),
            );
            rows += 1;
            unreported += 1;
            if buf.len() >= BLOCK_BYTES {
                progress.add_rows(std::mem::take(&mut unreported));
                progress.add_bytes(buf.len() as u64);
                let block =
                    std::mem::replace(&mut buf, Vec::with_capacity(BLOCK_BYTES + 64 * 1024));
                let sent = tokio::select! {
                    r = tx.send(block) => r.is_ok(),
                    _ = cancel.cancelled() => {
                        return Err(Error::Cancelled("dump cancelled".into()));
                    }
                };
                if !sent {
                    // The writer failed; its error says why.
                    sent_ok = false;
                    break;
                }
            }
        }
        if !sent_ok {
            // Drain the result so the connection stays usable.
            while result.next().await.on(addr, &what)?.is_some() {}
        }
        progress.add_rows(unreported);
        progress.add_bytes(buf.len() as u64);
        if !buf.is_empty() {
            let _ = tx.send(buf).await;
        }
        drop(tx);
        Ok::<_, Error>(rows)
    };
    let read_result = read.await;
    let write_result = writer
        .await
        .map_err(|e| Error::Cancelled(format!("writer of {} stopped: {e}", job.file)))?;
    let rows = read_result?;
    Ok((rows, write_result?))
}

/// Splits a table into primary-key ranges of about `chunk_rows` rows.
/// Returns SQL conditions; one empty condition means the whole table.
async fn plan_ranges(
    conn: &mut Conn,
    addr: &str,
    db: &str,
    t: &TableDef,
    chunk_rows: u64,
    touched: &Touched,
) -> Result<Vec<String>> {
    let Some(pk) = &t.int_pk else {
        return Ok(vec![String::new()]);
    };
    if t.estimated_rows <= chunk_rows || chunk_rows == 0 {
        return Ok(vec![String::new()]);
    }
    // Reading the key range locks the table until this transaction ends.
    touched.touch(conn.id(), db, &t.name);
    let bounds: Option<(Option<String>, Option<String>)> = conn
        .query_first(format!(
            "SELECT MIN({c}), MAX({c}) FROM {}.{}",
            ident(db),
            ident(&t.name),
            c = ident(pk)
        ))
        .await
        .on(addr, &format!("read key range of {db}.{}", t.name))?;
    let Some((Some(lo), Some(hi))) = bounds else {
        return Ok(vec![String::new()]);
    };
    let (Ok(lo), Ok(hi)) = (lo.parse::<i128>(), hi.parse::<i128>()) else {
        return Ok(vec![String::new()]);
    };
    Ok(split_range(
        &ident(pk),
        lo,
        hi,
        t.estimated_rows.div_ceil(chunk_rows).min(1024),
    ))
}

/// `n` conditions covering every value of `col`: below, inside and above
/// `[lo, hi]` all land in some range.
pub fn split_range(col: &str, lo: i128, hi: i128, n: u64) -> Vec<String> {
    let n = n.max(1) as i128;
    let span = hi - lo + 1;
    if n == 1 || span <= 1 {
        return vec![String::new()];
    }
    let step = (span + n - 1) / n;
    let mut cuts = Vec::new();
    let mut b = lo + step;
    while b <= hi {
        cuts.push(b);
        b += step;
    }
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut prev: Option<i128> = None;
    for c in &cuts {
        out.push(match prev {
            None => format!("{col} < {c}"),
            Some(p) => format!("{col} >= {p} AND {col} < {c}"),
        });
        prev = Some(*c);
    }
    match prev {
        None => vec![String::new()],
        Some(p) => {
            out.push(format!("{col} >= {p}"));
            out
        }
    }
}

fn column_list(t: &TableDef) -> String {
    t.columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn select_sql(db: &str, t: &TableDef, range: &str) -> String {
    let mut sql = format!(
        "SELECT {} FROM {}.{}",
        column_list(t),
        ident(db),
        ident(&t.name)
    );
    if !range.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(range);
    }
    sql
}

/// The statement that loads one data file; the string literal `'{file}'`
/// stands for its path (names may hold `{file}` too: the loader replaces
/// only that literal, see [`Table::load_statement`]).
fn load_sql(db: &str, t: &TableDef) -> String {
    format!(
        "LOAD DATA LOCAL INFILE {} INTO TABLE {}.{} CHARACTER SET binary \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        manifest::FILE_PLACEHOLDER,
        ident(db),
        ident(&t.name),
        column_list(t)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_once() {
        let r = split_range("`id`", 1, 1_000_000, 4);
        assert_eq!(
            r,
            vec![
                "`id` < 250001",
                "`id` >= 250001 AND `id` < 500001",
                "`id` >= 500001 AND `id` < 750001",
                "`id` >= 750001",
            ]
        );
        assert_eq!(split_range("`id`", 5, 5, 4), vec![String::new()]);
        assert_eq!(split_range("`id`", -10, 10, 1), vec![String::new()]);
        let neg = split_range("`id`", -100, 99, 2);
        assert_eq!(neg, vec!["`id` < 0", "`id` >= 0"]);
    }
}
