//! Archive lag benchmark (not part of the test suite: the test is
//! `#[ignore]`d and prints numbers instead of asserting on speed). Run:
//!
//! ```sh
//! cargo build --release --workspace --bins
//! LOCKSTEP_BIN_DIR=$PWD/target/release cargo test --release -p lockstep-tests \
//!     --test b42_archive_lag_bench -- --ignored --nocapture --test-threads=1
//! DURATION_SECS=10 RATE=0 cargo test ...   # a short run, writers unthrottled
//! ```
//!
//! Knobs: `DURATION_SECS` (default 60), `RATE` (transactions/s per server,
//! default 500; 0 = as fast as the writers go), `WRITERS` (connections per
//! server, default 4). Results go to BENCHMARKS.md by hand, with the
//! command; lines starting with `BENCH ` are markdown table rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use lockstep_proto::coordinator::ArchiveStatusRequest;
use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use lockstep_tests::bench::{env_usize, percentile};
use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::process::{remove_temp_dir, short_temp_dir};
use lockstep_tests::{AgentOptions, ChildProcess, MariaDb, MariaDbOptions, step};
use mysql_async::prelude::Queryable as _;
use tokio_util::sync::CancellationToken;

/// Rows of the sysbench-like table on each server.
const ROWS: u64 = 10_000;
/// How often each server's position is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often the local archive and the peer's output files are looked at.
const FILE_POLL: Duration = Duration::from_millis(5);
/// How often the leader's `ArchiveStatus` is asked.
const STATUS_POLL: Duration = Duration::from_millis(20);
/// How long everything may take to catch up after the writers stop.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A binlog position, ordered: (file number, offset).
type Pos = (u64, u64);

/// `mysql-bin.000042` → 42.
fn file_number(name: &str) -> Option<u64> {
    let (_, n) = name.rsplit_once('.')?;
    (n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

fn pos(file: &str, offset: u64) -> Option<Pos> {
    Some((file_number(file)?, offset))
}

/// Milliseconds since the run's anchor.
#[derive(Debug, Clone, Copy)]
struct Clock {
    at: Instant,
    sys: SystemTime,
}

impl Clock {
    fn now(&self) -> f64 {
        self.at.elapsed().as_secs_f64() * 1000.0
    }

    fn of(&self, t: SystemTime) -> f64 {
        match t.duration_since(self.sys) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -e.duration().as_secs_f64() * 1000.0,
        }
    }
}

/// When a position source was first seen at or past each position it
/// reached (only advances are kept).
#[derive(Debug, Default, Clone)]
struct Timeline(Vec<(f64, Pos)>);

impl Timeline {
    fn observe(&mut self, at: f64, p: Pos) {
        if self.0.last().is_none_or(|(_, last)| p > *last) {
            self.0.push((at, p));
        }
    }

    /// When it first reached `p`.
    fn reached(&self, p: Pos) -> Option<f64> {
        let i = self.0.partition_point(|(_, q)| *q < p);
        self.0.get(i).map(|(t, _)| *t)
    }
}

/// Timelines by source (`local:S`, `catalog:S`, `peer:S`).
type Seen = Arc<Mutex<HashMap<String, Timeline>>>;

fn observe(seen: &Seen, key: &str, at: f64, p: Pos) {
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.to_string())
        .or_default()
        .observe(at, p);
}

fn reached(seen: &Seen, key: &str, p: Pos) -> Option<f64> {
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .and_then(|t| t.reached(p))
}

/// The newest binlog in `dir` and its size.
fn dir_pos(dir: &Path) -> Option<Pos> {
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let n = file_number(&e.file_name().to_string_lossy())?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)?;
    Some((newest.0, std::fs::metadata(&newest.1).ok()?.len()))
}

/// One position sample of a server: when it was asked and where it was.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t0: f64,
    at: Pos,
}

/// p50 / p95 / p99 / max of `v` (ms), and how many.
fn dist(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "n={} p50={:.0} p95={:.0} p99={:.0} max={:.0}",
        s.len(),
        percentile(&s, 0.5),
        percentile(&s, 0.95),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN)
    )
}

fn row(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "{:.0} | {:.0} | {:.0} | {:.0}",
        percentile(&s, 0.5),
        percentile(&s, 0.95),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN)
    )
}

/// The sysbench-like schema and rows on one server.
async fn setup(db: &MariaDb) -> anyhow::Result<()> {
    db.exec("CREATE DATABASE sbtest").await?;
    db.exec(
        "CREATE TABLE sbtest.sbtest1 (id INT PRIMARY KEY, k INT NOT NULL DEFAULT 0, \
         c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', KEY k_1 (k)) ENGINE=InnoDB",
    )
    .await?;
    db.exec(&format!(
        "INSERT INTO sbtest.sbtest1 SELECT seq, seq MOD 1000, REPEAT(MD5(seq), 3), MD5(seq + 1) \
         FROM sbtest.seq_1_to_{ROWS}"
    ))
    .await
}

/// A small xorshift generator (one per writer).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// sysbench's `c`: 10 groups of 11 digits.
    fn c(&mut self) -> String {
        (0..10)
            .map(|_| format!("{:011}", self.next() % 100_000_000_000))
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// Counters of one server's writers.
#[derive(Debug, Default)]
struct Written {
    txns: AtomicU64,
    errors: AtomicU64,
}

/// One writer: sysbench `oltp_write_only` transactions (an index update,
/// a non-index update, a delete and an insert of the same row) on rows
/// `id ≡ w (mod writers)`, at `every` per transaction (none: back to back),
/// until `until`.
async fn writer(
    db: mysql_async::Opts,
    w: u64,
    writers: u64,
    every: Option<Duration>,
    until: Instant,
    done: Arc<Written>,
) -> anyhow::Result<()> {
    let mut conn = mysql_async::Conn::new(db).await?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut tick = every.map(|e| {
        let mut i = tokio::time::interval(e);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        i
    });
    while Instant::now() < until {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let id = |r: &mut Rng| (r.next() % (ROWS / writers)) * writers + w + 1;
        let (a, b, d) = (id(&mut rng), id(&mut rng), id(&mut rng));
        let (c, c2, pad) = (rng.c(), rng.c(), rng.c());
        let sql = format!(
            "START TRANSACTION; \
             UPDATE sbtest.sbtest1 SET k = k + 1 WHERE id = {a}; \
             UPDATE sbtest.sbtest1 SET c = '{c}' WHERE id = {b}; \
             DELETE FROM sbtest.sbtest1 WHERE id = {d}; \
             INSERT INTO sbtest.sbtest1 (id, k, c, pad) VALUES ({d}, {k}, '{c2}', '{p}'); \
             COMMIT",
            k = rng.next() % ROWS,
            p = &pad[..59],
        );
        match conn.query_drop(sql).await {
            Ok(()) => done.txns.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                conn.query_drop("ROLLBACK").await.ok();
                done.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
    conn.disconnect().await.ok();
    Ok(())
}

/// Samples `db`'s `SHOW MASTER STATUS` every [`SAMPLE_EVERY`] until
/// `stop`, on one connection.
async fn sampler(
    db: mysql_async::Opts,
    name: String,
    clock: Clock,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Sample>> {
    let mut conn = mysql_async::Conn::new(db).await?;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t0 = clock.now();
        let row: Option<mysql_async::Row> = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .with_context(|| format!("SHOW MASTER STATUS on {name}"))?;
        let row = row.with_context(|| format!("{name}: binlog is off"))?;
        let (file, offset): (String, u64) = match (row.get_opt(0), row.get_opt(1)) {
            (Some(Ok(f)), Some(Ok(p))) => (f, p),
            _ => anyhow::bail!("SHOW MASTER STATUS on {name}: unexpected row {row:?}"),
        };
        out.push(Sample {
            t0,
            at: pos(&file, offset).with_context(|| format!("{name}: binlog name {file}"))?,
        });
    }
    conn.disconnect().await.ok();
    Ok(out)
}

/// Polls the given directories (`key`, dir) every [`FILE_POLL`] until
/// `stop`.
async fn watch_dirs(
    dirs: Vec<(String, PathBuf)>,
    seen: Seen,
    clock: Clock,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        for (key, dir) in &dirs {
            if let Some(p) = dir_pos(dir) {
                observe(&seen, key, clock.now(), p);
            }
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}

/// What the catalog poller saw besides the positions.
#[derive(Debug, Default)]
struct StatusStats {
    /// Round trips of `ArchiveStatus` (ms).
    calls: Vec<f64>,
    /// The largest `lag_ms` each agent reported.
    head_lag_ms: HashMap<String, u64>,
    /// Calls refused (a follower) or failed.
    refused: usize,
}

/// Asks the leader's `ArchiveStatus` every [`STATUS_POLL`] until `stop`
/// (the RPC behind `lockstep archive status`); an observation is stamped
/// when the answer arrives. Followers refuse it: the next member is tried.
async fn poll_catalog(
    urls: Vec<String>,
    seen: Seen,
    clock: Clock,
    stop: CancellationToken,
) -> anyhow::Result<StatusStats> {
    let mut stats = StatusStats::default();
    let transport = lockstep_tests::tls::transport_as(None, "operator")?;
    let mut member = 0;
    let mut client = None;
    while !stop.is_cancelled() {
        if client.is_none() {
            member = (member + 1) % urls.len();
            match lockstep_tests::tls::channel(&transport, &urls[member]).await {
                Ok(ch) => client = Some(CoordinatorClient::new(ch)),
                Err(_) => stats.refused += 1,
            }
        }
        if let Some(c) = client.as_mut() {
            let asked = clock.now();
            let req = ArchiveStatusRequest {
                cluster: CLUSTER.to_string(),
            };
            match c.archive_status(req).await {
                Ok(reply) => {
                    let now = clock.now();
                    stats.calls.push(now - asked);
                    for s in reply.into_inner().servers {
                        if let Some(p) = pos(&s.file, s.end) {
                            observe(&seen, &format!("catalog:{}", s.server), now, p);
                        }
                        if let Some(h) = &s.head {
                            let m = stats.head_lag_ms.entry(s.server.clone()).or_default();
                            *m = (*m).max(h.lag_ms);
                        }
                    }
                }
                Err(_) => {
                    // Not the leader (or it went away): ask the next member.
                    stats.refused += 1;
                    client = None;
                }
            }
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    Ok(stats)
}

/// The segments of `server` in a host-local sink: (stored at, end
/// position, bytes), in binlog order. "Stored at" is the segment file's
/// mtime: its last write, just before the store fsyncs and names it.
fn sink_segments(sink: &Path, server: &str, clock: Clock) -> anyhow::Result<Vec<(f64, Pos, u64)>> {
    let root = sink.join("binlog").join(CLUSTER).join(server);
    let mut out = Vec::new();
    for file in std::fs::read_dir(&root).with_context(|| format!("list {}", root.display()))? {
        let file = file?;
        let name = file.file_name().to_string_lossy().into_owned();
        let Some(n) = file_number(&name) else {
            continue;
        };
        for seg in std::fs::read_dir(file.path())? {
            let seg = seg?;
            let seg_name = seg.file_name().to_string_lossy().into_owned();
            let (a, b) = seg_name
                .split_once('-')
                .with_context(|| format!("segment name {seg_name} in {name}"))?;
            let (start, end): (u64, u64) = (a.parse()?, b.parse()?);
            let mtime = seg.metadata()?.modified()?;
            out.push((clock.of(mtime), (n, end), end - start));
        }
    }
    out.sort_by_key(|(_, p, _)| *p);
    Ok(out)
}

/// The costs of two steps of each shipping round, measured beside the
/// agents on the same load: a new connection plus `SHOW BINARY LOGS` (what
/// the agent does for the head of every report) and writing 256 KiB to a
/// new file with an fsync of it and of its directory (about what storing
/// one segment in a disk sink costs). Every 250 ms until `stop` (ms).
async fn probe_costs(
    db: mysql_async::Opts,
    dir: PathBuf,
    stop: CancellationToken,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut head, mut store) = (Vec::new(), Vec::new());
    let data = vec![7u8; 256 << 10];
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let t = Instant::now();
        let mut conn = mysql_async::Conn::new(db.clone()).await?;
        let _: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
        head.push(t.elapsed().as_secs_f64() * 1000.0);
        conn.disconnect().await.ok();
        let (t, path, data, d) = (
            Instant::now(),
            dir.join(format!("probe{n}")),
            data.clone(),
            dir.clone(),
        );
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&data)?;
            f.sync_data()?;
            std::fs::File::open(&d)?.sync_all()?;
            std::fs::remove_file(&path)
        })
        .await??;
        store.push(t.elapsed().as_secs_f64() * 1000.0);
        n += 1;
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    Ok((head, store))
}

/// Sum of the sizes in `SHOW BINARY LOGS`.
async fn binlog_bytes(db: &MariaDb) -> anyhow::Result<u64> {
    let logs: Vec<(String, u64)> = db.query("SHOW BINARY LOGS").await?;
    Ok(logs.iter().map(|(_, s)| s).sum())
}

/// `mariadb-binlog --read-from-remote-server --raw --stop-never` from the
/// start of `file` on `db` into `dir` (a peer that keeps no fsync and no
/// sink), its output in `log`. Killed on drop.
fn start_peer(db: &MariaDb, file: &str, dir: &Path, log: &Path) -> anyhow::Result<ChildProcess> {
    let mut cmd = std::process::Command::new("mariadb-binlog");
    cmd.arg("--no-defaults")
        .arg("--read-from-remote-server")
        .arg("--host=127.0.0.1")
        .arg(format!("--port={}", db.port()))
        .arg("--user=root")
        .arg("--raw")
        .arg("--stop-never")
        .arg(format!(
            "--stop-never-slave-server-id={}",
            3_900_000_000u32 + db.server_id() % 100_000_000
        ))
        .arg(format!("--result-file={}/", dir.display()))
        .arg(file);
    ChildProcess::spawn("mariadb-binlog peer", cmd, log)
}

/// Archive lag to the primary sink under sustained sysbench-like writes on
/// 3 servers: every [`SAMPLE_EVERY`] each server's `SHOW MASTER STATUS`
/// position is taken (t0), and the lag is the time until the catalog's
/// archive of the server (`archive status` file/end) first reaches it.
/// Also when the agent's local archive and the sink reach it, and the same
/// lag for a `mariadb-binlog --raw --stop-never` peer on server 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn archive_lag_under_sustained_writes() -> anyhow::Result<()> {
    let secs = env_usize("DURATION_SECS", 60) as u64;
    let rate = env_usize("RATE", 500) as u64;
    let writers = env_usize("WRITERS", 4).max(1) as u64;

    step!("start 3 MariaDB servers, 3 coordinators and 3 archiving agents");
    let opts = MariaDbOptions {
        extra_args: vec![
            "--innodb-buffer-pool-size=128M".into(),
            "--innodb-log-file-size=128M".into(),
        ],
        ..MariaDbOptions::default()
    };
    let servers = MariaDb::start_many_with(&["lag0", "lag1", "lag2"], &opts).await?;
    for db in &servers {
        setup(db).await?;
    }
    let cluster = Cluster::start_on(servers, None, |_, s| {
        let mut o = AgentOptions::new(s.name(), s.url());
        o.extra_args = vec!["--archive".into()];
        o
    })
    .await?;
    cluster.wait_archive_caught_up().await?;

    let clock = Clock {
        at: Instant::now(),
        sys: SystemTime::now(),
    };
    let seen: Seen = Arc::default();
    let stop = CancellationToken::new();
    let peer_dir = short_temp_dir("lag-peer-")?;
    let peer_out = peer_dir.path().join("out");
    std::fs::create_dir(&peer_out)?;
    let db0 = &cluster.servers[0];
    let (first, _) = db0.binlog_position().await?.context("binlog is off")?;
    step!(
        "start the peer: mariadb-binlog --raw --stop-never on {} from {first}",
        db0.name()
    );
    let mut peer = start_peer(db0, &first, &peer_out, &peer_dir.path().join("peer.log"))?;
    let mut dirs = vec![(format!("peer:{}", db0.name()), peer_out.clone())];
    for (db, agent) in cluster.servers.iter().zip(&cluster.agents) {
        let local = agent
            .sink_dir()
            .parent()
            .context("agent sink dir")?
            .join("binlog-archive")
            .join(db.name());
        dirs.push((format!("local:{}", db.name()), local));
    }
    let files = tokio::spawn(watch_dirs(dirs, seen.clone(), clock, stop.clone()));
    let urls: Vec<String> = cluster.group.members.iter().map(|m| m.url()).collect();
    let catalog_stats = tokio::spawn(poll_catalog(urls, seen.clone(), clock, stop.clone()));

    let every = (rate > 0).then(|| Duration::from_secs_f64(writers as f64 / rate as f64));
    step!(
        "write for {secs} s: {writers} writers per server, {} per server; sample every {SAMPLE_EVERY:?}",
        if rate > 0 {
            format!("{rate} transactions/s")
        } else {
            "unthrottled".into()
        }
    );
    let mut before = Vec::new();
    for db in &cluster.servers {
        before.push(binlog_bytes(db).await?);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let written: Vec<Arc<Written>> = (0..3).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (db, done) in cluster.servers.iter().zip(&written) {
        for w in 0..writers {
            tasks.push(tokio::spawn(writer(
                db.opts(),
                w,
                writers,
                every,
                until,
                done.clone(),
            )));
        }
    }
    let sample_stop = CancellationToken::new();
    let samplers: Vec<_> = cluster
        .servers
        .iter()
        .map(|db| {
            tokio::spawn(sampler(
                db.opts(),
                db.name().to_string(),
                clock,
                sample_stop.clone(),
            ))
        })
        .collect();
    let probe_dir = peer_dir.path().join("probe");
    std::fs::create_dir(&probe_dir)?;
    let probe = tokio::spawn(probe_costs(db0.opts(), probe_dir, sample_stop.clone()));
    for t in tasks {
        t.await??;
    }
    let wrote_for = started.elapsed().as_secs_f64();
    sample_stop.cancel();
    let mut samples = Vec::new();
    for s in samplers {
        samples.push(s.await??);
    }
    let (head_cost, store_cost) = probe.await??;

    step!(
        "writers stopped; wait until the catalog, the local archives and the peer reach every server's end"
    );
    let mut finals = Vec::new();
    let mut after = Vec::new();
    for db in &cluster.servers {
        let (file, offset) = db.binlog_position().await?.context("binlog is off")?;
        finals.push(pos(&file, offset).context("binlog name")?);
        after.push(binlog_bytes(db).await?);
    }
    cluster.wait_archive_caught_up().await?;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let mut behind = Vec::new();
        for (db, end) in cluster.servers.iter().zip(&finals) {
            for kind in ["catalog", "local"] {
                let key = format!("{kind}:{}", db.name());
                if reached(&seen, &key, *end).is_none() {
                    behind.push(key);
                }
            }
        }
        let peer_key = format!("peer:{}", db0.name());
        if reached(&seen, &peer_key, finals[0]).is_none() {
            behind.push(peer_key);
        }
        if behind.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not caught up within {CATCH_UP:?}: {behind:?}; peer log: {}",
            peer.log_tail(10)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    files.await?;
    let stats = catalog_stats.await??;
    peer.kill()?;
    drop(peer);

    step!("results");
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lag_of = |key: &str, s: &Sample| -> Option<f64> {
        seen.get(key)?.reached(s.at).map(|t1| (t1 - s.t0).max(0.0))
    };
    let (mut all, mut all_local, mut all_sink) = (Vec::new(), Vec::new(), Vec::new());
    // Per sample: local archive → stored in the sink → in the catalog.
    let (mut to_sink, mut to_catalog) = (Vec::new(), Vec::new());
    let (mut txns, mut bytes) = (0u64, 0u64);
    for (i, db) in cluster.servers.iter().enumerate() {
        let name = db.name();
        let segs = sink_segments(cluster.agents[i].sink_dir(), name, clock)?;
        let sink_at = |s: &Sample| -> Option<f64> {
            let j = segs.partition_point(|(_, end, _)| *end < s.at);
            segs.get(j).map(|(t, _, _)| (t - s.t0).max(0.0))
        };
        let mut unresolved = 0;
        let (mut cat, mut local, mut sink) = (Vec::new(), Vec::new(), Vec::new());
        for s in &samples[i] {
            let c = lag_of(&format!("catalog:{name}"), s);
            match c {
                Some(l) => cat.push(l),
                None => unresolved += 1,
            }
            let (l, k) = (lag_of(&format!("local:{name}"), s), sink_at(s));
            local.extend(l);
            sink.extend(k);
            if let (Some(c), Some(l), Some(k)) = (c, l, k) {
                to_sink.push(k - l);
                to_catalog.push(c - k);
            }
        }
        ensure!(
            unresolved == 0,
            "{name}: {unresolved} samples the catalog never reached"
        );
        let t = written[i].txns.load(Ordering::Relaxed);
        let e = written[i].errors.load(Ordering::Relaxed);
        ensure!(t > 0, "{name}: no transaction committed ({e} failed)");
        let b = after[i] - before[i];
        txns += t;
        bytes += b;
        // Shipping cadence: time between consecutive segments of the run.
        let in_run: Vec<&(f64, Pos, u64)> = segs
            .iter()
            .filter(|(t, _, _)| *t >= samples[i].first().map_or(0.0, |s| s.t0))
            .collect();
        let gaps: Vec<f64> = in_run.windows(2).map(|w| w[1].0 - w[0].0).collect();
        let seg_bytes: u64 = in_run.iter().map(|(_, _, b)| b).sum();
        println!(
            "RESULT server={name} txn_per_s={:.0} errors={e} binlog_mb_per_s={:.2} archive_lag_ms {}",
            t as f64 / wrote_for,
            b as f64 / wrote_for / 1e6,
            dist(&cat)
        );
        println!(
            "STAGES server={name} local_ms {} | sink_ms {} | catalog_ms {} | agent_reported_max_lag_ms={}",
            dist(&local),
            dist(&sink),
            dist(&cat),
            stats.head_lag_ms.get(name).copied().unwrap_or(0)
        );
        println!(
            "SEGMENTS server={name} count={} mean_kb={:.1} between_segments_ms {}",
            in_run.len(),
            seg_bytes as f64 / in_run.len().max(1) as f64 / 1024.0,
            dist(&gaps)
        );
        println!(
            "BENCH | {name} | {:.0} | {:.2} | {} |",
            t as f64 / wrote_for,
            b as f64 / wrote_for / 1e6,
            row(&cat)
        );
        if i == 0 {
            let peer: Vec<f64> = samples[0]
                .iter()
                .filter_map(|s| lag_of(&format!("peer:{name}"), s))
                .collect();
            println!("PEER server={name} mariadb_binlog_lag_ms {}", dist(&peer));
            println!("BENCH | {name}: mariadb-binlog peer | | | {} |", row(&peer));
        }
        all.extend(cat);
        all_local.extend(local);
        all_sink.extend(sink);
    }
    println!(
        "RESULT overall seconds={wrote_for:.1} txn_per_s={:.0} binlog_mb_per_s={:.2} archive_lag_ms {}",
        txns as f64 / wrote_for,
        bytes as f64 / wrote_for / 1e6,
        dist(&all)
    );
    println!(
        "STAGES overall local_ms {} | sink_ms {} | catalog_ms {}",
        dist(&all_local),
        dist(&all_sink),
        dist(&all)
    );
    println!(
        "INCREMENTS overall local_to_sink_ms {} | sink_to_catalog_ms {}",
        dist(&to_sink),
        dist(&to_catalog)
    );
    println!(
        "STATUS calls={} call_ms {} refused={}",
        stats.calls.len(),
        dist(&stats.calls),
        stats.refused
    );
    println!(
        "PROBE connect_and_show_binary_logs_ms {} | write_256k_fsync_file_and_dir_ms {}",
        dist(&head_cost),
        dist(&store_cost)
    );
    println!(
        "BENCH | all | {:.0} | {:.2} | {} |",
        txns as f64 / wrote_for,
        bytes as f64 / wrote_for / 1e6,
        row(&all)
    );
    remove_temp_dir(peer_dir, "the mariadb-binlog peer");
    Ok(())
}
