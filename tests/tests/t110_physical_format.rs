//! Physical copies, end to end against a real MariaDB (node-agent
//! `format::physical` and `physical`): a crash image of a server's datadir
//! goes to a sink as one `.tar.zst` with per-file checksums, comes back
//! into an empty directory, and a private `mariadbd` recovers it to exactly
//! the server's committed state and binlog position.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use lockstep_node_agent::format::manifest::FileEntry;
use lockstep_node_agent::format::physical::{TreeFile, TreeKind, skip_for_datadir};
use lockstep_node_agent::physical::recover::{self, RecoverOptions};
use lockstep_node_agent::physical::settings::{self, ServerSettings};
use lockstep_node_agent::physical::stream::{load_tree, store_tree};
use lockstep_node_agent::progress::Progress;
use lockstep_node_agent::sink::artifact::Artifact;
use lockstep_tests::process::short_temp_dir;
use lockstep_tests::{MariaDb, MariaDbOptions, Supervised as _, step};
use mysql_async::prelude::Queryable as _;
use tokio_util::sync::CancellationToken;

/// Names over ustar's 100 bytes: `<64 chars>/<64 chars>.ibd`.
const LONG_DB: &str = "physical_db_with_a_name_long_enough_to_need_pax_headers_xxxxxxxx";
const LONG_TABLE: &str = "table_with_a_name_long_enough_to_need_pax_extended_headers_yyyyy";
/// The archive's object in the sink.
const ARCHIVE: &str = "datadir.tar.zst";

/// What the server held when it was killed.
struct Before {
    settings: ServerSettings,
    gtid_binlog_pos: String,
    binlog: (String, u64),
    rows: u64,
    long_rows: u64,
    checksum: u64,
}

/// A server with committed rows in two databases (one with names over
/// 100 bytes), a transaction left open, killed with SIGKILL: its datadir is
/// a crash image. Returns the server (stopped) and what it had committed.
async fn crashed_server() -> anyhow::Result<(MariaDb, Before)> {
    step!("start a server and commit rows in two databases");
    let mut db = MariaDb::start(MariaDbOptions::named("phys")).await?;
    db.exec(&format!(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB; \
         CREATE DATABASE {LONG_DB}; \
         CREATE TABLE {LONG_DB}.{LONG_TABLE} (id INT PRIMARY KEY) ENGINE=InnoDB; \
         INSERT INTO {LONG_DB}.{LONG_TABLE} VALUES (1), (2), (3)"
    ))
    .await?;
    let mut conn = db.conn().await?;
    for batch in 0..20 {
        conn.query_drop(format!(
            "INSERT INTO shop.t SELECT seq, MD5(seq) FROM shop.seq_{}_to_{}",
            batch * 500 + 1,
            batch * 500 + 500
        ))
        .await
        .context("insert a batch")?;
    }

    step!("read the settings a physical copy depends on");
    let settings = settings::read(&mut conn, &db.address()).await?;
    ensure!(
        settings.datadir.trim_end_matches('/') == db.datadir().to_string_lossy(),
        "datadir {} but the server runs in {}",
        settings.datadir,
        db.datadir().display()
    );
    ensure!(settings.log_bin_basename.is_some(), "{settings:?}");
    ensure!(
        settings.server_id == u64::from(db.server_id()),
        "{settings:?}"
    );
    ensure!(
        settings.gtid_domain_id == u64::from(db.gtid_domain_id()),
        "{settings:?}"
    );
    // The harness runs servers with innodb_flush_log_at_trx_commit=2.
    ensure!(settings.innodb_flush_log_at_trx_commit == 2, "{settings:?}");
    ensure!(!settings.needs_engine_log_flush());
    settings.require_inside_datadir(&db.address())?;
    ensure!(settings.live_paths() == vec![db.datadir()], "{settings:?}");

    step!("leave a transaction open, note the position, kill -9 the server");
    let mut open = db.conn().await?;
    open.query_drop("BEGIN").await?;
    open.query_drop("INSERT INTO shop.t VALUES (-1, 'never committed'), (-2, 'never')")
        .await?;
    let gtid_binlog_pos = db.gtid_binlog_pos().await?;
    let binlog = db
        .binlog_position()
        .await?
        .context("the server writes a binlog")?;
    let rows: u64 = db.query_one("SELECT COUNT(*) FROM shop.t").await?;
    let long_rows: u64 = db
        .query_one(&format!("SELECT COUNT(*) FROM {LONG_DB}.{LONG_TABLE}"))
        .await?;
    let checksum = checksum(&mut conn).await?;
    ensure!(rows == 10_000, "{rows} rows");
    db.kill()?;
    drop((conn, open));
    Ok((
        db,
        Before {
            settings,
            gtid_binlog_pos,
            binlog,
            rows,
            long_rows,
            checksum,
        },
    ))
}

async fn checksum(conn: &mut mysql_async::Conn) -> anyhow::Result<u64> {
    let row: Option<(String, u64)> = conn
        .query_first("CHECKSUM TABLE shop.t")
        .await
        .context("CHECKSUM TABLE shop.t")?;
    Ok(row.context("CHECKSUM TABLE returned no row")?.1)
}

/// The datadir of `db` in the sink directory `sink`.
async fn archive(db: &MariaDb, sink: &Path) -> anyhow::Result<(FileEntry, Vec<TreeFile>)> {
    let progress = Arc::new(Progress::default());
    let (entry, files) = store_tree(
        &Artifact::in_directory(sink),
        ARCHIVE,
        db.datadir(),
        skip_for_datadir,
        3,
        progress.clone(),
        &CancellationToken::new(),
    )
    .await?;
    let stored = std::fs::metadata(sink.join(ARCHIVE))?.len();
    ensure!(
        entry.size == stored,
        "entry {entry:?}, object {stored} bytes"
    );
    let tree_bytes: u64 = files.iter().map(|f| f.size).sum();
    ensure!(
        progress.snapshot().bytes > tree_bytes,
        "progress {:?} counts less than the tree's {tree_bytes} bytes",
        progress.snapshot()
    );
    tracing::info!(
        files = files.len(),
        tree_bytes,
        archive_bytes = entry.size,
        "datadir archived"
    );
    Ok((entry, files))
}

fn small_server() -> RecoverOptions {
    RecoverOptions {
        timeout: Duration::from_secs(120),
        extra_args: vec!["--innodb-buffer-pool-size=16M".into()],
        ..RecoverOptions::default()
    }
}

/// A SIGKILLed server's datadir, archived, extracted into an empty
/// directory and recovered by a private `mariadbd`, holds exactly what the
/// server had committed (not the open transaction), at the same
/// `gtid_binlog_pos` and binlog end.
#[tokio::test]
async fn a_crash_image_restores_to_the_servers_committed_state() -> anyhow::Result<()> {
    let (db, before) = crashed_server().await?;

    step!("archive the datadir into a sink directory");
    let sink = short_temp_dir("lsk-")?;
    let (_, files) = archive(&db, sink.path()).await?;
    let listed = |p: &str| files.iter().any(|f| f.path == p);
    for must in [
        "ibdata1",
        "ib_logfile0",
        "mysql-bin.index",
        before.binlog.0.as_str(),
        "shop/t.ibd",
        &format!("{LONG_DB}/{LONG_TABLE}.ibd"),
    ] {
        ensure!(listed(must), "{must} is not in the archive");
    }
    ensure!(
        files
            .iter()
            .any(|f| f.kind == TreeKind::Dir && f.path == LONG_DB)
    );

    step!("extract the archive into an empty directory");
    let restore = short_temp_dir("lsr-")?;
    let target: PathBuf = restore.path().join("data");
    let bytes = load_tree(
        &Artifact::in_directory(sink.path()),
        ARCHIVE,
        target.clone(),
        files.clone(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await?;
    ensure!(bytes == files.iter().map(|f| f.size).sum::<u64>());

    step!("recover the copy with a private server and read it");
    let (recovered, (rows, long_rows, sum, uncommitted)) =
        recover::recover_with(&target, &before.settings, &small_server(), |conn, _| {
            Box::pin(async move {
                let q =
                    |e: mysql_async::Error| lockstep_node_agent::Error::Cancelled(e.to_string());
                let rows: Option<u64> = conn
                    .query_first("SELECT COUNT(*) FROM shop.t")
                    .await
                    .map_err(q)?;
                let long: Option<u64> = conn
                    .query_first(format!("SELECT COUNT(*) FROM {LONG_DB}.{LONG_TABLE}"))
                    .await
                    .map_err(q)?;
                let sum: Option<(String, u64)> =
                    conn.query_first("CHECKSUM TABLE shop.t").await.map_err(q)?;
                let open: Option<u64> = conn
                    .query_first("SELECT COUNT(*) FROM shop.t WHERE id < 0")
                    .await
                    .map_err(q)?;
                Ok((
                    rows.unwrap_or_default(),
                    long.unwrap_or_default(),
                    sum.map(|s| s.1).unwrap_or_default(),
                    open.unwrap_or_default(),
                ))
            })
        })
        .await?;
    tracing::info!(?recovered, "recovered");
    ensure!(
        recovered.gtid_binlog_pos == before.gtid_binlog_pos,
        "recovered to {:?}, the server was at {:?}",
        recovered.gtid_binlog_pos,
        before.gtid_binlog_pos
    );
    ensure!(
        recovered.copied_binlog_end.as_ref() == Some(&before.binlog),
        "the copy's binlog ends at {:?}, the server was at {:?}",
        recovered.copied_binlog_end,
        before.binlog
    );
    ensure!(
        rows == before.rows,
        "{rows} rows, the server had {}",
        before.rows
    );
    ensure!(
        long_rows == before.long_rows,
        "{long_rows} rows in the long-named table"
    );
    ensure!(
        sum == before.checksum,
        "checksum {sum}, the server had {}",
        before.checksum
    );
    ensure!(
        uncommitted == 0,
        "{uncommitted} rows of the open transaction survived"
    );
    let log = std::fs::read_to_string(target.join(recover::LOG_NAME))
        .context("the recovery's error log stays in the datadir")?;
    ensure!(
        log.contains("crash recovery") && log.contains("Recovering after a crash using"),
        "InnoDB and the binlog did not recover a crash image:\n{log}"
    );
    ensure!(
        recovered.log_tail.contains("Shutdown complete"),
        "{}",
        recovered.log_tail
    );

    step!("the recovered copy starts again at once, at the same position");
    let (again, ()) = recover::recover_with(&target, &before.settings, &small_server(), |_, _| {
        Box::pin(async { Ok(()) })
    })
    .await?;
    ensure!(again.gtid_binlog_pos == before.gtid_binlog_pos, "{again:?}");
    Ok(())
}

/// A copy whose redo log is damaged does not start: the error names the
/// restored datadir and quotes the server's error log, and no server is
/// left running.
#[tokio::test]
async fn a_damaged_copy_fails_recovery_naming_it() -> anyhow::Result<()> {
    let (db, before) = crashed_server().await?;
    let sink = short_temp_dir("lsk-")?;
    let (_, files) = archive(&db, sink.path()).await?;
    let restore = short_temp_dir("lsr-")?;
    let target = restore.path().join("data");
    load_tree(
        &Artifact::in_directory(sink.path()),
        ARCHIVE,
        target.clone(),
        files,
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await?;

    step!("overwrite the redo log's header and recover");
    let redo = target.join("ib_logfile0");
    let mut bytes = std::fs::read(&redo)?;
    bytes[..16 * 1024].fill(0xa5);
    std::fs::write(&redo, &bytes)?;
    let err = recover::recover(&target, &before.settings, &small_server())
        .await
        .expect_err("a damaged redo log");
    let text = err.to_string();
    tracing::info!(%text, "recovery refused");
    ensure!(text.contains(&target.display().to_string()), "{text}");
    ensure!(text.contains("exited during recovery"), "{text}");
    ensure!(text.contains("InnoDB"), "{text}");

    step!("no mariadbd is left on the copy");
    let pids = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("--datadir={}", target.display())])
        .output()?;
    ensure!(
        pids.stdout.is_empty(),
        "a server still runs on the copy: {}",
        String::from_utf8_lossy(&pids.stdout)
    );
    Ok(())
}
