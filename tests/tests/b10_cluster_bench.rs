//! Cluster benchmarks (not part of the test suite: every test here is
//! `#[ignore]`d and prints numbers instead of asserting on speed). Run:
//!
//! ```sh
//! cargo build --release --workspace --bins
//! LOCKSTEP_BIN_DIR=target/release cargo test --release -p lockstep-tests \
//!     --test b10_cluster_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Results go to BENCHMARKS.md by hand, with the command.

use std::time::{Duration, Instant};

use lockstep_tests::{
    AgentOptions, AgentProc, CausalWriter, CoordinatorGroup, MariaDb, Supervised, Target,
    run_lockstep, step,
};
use serde_json::Value;

const CLUSTER: &str = "bench";

struct Cluster {
    servers: Vec<MariaDb>,
    _agents: Vec<AgentProc>,
    group: CoordinatorGroup,
}

impl Cluster {
    async fn start(n: usize) -> anyhow::Result<Cluster> {
        let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (servers, group) =
            tokio::try_join!(MariaDb::start_many(&refs), CoordinatorGroup::start(3))?;
        let urls = group.urls();
        let agents = futures::future::try_join_all(servers.iter().map(|s| {
            let mut o = AgentOptions::new(s.name(), s.url());
            o.extra_args = vec![
                "--cluster".into(),
                CLUSTER.into(),
                "--coordinators".into(),
                urls.clone(),
            ];
            // LOCK_METHOD=ftwrl|backup-stage compares the agents' lock methods.
            if let Ok(m) = std::env::var("LOCK_METHOD") {
                o.extra_args.extend(["--lock-method".into(), m]);
            }
            AgentProc::start(o)
        }))
        .await?;
        let cluster = Cluster {
            servers,
            _agents: agents,
            group,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = cluster.cli(&["server", "list"]).await?;
            if list
                .as_array()
                .is_some_and(|l| l.iter().filter(|s| s["healthy"] == true).count() == n)
            {
                return Ok(cluster);
            }
            anyhow::ensure!(Instant::now() < deadline, "servers not healthy: {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = run_lockstep(&self.group.urls(), &all).await?;
        anyhow::ensure!(
            out.status.success(),
            "lockstep {args:?} failed: {}",
            out.stderr
        );
        Ok(serde_json::from_str(out.stdout.trim())?)
    }

    /// The causal chain's targets: record k on server k mod N.
    fn chain(&self) -> Vec<Target> {
        Target::chain_on(&self.servers)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Freeze window (first lock acquired to last lock released) over 50
/// backups of 3 and of 9 servers while a causal writer keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn freeze_window_under_write_load() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BACKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let sizes: Vec<usize> = std::env::var("SERVERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 9]);
    for n in sizes {
        step!("{n} servers");
        let cluster = Cluster::start(n).await?;
        let writer = CausalWriter::start(cluster.chain()).await?;
        writer.wait_committed(100, Duration::from_secs(60)).await?;
        let mut freeze = Vec::new();
        let mut holds = Vec::new();
        // Where the freeze goes, per backup (ms): first to last lock
        // statement; last PREPARED to first release (barrier, CommitCut raft
        // round, COMMIT); first to last release.
        let (mut spread, mut decide, mut unlock) = (Vec::new(), Vec::new(), Vec::new());
        let mut failed = 0;
        for _ in 0..runs {
            let b = cluster
                .cli(&["backup", "start", "--cluster", CLUSTER, "--wait"])
                .await;
            match b {
                Ok(b) if b["status"] == "COMPLETE" => {
                    freeze.push(b["freeze_ms"].as_f64().unwrap_or(f64::NAN));
                    if let Some(servers) = b["servers"].as_array() {
                        holds.extend(servers.iter().filter_map(|s| s["lock_ms"].as_f64()));
                        let at = |k: &str| -> Vec<f64> {
                            servers.iter().filter_map(|s| s[k].as_f64()).collect()
                        };
                        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
                        let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
                        let (locked, released) =
                            (at("locked_at_unix_us"), at("released_at_unix_us"));
                        let prepared: Vec<f64> = servers
                            .iter()
                            .filter_map(|s| {
                                Some(
                                    s["locked_at_unix_us"].as_f64()?
                                        + 1000.0 * s["lock_wait_ms"].as_f64()?
                                        + 1000.0 * s["capture_ms"].as_f64()?,
                                )
                            })
                            .collect();
                        spread.push((max(&locked) - min(&locked)) / 1000.0);
                        decide.push((min(&released) - max(&prepared)) / 1000.0);
                        unlock.push((max(&released) - min(&released)) / 1000.0);
                    }
                }
                other => {
                    failed += 1;
                    println!("backup did not complete: {other:?}");
                }
            }
        }
        let writes = writer.stop().await;
        for v in [
            &mut freeze,
            &mut holds,
            &mut spread,
            &mut decide,
            &mut unlock,
        ] {
            v.sort_by(f64::total_cmp);
        }
        anyhow::ensure!(!freeze.is_empty(), "no backup completed");
        println!(
            "RESULT servers={n} backups={} failed={failed} freeze_ms median={:.1} p99={:.1} max={:.1} lock_ms median={:.1} p99={:.1} chain_records={writes}",
            freeze.len(),
            percentile(&freeze, 0.5),
            percentile(&freeze, 0.99),
            freeze[freeze.len() - 1],
            percentile(&holds, 0.5),
            percentile(&holds, 0.99),
        );
        println!(
            "BREAKDOWN servers={n} lock_spread_ms median={:.1} p99={:.1} prepared_to_first_release_ms median={:.1} p99={:.1} release_spread_ms median={:.1} p99={:.1}",
            percentile(&spread, 0.5),
            percentile(&spread, 0.99),
            percentile(&decide, 0.5),
            percentile(&decide, 0.99),
            percentile(&unlock, 0.5),
            percentile(&unlock, 0.99),
        );
    }
    Ok(())
}

/// Time from SIGKILL of the leader, right after it committed a cut, to the
/// new leader resolving the inherited backup (COMPLETE or FAILED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn leader_kill_to_resolved_job() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut times = Vec::new();
    for round in 0..rounds {
        let cluster = Cluster::start(3).await?;
        for s in &cluster.servers {
            s.exec("CREATE DATABASE bulk").await?;
            s.exec("CREATE TABLE bulk.t (id INT PRIMARY KEY, c CHAR(40)) ENGINE=InnoDB")
                .await?;
            s.exec("INSERT INTO bulk.t SELECT seq, MD5(seq) FROM bulk.seq_1_to_300000")
                .await?;
        }
        let started = cluster
            .cli(&["backup", "start", "--cluster", CLUSTER])
            .await?;
        let id = started["id"].as_str().unwrap_or_default().to_string();
        let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.cli(&["catalog", "show", &id]).await?["status"] == "PREPARING" {
            anyhow::ensure!(Instant::now() < deadline, "cut never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut group = cluster.group;
        group.members[leader].kill()?;
        let killed = Instant::now();
        let status = loop {
            let urls = group.urls();
            let out = run_lockstep(&urls, &["--json", "catalog", "show", &id]).await?;
            if out.status.success() {
                let b: Value = serde_json::from_str(out.stdout.trim())?;
                if b["status"] == "COMPLETE" || b["status"] == "FAILED" {
                    break b["status"].as_str().unwrap_or_default().to_string();
                }
            }
            anyhow::ensure!(killed.elapsed() < Duration::from_secs(60), "not resolved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = killed.elapsed();
        println!("round {round}: resolved as {status} in {took:?}");
        times.push(took.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "RESULT leader_kill_to_resolved rounds={rounds} median_s={:.2} max_s={:.2}",
        percentile(&times, 0.5),
        times[times.len() - 1]
    );
    Ok(())
}
