//! The `lockstep` CLI across elections: with 3 coordinators, 3 agents and 3
//! real MariaDB servers, a command issued while the leader is dead waits
//! for the next one, `backup start --wait` follows its backup to the new
//! leader and reports its real end, a lost answer to `backup start` never
//! starts a second backup, a command without a leader gives up after its
//! patience saying what it tried, and a coordinator whose raft store fails
//! exits instead of answering "stopped" forever.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lockstep_proto::coordinator::RegisterServerRequest;
use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use lockstep_tests::plain_cluster::{
    CLUSTER, Cluster, SLOW_LOCK_ARGS, hold_backup_stage, writes_resume,
};
use lockstep_tests::{
    CatalogCli, CausalWriter, CoordinatorGroup, MariaDb, Supervised, Target, check_chain,
    run_lockstep, step,
};
use serde_json::Value;

/// `lockstep backup start --wait`, issued the moment the leader is
/// SIGKILLed (followers still name the dead leader), waits out the election
/// and completes the backup: exit 0, COMPLETE, the only backup in the
/// catalog, and restored into 3 fresh servers it is a causal chain without
/// gaps. With a second coordinator gone there is no quorum: a command gives
/// up after its `--patience`, naming every coordinator it tried and the
/// last error.
#[tokio::test]
async fn backup_started_right_after_the_leader_is_killed_completes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start("ea").await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;

    let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
    step!(
        "SIGKILL the leader (coordinator {}); at once: backup start --wait",
        leader + 1
    );
    cluster.group.members[leader].kill()?;
    let started = Instant::now();
    let out = cluster
        .cli(&["--json", "backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    step!("backup start --wait took {:?}", started.elapsed());
    out.success()?;
    let backup: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(backup["status"], "COMPLETE", "{backup}\n{}", out.stderr);
    let id = backup["id"].as_str().context("backup id")?.to_string();

    step!("the catalog holds exactly this backup");
    let list = cluster.backups().await?;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], id.as_str(), "{list:?}");
    writes_resume(&writer).await?;
    let written = writer.stop().await;

    step!("restore it into 3 fresh servers: the chain has no gaps");
    let fresh = MariaDb::start_many(&["er0", "er1", "er2"]).await?;
    cluster.restore_into(&id, "ea", &fresh).await?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("restored chain 1..{m} of {written} written");
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");

    let second = (leader + 1) % 3;
    step!(
        "SIGKILL coordinator {} too: no quorum; catalog list --patience 2s gives up",
        second + 1
    );
    cluster.group.members[second].kill()?;
    let started = Instant::now();
    let out = cluster
        .cli(&["--patience", "2s", "catalog", "list"])
        .await?;
    let took = started.elapsed();
    step!("gave up after {took:?}: {}", out.stderr.trim());
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "gave up after {took:?}"
    );
    for m in &cluster.group.members {
        assert!(
            out.stderr.contains(&m.url()),
            "names coordinator {}: {}",
            m.url(),
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("no leader answered within 2")
            && out.stderr.contains("--patience")
            && out.stderr.contains("last error"),
        "{}",
        out.stderr
    );
    Ok(())
}

/// `backup start --wait` whose leader is SIGKILLed while it waits reports
/// the backup's real end as the new leader decides it, with the matching
/// exit code: once the cut is recorded (every server committed and unlocked, the
/// `after-commit-cut` fail point), the new leader completes it (exit 0,
/// COMPLETE); while it waits at the barrier (eb2's lock queued behind
/// another BACKUP STAGE), the new leader fails it (exit 1, FAILED with the
/// reason). Either way the report equals `catalog show`.
#[tokio::test]
async fn wait_reports_the_end_the_new_leader_decides() -> anyhow::Result<()> {
    let env = [("FAILPOINTS", "after-commit-cut=return(4000)")];
    let mut cluster = Cluster::start_with("eb", SLOW_LOCK_ARGS, &env).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(60)).await?;

    step!("backup start --wait; SIGKILL the leader once the cut is recorded");
    let run = spawn_lockstep(
        &cluster,
        &["--json", "backup", "start", "--cluster", CLUSTER, "--wait"],
    );
    let listed = cluster
        .wait_listed("TRANSFERRING", Duration::from_secs(20))
        .await?;
    // The cut is recorded after every COMMIT: each server is unlocked and
    // keeps its snapshots for the transfer.
    for i in 0..3 {
        cluster
            .wait_agent(i, "committed", |st| st.state == "committed")
            .await?;
    }
    let leader = cluster.group.wait_leader(Duration::from_secs(5)).await?;
    cluster.group.members[leader].kill()?;
    let out = run.await??;
    step!("--wait ended with {}: {}", out.status, out.stderr.trim());
    out.success()?;
    let reported: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(reported["id"], listed["id"], "{reported}");
    assert_eq!(reported["status"], "COMPLETE", "{reported}");
    let id = reported["id"].as_str().context("backup id")?;
    assert_eq!(cluster.cli_json(&["catalog", "show", id]).await?, reported);
    writes_resume(&writer).await?;

    step!("restart coordinator {}", leader + 1);
    cluster.group.members[leader].restart().await?;
    cluster.group.wait_leader(Duration::from_secs(30)).await?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;

    step!("hold BACKUP STAGE on eb2; backup start --wait; SIGKILL the leader at the barrier");
    let blocker = hold_backup_stage(&cluster.servers[2]).await?;
    let run = spawn_lockstep(
        &cluster,
        &["--json", "backup", "start", "--cluster", CLUSTER, "--wait"],
    );
    let listed = cluster
        .wait_listed("PREPARING", Duration::from_secs(20))
        .await?;
    cluster.wait_locked(0).await?;
    cluster.wait_locked(1).await?;
    let leader = cluster.group.wait_leader(Duration::from_secs(5)).await?;
    cluster.group.members[leader].kill()?;
    let out = run.await??;
    step!("--wait ended with {}: {}", out.status, out.stderr.trim());
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let reported: Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("no backup reported: {}", out.stderr))?;
    assert_eq!(reported["id"], listed["id"], "{reported}");
    assert_eq!(reported["status"], "FAILED", "{reported}");
    let reason = reported["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("before the cut was recorded"), "{reason}");
    let id = reported["id"].as_str().context("backup id")?;
    assert_eq!(cluster.cli_json(&["catalog", "show", id]).await?, reported);
    drop(blocker);
    writes_resume(&writer).await?;
    writer.stop().await;
    Ok(())
}

/// The answer to `backup start` is lost: the leader records the backup and
/// runs it to COMPLETE, but is SIGKILLed before it replies (the
/// `before-start-backup-reply` fail point holds the reply). The CLI does not
/// start a second backup at the new leader: it finds the one its request
/// started, follows it and reports it (exit 0); the catalog holds only it.
#[tokio::test]
async fn lost_answer_to_backup_start_starts_no_second_backup() -> anyhow::Result<()> {
    let env = [("FAILPOINTS", "before-start-backup-reply=return(5000)")];
    let mut cluster = Cluster::start_with("ec", &[], &env).await?;

    step!("backup start --wait; the backup completes while its answer is held");
    let run = spawn_lockstep(
        &cluster,
        &["--json", "backup", "start", "--cluster", CLUSTER, "--wait"],
    );
    let listed = cluster
        .wait_listed("COMPLETE", Duration::from_secs(20))
        .await?;
    let leader = cluster.group.wait_leader(Duration::from_secs(5)).await?;
    step!(
        "SIGKILL the leader (coordinator {}) before it answers",
        leader + 1
    );
    cluster.group.members[leader].kill()?;
    let out = run.await??;
    step!(
        "backup start ended with {}: {}",
        out.status,
        out.stderr.trim()
    );
    out.success()?;
    let reported: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(reported["id"], listed["id"], "{reported}");
    assert_eq!(reported["status"], "COMPLETE", "{reported}");
    let id = reported["id"].as_str().context("backup id")?;
    assert!(
        out.stderr.contains(id) && out.stderr.contains("answer"),
        "says it follows the backup its lost request started: {}",
        out.stderr
    );

    step!("the catalog holds that one backup only");
    let list = cluster.backups().await?;
    assert_eq!(list.len(), 1, "{list:?}");
    Ok(())
}

/// A coordinator whose raft store fails (its file may not grow: a
/// file-size limit, which fails writes like a full disk) exits with status
/// 1 by itself, its last words naming the store and the cause, instead of
/// answering "raft node N is stopped" forever; the other two elect a leader
/// and the CLI carries on; SIGTERM stops a coordinator at once.
#[tokio::test]
async fn coordinator_whose_raft_store_fails_exits_non_zero() -> anyhow::Result<()> {
    let mut group = CoordinatorGroup::start(3).await?;
    let leader = group.wait_leader(Duration::from_secs(10)).await?;
    let victim = &group.members[leader];
    let size = |p: std::path::PathBuf| std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    let limit =
        size(victim.data_dir().join("raft.redb")).max(size(victim.log_path().into())) + 512 * 1024;
    step!(
        "limit coordinator {}'s files to {limit} bytes; propose 64 KiB entries to it",
        leader + 1
    );
    victim.limit_file_size(limit)?;
    let mut client = CoordinatorClient::connect(victim.url()).await?;
    let big = "x".repeat(64 * 1024);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let status = loop {
        if let Some(status) = group.members[leader].wait_exit(Duration::ZERO).await? {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "coordinator {} still runs after {sent} large proposals\nlog tail:\n{}",
            leader + 1,
            group.members[leader].log_tail(20)
        );
        let req = RegisterServerRequest {
            cluster: "fill".into(),
            name: format!("s{sent}"),
            agent_addr: "http://127.0.0.1:9".into(),
            version: big.clone(),
            ..RegisterServerRequest::default()
        };
        // Fails once the store does; the exit is what the test waits for.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.register_server(req)).await;
        sent += 1;
    };
    let log = group.members[leader].log_tail(20);
    step!(
        "coordinator {} exited ({status}) after {sent} proposals",
        leader + 1
    );
    assert_eq!(status.code(), Some(1), "{status}\n{log}");
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        last.contains("raft store") && last.contains("File too large"),
        "its last words name the store and the cause: {last:?}\n{log}"
    );

    step!("the other two elect a leader; the CLI carries on");
    let next = group.wait_leader(Duration::from_secs(30)).await?;
    assert_ne!(next, leader);
    run_lockstep(&group.urls(), &["catalog", "list"])
        .await?
        .success()?;

    step!("SIGTERM stops the new leader at once, with status 0");
    let started = Instant::now();
    let stopped = group.members[next].stop()?;
    let took = started.elapsed();
    step!("stopped in {took:?}: {stopped:?}");
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    Ok(())
}

/// Runs `lockstep ARGS` against every coordinator of `cluster` in the
/// background.
fn spawn_lockstep(
    cluster: &Cluster,
    args: &[&str],
) -> tokio::task::JoinHandle<anyhow::Result<lockstep_tests::CliOutput>> {
    let urls = cluster.group.urls();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::spawn(async move {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        run_lockstep(&urls, &argv).await
    })
}

/// A leader frozen by SIGSTOP keeps its sockets open but answers nothing:
/// a command gets past it (an attempt at it is cut short at the call's
/// time limit, 10 s), finds the leader the others elected and succeeds
/// within its patience; thawed, the old leader follows the new one.
#[tokio::test]
async fn command_gets_past_a_frozen_leader() -> anyhow::Result<()> {
    let mut group = CoordinatorGroup::start(3).await?;
    let leader = group.wait_leader(Duration::from_secs(10)).await?;
    step!("SIGSTOP the leader (coordinator {})", leader + 1);
    group.members[leader].pause()?;
    // The frozen leader first, so every attempt meets it.
    let mut urls = vec![group.members[leader].url()];
    urls.extend(
        group
            .members
            .iter()
            .filter(|m| m.id() != group.members[leader].id())
            .map(|m| m.url()),
    );
    let started = Instant::now();
    let out = run_lockstep(
        &urls.join(","),
        &["--patience", "20s", "--json", "catalog", "list"],
    )
    .await?;
    let took = started.elapsed();
    step!("catalog list answered after {took:?}");
    out.success()?;
    assert!(took < Duration::from_secs(20), "took {took:?}");

    step!("SIGCONT: the old leader follows the new one");
    group.members[leader].resume()?;
    let next = group.wait_leader(Duration::from_secs(30)).await?;
    assert_ne!(next, leader);
    Ok(())
}
