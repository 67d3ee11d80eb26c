//! The cluster: 3 coordinators (a raft group), 3 agents registered with
//! them, 3 real MariaDB servers. Backups are cluster-wide consistent cuts
//! (the causal-chain check across servers after a restore), the catalog
//! records them, and a new leader resolves the backup it inherits.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use lockstep_tests::plain_cluster::{
    CLUSTER, Cluster, SLOW_LOCK_ARGS, restore_args, writes_resume,
};
use lockstep_tests::{
    CatalogCli, CausalWriter, CoordinatorGroup, CoordinatorProc, MariaDb, Supervised, Target,
    check_chain, run_lockstep, step,
};
use serde_json::Value;

/// A backup of 3 servers under a causal write load across them is one
/// consistent cut: COMPLETE in the catalog with every server's position and
/// a small freeze window, and `lockstep restore run` of the 3 artifacts into
/// 3 fresh servers gives a causal chain without gaps. Restoring again without
/// `--force`, and restoring an unknown backup, fail clearly; a typo in a
/// target, a target shared by two servers, or a source agent that is gone
/// refuse the restore before any server is touched.
#[tokio::test]
async fn backup_of_three_servers_is_a_consistent_cut() -> anyhow::Result<()> {
    let mut cluster = Cluster::start("cc").await?;

    step!("coordinator status shows 3 healthy members and a leader");
    let status = cluster.cli_json(&["coordinator", "status"]).await?;
    let members = status["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["healthy"] == true), "{status}");
    assert!(status["leader_id"].as_u64().is_some(), "{status}");

    step!("the CLI given only a follower follows the redirect to the leader");
    let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
    let follower = cluster.group.members[(leader + 1) % 3].url();
    let out = run_lockstep(&follower, &["--json", "server", "list"]).await?;
    out.success()?;
    let listed: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");

    step!("write the causal chain across the 3 servers");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(300, Duration::from_secs(60)).await?;

    step!("lockstep backup start --cluster c1 --wait --json");
    let out = cluster
        .cli(&["--json", "backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    out.success()?;
    let backup: Value = serde_json::from_str(out.stdout.trim())?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}\n{}", out.stderr);
    let freeze_ms = backup["freeze_ms"]
        .as_f64()
        .expect("freeze window reported");
    step!("freeze window {freeze_ms:.2} ms");
    assert!(
        freeze_ms > 0.0 && freeze_ms < 1000.0,
        "freeze {freeze_ms} ms"
    );
    for s in backup["servers"].as_array().expect("servers") {
        assert!(
            s["binlog_file"].as_str().is_some_and(|f| !f.is_empty()),
            "{s}"
        );
        assert!(s["binlog_pos"].as_u64().is_some_and(|p| p > 4), "{s}");
        assert!(s["gtid"].as_str().is_some_and(|g| !g.is_empty()), "{s}");
        assert!(s["lock_ms"].as_f64().is_some(), "{s}");
    }

    step!("the catalog lists and shows it");
    let id = backup["id"].as_str().expect("id").to_string();
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    assert_eq!(shown, backup);
    let list = cluster
        .cli_json(&["catalog", "list", "--cluster", CLUSTER])
        .await?;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let human = cluster.cli(&["catalog", "show", &id]).await?;
    human.success()?;
    assert!(
        human.stdout.contains("COMPLETE") && human.stdout.contains("cc1"),
        "{}",
        human.stdout
    );

    step!("lockstep restore run --backup ID --target cc0=.. cc1=.. cc2=.. --json");
    let fresh = MariaDb::start_many(&["cr0", "cr1", "cr2"]).await?;
    let args = restore_args(&id, "cc", &fresh);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let restore = cluster.restore_into(&id, "cc", &fresh).await?;
    assert_eq!(restore["ok"], true, "{restore}");
    let restored_servers = restore["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(restored_servers.len(), 3, "{restore}");
    for (i, s) in restored_servers.iter().enumerate() {
        assert_eq!(s["name"], format!("cc{i}"), "{restore}");
        assert_eq!(s["ok"], true, "{restore}");
        assert_eq!(s["target"], fresh[i].address(), "{restore}");
        assert!(s["rows"].as_u64().is_some_and(|r| r > 0), "{restore}");
    }
    let restored = Target::chain_on(&fresh);
    let m = check_chain(&restored).await?;
    step!("restored chain 1..{m} of {written} written");
    assert!(m >= 300 && m <= written, "restored 1..{m} of {written}");

    step!("the same restore without --force is refused: the targets are not empty");
    let again = cluster.cli(&argv).await?;
    assert!(!again.status.success(), "{}", again.stdout);
    let refused: Value = serde_json::from_str(again.stdout.trim())?;
    assert_eq!(refused["ok"], false, "{refused}");
    for (i, s) in refused["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .enumerate()
    {
        assert_eq!(s["ok"], false, "{refused}");
        let error = s["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("server cc{i}"))
                && error.contains("not empty")
                && error.contains("--force"),
            "{error}"
        );
    }
    assert!(
        again.stderr.contains("cc0, cc1, cc2"),
        "names the failed servers: {}",
        again.stderr
    );
    assert_eq!(
        check_chain(&restored).await?,
        m,
        "a refused restore changes nothing"
    );

    step!("the catalog records both restores: COMPLETE, then FAILED naming the servers");
    let list = cluster
        .cli_json(&["restore", "list", "--backup", &id])
        .await?;
    let list = list.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["id"], restore["restore_id"], "{list:?}");
    assert_eq!(list[0]["status"], "COMPLETE", "{list:?}");
    assert!(
        list[0]["servers"]
            .as_array()
            .is_some_and(|s| s.len() == 3 && s.iter().all(|s| s["ok"] == true)),
        "{list:?}"
    );
    assert_eq!(list[1]["status"], "FAILED", "{list:?}");
    assert!(
        list[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cc0, cc1, cc2")),
        "{list:?}"
    );

    step!("an unknown backup id is refused with a clear error");
    let unknown = cluster
        .cli(&["restore", "run", "--backup", "no-such-backup"])
        .await?;
    assert!(!unknown.status.success(), "{}", unknown.stdout);
    assert!(
        unknown.stderr.contains("unknown backup no-such-backup"),
        "{}",
        unknown.stderr
    );

    step!("a target naming a server not in the backup is refused");
    let stray = format!("zz9={}", fresh[0].url());
    let bad = cluster
        .cli(&["restore", "run", "--backup", &id, "--target", &stray])
        .await?;
    assert!(!bad.status.success(), "{}", bad.stdout);
    assert!(
        bad.stderr.contains("zz9") && bad.stderr.contains("not in backup"),
        "{}",
        bad.stderr
    );

    step!("a restore that leaves servers without a target is refused (no --in-place)");
    let partial = format!("cc0={}", fresh[0].url());
    let before = cluster
        .cli_json(&["restore", "list", "--backup", &id])
        .await?;
    let refused = cluster
        .cli(&["restore", "run", "--backup", &id, "--target", &partial])
        .await?;
    assert!(!refused.status.success(), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("cc1, cc2")
            && refused.stderr.contains("--in-place")
            && !refused.stderr.contains("cc0,"),
        "{}",
        refused.stderr
    );
    let after = cluster
        .cli_json(&["restore", "list", "--backup", &id])
        .await?;
    assert_eq!(after, before, "a refused restore was recorded");

    step!("the next backup succeeds too");
    let again = cluster
        .cli_json(&["backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    assert_eq!(again["status"], "COMPLETE", "{again}");

    step!("an unknown cluster is refused with a clear error and a non-zero exit");
    let bad = cluster
        .cli(&["backup", "start", "--cluster", "nope"])
        .await?;
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("unknown cluster"), "{}", bad.stderr);

    step!("a typo in a target URL, or one target for two servers, starts nothing");
    let spare = MariaDb::start_many(&["cx0", "cx1", "cx2"]).await?;
    let before = cluster
        .cli_json(&["restore", "list", "--backup", &id])
        .await?;
    let mut typo = restore_args(&id, "cc", &spare);
    typo[9] = format!("cc1=root@{}", spare[1].address());
    let mut shared = restore_args(&id, "cc", &spare);
    shared[11] = format!("cc2={}", spare[1].url());
    for (args, says) in [(typo, "not a mysql:// URL"), (shared, "also the target of")] {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cluster.cli(&argv).await?;
        assert!(!out.status.success(), "{}", out.stdout);
        assert!(
            out.stderr.contains(says) && out.stderr.contains("nothing was restored"),
            "{}",
            out.stderr
        );
    }

    step!("with one source agent gone, a restore starts on no server");
    cluster.agents[1].kill()?;
    let args = restore_args(&id, "cc", &spare);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.cli(&argv).await?;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("server cc1") && out.stderr.contains("nothing was started"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("server cc0") && !out.stderr.contains("server cc2"));
    for s in &spare {
        let dbs: Vec<String> = s
            .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ('mysql','information_schema','performance_schema','sys')")
            .await?;
        assert!(dbs.is_empty(), "{} was touched: {dbs:?}", s.name());
    }
    let after = cluster
        .cli_json(&["restore", "list", "--backup", &id])
        .await?;
    assert_eq!(after, before, "a refused restore was recorded");
    Ok(())
}

/// A restore whose CLI is killed while it runs (the `before-restore-agents`
/// fail point holds it after it is recorded) finishes anyway, as a job of
/// the leader, and is recorded COMPLETE. Then SIGKILL the leader while a
/// second restore runs: the new leader fails the
/// restore in the catalog saying the coordinator changed; the targets were
/// not touched, so restoring again (the CLI's own retry, or a new run)
/// loads them without --force, and the chain has no gaps.
#[tokio::test]
async fn leader_killed_during_a_restore_fails_it_in_the_catalog() -> anyhow::Result<()> {
    let env = [("FAILPOINTS", "before-restore-agents=return(3000)")];
    let mut cluster = Cluster::start_with("kr", &[], &env).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;
    let backup = cluster
        .cli_json(&["backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    let written = writer.stop().await;
    let id = backup["id"].as_str().expect("id").to_string();

    step!("a restore whose CLI is killed while it runs still finishes and is recorded");
    let first_targets = MariaDb::start_many(&["kg0", "kg1", "kg2"]).await?;
    let interrupted = cluster
        .restore_running(&id, "kr", 0, &first_targets)
        .await?;
    // Dropping the task kills the CLI process (kill_on_drop), like Ctrl-C.
    interrupted.abort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = cluster
            .cli_json(&["restore", "list", "--backup", &id])
            .await?;
        if list[0]["status"] == "COMPLETE" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline && list[0]["status"] == "RUNNING",
            "the interrupted restore did not complete: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = check_chain(&Target::chain_on(&first_targets)).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    drop(first_targets);

    step!("restore into 3 fresh servers; SIGKILL the leader while it runs");
    let fresh = MariaDb::start_many(&["kf0", "kf1", "kf2"]).await?;
    let run = cluster.restore_running(&id, "kr", 1, &fresh).await?;
    let leader = cluster.group.wait_leader(Duration::from_secs(5)).await?;
    cluster.group.members[leader].kill()?;

    step!("the new leader fails it, saying why");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let out = cluster
            .cli(&["--json", "restore", "list", "--backup", &id])
            .await?;
        if out.status.success() {
            let list: Value = serde_json::from_str(out.stdout.trim())?;
            if list[1]["status"] == "FAILED" {
                break list[1].clone();
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "not failed: {}", out.stdout);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        first["reason"]
            .as_str()
            .is_some_and(|r| r.contains("coordinator changed")),
        "{first}"
    );

    step!("restoring again loads the untouched targets; the chain has no gaps");
    let retried = run.await??;
    if !retried.status.success() {
        // The CLI's retry met the old restore still RUNNING: run it again.
        cluster.restore_into(&id, "kr", &fresh).await?;
    }
    let list = cluster
        .cli_json(&["restore", "list", "--backup", &id])
        .await?;
    assert!(
        list.as_array()
            .is_some_and(|l| l.last().is_some_and(|r| r["status"] == "COMPLETE")),
        "{list}"
    );
    let restored = Target::chain_on(&fresh);
    let m = check_chain(&restored).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    Ok(())
}

/// SIGKILL the leader once the cut is committed (during TRANSFER): a new
/// leader resolves the backup it inherits (COMPLETE, or FAILED with a reason
/// saying the coordinator changed), no server stays locked, the next backup
/// succeeds on the remaining quorum, and the catalog survives restarting
/// every coordinator at once.
#[tokio::test]
async fn new_leader_resolves_the_inherited_backup_and_the_catalog_survives_a_restart()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start("fo").await?;
    step!("give each server 300k rows so TRANSFER takes a while");
    for s in &cluster.servers {
        s.exec("CREATE DATABASE bulk").await?;
        s.exec("CREATE TABLE bulk.t (id INT PRIMARY KEY, c CHAR(40)) ENGINE=InnoDB")
            .await?;
        s.exec("INSERT INTO bulk.t SELECT seq, MD5(seq) FROM bulk.seq_1_to_300000")
            .await?;
    }
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;

    step!("start a backup and wait until its cut is committed");
    let id = cluster.start_backup().await?;
    let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
    let shown = cluster
        .wait_backup(&id, Duration::from_secs(20), |s| s != "PREPARING")
        .await?;
    anyhow::ensure!(
        shown["status"] == "TRANSFERRING",
        "backup left PREPARING as {} before the kill: {shown}",
        shown["status"]
    );

    step!("SIGKILL the leader (coordinator {})", leader + 1);
    cluster.group.members[leader].kill()?;
    let killed_at = Instant::now();
    let resolved = cluster
        .wait_backup(&id, Duration::from_secs(60), |s| {
            s == "COMPLETE" || s == "FAILED"
        })
        .await?;
    let took = killed_at.elapsed();
    step!(
        "inherited backup resolved as {} in {took:?}: {}",
        resolved["status"],
        resolved["reason"]
    );
    if resolved["status"] == "FAILED" {
        let reason = resolved["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("coordinator changed"), "{reason}");
    }

    step!("no server stays locked: the chain keeps growing");
    writes_resume(&writer).await?;

    step!("the next backup succeeds on the remaining quorum");
    cluster.next_backup_completes().await?;
    writer.stop().await;

    step!("restart every coordinator at once; the catalog is intact");
    let before = cluster.cli_json(&["catalog", "list"]).await?;
    for m in &mut cluster.group.members {
        m.stop()?;
    }
    let restarts = cluster.group.members.iter_mut().map(|m| m.restart());
    futures::future::try_join_all(restarts).await?;
    cluster.group.wait_leader(Duration::from_secs(30)).await?;
    let after = cluster.cli_json(&["catalog", "list"]).await?;
    assert_eq!(after, before);
    assert_eq!(after.as_array().map(Vec::len), Some(2), "{after}");
    Ok(())
}

/// SIGKILL the leader while a backup waits at the barrier (kp2's lock is
/// queued behind another BACKUP STAGE, kp0 and kp1 hold theirs): the new leader aborts the
/// inherited backup everywhere and fails it saying the cut was never
/// recorded; every server takes writes again and the next backup succeeds.
#[tokio::test]
async fn leader_killed_during_prepare_fails_the_backup_and_unlocks_everything() -> anyhow::Result<()>
{
    let mut cluster = Cluster::start_with("kp", SLOW_LOCK_ARGS, &[]).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(60)).await?;

    step!("hold BACKUP STAGE on kp2, start a backup, wait until kp0 and kp1 are locked");
    let (id, blocker) = cluster.start_backup_held_at_barrier(2).await?;
    let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
    cluster.wait_locked(0).await?;
    cluster.wait_locked(1).await?;

    step!("SIGKILL the leader (coordinator {})", leader + 1);
    cluster.group.members[leader].kill()?;
    let killed_at = Instant::now();
    let resolved = cluster
        .wait_backup(&id, Duration::from_secs(60), |s| s != "PREPARING")
        .await?;
    step!(
        "inherited backup resolved as {} in {:?}: {}",
        resolved["status"],
        killed_at.elapsed(),
        resolved["reason"]
    );
    assert_eq!(resolved["status"], "FAILED", "{resolved}");
    let reason = resolved["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("before the cut was recorded"), "{reason}");
    drop(blocker);

    step!("every server takes writes again");
    writes_resume(&writer).await?;

    step!("the next backup succeeds");
    cluster.next_backup_completes().await?;
    writer.stop().await;
    Ok(())
}

/// SIGKILL the leader after every server was committed (its lock released,
/// the barrier proven) but before the cut is recorded in raft (the
/// `before-commit-cut` fail point pauses the job there): the writes already
/// run, the new leader finds the backup PREPARING, aborts it everywhere (the
/// agents drop their snapshots) and fails it saying the cut was never
/// recorded; the next backup succeeds and restores as a gap-free chain.
#[tokio::test]
async fn leader_killed_before_the_cut_is_recorded_fails_the_backup() -> anyhow::Result<()> {
    let env = [("FAILPOINTS", "before-commit-cut=return(4000)")];
    let mut cluster = Cluster::start_with("kb", &[], &env).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(60)).await?;

    step!("start a backup; wait until every server is committed (unlocked, snapshots kept)");
    let id = cluster.start_backup().await?;
    for i in 0..3 {
        cluster
            .wait_agent(i, "committed", |st| st.state == "committed")
            .await?;
    }
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    assert_eq!(shown["status"], "PREPARING", "cut recorded early: {shown}");
    step!("the writes run while the leader pauses before recording the cut");
    writes_resume(&writer).await?;

    let leader = cluster.group.wait_leader(Duration::from_secs(5)).await?;
    step!("SIGKILL the leader (coordinator {})", leader + 1);
    cluster.group.members[leader].kill()?;
    let resolved = cluster
        .wait_backup(&id, Duration::from_secs(60), |s| s != "PREPARING")
        .await?;
    assert_eq!(resolved["status"], "FAILED", "{resolved}");
    let reason = resolved["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("before the cut was recorded"), "{reason}");

    step!("the agents dropped the snapshots");
    for i in 0..3 {
        cluster
            .wait_agent(i, "idle", |st| st.state == "idle")
            .await?;
    }

    step!("the next backup completes and restores as a gap-free chain");
    let next = cluster
        .cli_json(&["backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    assert_eq!(next["status"], "COMPLETE", "{next}");
    let written = writer.stop().await;
    let fresh = MariaDb::start_many(&["kbr0", "kbr1", "kbr2"]).await?;
    let next_id = next["id"].as_str().context("id")?;
    cluster.restore_into(next_id, "kb", &fresh).await?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    assert!(m >= 50 && m <= written, "restored 1..{m} of {written}");
    Ok(())
}

/// SIGKILL the leader right after it recorded a proven cut and before any
/// TRANSFER went out (the `after-commit-cut` fail point pauses the job
/// there): every server is already unlocked and keeps its snapshots; the
/// new leader transfers and completes the backup, and the backup restored
/// into 3 fresh servers is a causal chain without gaps.
#[tokio::test]
async fn leader_killed_right_after_the_cut_completes_the_backup() -> anyhow::Result<()> {
    let env = [("FAILPOINTS", "after-commit-cut=return(4000)")];
    let mut cluster = Cluster::start_with("kc", &[], &env).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;

    step!("start a backup; wait until its cut is recorded");
    let id = cluster.start_backup().await?;
    let shown = cluster
        .wait_backup(&id, Duration::from_secs(20), |s| s != "PREPARING")
        .await?;
    assert_eq!(
        shown["status"], "TRANSFERRING",
        "cut never recorded: {shown}"
    );
    for s in shown["servers"].as_array().expect("servers") {
        assert!(s["lock_ms"].as_f64().is_some(), "release not recorded: {s}");
    }
    for i in 0..3 {
        cluster
            .wait_agent(i, "committed", |st| {
                st.state == "committed" && !st.lock_held
            })
            .await?;
    }

    let leader = cluster.group.wait_leader(Duration::from_secs(5)).await?;
    step!(
        "every server is unlocked with its snapshots; SIGKILL the leader (coordinator {})",
        leader + 1
    );
    cluster.group.members[leader].kill()?;
    let resolved = cluster
        .wait_backup(&id, Duration::from_secs(60), |s| {
            s == "COMPLETE" || s == "FAILED"
        })
        .await?;
    assert_eq!(resolved["status"], "COMPLETE", "{resolved}");
    assert!(resolved["freeze_ms"].as_f64().is_some(), "{resolved}");
    for s in resolved["servers"].as_array().expect("servers") {
        assert!(
            s["lock_ms"].as_f64().is_some() && s["artifact"].is_object(),
            "{s}"
        );
    }
    writes_resume(&writer).await?;
    let written = writer.stop().await;

    step!("restore it into 3 fresh servers: the chain has no gaps");
    let fresh = MariaDb::start_many(&["kr0", "kr1", "kr2"]).await?;
    cluster.restore_into(&id, "kc", &fresh).await?;
    let restored = Target::chain_on(&fresh);
    let m = check_chain(&restored).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");

    step!("the next backup succeeds");
    cluster.next_backup_completes().await?;
    Ok(())
}

/// An agent SIGSTOPped past the PREPARE deadline: the backup fails naming
/// that server (and cannot be restored), the other servers are unlocked at
/// once (not at their lease), and once the agent runs again the next backup
/// succeeds.
#[tokio::test]
async fn stopped_agent_fails_the_backup_naming_it() -> anyhow::Result<()> {
    let mut cluster = Cluster::start("sa").await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(60)).await?;

    step!("SIGSTOP agent sa1; backup start --wait");
    cluster.agents[1].pause()?;
    let out = cluster
        .cli(&["--json", "backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    assert!(!out.status.success(), "a FAILED backup exits non-zero");
    let failed: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    // Whichever notices first: the HTTP/2 keep-alive (about 3 s) or the
    // 5 s PREPARE deadline.
    assert!(
        reason.contains("server sa1")
            && (reason.contains("did not prepare") || reason.contains("keep-alive timed out")),
        "{reason}"
    );
    assert!(
        !reason.contains("sa0") && !reason.contains("sa2"),
        "{reason}"
    );

    step!("restoring the FAILED backup is refused: it is not COMPLETE");
    let failed_id = failed["id"].as_str().expect("id");
    let refused = cluster
        .cli(&["restore", "run", "--backup", failed_id])
        .await?;
    assert!(!refused.status.success(), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("is FAILED, not COMPLETE"),
        "{}",
        refused.stderr
    );

    step!("every server takes writes while sa1's agent is still stopped");
    writes_resume(&writer).await?;
    cluster.agents[1].resume()?;

    step!("the next backup succeeds");
    cluster.next_backup_completes().await?;
    writer.stop().await;
    Ok(())
}

/// An agent SIGKILLed while it holds its server's lock and another server's
/// lock is still queued: the backup fails at once naming it (not at the
/// slow one's lock-wait budget), its server is unlocked (the lock lived on the
/// dead agent's connection), and once the agent is back the next backup
/// succeeds.
#[tokio::test]
async fn agent_killed_during_prepare_fails_the_backup_naming_it() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with("ka", SLOW_LOCK_ARGS, &[]).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(60)).await?;

    step!("hold BACKUP STAGE on ka2 so the barrier waits; start a backup");
    let (id, blocker) = cluster.start_backup_held_at_barrier(2).await?;

    step!("once ka1 holds its lock, SIGKILL its agent");
    cluster.wait_locked(1).await?;
    cluster.agents[1].kill()?;

    step!("the backup fails naming ka1, not ka2's missed deadline");
    let failed = cluster
        .wait_backup(&id, Duration::from_secs(20), |s| s != "PREPARING")
        .await?;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("server ka1")
            && (reason.contains("before the cut was committed")
                || reason.contains("lost while prepared")),
        "{reason}"
    );
    assert!(!reason.contains("ka2"), "{reason}");

    step!("every server takes writes");
    drop(blocker);
    writes_resume(&writer).await?;

    step!("ka1 is retired: server remove; backups of ka0 and ka2 succeed");
    let unknown = cluster
        .cli(&["server", "remove", "--cluster", CLUSTER, "nosuch"])
        .await?;
    assert!(
        !unknown.status.success() && unknown.stderr.contains("unknown server \"nosuch\""),
        "{}",
        unknown.stderr
    );
    let removed = cluster
        .cli_json(&["server", "remove", "--cluster", CLUSTER, "ka1"])
        .await?;
    assert_eq!(removed["removed"], true, "{removed}");
    let two = cluster
        .cli_json(&["backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    assert_eq!(two["status"], "COMPLETE", "{two}");
    let names: Vec<&str> = two["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["ka0", "ka2"], "{two}");

    step!("ka1's agent comes back: it registers again; the next backup has all 3");
    cluster.agents[1].restart().await?;
    cluster.next_backup_completes().await?;
    writer.stop().await;
    Ok(())
}

/// Coordinators configured with different peers do not form a group with
/// each other: the odd one's raft traffic is refused, `coordinator status`
/// names it and exits non-zero, the others keep serving; and a coordinator
/// restarted with other peers than its data dir was created with refuses
/// to start, saying so.
#[tokio::test]
async fn coordinators_that_disagree_on_membership_are_refused() -> anyhow::Result<()> {
    let ports = (0..5)
        .map(|_| lockstep_tests::ports::free_port())
        .collect::<anyhow::Result<Vec<u16>>>()?;
    let peers = |n: usize| {
        (0..n)
            .map(|i| format!("{}=http://127.0.0.1:{}", i + 1, ports[i]))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (three, five) = (peers(3), peers(5));
    step!("coordinators 1 and 2 list 3 voters, coordinator 3 lists 5");
    let (c1, c2, c3) = tokio::try_join!(
        CoordinatorProc::start(1, ports[0], &three),
        CoordinatorProc::start(2, ports[1], &three),
        CoordinatorProc::start(3, ports[2], &five),
    )?;
    let group = CoordinatorGroup {
        members: vec![c1, c2],
    };
    let leader = group.wait_leader(Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let odd = c3.status().await?;
    assert!(
        odd.role != "leader" && odd.leader_id == 0,
        "coordinator 3 must not join: {odd:?}"
    );

    step!("coordinator status names coordinator 3 and exits non-zero");
    let out = run_lockstep(&group.urls(), &["--json", "coordinator", "status"]).await?;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("coordinator 3")
            && out.stderr.contains("disagrees on membership")
            && out.stderr.contains("[1, 2, 3, 4, 5]"),
        "{}",
        out.stderr
    );
    let status: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(status["leader_id"], group.members[leader].id(), "{status}");
    run_lockstep(&group.urls(), &["server", "list"])
        .await?
        .success()?;

    step!("a restart with other peers than the data dir's is refused");
    let mut group = group;
    let err = group.members[0]
        .restart_with_peers(&five)
        .await
        .expect_err("started with changed peers");
    let err = format!("{err:#}");
    assert!(
        err.contains("belongs to a raft group of voters [1, 2, 3]")
            && err.contains("configured peers are [1, 2, 3, 4, 5]"),
        "{err}"
    );
    drop(c3);
    Ok(())
}

/// A backup recorded in the catalog that no job drives (the leader's
/// StartBackup looked timed out although it was applied: the
/// `start-backup-unconfirmed` fail point, once): the leader's reconciler
/// finds it within seconds, aborts it on every server and fails it with the
/// reason; the CLI, which never got its answer, reports that backup's
/// end; every server takes writes and the next backup completes.
#[tokio::test]
async fn a_backup_no_job_drives_is_resolved_by_the_leader() -> anyhow::Result<()> {
    let env = [("FAILPOINTS", "start-backup-unconfirmed=1*return")];
    let cluster = Cluster::start_with("ku", &[], &env).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(30, Duration::from_secs(60)).await?;

    step!("backup start --wait: the start is recorded, but no job drives it");
    let started = Instant::now();
    let out = cluster
        .cli(&["--json", "backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    step!(
        "the CLI ended with {} after {:?}: {}",
        out.status,
        started.elapsed(),
        out.stderr.trim()
    );
    let listed = cluster.cli_json(&["catalog", "list"]).await?;
    let backups = listed.as_array().context("a list")?;
    assert_eq!(backups.len(), 1, "exactly one backup recorded: {listed}");
    let id = backups[0]["id"].as_str().context("id")?;
    let resolved = cluster
        .wait_backup(id, Duration::from_secs(15), |s| s != "PREPARING")
        .await?;
    assert_eq!(resolved["status"], "FAILED", "{resolved}");
    let reason = resolved["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("never confirmed") && reason.contains("aborted on every server"),
        "{reason}"
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let reported: Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("no backup reported: {}", out.stderr))?;
    assert_eq!(reported, resolved, "the CLI reports the catalog's end");

    step!("every server takes writes; the next backup completes");
    writes_resume(&writer).await?;
    cluster.next_backup_completes().await?;
    writer.stop().await;
    Ok(())
}
