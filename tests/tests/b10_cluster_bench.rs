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

use lockstep_tests::bench::{BenchCluster, CLUSTER, Dist, FreezeSamples, env_sizes, env_usize};
use lockstep_tests::{CausalWriter, Supervised, run_lockstep, step};
use serde_json::Value;

/// Freeze window (first lock acquired to last lock released) over 50
/// backups of 3 and of 9 servers while a causal writer keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn freeze_window_under_write_load() -> anyhow::Result<()> {
    let runs = env_usize("BACKUPS", 50);
    for n in env_sizes() {
        step!("{n} servers");
        let cluster = BenchCluster::start("b", n, false).await?;
        let writer = CausalWriter::start(cluster.chain()).await?;
        writer.wait_committed(100, Duration::from_secs(60)).await?;
        let mut samples = FreezeSamples::default();
        for _ in 0..runs {
            samples.backup(&cluster).await;
        }
        let writes = writer.stop().await;
        anyhow::ensure!(samples.completed() > 0, "no backup completed");
        let (freeze, holds) = (Dist::of(&samples.freeze), Dist::of(&samples.holds));
        let (spread, decide, unlock) = (
            Dist::of(&samples.spread),
            Dist::of(&samples.decide),
            Dist::of(&samples.unlock),
        );
        println!(
            "RESULT servers={n} backups={} failed={} freeze_ms median={:.1} p99={:.1} max={:.1} lock_ms median={:.1} p99={:.1} chain_records={writes}",
            samples.completed(),
            samples.failed,
            freeze.median,
            freeze.p99,
            freeze.max,
            holds.median,
            holds.p99,
        );
        println!(
            "BREAKDOWN servers={n} lock_spread_ms median={:.1} p99={:.1} prepared_to_first_release_ms median={:.1} p99={:.1} release_spread_ms median={:.1} p99={:.1}",
            spread.median, spread.p99, decide.median, decide.p99, unlock.median, unlock.p99,
        );
    }
    Ok(())
}

/// Time from SIGKILL of the leader, right after it committed a cut, to the
/// new leader resolving the inherited backup (COMPLETE or FAILED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn leader_kill_to_resolved_job() -> anyhow::Result<()> {
    let rounds = env_usize("ROUNDS", 5);
    let mut times = Vec::new();
    for round in 0..rounds {
        let cluster = BenchCluster::start("b", 3, false).await?;
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
    let times = Dist::of(&times);
    println!(
        "RESULT leader_kill_to_resolved rounds={rounds} median_s={:.2} max_s={:.2}",
        times.median, times.max
    );
    Ok(())
}
