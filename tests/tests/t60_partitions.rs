//! Network partitions between roles, injected by proxies on every link
//! (see `lockstep_tests::cluster`): the leader cut off from the agents during
//! PREPARE and during TRANSFER, an old leader isolated and healed while a
//! new leader runs a backup, and an agent stalled while it holds its lock.
//!
//! After each fault: no server stays locked past its lease (a write commits
//! on every server within lease + margin); the backup is COMPLETE and its
//! restore is a causal chain without gaps, or FAILED with a reason naming
//! the server or the cause; and the next backup is COMPLETE and consistent.
//! A causal-chain writer runs across the servers throughout.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lockstep_tests::catalog_cli::restore_args;
use lockstep_tests::probe::wait_writable;
use lockstep_tests::{
    CatalogCli, CausalWriter, ClusterOptions, CoordinatorOptions, Fault, MariaDb, Node,
    ProxiedCluster, Target, check_chain, step,
};
use mysql_async::prelude::Queryable as _;
use serde_json::Value;

/// The lease the coordinators ask of the agents.
const LEASE: Duration = Duration::from_secs(4);
/// Slack on top of the lease for the probe and a loaded machine.
const MARGIN: Duration = Duration::from_secs(3);
/// How long a faulted backup may take to be resolved in the catalog.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(40);
/// Server `i` is `{PREFIX}{i}`.
const PREFIX: &str = "np";

/// One cluster, four partitions in turn (each healed before the next).
#[tokio::test]
async fn partitions_never_leave_a_server_locked_or_an_inconsistent_backup() -> anyhow::Result<()> {
    let started = Instant::now();
    step!("start 3 MariaDB servers, 3 coordinators and 3 agents behind proxies");
    let cluster = ProxiedCluster::start(options()).await?;
    let fresh = MariaDb::start_many(&["nr0", "nr1", "nr2"]).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(60)).await?;
    let t = Case {
        cluster: &cluster,
        fresh: &fresh,
        writer: &writer,
    };
    step!("cluster ready in {:?}", started.elapsed());

    leader_cut_off_during_prepare(&t).await?;
    leader_cut_off_during_transfer(&t).await?;
    agent_stalled_while_locked(&t).await?;
    old_leader_isolated_then_healed_during_a_backup(&t).await?;

    writer.stop().await;
    step!("all partitions done in {:?}", started.elapsed());
    Ok(())
}

/// The leader cut off from the agents after it committed the cut on every
/// server but before np2's Transfer arrived (np2's link is slowed by 200 ms
/// so its Transfer is still on the way when np0 and np1 transfer): the
/// backup fails, and once the network heals the next backup completes.
///
/// np2 still holds the failed backup's snapshots (`committed`): the
/// leader's ABORT could not reach it. The next backup's Prepare supersedes
/// them (before, np2 stayed busy for its `snapshot_ttl`, 1 h by default,
/// and every backup failed with "the agent is busy with backup ...").
#[tokio::test]
async fn a_committed_agent_cut_off_from_the_leader_does_not_block_the_next_backup()
-> anyhow::Result<()> {
    let cluster = ProxiedCluster::start(options()).await?;
    let c = &cluster;
    let writer = CausalWriter::start(c.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(60)).await?;
    add_bulk_rows(c).await?;
    let leader = c.group.wait_leader(Duration::from_secs(5)).await?;

    step!("slow np2's link to the leader by 200 ms; start a backup");
    c.set_link(
        Node::Coordinator(leader),
        Node::Agent(2),
        Fault::delay(Duration::from_millis(200)),
    )?;
    let id = c.start_backup().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (c.agent_status(0).await?, c.agent_status(1).await?);
        if a.state == "transferring" || b.state == "transferring" {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no transfer of {id} started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    step!("np0 or np1 transfers: cut the leader off from every agent");
    for a in 0..c.agents.len() {
        c.set_link(Node::Coordinator(leader), Node::Agent(a), Fault::Cut)?;
    }
    let np2 = c.agent_status(2).await?;
    assert_eq!(np2.state, "committed", "np2 got its Transfer: {np2:?}");
    let backup = c
        .wait_backup(&id, RESOLVE_TIMEOUT, |s| s == "COMPLETE" || s == "FAILED")
        .await?;
    assert_eq!(backup["status"], "FAILED", "{backup}");
    every_server_writable(c).await?;

    step!("heal; the next backup completes");
    c.heal();
    c.wait_healthy(Duration::from_secs(30)).await?;
    let next = c.backup_and_wait().await?;
    assert_eq!(next["status"], "COMPLETE", "{next}");
    writer.stop().await;
    Ok(())
}

/// The cluster of these tests: a 4 s lease, a 3 s PREPARE deadline, and
/// locks that may queue 2 s behind [`hold_backup_stage`].
fn options() -> ClusterOptions {
    let mut opts = ClusterOptions::new(PREFIX);
    opts.coordinator = CoordinatorOptions {
        env: Vec::new(),
        args: vec![
            "--lease".into(),
            format!("{}s", LEASE.as_secs()),
            "--prepare-timeout".into(),
            "3s".into(),
        ],
        tls: None,
    };
    opts.agent_args = vec!["--lock-wait-budget".into(), "2s".into()];
    opts
}

/// What every case works on.
struct Case<'a> {
    cluster: &'a ProxiedCluster,
    /// Restore targets for the causal-chain check (restored with --force).
    fresh: &'a [MariaDb],
    writer: &'a CausalWriter,
}

/// The leader stalled off from every agent (not from its peers) while two
/// servers are locked and the third is queued: the lease or the keep-alive
/// unlocks every server, and the backup fails naming a server.
async fn leader_cut_off_during_prepare(t: &Case<'_>) -> anyhow::Result<()> {
    let c = t.cluster;
    step!("[prepare] hold BACKUP STAGE on np2; start a backup; np0 and np1 lock");
    let blocker = hold_backup_stage(&c.servers[2]).await?;
    let id = c.start_backup().await?;
    c.wait_locked(0, &id, Duration::from_secs(10)).await?;
    c.wait_locked(1, &id, Duration::from_secs(10)).await?;
    let leader = c.group.wait_leader(Duration::from_secs(5)).await?;

    step!(
        "[prepare] stall every link between the leader (coordinator {}) and the agents",
        leader + 1
    );
    for a in 0..c.agents.len() {
        c.set_link(Node::Coordinator(leader), Node::Agent(a), Fault::stall())?;
    }
    drop(blocker);
    every_server_writable(c).await?;

    let backup = c
        .wait_backup(&id, RESOLVE_TIMEOUT, |s| s == "COMPLETE" || s == "FAILED")
        .await?;
    step!(
        "[prepare] backup resolved as {}: {}",
        backup["status"],
        backup["reason"]
    );
    assert_eq!(
        backup["status"], "FAILED",
        "the barrier cannot pass: {backup}"
    );
    assert_names_a_server(&backup, &[0, 1, 2]);
    assert_eq!(
        c.group.wait_leader(Duration::from_secs(5)).await?,
        leader,
        "the leader kept its peers and stays leader"
    );

    c.heal();
    next_backup_is_consistent(t, "prepare").await
}

/// The leader's connections to every agent reset (and refused) while the
/// transfers run: the backup is COMPLETE and consistent (the transfers beat
/// the cut) or FAILED naming a server; no server is locked.
///
/// The cut comes once every agent has started its transfer (or finished
/// it): an agent still waiting for its Transfer when the leader is cut off
/// stays busy with the failed backup (see
/// `a_committed_agent_cut_off_from_the_leader_does_not_block_the_next_backup`).
async fn leader_cut_off_during_transfer(t: &Case<'_>) -> anyhow::Result<()> {
    let c = t.cluster;
    step!("[transfer] give each server 100k rows so TRANSFER takes a while");
    add_bulk_rows(c).await?;
    let from = t.writer.committed();
    let id = c.start_backup().await?;
    let leader = c.group.wait_leader(Duration::from_secs(5)).await?;
    let states = wait_transfers_started(c, &id).await?;
    step!(
        "[transfer] agents {states:?}: cut every link between the leader (coordinator {}) and the agents",
        leader + 1
    );
    for a in 0..c.agents.len() {
        c.set_link(Node::Coordinator(leader), Node::Agent(a), Fault::Cut)?;
    }
    every_server_writable(c).await?;
    consistent_or_failed(t, "transfer", &id, from, &[0, 1, 2]).await?;
    next_backup_is_consistent(t, "transfer").await?;
    for s in &c.servers {
        s.exec("DROP DATABASE bulk").await?;
    }
    Ok(())
}

/// Agent np1's links to every coordinator stall while it holds its lock
/// and np2's lock is still queued: np1's lock goes at its lease or
/// keep-alive, and the backup is FAILED naming np1 (or, had np1's COMMIT
/// got through, COMPLETE and consistent).
async fn agent_stalled_while_locked(t: &Case<'_>) -> anyhow::Result<()> {
    let c = t.cluster;
    step!("[agent] hold BACKUP STAGE on np2; start a backup; np0 and np1 lock");
    let from = t.writer.committed();
    let blocker = hold_backup_stage(&c.servers[2]).await?;
    let id = c.start_backup().await?;
    c.wait_locked(0, &id, Duration::from_secs(10)).await?;
    c.wait_locked(1, &id, Duration::from_secs(10)).await?;

    step!("[agent] stall every link of agent np1; let np2 lock");
    c.isolate(Node::Agent(1), Fault::stall())?;
    drop(blocker);
    every_server_writable(c).await?;
    consistent_or_failed(t, "agent", &id, from, &[1]).await?;
    next_backup_is_consistent(t, "agent").await
}

/// Waits for backup `id` to end, then heals the network: a COMPLETE backup
/// must restore as a gap-free chain (from `from` on), a FAILED one must
/// name one of the agents `suspects`.
async fn consistent_or_failed(
    t: &Case<'_>,
    case: &str,
    id: &str,
    from: u64,
    suspects: &[usize],
) -> anyhow::Result<()> {
    let c = t.cluster;
    let backup = c
        .wait_backup(id, RESOLVE_TIMEOUT, |s| s == "COMPLETE" || s == "FAILED")
        .await?;
    step!(
        "[{case}] backup resolved as {}: {}",
        backup["status"],
        backup["reason"]
    );
    c.heal();
    if backup["status"] == "COMPLETE" {
        restored_chain_is_whole(t, id, from).await?;
    } else {
        assert_eq!(backup["status"], "FAILED", "{backup}");
        assert_names_a_server(&backup, suspects);
    }
    Ok(())
}

/// The leader isolated from its peers and the agents (stalled) while a
/// backup waits at the barrier: a new leader fails that backup (its cut was
/// never committed), every server is unlocked within the lease; then, while
/// the new leader's backup holds two locks, the old leader is healed (its
/// stalled traffic delivered): that backup is COMPLETE and consistent, and
/// the old leader follows the new one.
async fn old_leader_isolated_then_healed_during_a_backup(t: &Case<'_>) -> anyhow::Result<()> {
    let c = t.cluster;
    step!("[isolate] hold BACKUP STAGE on np2; start a backup; np0 and np1 lock");
    let blocker = hold_backup_stage(&c.servers[2]).await?;
    let id = c.start_backup().await?;
    c.wait_locked(0, &id, Duration::from_secs(10)).await?;
    c.wait_locked(1, &id, Duration::from_secs(10)).await?;
    let old = c.group.wait_leader(Duration::from_secs(5)).await?;
    let old_term = c.group.members[old].status().await?.term;

    step!(
        "[isolate] stall every link of the leader (coordinator {})",
        old + 1
    );
    c.isolate(Node::Coordinator(old), Fault::stall())?;
    drop(blocker);
    let isolated_at = Instant::now();
    every_server_writable(c).await?;
    let new = c.wait_new_leader(&[old], Duration::from_secs(20)).await?;
    let new_term = c.group.members[new].status().await?.term;
    step!(
        "[isolate] coordinator {} leads in term {new_term} (was {} in term {old_term}) after {:?}",
        new + 1,
        old + 1,
        isolated_at.elapsed()
    );
    assert!(new_term > old_term);
    let first = c
        .wait_backup(&id, RESOLVE_TIMEOUT, |s| s == "COMPLETE" || s == "FAILED")
        .await?;
    step!(
        "[isolate] the inherited backup resolved as {}: {}",
        first["status"],
        first["reason"]
    );
    assert_eq!(
        first["status"], "FAILED",
        "its barrier never passed: {first}"
    );
    let reason = first["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("coordinator changed") || reason.contains("server np"),
        "{reason}"
    );

    step!("[isolate] the new leader's backup holds np0 and np1; heal the old leader");
    let from = t.writer.committed();
    let blocker = hold_backup_stage(&c.servers[2]).await?;
    let id = c.start_backup().await?;
    c.wait_locked(0, &id, Duration::from_secs(10)).await?;
    c.wait_locked(1, &id, Duration::from_secs(10)).await?;
    c.heal();
    drop(blocker);
    let second = c
        .wait_backup(&id, RESOLVE_TIMEOUT, |s| s == "COMPLETE" || s == "FAILED")
        .await?;
    step!(
        "[isolate] the new leader's backup resolved as {}: {}",
        second["status"],
        second["reason"]
    );
    assert_eq!(second["status"], "COMPLETE", "{second}");
    restored_chain_is_whole(t, &id, from).await?;
    let leader = c.group.wait_leader(Duration::from_secs(10)).await?;
    assert_ne!(leader, old, "the healed old leader did not take over");
    let rejoined = c.group.members[old].status().await?;
    assert_eq!(
        rejoined.leader_id,
        c.group.members[leader].id(),
        "{rejoined:?}"
    );
    Ok(())
}

/// Gives each server 100k rows in `bulk.t`, so that a transfer takes a
/// while.
async fn add_bulk_rows(c: &ProxiedCluster) -> anyhow::Result<()> {
    for s in &c.servers {
        s.exec("CREATE DATABASE bulk").await?;
        s.exec("CREATE TABLE bulk.t (id INT PRIMARY KEY, c CHAR(40)) ENGINE=InnoDB")
            .await?;
        s.exec("INSERT INTO bulk.t SELECT seq, MD5(seq) FROM bulk.seq_1_to_100000")
            .await?;
    }
    Ok(())
}

/// Waits until some agent transfers backup `id` and every agent has
/// started its transfer (`idle` then means finished: transfers start only
/// after every COMMIT); returns the agents' states.
async fn wait_transfers_started(c: &ProxiedCluster, id: &str) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut states = Vec::new();
        for i in 0..c.agents.len() {
            states.push(c.agent_status(i).await?.state);
        }
        if states.iter().any(|s| s == "transferring")
            && states.iter().all(|s| s == "transferring" || s == "idle")
        {
            return Ok(states);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agents never all transferred backup {id}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every server commits a write within the lease + margin (nothing stays
/// locked), and the causal writer moves on.
async fn every_server_writable(c: &ProxiedCluster) -> anyhow::Result<()> {
    let waits = c.servers.iter().map(|s| async move {
        let took = wait_writable(s, LEASE + MARGIN).await?;
        Ok::<_, anyhow::Error>((s.name().to_string(), took))
    });
    let took = futures::future::try_join_all(waits).await?;
    step!("every server writable again: {took:?}");
    Ok(())
}

/// A FAILED backup's reason names one of `servers` (by index).
fn assert_names_a_server(backup: &Value, servers: &[usize]) {
    let reason = backup["reason"].as_str().unwrap_or_default();
    assert!(
        servers
            .iter()
            .any(|i| reason.contains(&format!("server {PREFIX}{i}"))),
        "the reason names none of the servers {servers:?}: {reason}"
    );
}

/// After healing: every server healthy again and every agent done with the
/// faulted backup (a transfer whose caller vanished runs to its end), the
/// next backup (under the causal writer) is COMPLETE and its restore a
/// causal chain without gaps.
async fn next_backup_is_consistent(t: &Case<'_>, case: &str) -> anyhow::Result<()> {
    let c = t.cluster;
    c.wait_healthy(Duration::from_secs(30)).await?;
    c.wait_agents_settled(Duration::from_secs(30)).await?;
    let from = t.writer.committed();
    let next = c.backup_and_wait().await?;
    step!("[{case}] the next backup is {}", next["status"]);
    assert_eq!(next["status"], "COMPLETE", "{next}");
    let id = next["id"].as_str().context("backup id")?.to_string();
    restored_chain_is_whole(t, &id, from).await
}

/// Restores backup `id` into the fresh servers (--force) and checks the
/// causal chain: 1..m without gaps, with every record committed before the
/// backup started (`from`) and none the writer has not written.
async fn restored_chain_is_whole(t: &Case<'_>, id: &str, from: u64) -> anyhow::Result<()> {
    let mut args = restore_args(id, PREFIX, t.fresh);
    args.push("--force".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = t.cluster.cli(&argv).await?;
    out.success()
        .with_context(|| format!("restore backup {id}"))?;
    let m = check_chain(&Target::chain_on(t.fresh)).await?;
    let written = t.writer.committed();
    step!("backup {id}: restored chain 1..{m} (writer at {written})");
    assert!(
        m >= from && m <= written + 1,
        "restored 1..{m}; the backup started at {from}, the writer is at {written}"
    );
    Ok(())
}

/// Holds `BACKUP STAGE START` on `db` from an idle connection: an agent's
/// own BACKUP STAGE queues behind it (up to its lock-wait budget). Dropping
/// the connection ends it.
async fn hold_backup_stage(db: &MariaDb) -> anyhow::Result<mysql_async::Conn> {
    let mut conn = db.conn().await?;
    conn.query_drop("BACKUP STAGE START")
        .await
        .with_context(|| format!("BACKUP STAGE START on {}", db.name()))?;
    Ok(conn)
}
