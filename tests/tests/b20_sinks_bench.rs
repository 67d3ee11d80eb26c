//! Sinks benchmark (not part of the test suite: the test is `#[ignore]`d and
//! prints numbers instead of asserting on speed). `bench/sinks.sh` builds
//! the release binaries and runs it:
//!
//! ```sh
//! cargo build --release --workspace --bins
//! LOCKSTEP_BIN_DIR=$PWD/target/release cargo test --workspace \
//!     --features lockstep-coordinator/failpoints --test b20_sinks_bench \
//!     -- --ignored --nocapture --test-threads=1
//! ```
//!
//! One MariaDB server with `ROWS` rows, one coordinator, the server's agent
//! and a media agent holding a disk pool, all on 127.0.0.1. Backups go in
//! turn to the agent's own `--sink-dir` (host-local) and to the media
//! agent's pool (gRPC, lockstep.media.v1), with `mariadb-dump` of the same
//! data to a file between them as the peer. Per backup: the transfer time
//! (cut committed → backup finished, coordinator clock), the artifact bytes,
//! the CPU seconds and peak RSS (VmHWM, reset before each backup through
//! `/proc/PID/clear_refs`) of both agents and of `mariadbd`. Lines starting
//! with `BENCH ` are the results, in markdown.

use std::path::Path;
use std::time::{Duration, Instant};

use lockstep_tests::{
    AgentOptions, AgentProc, CoordinatorGroup, MariaDb, MariaDbOptions, Supervised, run_lockstep,
    step,
};
use serde_json::Value;

const CLUSTER: &str = "bench";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `lockstep --json ARGS` against `group`; fails unless it succeeds.
async fn cli(group: &CoordinatorGroup, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run_lockstep(&group.urls(), &all).await?;
    anyhow::ensure!(
        out.status.success(),
        "lockstep {args:?} failed: {}",
        out.stderr
    );
    Ok(serde_json::from_str(out.stdout.trim())?)
}

/// CPU seconds (user + system) of `pid` so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat has no command name: {stat}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    anyhow::ensure!(f.len() > 13, "/proc/{pid}/stat is short: {stat}");
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / clock_ticks()?)
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> anyhow::Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "getconf CLK_TCK failed: {}",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A `Vm*` line of /proc/PID/status, in KiB.
fn vm_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad line in /proc/{pid}/status: {line}"))?
        .parse()?)
}

/// Resets the peak RSS (VmHWM) of `pid` to its current RSS.
fn reset_hwm(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

/// Removes everything inside `dir` (the artifacts of a finished backup), so
/// the runs do not fill the disk.
fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    /// "host-local", "pool" or "mariadb-dump".
    what: &'static str,
    /// Transfer: cut committed → finished (backups); whole run (dump).
    seconds: f64,
    /// `lockstep backup start --wait` wall time (backups); = seconds (dump).
    wall: f64,
    bytes: u64,
    src_cpu: f64,
    media_cpu: f64,
    server_cpu: f64,
    /// Peak RSS during the run, KiB (VmHWM after a reset; sampled VmRSS
    /// max if the reset was refused).
    src_hwm: u64,
    media_hwm: u64,
}

struct Rig {
    server: MariaDb,
    group: CoordinatorGroup,
    src: AgentProc,
    media: AgentProc,
}

impl Rig {
    fn pids(&self) -> anyhow::Result<(u32, u32, u32)> {
        let p = |o: Option<u32>, what: &str| o.ok_or_else(|| anyhow::anyhow!("{what} not running"));
        Ok((
            p(self.src.pid(), "source agent")?,
            p(self.media.pid(), "media agent")?,
            p(self.server.pid(), "mariadbd")?,
        ))
    }

    /// Runs `work` while sampling both agents' VmRSS every 50 ms; returns
    /// its output and the run's CPU and peak RSS figures.
    async fn measured<T>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<(T, [f64; 3], [u64; 2])> {
        let (src, media, server) = self.pids()?;
        let reset = reset_hwm(src).and_then(|()| reset_hwm(media)).is_ok();
        let cpu0 = [cpu_seconds(src)?, cpu_seconds(media)?, cpu_seconds(server)?];
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut peak = [0u64; 2];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, pid) in [src, media].into_iter().enumerate() {
                    if let Ok(k) = vm_kib(pid, "VmRSS:") {
                        peak[i] = peak[i].max(k);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        let out = work.await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sampled = sampler.await?;
        let out = out?;
        let cpu = [
            cpu_seconds(src)? - cpu0[0],
            cpu_seconds(media)? - cpu0[1],
            cpu_seconds(server)? - cpu0[2],
        ];
        let hwm = if reset {
            [vm_kib(src, "VmHWM:")?, vm_kib(media, "VmHWM:")?]
        } else {
            sampled
        };
        Ok((out, cpu, hwm))
    }

    /// One backup to `sink`; its artifacts are removed afterwards.
    async fn backup(&self, sink: &'static str) -> anyhow::Result<Run> {
        let started = Instant::now();
        let (b, cpu, hwm) = self
            .measured(cli(
                &self.group,
                &[
                    "backup",
                    "start",
                    "--cluster",
                    CLUSTER,
                    "--sink",
                    sink,
                    "--wait",
                ],
            ))
            .await?;
        let wall = started.elapsed().as_secs_f64();
        anyhow::ensure!(b["status"] == "COMPLETE", "backup to {sink} failed: {b}");
        let cut = b["cut_committed_at_unix_ms"].as_i64();
        let done = b["finished_at_unix_ms"].as_i64();
        let (Some(cut), Some(done)) = (cut, done) else {
            anyhow::bail!("backup to {sink} has no cut or finish time: {b}");
        };
        let bytes: u64 = b["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["artifact"]["bytes"].as_u64())
            .sum();
        anyhow::ensure!(bytes > 0, "backup to {sink} has no artifact bytes: {b}");
        let dir = if sink == "pool" {
            self.media
                .pool()
                .ok_or_else(|| anyhow::anyhow!("the media agent has no pool"))?
        } else {
            self.src.sink_dir()
        };
        empty_dir(dir)?;
        Ok(Run {
            what: sink,
            seconds: (done - cut) as f64 / 1000.0,
            wall,
            bytes,
            src_cpu: cpu[0],
            media_cpu: cpu[1],
            server_cpu: cpu[2],
            src_hwm: hwm[0],
            media_hwm: hwm[1],
        })
    }

    /// `mariadb-dump --single-transaction` of the same database to a file.
    async fn mariadb_dump(&self, out_dir: &Path) -> anyhow::Result<Run> {
        let file = out_dir.join("dump.sql");
        let port = self.server.port().to_string();
        let started = Instant::now();
        let (status, cpu, _) = self
            .measured(async {
                Ok(tokio::process::Command::new("mariadb-dump")
                    .args(["-h127.0.0.1", "-uroot", "--single-transaction"])
                    .arg(format!("-P{port}"))
                    .arg(format!("--result-file={}", file.display()))
                    .args(["--databases", "bench"])
                    .status()
                    .await?)
            })
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "mariadb-dump failed: {status}");
        let bytes = std::fs::metadata(&file)?.len();
        std::fs::remove_file(&file)?;
        Ok(Run {
            what: "mariadb-dump",
            seconds,
            wall: seconds,
            bytes,
            src_cpu: f64::NAN,
            media_cpu: f64::NAN,
            server_cpu: cpu[2],
            src_hwm: 0,
            media_hwm: 0,
        })
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Transfer time and rate to a media agent's pool against the host-local
/// sink (same dump, same server), `mariadb-dump` as the peer, and both
/// agents' peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn transfer_to_media_agent_against_host_local() -> anyhow::Result<()> {
    let rows = env_usize("ROWS", 4_000_000);
    let rounds = env_usize("ROUNDS", 7);
    // POOL_ONLY=1: only backups to the pool (a long series for the source
    // agent's memory), no host-local backups and no mariadb-dump.
    let pool_only = std::env::var("POOL_ONLY").is_ok_and(|v| v == "1");
    step!("one server (1 GiB buffer pool), one coordinator");
    let mut opts = MariaDbOptions::named("src");
    opts.extra_args = vec![
        "--innodb-buffer-pool-size=1G".into(),
        "--innodb-log-file-size=512M".into(),
        "--max-connections=100".into(),
    ];
    let (server, group) = tokio::try_join!(MariaDb::start(opts), CoordinatorGroup::start(1))?;
    step!("{rows} rows: id INT PK, two CHAR(64) of SHA2");
    let generated = Instant::now();
    server
        .exec(
            "SET SESSION sql_log_bin=0; CREATE DATABASE bench; \
             CREATE TABLE bench.t (id INT NOT NULL PRIMARY KEY, a CHAR(64) NOT NULL, \
             b CHAR(64) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        )
        .await?;
    let batch = 1_000_000;
    let mut from = 1;
    while from <= rows {
        let to = (from + batch - 1).min(rows);
        server
            .exec(&format!(
                "SET SESSION sql_log_bin=0; INSERT INTO bench.t \
                 SELECT seq, SHA2(seq, 256), SHA2(CONCAT('b', seq), 256) FROM bench.seq_{from}_to_{to}"
            ))
            .await?;
        from = to + 1;
    }
    server.exec("ANALYZE TABLE bench.t").await?;
    let data_bytes: u64 = server
        .query_one::<u64>(
            "SELECT CAST(data_length + index_length AS UNSIGNED) FROM information_schema.tables \
             WHERE table_schema = 'bench' AND table_name = 't'",
        )
        .await?;
    let gen_s = generated.elapsed().as_secs_f64();

    step!("the server's agent and a media agent join cluster {CLUSTER}");
    let join = |mut o: AgentOptions| {
        o.extra_args = vec![
            "--cluster".into(),
            CLUSTER.into(),
            "--coordinators".into(),
            group.urls(),
        ];
        o
    };
    let (src, media) = tokio::try_join!(
        AgentProc::start(join(AgentOptions::new("src", server.url()))),
        AgentProc::start(join(AgentOptions::media("vault")))
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = cli(&group, &["server", "list"]).await?;
        if list
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["healthy"] == true))
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "server not healthy: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = media
        .pool()
        .ok_or_else(|| anyhow::anyhow!("the media agent has no pool"))?
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("pool path is not UTF-8"))?
        .to_string();
    step!("sink add pool (disk, on the media agent)");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let args = [
            "--json",
            "sink",
            "add",
            "pool",
            "--kind",
            "disk",
            "--agent",
            "vault",
            "--path",
            &pool,
            "--cluster",
            CLUSTER,
        ];
        let out = run_lockstep(&group.urls(), &args).await?;
        if out.status.success() {
            break;
        }
        anyhow::ensure!(
            out.stderr.contains("is registered") && Instant::now() < deadline,
            "sink add: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rig = Rig {
        server,
        group,
        src,
        media,
    };
    let scratch = tempfile::tempdir()?;

    step!("warm-up: one backup to each sink (not counted)");
    rig.backup("host-local").await?;
    rig.backup("pool").await?;

    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=rounds {
        // Alternate which sink goes first, so a trend in the machine's load
        // does not favour one.
        let order: &[&'static str] = if pool_only {
            &["pool"]
        } else if round % 2 == 1 {
            &["host-local", "pool"]
        } else {
            &["pool", "host-local"]
        };
        for &sink in order {
            step!("round {round}/{rounds}: backup to {sink}");
            let r = rig.backup(sink).await?;
            step!(
                "{sink}: {:.2} s transfer, {:.2} s wall, {:.1} MiB, {:.1} MiB/s, \
                 src agent {:.1} s CPU / {} MiB peak, media agent {:.1} s CPU / {} MiB peak, \
                 mariadbd {:.1} s CPU",
                r.seconds,
                r.wall,
                mib(r.bytes),
                mib(r.bytes) / r.seconds,
                r.src_cpu,
                r.src_hwm / 1024,
                r.media_cpu,
                r.media_hwm / 1024,
                r.server_cpu
            );
            runs.push(r);
        }
        if pool_only {
            continue;
        }
        step!("round {round}/{rounds}: mariadb-dump");
        let r = rig.mariadb_dump(scratch.path()).await?;
        step!(
            "mariadb-dump: {:.2} s, {:.1} MiB, mariadbd {:.1} s CPU",
            r.seconds,
            mib(r.bytes),
            r.server_cpu
        );
        runs.push(r);
    }

    // Report.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let of = |what: &str| -> Vec<&Run> { runs.iter().filter(|r| r.what == what).collect() };
    let out = |s: String| println!("BENCH {s}");
    out(format!(
        "Data: 1 table x {rows} rows (`id INT PK, a CHAR(64), b CHAR(64)`, SHA2 hex, utf8mb4), \
         InnoDB data+index {:.0} MiB; generated in {gen_s:.0} s; {rounds} rounds; \
         load average at the end {}",
        mib(data_bytes),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    out(String::new());
    out("| destination | runs | transfer s, median (min–max) | artifact MiB | MiB/s, median (min–max) | source agent CPU s | media agent CPU s | mariadbd CPU s | source agent peak RSS MiB (max) | media agent peak RSS MiB (max) |".into());
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|".into());
    let mut medians = std::collections::BTreeMap::new();
    for what in ["host-local", "pool", "mariadb-dump"] {
        let rs = of(what);
        if rs.is_empty() {
            continue;
        }
        let secs: Vec<f64> = rs.iter().map(|r| r.seconds).collect();
        let rates: Vec<f64> = rs.iter().map(|r| mib(r.bytes) / r.seconds).collect();
        let (smin, smax) = min_max(&secs);
        let (rmin, rmax) = min_max(&rates);
        let bytes = median(&rs.iter().map(|r| r.bytes as f64).collect::<Vec<_>>());
        let med = |f: fn(&Run) -> f64| median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let peak = |f: fn(&Run) -> u64| rs.iter().map(|r| f(r)).max().unwrap_or(0) / 1024;
        medians.insert(what, (median(&secs), median(&rates)));
        let label = match what {
            "host-local" => "host-local (agent's own --sink-dir)",
            "pool" => "media agent's pool (gRPC on loopback)",
            _ => "mariadb-dump --single-transaction to a file (peer)",
        };
        let agent_cells = if what == "mariadb-dump" {
            "- | - | ".to_string()
        } else {
            format!("{:.1} | {:.1} | ", med(|r| r.src_cpu), med(|r| r.media_cpu))
        };
        let rss_cells = if what == "mariadb-dump" {
            "- | -".to_string()
        } else {
            format!("{} | {}", peak(|r| r.src_hwm), peak(|r| r.media_hwm))
        };
        out(format!(
            "| {label} | {} | {:.2} ({smin:.2}–{smax:.2}) | {:.0} | {:.1} ({rmin:.1}–{rmax:.1}) | {agent_cells}{:.1} | {rss_cells} |",
            rs.len(),
            median(&secs),
            mib(bytes as u64),
            median(&rates),
            med(|r| r.server_cpu),
        ));
    }
    out(String::new());
    if let (Some((local_s, local_r)), Some((pool_s, pool_r)), Some((dump_s, _))) = (
        medians.get("host-local"),
        medians.get("pool"),
        medians.get("mariadb-dump"),
    ) {
        out(format!(
            "Pool rate / host-local rate (medians): **{:.0}%** (target ≥ 80%); \
             pool transfer / mariadb-dump time: {:.2}; host-local / mariadb-dump: {:.2}.",
            100.0 * pool_r / local_r,
            pool_s / dump_s,
            local_s / dump_s
        ));
    }
    let per_run = |what: &str| {
        of(what)
            .iter()
            .map(|r| format!("{:.2}", r.seconds))
            .collect::<Vec<_>>()
            .join(" ")
    };
    out(String::new());
    out(format!(
        "Per run, s, in order: host-local {}; pool {}; mariadb-dump {}.",
        per_run("host-local"),
        per_run("pool"),
        per_run("mariadb-dump")
    ));
    let rss_per_run = |what: &str| {
        of(what)
            .iter()
            .map(|r| (r.src_hwm / 1024).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    out(String::new());
    out(format!(
        "Source agent peak RSS per backup, MiB, in order: host-local {}; pool {}.",
        rss_per_run("host-local"),
        rss_per_run("pool")
    ));
    Ok(())
}
