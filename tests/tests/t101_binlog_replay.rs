//! Binlog replay for point-in-time recovery (node-agent `binlog::replay`):
//! a source under a workload that spans several binlog files (temporary
//! tables used across a rotation, multi-statement transactions, DDL,
//! MyISAM), a base taken with `lockstep-agent dump` while a writer runs and
//! loaded with `lockstep-agent load` into a second server, then the source's
//! binlogs (copied to a directory of their own, as from an archive) replayed
//! onto it up to a position recorded while the source was at a known state.
//! The target must then hold exactly that state (mariadb-dump text and
//! CHECKSUM TABLE), nothing written after it, and the point's
//! gtid_slave_pos; by both methods, after a failure that is fixed and
//! resumed, and on `gtid_strict_mode=ON` targets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail, ensure};
use lockstep_node_agent::binlog::replay::{self, Method, ReplayPlan, ReplayReport};
use lockstep_node_agent::mysql::Server;
use lockstep_node_agent::progress::Progress;
use lockstep_tests::compare::first_difference;
use lockstep_tests::{MariaDb, MariaDbOptions, checksum_tables, dump_text, run_agent_cli, step};
use mysql_async::prelude::Queryable as _;

/// Row id the conflict test puts on the target before the replay; the
/// workload inserts it in the third file after the base, after dozens of
/// other transactions.
const CONFLICT_ID: u32 = 2030;

/// A source taken through the workload, its base, its binlogs and the point.
struct Scenario {
    /// Kept running until the scenario is dropped.
    _src: MariaDb,
    base: tempfile::TempDir,
    /// Holds `files`.
    _archive: tempfile::TempDir,
    files: Vec<PathBuf>,
    start_pos: u64,
    stop_pos: u64,
    /// The source's gtid_binlog_pos at the base and at the point.
    base_gtid: String,
    point_gtid: String,
    /// mariadb-dump text and checksums of `shop` at the point.
    point_dump: String,
    point_sums: BTreeMap<String, Option<u64>>,
}

/// A server whose statements are logged as statements where safe, so the
/// temporary tables reach the binlog.
fn mixed(name: &str) -> MariaDbOptions {
    let mut o = MariaDbOptions::named(name);
    o.extra_args = vec!["--binlog-format=MIXED".into()];
    o
}

/// Runs `sqls` on `conn` in order.
async fn run(conn: &mut mysql_async::Conn, sqls: &[String]) -> anyhow::Result<()> {
    for sql in sqls {
        conn.query_drop(sql.as_str())
            .await
            .with_context(|| format!("run `{sql}`"))?;
    }
    Ok(())
}

/// Values `(id, 'owner', balance)` for ids `from..to`.
fn rows(from: u32, to: u32, owner: &str) -> String {
    (from..to)
        .map(|i| format!("({i}, '{owner}', {})", i * 10))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Scenario {
    async fn build(name: &str) -> anyhow::Result<Scenario> {
        let src = MariaDb::start(mixed(&format!("{name}-src"))).await?;
        step!("{name}: schema and first rows on the source");
        let mut c = src.conn().await?;
        run(
            &mut c,
            &[
                "CREATE DATABASE shop".into(),
                "CREATE TABLE shop.acct (id INT PRIMARY KEY, owner VARCHAR(40), balance BIGINT NOT NULL) ENGINE=InnoDB".into(),
                "CREATE TABLE shop.feed (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(60)) ENGINE=InnoDB".into(),
                "CREATE TABLE shop.hits (n INT) ENGINE=MyISAM".into(),
                format!("INSERT INTO shop.acct VALUES {}", rows(1, 101, "first")),
            ],
        )
        .await?;

        step!("{name}: base with lockstep-agent dump while a writer inserts");
        let stop_writer = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop_writer.clone();
            let mut w = src.conn().await?;
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    w.query_drop(format!(
                        "INSERT INTO shop.feed (note) VALUES ('during base {n}')"
                    ))
                    .await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        };
        let base = tempfile::Builder::new()
            .prefix("ls-rp-")
            .tempdir_in("/tmp")?;
        let base_dir = base.path().join("base");
        let dumped = run_agent_cli(&[
            "dump",
            "--mysql",
            &src.url(),
            "--out",
            base_dir.to_str().context("utf-8 path")?,
            "--json",
            "--quiet",
        ])
        .await?;
        stop_writer.store(true, Ordering::Relaxed);
        let written = writer.await.context("join the writer")??;
        dumped.success()?;
        let summary: serde_json::Value = serde_json::from_str(dumped.stdout.trim())?;
        let start_file = summary["position"]["binlog_file"]
            .as_str()
            .context("position.binlog_file")?
            .to_string();
        let start_pos = summary["position"]["binlog_pos"]
            .as_u64()
            .context("position.binlog_pos")?;
        let base_gtid = summary["position"]["gtid_set"]
            .as_str()
            .context("position.gtid_set")?
            .to_string();
        ensure!(written > 0, "the writer wrote nothing during the dump");

        step!("{name}: workload after the base, over three binlog files");
        let mut moves = Vec::new();
        for i in 0..20 {
            moves.extend([
                "BEGIN".to_string(),
                format!(
                    "UPDATE shop.acct SET balance = balance - {i} WHERE id = {}",
                    i + 1
                ),
                format!(
                    "UPDATE shop.acct SET balance = balance + {i} WHERE id = {}",
                    100 - i
                ),
                format!("INSERT INTO shop.feed (note) VALUES ('move {i}')"),
                "COMMIT".into(),
            ]);
        }
        run(&mut c, &moves).await?;
        run(
            &mut c,
            &[
                "CREATE TEMPORARY TABLE shop.tmp_moves (id INT, amount INT)".into(),
                "INSERT INTO shop.tmp_moves VALUES (1, 5), (2, 6), (3, 7)".into(),
                "FLUSH BINARY LOGS".into(),
                // Needs the temporary table of the previous file.
                "INSERT INTO shop.acct SELECT id + 1000, 'from tmp', amount FROM shop.tmp_moves".into(),
                // Dropped before the conflict test's failure: a resumed
                // session has lost the temporary tables of the failed one.
                "DROP TEMPORARY TABLE shop.tmp_moves".into(),
                "ALTER TABLE shop.acct ADD COLUMN flags INT NOT NULL DEFAULT 0".into(),
                "CREATE TABLE shop.audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(40)) ENGINE=InnoDB".into(),
                "INSERT INTO shop.hits VALUES (1), (2)".into(),
                "FLUSH BINARY LOGS".into(),
            ],
        )
        .await?;
        let mut tail = Vec::new();
        for k in 0..5u32 {
            tail.extend([
                "BEGIN".to_string(),
                format!(
                    "INSERT INTO shop.acct (id, owner, balance) VALUES {}",
                    rows(2000 + k * 10, 2010 + k * 10, "tail")
                ),
                format!("INSERT INTO shop.audit (what) VALUES ('batch {k}')"),
                "COMMIT".into(),
            ]);
        }
        tail.extend([
            "BEGIN".to_string(),
            "DELETE FROM shop.acct".into(),
            "ROLLBACK".into(),
            "DELETE FROM shop.acct WHERE id BETWEEN 10 AND 14".into(),
            "UPDATE shop.acct SET flags = 1 WHERE id > 2000".into(),
        ]);
        run(&mut c, &tail).await?;

        step!("{name}: record the point (position, GTID, data)");
        let (stop_file, stop_pos) = src.binlog_position().await?.context("binlog is on")?;
        let point_gtid = src.gtid_binlog_pos().await?;
        let point_dump = dump_text(src.port(), &["shop"]).await?;
        let point_sums = checksum_tables(&src.url(), "shop").await?;

        step!("{name}: writes after the point, which the replay must not apply");
        run(
            &mut c,
            &[
                format!(
                    "INSERT INTO shop.acct (id, owner, balance) VALUES {}",
                    rows(3000, 3010, "late")
                ),
                "DROP TABLE shop.audit".into(),
                "FLUSH BINARY LOGS".into(),
                "INSERT INTO shop.feed (note) VALUES ('late')".into(),
            ],
        )
        .await?;
        c.disconnect().await.ok();

        step!("{name}: copy {start_file}..{stop_file} to an archive directory");
        let archive = tempfile::Builder::new()
            .prefix("ls-ra-")
            .tempdir_in("/tmp")?;
        let logs: Vec<(String, u64)> = src.query("SHOW BINARY LOGS").await?;
        let mut files = Vec::new();
        for (log, _) in logs {
            if log.as_str() >= start_file.as_str() && log.as_str() <= stop_file.as_str() {
                let to = archive.path().join(&log);
                std::fs::copy(src.datadir().join(&log), &to)
                    .with_context(|| format!("copy {log}"))?;
                files.push(to);
            }
        }
        ensure!(
            files.len() >= 3,
            "the replay spans {} files, expected at least 3",
            files.len()
        );
        // The base's binlog position and its GTID set must name the same
        // moment: the first transaction after the position is the one
        // after the set.
        let scanned = replay::scan::scan(&files, start_pos, stop_pos)?;
        let first = scanned
            .transactions
            .first()
            .context("no transaction after the base")?;
        let base_seq: u64 = base_gtid.rsplit('-').next().context("a GTID")?.parse()?;
        ensure!(
            first.gtid.seq == base_seq + 1,
            "the base's position {start_file}:{start_pos} and its GTID set {base_gtid} disagree: the first transaction after the position is {}",
            first.gtid
        );
        Ok(Scenario {
            _src: src,
            base,
            _archive: archive,
            files,
            start_pos,
            stop_pos,
            base_gtid,
            point_gtid,
            point_dump,
            point_sums,
        })
    }

    fn plan(&self, method: Option<Method>) -> ReplayPlan {
        ReplayPlan {
            files: self.files.clone(),
            start_pos: self.start_pos,
            stop_pos: self.stop_pos,
            method,
        }
    }

    /// Starts a target (with `extra` arguments) and loads the base into it.
    async fn target(&self, name: &str, extra: &[&str]) -> anyhow::Result<MariaDb> {
        let mut o = MariaDbOptions::named(name);
        o.extra_args = extra.iter().map(|s| s.to_string()).collect();
        let dst = MariaDb::start(o).await?;
        run_agent_cli(&[
            "load",
            "--mysql",
            &dst.url(),
            "--from",
            self.base
                .path()
                .join("base")
                .to_str()
                .context("utf-8 path")?,
            "--quiet",
        ])
        .await?
        .success()?;
        let slave_pos: String = dst.query_one("SELECT @@gtid_slave_pos").await?;
        ensure!(
            slave_pos == self.base_gtid,
            "the base load set gtid_slave_pos {slave_pos}, expected {}",
            self.base_gtid
        );
        Ok(dst)
    }

    /// The target holds exactly the point's data and GTID state, and no
    /// trace of the replay's connection or relay logs.
    async fn check_target(&self, dst: &MariaDb, report: &ReplayReport) -> anyhow::Result<()> {
        let dump = dump_text(dst.port(), &["shop"]).await?;
        if let Some(diff) = first_difference(&self.point_dump, &dump) {
            bail!(
                "{} differs from the source at the point: {diff}",
                dst.name()
            );
        }
        let sums = checksum_tables(&dst.url(), "shop").await?;
        ensure!(
            sums == self.point_sums,
            "checksums {sums:?} vs the point's {:?}",
            self.point_sums
        );
        let audit: u64 = dst.query_one("SELECT COUNT(*) FROM shop.audit").await?;
        ensure!(
            audit == 5,
            "shop.audit (dropped after the point) has {audit} rows"
        );
        let slave_pos: String = dst.query_one("SELECT @@gtid_slave_pos").await?;
        ensure!(
            slave_pos == self.point_gtid,
            "gtid_slave_pos {slave_pos}, expected the point's {}",
            self.point_gtid
        );
        ensure!(
            report.gtid_slave_pos == self.point_gtid,
            "report: {report:?}"
        );
        ensure!(report.point == self.point_gtid, "report: {report:?}");
        let binlog_pos: String = dst.query_one("SELECT @@gtid_binlog_pos").await?;
        ensure!(
            binlog_pos == self.point_gtid,
            "gtid_binlog_pos {binlog_pos}, expected the point's {}",
            self.point_gtid
        );
        let slaves: Vec<mysql_async::Row> = dst.query("SHOW ALL SLAVES STATUS").await?;
        ensure!(
            slaves.is_empty(),
            "replication connections left: {}",
            slaves.len()
        );
        let left: Vec<String> = std::fs::read_dir(dst.datadir())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(replay::CONNECTION))
            .collect();
        ensure!(left.is_empty(), "relay files left in the datadir: {left:?}");
        Ok(())
    }
}

/// Replays with `method` and checks the report's bytes against the progress.
async fn replay_to_point(
    s: &Scenario,
    dst: &MariaDb,
    method: Option<Method>,
) -> anyhow::Result<ReplayReport> {
    let progress = Progress::default();
    let server = Server::parse(&dst.url())?;
    let report = replay::replay(&server, &s.plan(method), &progress).await?;
    step!(
        "replayed {} bytes, {} transactions ({} skipped) with {:?} in {:?}",
        report.bytes,
        report.transactions,
        report.skipped,
        report.method,
        report.duration
    );
    ensure!(
        progress.snapshot().bytes == report.bytes,
        "progress says {} bytes, the report {}",
        progress.snapshot().bytes,
        report.bytes
    );
    Ok(report)
}

/// Default method (the relay logs of the target's SQL thread, here with
/// `slave_parallel_threads=2`, where a CHANGE MASTER with only relay
/// positions crashes 10.11.19) to the point: the target holds exactly the
/// point's data and GTID position.
#[tokio::test]
async fn relay_replay_reaches_the_point_exactly() -> anyhow::Result<()> {
    let s = Scenario::build("rl").await?;
    step!("load the base into the target");
    let dst = s.target("rl-dst", &["--slave-parallel-threads=2"]).await?;
    step!("replay with the default method");
    let report = replay_to_point(&s, &dst, None).await?;
    ensure!(report.method == Method::Relay, "{report:?}");
    ensure!(
        report.skipped == 0 && report.transactions >= 34,
        "{report:?}"
    );
    ensure!(report.warnings.is_empty(), "{report:?}");
    step!("compare with the point");
    s.check_target(&dst, &report).await?;
    step!("a second run finds everything applied and changes nothing");
    let again = replay_to_point(&s, &dst, None).await?;
    ensure!(again.transactions == 0 && again.bytes == 0, "{again:?}");
    s.check_target(&dst, &again).await?;
    Ok(())
}

/// The fallback, one `mariadb-binlog | mariadb` session over every file
/// (the temporary table crosses a rotation), to the same point.
#[tokio::test]
async fn pipe_replay_reaches_the_point_exactly() -> anyhow::Result<()> {
    let s = Scenario::build("pp").await?;
    step!("load the base into the target");
    let dst = s.target("pp-dst", &[]).await?;
    step!("replay through mariadb-binlog | mariadb");
    let report = replay_to_point(&s, &dst, Some(Method::Pipe)).await?;
    ensure!(report.method == Method::Pipe, "{report:?}");
    step!("compare with the point");
    s.check_target(&dst, &report).await?;
    Ok(())
}

/// A row the replay will insert is put on the target first: the replay
/// stops with an error naming the server, the binlog file, the position and
/// the server's text, leaves the target stopped with the transactions
/// before it applied; once the row is gone, the same plan resumes at the
/// failed transaction and reaches the point.
async fn conflict_is_fixed_and_resumed(prefix: &str, method: Method) -> anyhow::Result<()> {
    let s = Scenario::build(prefix).await?;
    step!("load the base, put a conflicting row on the target");
    let dst = s.target(&format!("{prefix}-dst"), &[]).await?;
    let mut c = dst.conn().await?;
    c.query_drop("SET SESSION sql_log_bin = 0").await?;
    c.query_drop(format!(
        "INSERT INTO shop.acct (id, owner, balance) VALUES ({CONFLICT_ID}, 'conflict', 0)"
    ))
    .await?;

    step!("the replay fails on it");
    let server = Server::parse(&dst.url())?;
    let progress = Progress::default();
    let err = replay::replay(&server, &s.plan(Some(method)), &progress)
        .await
        .expect_err("the conflicting row stops the replay");
    let text = lockstep_node_agent::error::error_text(&err);
    step!("error: {text}");
    let last_file = s.files.last().and_then(|f| f.file_name()).context("file")?;
    ensure!(
        text.contains(&dst.address())
            && text.contains(&*last_file.to_string_lossy())
            && text.contains("Duplicate entry"),
        "the error names the server, the file and the server's text: {text}"
    );
    let slaves: Vec<mysql_async::Row> = dst.query("SHOW ALL SLAVES STATUS").await?;
    ensure!(slaves.is_empty(), "the replay's connection was left behind");
    let seq =
        |g: &str| -> anyhow::Result<u64> { Ok(g.rsplit('-').next().context("a GTID")?.parse()?) };
    let half: String = dst.query_one("SELECT @@gtid_slave_pos").await?;
    ensure!(
        seq(&half)? > seq(&s.base_gtid)? && seq(&half)? < seq(&s.point_gtid)?,
        "gtid_slave_pos {half} is not between the base {} and the point {}",
        s.base_gtid,
        s.point_gtid
    );
    ensure!(progress.snapshot().bytes > 0, "no progress reported");

    step!("remove the row and run the same plan again");
    c.query_drop(format!("DELETE FROM shop.acct WHERE id = {CONFLICT_ID}"))
        .await?;
    c.disconnect().await.ok();
    let report = replay_to_point(&s, &dst, Some(method)).await?;
    ensure!(report.skipped >= 29, "resumed without skipping: {report:?}");
    ensure!(
        report.started_at.0 == *last_file.to_string_lossy(),
        "{report:?}"
    );
    step!("compare with the point");
    // The conflicting row was written without binlog, so the target's
    // binlog holds no GTID and gtid_binlog_pos is set to the point's too.
    s.check_target(&dst, &report).await
}

#[tokio::test]
async fn relay_conflict_is_fixed_and_resumed() -> anyhow::Result<()> {
    conflict_is_fixed_and_resumed("rc", Method::Relay).await
}

#[tokio::test]
async fn pipe_conflict_is_fixed_and_resumed() -> anyhow::Result<()> {
    conflict_is_fixed_and_resumed("pc", Method::Pipe).await
}

/// Targets with `gtid_strict_mode=ON` (and a binlog of their own): both
/// methods reach the point, and both GTID positions are the point's.
#[tokio::test]
async fn strict_mode_targets_work_with_both_methods() -> anyhow::Result<()> {
    let s = Scenario::build("sm").await?;
    step!("load the base into two strict-mode targets");
    let strict = ["--gtid-strict-mode=ON"];
    let (a, b) = tokio::try_join!(s.target("sm-relay", &strict), s.target("sm-pipe", &strict))?;
    let on: u8 = a.query_one("SELECT @@gtid_strict_mode").await?;
    ensure!(on == 1, "gtid_strict_mode is off");
    step!("relay");
    let report = replay_to_point(&s, &a, Some(Method::Relay)).await?;
    s.check_target(&a, &report).await?;
    step!("pipe");
    let report = replay_to_point(&s, &b, Some(Method::Pipe)).await?;
    s.check_target(&b, &report).await?;
    step!("the targets take new writes under strict mode");
    a.exec("INSERT INTO shop.feed (note) VALUES ('after pitr')")
        .await?;
    b.exec("INSERT INTO shop.feed (note) VALUES ('after pitr')")
        .await?;
    Ok(())
}

/// A target that has the source's server id (a rebuilt host keeping its
/// configuration): its SQL thread would skip every event as its own, so
/// the default method falls back to the pipe and says why, and an explicit
/// relay replay is refused before anything is applied.
#[tokio::test]
async fn the_source_server_id_on_the_target_falls_back_to_the_pipe() -> anyhow::Result<()> {
    let s = Scenario::build("si").await?;
    step!("load the base into a target with the source's server id");
    let same = format!("--server-id={}", s._src.server_id());
    let dst = s.target("si-dst", &[&same]).await?;
    let id: u32 = dst.query_one("SELECT @@server_id").await?;
    ensure!(id == s._src.server_id(), "the target's server id is {id}");
    step!("an explicit relay replay is refused");
    let err = replay::replay(
        &Server::parse(&dst.url())?,
        &s.plan(Some(Method::Relay)),
        &Progress::default(),
    )
    .await
    .expect_err("refused");
    let text = err.to_string();
    ensure!(
        text.contains(&dst.address()) && text.contains("server id"),
        "{text}"
    );
    let rows: u64 = dst
        .query_one("SELECT COUNT(*) FROM shop.feed WHERE note LIKE 'move %'")
        .await?;
    ensure!(rows == 0, "the refused replay applied {rows} transactions");
    step!("the default method uses the pipe and reaches the point");
    let report = replay_to_point(&s, &dst, None).await?;
    ensure!(report.method == Method::Pipe, "{report:?}");
    ensure!(
        report.warnings.iter().any(|w| w.contains("server id")),
        "{report:?}"
    );
    s.check_target(&dst, &report).await
}
