//! Mutual TLS against plaintext in one run (issue 9): the freeze window of
//! backups at 3 and 9 servers, and the whole `backup start --wait`. Not
//! part of the test suite (`#[ignore]`d; prints numbers). Run:
//!
//! ```sh
//! cargo build --release --workspace --bins
//! LOCKSTEP_BIN_DIR=$PWD/target/release BACKUPS=30 cargo test --release -p lockstep-tests \
//!     --test b30_tls_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! or `bash bench/tls.sh`. Results go to BENCHMARKS.md by hand, with the
//! command.

use std::time::{Duration, Instant};

use lockstep_proto::agent::StatusRequest;
use lockstep_tests::bench::{BenchCluster, Dist, FreezeSamples, env_sizes, env_usize};
use lockstep_tests::{CausalWriter, step};

/// Causal records committed on a cluster before its block of backups.
const WARM_RECORDS: u64 = 50;

/// For each size N (`SERVERS`, default 3,9): a plaintext and a mutual-TLS
/// cluster of N servers, both up for the whole size, take `BACKUPS`
/// (default 30) backups each, in blocks of `BLOCK` (default 5) that
/// alternate between them (P T, T P, P T ...) so machine noise hits both.
/// During its block a cluster has the causal-chain writer running; the
/// other cluster is idle. Each cluster first takes one warm-up backup that
/// is not counted. Prints per transport the freeze window, the lock hold,
/// its breakdown and the whole backup (the catalog's started → finished,
/// and the CLI's wall time), then the TLS/plaintext ratios; and
/// the cost of a new connection to an agent (connect + one call), as the
/// coordinator makes for PREPARE and TRANSFER, and of a one-call CLI run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn tls_freeze_window_against_plaintext() -> anyhow::Result<()> {
    let runs = env_usize("BACKUPS", 30);
    let block = env_usize("BLOCK", 5).max(1);
    for n in env_sizes() {
        step!("{n} servers: start a plaintext and a TLS cluster");
        let plain = BenchCluster::start("p", n, false).await?;
        let tls = BenchCluster::start("t", n, true).await?;
        let clusters = [&plain, &tls];
        let mut samples = [FreezeSamples::default(), FreezeSamples::default()];
        let mut records = [0u64; 2];
        step!("{n} servers: one warm-up backup on each");
        for c in clusters {
            FreezeSamples::default().backup(c).await;
        }
        let mut round = 0;
        while samples.iter().any(|s| s.completed() + s.failed < runs) {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let s = &mut samples[i];
                let todo = block.min(runs.saturating_sub(s.completed() + s.failed));
                if todo == 0 {
                    continue;
                }
                step!(
                    "{n} servers, round {round}: {todo} backups with {}",
                    clusters[i].transport()
                );
                let writer = CausalWriter::start(clusters[i].chain()).await?;
                writer
                    .wait_committed(writer.first() + WARM_RECORDS, Duration::from_secs(60))
                    .await?;
                for _ in 0..todo {
                    s.backup(clusters[i]).await;
                }
                let first = writer.first();
                records[i] += writer.stop().await.saturating_sub(first);
            }
            round += 1;
        }
        for (i, c) in clusters.iter().enumerate() {
            print_result(n, c.transport(), &samples[i], records[i]);
        }
        anyhow::ensure!(
            samples.iter().all(|s| s.completed() > 0),
            "{n} servers: no backup completed on one of the clusters"
        );
        print_ratio(n, &samples[0], &samples[1]);
        step!("{n} servers: new connections to an agent");
        let connect = [
            connect_ms(&plain, CONNECTS).await?,
            connect_ms(&tls, CONNECTS).await?,
        ];
        println!(
            "CONNECT servers={n} connect_and_status_ms plaintext median={:.2} p99={:.2} tls median={:.2} p99={:.2} (n={CONNECTS})",
            connect[0].median, connect[0].p99, connect[1].median, connect[1].p99,
        );
        step!("{n} servers: one-call CLI runs");
        let (mut cli_plain, mut cli_tls) = (Vec::new(), Vec::new());
        for _ in 0..CLI_RUNS {
            cli_plain.push(cli_ms(&plain).await?);
            cli_tls.push(cli_ms(&tls).await?);
        }
        let (p, t) = (Dist::of(&cli_plain), Dist::of(&cli_tls));
        println!(
            "CLI servers={n} catalog_list_wall_ms plaintext median={:.1} p99={:.1} tls median={:.1} p99={:.1} (n={CLI_RUNS})",
            p.median, p.p99, t.median, t.p99,
        );
    }
    Ok(())
}

/// New channels opened to an agent per transport for the CONNECT line.
const CONNECTS: usize = 100;

/// Runs of `lockstep catalog list` per transport for the CLI line.
const CLI_RUNS: usize = 30;

/// Wall time (ms) of one `lockstep --json catalog list` on `cluster`: a
/// process, its connection to the coordinators (with TLS, as `operator`)
/// and one call, as every CLI command pays.
async fn cli_ms(cluster: &BenchCluster) -> anyhow::Result<f64> {
    let started = Instant::now();
    cluster
        .cli(&[
            "catalog",
            "list",
            "--cluster",
            lockstep_tests::bench::CLUSTER,
        ])
        .await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn print_result(n: usize, transport: &str, s: &FreezeSamples, records: u64) {
    let (freeze, lock) = (Dist::of(&s.freeze), Dist::of(&s.holds));
    let (wall, job) = (Dist::of(&s.wall), Dist::of(&s.job));
    let (spread, decide, unlock) = (
        Dist::of(&s.spread),
        Dist::of(&s.decide),
        Dist::of(&s.unlock),
    );
    println!(
        "RESULT servers={n} transport={transport} backups={} failed={} freeze_ms median={:.1} p90={:.1} p99={:.1} max={:.1} lock_ms median={:.1} p99={:.1} chain_records={records}",
        s.completed(),
        s.failed,
        freeze.median,
        freeze.p90,
        freeze.p99,
        freeze.max,
        lock.median,
        lock.p99,
    );
    println!(
        "BREAKDOWN servers={n} transport={transport} lock_spread_ms median={:.1} p99={:.1} prepared_to_first_release_ms median={:.1} p99={:.1} release_spread_ms median={:.1} p99={:.1}",
        spread.median, spread.p99, decide.median, decide.p99, unlock.median, unlock.p99,
    );
    println!(
        "BACKUP servers={n} transport={transport} catalog_started_to_finished_ms median={:.1} p99={:.1} cli_wall_ms median={:.1} p99={:.1}",
        job.median, job.p99, wall.median, wall.p99,
    );
}

fn print_ratio(n: usize, plain: &FreezeSamples, tls: &FreezeSamples) {
    let ratio = |p: &[f64], t: &[f64]| {
        let (p, t) = (Dist::of(p), Dist::of(t));
        (t.median / p.median, t.p90 / p.p90, t.p99 / p.p99)
    };
    let freeze = ratio(&plain.freeze, &tls.freeze);
    let lock = ratio(&plain.holds, &tls.holds);
    let job = ratio(&plain.job, &tls.job);
    println!(
        "RATIO servers={n} tls/plaintext freeze median={:.2} p90={:.2} p99={:.2} lock median={:.2} p99={:.2} backup median={:.2} p99={:.2}",
        freeze.0, freeze.1, freeze.2, lock.0, lock.2, job.0, job.2,
    );
}

/// Opens `count` new channels to the cluster's first agent (as
/// `coordinator-1` with TLS) and makes one `Status` call on each: the
/// milliseconds of each, as the coordinator pays per new agent channel.
async fn connect_ms(cluster: &BenchCluster, count: usize) -> anyhow::Result<Dist> {
    let agent = &cluster.agents[0];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut client = agent.client().await?;
        client.status(StatusRequest {}).await.map_err(|e| {
            anyhow::anyhow!(
                "Status of agent {} ({}): {e}",
                agent.name(),
                cluster.transport()
            )
        })?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Dist::of(&times))
}
