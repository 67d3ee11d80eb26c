//! The cost of restore points to writers (not part of the test suite: the
//! test here is `#[ignore]`d and prints numbers instead of asserting on
//! speed). Run:
//!
//! ```sh
//! cargo build --release --workspace --bins
//! LOCKSTEP_BIN_DIR=$PWD/target/release cargo test --release -p lockstep-tests \
//!     --test b41_restore_point_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Results go to BENCHMARKS.md by hand, with the command.

use std::time::{Duration, Instant};

use lockstep_tests::bench::{BenchCluster, CLUSTER, Dist, env_usize};
use lockstep_tests::{CausalWriter, step};

/// The causal-chain writer's throughput on 3 servers over equal phases
/// without and with a restore point every second, alternating (off, on,
/// off, on, ...) so that drift on the shared machine falls on both sides.
/// `ROUNDS` pairs of phases of `PHASE_SECS` each (defaults 6 and 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn writer_throughput_with_and_without_points() -> anyhow::Result<()> {
    let rounds = env_usize("ROUNDS", 6);
    let phase = Duration::from_secs(env_usize("PHASE_SECS", 10) as u64);
    let every = env_usize("EVERY_MS", 1000);
    let cluster = BenchCluster::start("rpb", 3, false).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(200, Duration::from_secs(60)).await?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut points = 0u64;
    for round in 0..rounds {
        for schedule in [false, true] {
            let every_arg = format!("{every}ms");
            let args: Vec<&str> = if schedule {
                vec![
                    "restore-point",
                    "schedule",
                    "--cluster",
                    CLUSTER,
                    "--every",
                    &every_arg,
                ]
            } else {
                vec!["restore-point", "schedule", "--cluster", CLUSTER, "--off"]
            };
            cluster.cli(&args).await?;
            let before = cluster
                .cli(&[
                    "restore-point",
                    "list",
                    "--cluster",
                    CLUSTER,
                    "--limit",
                    "1",
                ])
                .await?;
            let (start, t0) = (writer.committed(), Instant::now());
            tokio::time::sleep(phase).await;
            let rate = (writer.committed() - start) as f64 / t0.elapsed().as_secs_f64();
            let after = cluster
                .cli(&[
                    "restore-point",
                    "list",
                    "--cluster",
                    CLUSTER,
                    "--limit",
                    "1",
                ])
                .await?;
            let seq = |v: &serde_json::Value| v["points"][0]["seq"].as_u64().unwrap_or(0);
            let taken = seq(&after).saturating_sub(seq(&before));
            step!(
                "round {round} points {}: {rate:.0} records/s, {taken} point(s)",
                if schedule { "on" } else { "off" }
            );
            if schedule {
                on.push(rate);
                points += taken;
            } else {
                off.push(rate);
            }
        }
    }
    let listed = cluster
        .cli(&[
            "restore-point",
            "list",
            "--cluster",
            CLUSTER,
            "--limit",
            "10000",
        ])
        .await?;
    let failed = listed["failed"].as_u64().unwrap_or(0);
    let listed = listed["points"].as_array().cloned().unwrap_or_default();
    let freeze: Vec<f64> = listed
        .iter()
        .filter_map(|p| p["freeze_ms"].as_f64())
        .collect();
    let held: Vec<f64> = listed
        .iter()
        .flat_map(|p| p["servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["held_ms"].as_f64())
        .collect();
    let (freeze, held) = (Dist::of(&freeze), Dist::of(&held));
    let written = writer.stop().await;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let sorted = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mean_off, mean_on) = (mean(&off), mean(&on));
    let (median_off, median_on) = (sorted(&mut off), sorted(&mut on));
    println!(
        "POINTS freeze_ms median={:.1} p99={:.1} max={:.1} lock_held_ms median={:.1} p99={:.1}",
        freeze.median, freeze.p99, freeze.max, held.median, held.p99
    );
    println!(
        "RESULT servers=3 every_ms={every} phases={rounds}x2x{}s records_per_s off mean={mean_off:.0} median={median_off:.0} on mean={mean_on:.0} median={median_on:.0} loss_mean={:.2}% loss_median={:.2}% points={points} failed={failed} chain_records={written}",
        phase.as_secs(),
        100.0 * (1.0 - mean_on / mean_off),
        100.0 * (1.0 - median_on / median_off),
    );
    Ok(())
}
