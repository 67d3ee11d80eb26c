//! Restore points: the two-phase cut without data. An agent holds a
//! position-only cut in a session of its own (a committed backup keeps its
//! snapshots) and refuses a second cut while one holds the lock; the
//! coordinators take points on a per-cluster schedule on the leader (every
//! second under the causal-chain writer, through a backup and a leader
//! change), record every server's position and lock times, and keep the
//! newest `--keep`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lockstep_proto::agent as pb;
use lockstep_tests::plain_cluster::{CLUSTER, Cluster, writes_resume};
use lockstep_tests::probe::{create_probe_table, write_commits_within};
use lockstep_tests::{
    AgentOptions, AgentProc, CatalogCli, CausalWriter, MariaDb, MariaDbOptions, Supervised, Target,
    check_chain, step,
};
use serde_json::Value;
use tonic::Code;

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A position-only Prepare on one agent.
fn point_request(id: &str, term: u64, lease_ms: u64) -> pb::PrepareRequest {
    pb::PrepareRequest {
        kind: String::new(),
        backup_id: id.into(),
        lease_ms,
        budgets: None,
        snapshot_connections: 0,
        term,
        wait_for_go: false,
        position_only: true,
    }
}

/// The first event of a Prepare stream, which must be PREPARED.
async fn prepared(events: &mut tonic::Streaming<pb::PrepareEvent>) -> anyhow::Result<pb::Prepared> {
    match events.message().await?.and_then(|m| m.event) {
        Some(pb::prepare_event::Event::Prepared(p)) => Ok(p),
        other => anyhow::bail!("expected PREPARED, got {other:?}"),
    }
}

/// A position-only cut on one agent: it locks (writes wait), captures the
/// position and opens no snapshot, in its own session beside a committed
/// backup, whose snapshots it leaves alone (the backup transfers after the
/// point was committed). While it holds the lock a second cut is refused
/// with FAILED_PRECONDITION naming it. Its Commit proves the lock was held
/// until then; a point left alone is released by its lease and a later
/// Commit is refused; a deposed term is fenced off.
#[tokio::test]
async fn a_position_only_cut_is_a_session_of_its_own() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("rpa")).await?;
    create_probe_table(&db).await?;
    let agent = AgentProc::start(AgentOptions::new("rpa-agent", db.url())).await?;
    let mut client = agent.client().await?;

    step!("a backup prepares and commits: its snapshots stay open for Transfer");
    db.exec("INSERT INTO lockstep_probe.w () VALUES ()").await?;
    let mut backup = client
        .prepare(pb::PrepareRequest {
            kind: String::new(),
            backup_id: "b1".into(),
            lease_ms: 30_000,
            snapshot_connections: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let b1 = prepared(&mut backup).await?;
    client
        .commit(pb::CommitRequest {
            backup_id: "b1".into(),
            term: 0,
        })
        .await?;
    db.exec("INSERT INTO lockstep_probe.w () VALUES ()").await?;

    step!("a position-only cut locks beside it; writes wait");
    let mut events = client
        .prepare(point_request("p1", 0, 30_000))
        .await?
        .into_inner();
    let p1 = prepared(&mut events).await?;
    let pos = p1.position.clone().unwrap_or_default();
    let b1_pos = b1.position.clone().unwrap_or_default();
    assert!(
        (pos.binlog_file.clone(), pos.binlog_pos) > (b1_pos.binlog_file, b1_pos.binlog_pos),
        "the point sees the write after the backup's cut: {pos:?}"
    );
    assert!(
        !write_commits_within(&db, Duration::from_millis(300)).await?,
        "a write committed while the point held the lock"
    );
    let st = client.status(pb::StatusRequest {}).await?.into_inner();
    assert!(st.lock_held, "status shows the held lock: {st:?}");

    step!("a second cut while p1 holds the lock is refused, naming it");
    let refused = client
        .prepare(point_request("p2", 0, 30_000))
        .await
        .expect_err("a second cut prepared");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("restore point p1"),
        "{}",
        refused.message()
    );

    step!("COMMIT proves the lock was held; writes flow again");
    let c = client
        .commit(pb::CommitRequest {
            backup_id: "p1".into(),
            term: 0,
        })
        .await?
        .into_inner();
    assert!(c.held_until_commit, "{c:?}");
    assert!(c.snapshot_positions.is_empty(), "no snapshots: {c:?}");
    assert!(write_commits_within(&db, Duration::from_secs(2)).await?);
    let again = client
        .commit(pb::CommitRequest {
            backup_id: "p1".into(),
            term: 0,
        })
        .await?
        .into_inner();
    assert_eq!(
        again.held_us, c.held_us,
        "a repeated COMMIT answers the first"
    );

    step!("the backup's snapshots were left alone: it transfers");
    let mut transfer = client
        .transfer(pb::TransferRequest {
            backup_id: "b1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let artifact = loop {
        let msg = transfer
            .message()
            .await?
            .context("transfer ended without an artifact")?;
        if msg.done {
            break msg.artifact.context("no artifact")?;
        }
    };
    assert_eq!(
        artifact.rows, 1,
        "the row before the backup's cut: {artifact:?}"
    );
    drop(backup);

    step!("a point nobody commits is released by its lease; COMMIT then fails");
    let mut events = client
        .prepare(point_request("p3", 0, 1_000))
        .await?
        .into_inner();
    prepared(&mut events).await?;
    let released = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .context("no release within 10 s")??;
    let reason = match released.and_then(|m| m.event) {
        Some(pb::prepare_event::Event::Released(r)) => r.reason,
        other => anyhow::bail!("expected released, got {other:?}"),
    };
    assert_eq!(reason, "lease-expired");
    let late = client
        .commit(pb::CommitRequest {
            backup_id: "p3".into(),
            term: 0,
        })
        .await
        .expect_err("a commit after the lease");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(write_commits_within(&db, Duration::from_secs(2)).await?);

    step!("fencing: a point of term 5 is not committed by term 3");
    let mut events = client
        .prepare(point_request("p4", 5, 30_000))
        .await?
        .into_inner();
    prepared(&mut events).await?;
    let stale = client
        .commit(pb::CommitRequest {
            backup_id: "p4".into(),
            term: 3,
        })
        .await
        .expect_err("a deposed term committed");
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    let ok = client
        .commit(pb::CommitRequest {
            backup_id: "p4".into(),
            term: 5,
        })
        .await?
        .into_inner();
    assert!(ok.held_until_commit);
    Ok(())
}

fn points(list: &Value) -> Vec<Value> {
    list["points"].as_array().cloned().unwrap_or_default()
}

/// Polls the list until `done` holds, for at most `timeout`.
async fn wait_points(
    cluster: &Cluster,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = cluster.restore_points().await?;
        let p = points(&l);
        if done(&p) {
            return Ok(p);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}: {l}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every point has every server, the locks overlapped (all held at one
/// instant), and no server's position goes backwards from one to the next.
fn check_points(points: &[Value], servers: usize) {
    let mut last: Vec<(String, u64)> = Vec::new();
    for p in points {
        let s = p["servers"].as_array().expect("servers");
        assert_eq!(s.len(), servers, "{p}");
        let locked = s
            .iter()
            .map(|s| s["locked_at_unix_us"].as_i64().unwrap_or(0));
        let released = s
            .iter()
            .map(|s| s["released_at_unix_us"].as_i64().unwrap_or(0));
        let (last_locked, first_released) =
            (locked.max().unwrap_or(0), released.min().unwrap_or(0));
        assert!(
            last_locked > 0 && last_locked <= first_released,
            "every lock held at one instant: {p}"
        );
        assert!(
            p["freeze_ms"]
                .as_f64()
                .is_some_and(|f| f > 0.0 && f < 1000.0),
            "{p}"
        );
        let pos: Vec<(String, u64)> = s
            .iter()
            .map(|s| {
                (
                    s["binlog_file"].as_str().unwrap_or_default().to_string(),
                    s["binlog_pos"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert!(pos.iter().all(|(f, p)| !f.is_empty() && *p > 4), "{p}");
        if !last.is_empty() {
            for (before, now) in last.iter().zip(&pos) {
                assert!(
                    before <= now,
                    "a position went backwards: {before:?} → {now:?}"
                );
            }
        }
        assert_eq!(p["sealed"], false, "no archive index yet: {p}");
        last = pos;
    }
}

/// 3 servers under the causal-chain writer with a restore point every
/// second: points keep coming, each with every server, overlapping locks
/// and positions that never go backwards; a labelled point is listed; a
/// backup taken while the schedule runs (a point every 200 ms then, and
/// enough data that points are cut while it transfers) completes and
/// restores to a gap-free chain; after the
/// leader is SIGKILLed the new leader keeps the schedule; `--keep` prunes.
/// Bad input (an unknown cluster, an interval under 100 ms, `--every 0`)
/// is refused clearly.
#[tokio::test]
async fn scheduled_restore_points_under_load() -> anyhow::Result<()> {
    // The backup below pauses 1.5 s between its cut and its transfer (its
    // snapshots open on every agent), so points are cut beside it however
    // fast the machine transfers.
    let mut cluster = Cluster::start_with(
        "rp",
        &[],
        &[("FAILPOINTS", "after-commit-cut=return(1500)")],
    )
    .await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(50, Duration::from_secs(30)).await?;

    step!("bad input: unknown cluster, an interval under 100 ms, --every 0");
    let unknown = cluster
        .cli(&[
            "restore-point",
            "schedule",
            "--cluster",
            "nope",
            "--every",
            "1s",
        ])
        .await?;
    assert!(!unknown.status.success(), "{}", unknown.stdout);
    assert!(
        unknown.stderr.contains("unknown cluster \"nope\""),
        "{}",
        unknown.stderr
    );
    let unknown = cluster
        .cli(&["restore-point", "create", "--cluster", "nope"])
        .await?;
    assert!(
        unknown.stderr.contains("unknown cluster \"nope\""),
        "{}",
        unknown.stderr
    );
    let unknown = cluster
        .cli(&["restore-point", "list", "--cluster", "nope"])
        .await?;
    assert!(
        unknown.stderr.contains("unknown cluster \"nope\""),
        "{}",
        unknown.stderr
    );
    let fast = cluster
        .cli(&[
            "restore-point",
            "schedule",
            "--cluster",
            CLUSTER,
            "--every",
            "50ms",
        ])
        .await?;
    assert!(!fast.status.success(), "{}", fast.stdout);
    assert!(fast.stderr.contains("at least 100 ms"), "{}", fast.stderr);
    let zero = cluster
        .cli(&[
            "restore-point",
            "schedule",
            "--cluster",
            CLUSTER,
            "--every",
            "0s",
        ])
        .await?;
    assert!(!zero.status.success(), "{}", zero.stdout);
    assert!(zero.stderr.contains("--off"), "{}", zero.stderr);

    step!("restore-point schedule --every 1s");
    let s = cluster
        .cli_json(&[
            "restore-point",
            "schedule",
            "--cluster",
            CLUSTER,
            "--every",
            "1s",
        ])
        .await?;
    assert_eq!(s["every_ms"], 1000, "{s}");
    assert_eq!(s["keep"], 3600, "{s}");

    step!("at least 5 points within 15 s, each consistent with the last");
    let first = wait_points(&cluster, "5 points", Duration::from_secs(15), |p| {
        p.len() >= 5
    })
    .await?;
    check_points(&first, 3);
    let l = cluster.restore_points().await?;
    assert_eq!(l["schedule"]["every_ms"], 1000, "{l}");
    assert_eq!(l["failed"], 0, "{l}");

    step!("restore-point create --label is listed with its label");
    let made = cluster
        .cli_json(&[
            "restore-point",
            "create",
            "--cluster",
            CLUSTER,
            "--label",
            "before deploy 42",
        ])
        .await?;
    assert_eq!(made["label"], "before deploy 42", "{made}");
    let labelled = wait_points(
        &cluster,
        "the labelled point",
        Duration::from_secs(5),
        |p| p.iter().any(|x| x["id"] == made["id"]),
    )
    .await?;
    let listed = labelled
        .iter()
        .find(|x| x["id"] == made["id"])
        .expect("listed");
    assert_eq!(listed["label"], "before deploy 42");

    step!("a backup while the schedule runs: points are cut while its snapshots are open");
    cluster.servers[0].exec("CREATE DATABASE bulk").await?;
    cluster.servers[0]
        .exec("CREATE TABLE bulk.t (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB")
        .await?;
    cluster.servers[0]
        .exec("INSERT INTO bulk.t SELECT seq, REPEAT('x', 200) FROM bulk.seq_1_to_200000")
        .await?;
    // A point every 200 ms meanwhile, so that several meet the transfer.
    cluster
        .cli_json(&[
            "restore-point",
            "schedule",
            "--cluster",
            CLUSTER,
            "--every",
            "200ms",
        ])
        .await?;
    let backup = cluster
        .cli_json(&["backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    cluster
        .cli_json(&[
            "restore-point",
            "schedule",
            "--cluster",
            CLUSTER,
            "--every",
            "1s",
        ])
        .await?;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let (cut_at, done_at) = (
        backup["cut_committed_at_unix_ms"].as_i64().unwrap_or(0),
        backup["finished_at_unix_ms"].as_i64().unwrap_or(0),
    );
    let during = points(&cluster.restore_points().await?)
        .iter()
        .filter(|p| {
            p["created_at_unix_ms"]
                .as_i64()
                .is_some_and(|t| t > cut_at && t < done_at)
        })
        .count();
    step!(
        "{during} point(s) cut between the backup's cut and its end ({} ms)",
        done_at - cut_at
    );
    assert!(
        during >= 1,
        "no point was cut during the transfer: {backup}"
    );

    step!("the backup restores into 3 fresh servers: a chain without gaps");
    let id = backup["id"].as_str().context("backup id")?.to_string();
    let fresh = MariaDb::start_many(&["rpr0", "rpr1", "rpr2"]).await?;
    let restore = cluster.restore_into(&id, "rp", &fresh).await?;
    assert_eq!(restore["ok"], true, "{restore}");
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("restored chain 1..{m}");
    assert!(m >= 50, "restored 1..{m}");
    let rows: u64 = fresh[0].query_one("SELECT COUNT(*) FROM bulk.t").await?;
    assert_eq!(rows, 200_000);
    drop(fresh);

    step!("SIGKILL agent rp1: points fail, are aborted everywhere and counted, never recorded");
    let before = cluster.restore_points().await?;
    let newest = points(&before).last().context("a point")?["seq"]
        .as_u64()
        .unwrap_or(0);
    cluster.agents[1].kill()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let failing = loop {
        let l = cluster.restore_points().await?;
        if l["failed"].as_u64().is_some_and(|f| f >= 2) {
            break l;
        }
        anyhow::ensure!(Instant::now() < deadline, "no failed points counted: {l}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failing["last_failure"]
            .as_str()
            .is_some_and(|r| r.contains("server rp1")),
        "{failing}"
    );
    let recorded = points(&failing);
    check_points(&recorded, 3);
    assert!(
        recorded
            .iter()
            .filter(|p| p["seq"].as_u64().is_some_and(|s| s > newest))
            .count()
            <= 1,
        "points recorded while rp1's agent was gone (one may have been cut before): {failing}"
    );
    writes_resume(&writer).await?;
    cluster.agents[1].restart().await?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;

    step!("SIGKILL the leader: the new leader keeps taking points");
    let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
    cluster.group.members[leader].kill()?;
    let killed_at = now_unix_ms();
    let after = wait_points(
        &cluster,
        "3 points after the kill",
        Duration::from_secs(30),
        |p| {
            p.iter()
                .filter(|x| {
                    x["created_at_unix_ms"]
                        .as_i64()
                        .is_some_and(|t| t > killed_at)
                })
                .count()
                >= 3
        },
    )
    .await?;
    check_points(&after, 3);
    writes_resume(&writer).await?;

    step!("--keep 3 prunes to the newest 3");
    let s = cluster
        .cli_json(&[
            "restore-point",
            "schedule",
            "--cluster",
            CLUSTER,
            "--every",
            "1s",
            "--keep",
            "3",
        ])
        .await?;
    assert_eq!(s["keep"], 3, "{s}");
    let kept = cluster.restore_points().await?;
    assert!(kept["total"].as_u64().is_some_and(|t| t <= 3), "{kept}");
    let newest = after.last().context("a point")?["seq"]
        .as_u64()
        .unwrap_or(0);
    let pruned = wait_points(
        &cluster,
        "newer points, 3 kept",
        Duration::from_secs(10),
        |p| p.len() == 3 && p[0]["seq"].as_u64().is_some_and(|s| s > newest),
    )
    .await?;
    check_points(&pruned, 3);

    step!("--off stops the schedule; the points stay");
    let off = cluster
        .cli_json(&["restore-point", "schedule", "--cluster", CLUSTER, "--off"])
        .await?;
    assert_eq!(off["every_ms"], 0, "{off}");
    let human = cluster
        .cli(&["restore-point", "list", "--cluster", CLUSTER])
        .await?;
    human.success()?;
    assert!(
        human.stdout.contains("no restore point schedule") && human.stdout.contains("FREEZE MS"),
        "{}",
        human.stdout
    );
    let written = writer.stop().await;
    step!("the writer committed {written} records throughout");
    Ok(())
}
