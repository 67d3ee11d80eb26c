//! Replay benchmark (not part of the test suite: the test is `#[ignore]`d
//! and prints numbers instead of asserting on speed):
//!
//! ```sh
//! cargo test --release --workspace --features lockstep-coordinator/failpoints \
//!     --test b40_replay_bench -- --ignored --nocapture
//! TXNS=20000 cargo test ...   # a quick check
//! ```
//!
//! One source server writes `TXNS` small OLTP transactions (an UPDATE of
//! one row by primary key and an INSERT of one row, ROW format) over
//! several binlog files; the binlogs are copied to a directory, and three
//! targets that hold the source's data as of the start (same statements,
//! not binlogged, and the start's `gtid_slave_pos`) replay them to the
//! end: the relay-log method (the server's SQL thread, one thread), the
//! pipe method (our `mariadb-binlog | mariadb` session) and a plain shell
//! `mariadb-binlog | mariadb` as users run it. Each target is then checked
//! against the source (CHECKSUM TABLE). Lines starting with `BENCH ` are
//! the results, in markdown.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use lockstep_node_agent::binlog::replay::{self, Method, ReplayPlan};
use lockstep_node_agent::mysql::Server;
use lockstep_node_agent::progress::Progress;
use lockstep_tests::bench::env_usize;
use lockstep_tests::{MariaDb, MariaDbOptions, checksum_tables, step};
use mysql_async::prelude::Queryable as _;

/// Rows in the table before the replayed range.
const ROWS: usize = 10_000;
/// Transactions per round trip while the workload is written.
const BATCH: usize = 200;

/// The schema and starting rows, identical on the source and the targets.
const SETUP: &[&str] = &[
    "CREATE DATABASE bench",
    "CREATE TABLE bench.acct (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(60) NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE bench.hist (id INT AUTO_INCREMENT PRIMARY KEY, acct INT NOT NULL, delta INT NOT NULL, note CHAR(30) NOT NULL) ENGINE=InnoDB",
];

fn roomy(name: &str) -> MariaDbOptions {
    let mut o = MariaDbOptions::named(name);
    o.extra_args = vec![
        "--innodb-buffer-pool-size=256M".into(),
        "--innodb-log-file-size=256M".into(),
    ];
    o
}

async fn setup(db: &MariaDb, binlog: bool) -> anyhow::Result<()> {
    let mut c = db.conn().await?;
    if !binlog {
        c.query_drop("SET SESSION sql_log_bin = 0").await?;
    }
    for sql in SETUP {
        c.query_drop(*sql).await?;
    }
    c.query_drop(format!(
        "INSERT INTO bench.acct SELECT seq, seq MOD 1000, MD5(seq) FROM bench.seq_1_to_{ROWS}"
    ))
    .await?;
    c.disconnect().await.ok();
    Ok(())
}

/// A run of a plain shell `mariadb-binlog | mariadb` over `files`.
async fn shell_pipe(files: &[PathBuf], start: u64, stop: u64, port: u16) -> anyhow::Result<()> {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let script = format!(
        "set -o pipefail; mariadb-binlog --skip-gtid-strict-mode --disable-log-bin --start-position={start} --stop-position={stop} {} | mariadb --host=127.0.0.1 --port={port} --user=root --binary-mode",
        names.join(" ")
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .kill_on_drop(true)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// See the module comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn relay_against_mariadb_binlog_pipe() -> anyhow::Result<()> {
    let txns = env_usize("TXNS", 120_000);
    let per_file = env_usize("TXNS_PER_FILE", 30_000);
    let parallel = env_usize("PARALLEL", 0);
    let mut relay_opts = roomy("b40-relay");
    if parallel > 0 {
        relay_opts.extra_args.extend([
            format!("--slave-parallel-threads={parallel}"),
            "--slave-parallel-mode=optimistic".into(),
        ]);
    }
    let (src, relay_dst, pipe_dst, shell_dst) = tokio::try_join!(
        MariaDb::start(roomy("b40-src")),
        MariaDb::start(relay_opts),
        MariaDb::start(roomy("b40-pipe")),
        MariaDb::start(roomy("b40-shell")),
    )?;
    step!("schema and {ROWS} rows everywhere");
    setup(&src, true).await?;
    for t in [&relay_dst, &pipe_dst, &shell_dst] {
        setup(t, false).await?;
    }
    src.exec("FLUSH BINARY LOGS").await?;
    let (start_file, start_pos) = src.binlog_position().await?.context("binlog on")?;
    let start_gtid = src.gtid_binlog_pos().await?;
    for t in [&relay_dst, &pipe_dst, &shell_dst] {
        t.exec(&format!("SET GLOBAL gtid_slave_pos = '{start_gtid}'"))
            .await?;
    }

    step!("{txns} transactions on the source, a new binlog every {per_file}");
    let written = Instant::now();
    let mut c = src.conn().await?;
    let mut done = 0;
    while done < txns {
        let n = BATCH.min(txns - done);
        let mut sql = String::new();
        for i in done..done + n {
            let id = (i * 7919) % ROWS + 1;
            sql.push_str(&format!(
                "BEGIN; UPDATE bench.acct SET k = k + 1 WHERE id = {id}; \
                 INSERT INTO bench.hist (acct, delta, note) VALUES ({id}, 1, 'txn {i}'); COMMIT; "
            ));
        }
        c.query_drop(sql).await?;
        done += n;
        if done % per_file == 0 && done < txns {
            c.query_drop("FLUSH BINARY LOGS").await?;
        }
    }
    c.disconnect().await.ok();
    let (stop_file, stop_pos) = src.binlog_position().await?.context("binlog on")?;
    let want = checksum_tables(&src.url(), "bench").await?;
    let write_secs = written.elapsed().as_secs_f64();
    src.exec("FLUSH BINARY LOGS").await?;

    let archive = tempfile::Builder::new()
        .prefix("ls-b40-")
        .tempdir_in("/tmp")?;
    let logs: Vec<(String, u64)> = src.query("SHOW BINARY LOGS").await?;
    let mut files = Vec::new();
    let mut bytes = 0;
    for (log, _) in logs {
        if log >= start_file && log <= stop_file {
            let to = archive.path().join(&log);
            bytes += std::fs::copy(src.datadir().join(&log), &to)?;
            files.push(to);
        }
    }
    step!(
        "{} binlog files, {:.1} MiB, written in {write_secs:.1} s",
        files.len(),
        bytes as f64 / 1048576.0
    );
    let plan = |method| ReplayPlan {
        files: files.clone(),
        start_pos,
        stop_pos,
        method: Some(method),
    };

    step!("relay");
    let progress = Progress::default();
    let relay = replay::replay(
        &Server::parse(&relay_dst.url())?,
        &plan(Method::Relay),
        &progress,
    )
    .await?;
    step!("pipe (ours)");
    let pipe = replay::replay(
        &Server::parse(&pipe_dst.url())?,
        &plan(Method::Pipe),
        &progress,
    )
    .await?;
    step!("plain shell mariadb-binlog | mariadb");
    let t = Instant::now();
    shell_pipe(&files, start_pos, stop_pos, shell_dst.port()).await?;
    let shell = t.elapsed();

    for t in [&relay_dst, &pipe_dst, &shell_dst] {
        let got = checksum_tables(&t.url(), "bench").await?;
        ensure!(
            got == want,
            "{} differs from the source: {got:?} vs {want:?}",
            t.name()
        );
    }
    let secs = |d: Duration| d.as_secs_f64();
    let row = |what: &str, d: Duration, apply: Option<Duration>| {
        println!(
            "BENCH | {what} | {:.2} | {} | {:.0} | {:.1}× |",
            secs(d),
            apply.map_or_else(|| "-".to_string(), |a| format!("{:.2}", secs(a))),
            txns as f64 / secs(d),
            secs(shell) / secs(d)
        )
    };
    println!(
        "BENCH {txns} transactions, {} files, {:.1} MiB of binlog, relay target slave_parallel_threads={parallel}",
        files.len(),
        bytes as f64 / 1048576.0
    );
    println!(
        "BENCH | method | seconds, whole call | seconds, applying | transactions/s | speed-up over the shell pipe |"
    );
    println!("BENCH |---|---:|---:|---:|---:|");
    row(
        "relay logs + SQL thread (lockstep, default)",
        relay.duration,
        Some(relay.apply_duration),
    );
    row(
        "mariadb-binlog | mariadb (lockstep pipe)",
        pipe.duration,
        Some(pipe.apply_duration),
    );
    row("mariadb-binlog | mariadb (plain shell)", shell, None);
    Ok(())
}
