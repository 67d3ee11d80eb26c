//! The lock of one server: held until commit, released by the lease or when
//! the caller disappears, refused or bounded when a long write would make it
//! queue. Real MariaDB, real `lockstep-agent serve`, real gRPC.

use std::time::{Duration, Instant};

use lockstep_proto::agent as pb;
use lockstep_tests::probe::{self, create_probe_table, wait_writable, write_commits_within};
use lockstep_tests::{AgentOptions, AgentProc, MariaDb, MariaDbOptions, step};
use mysql_async::prelude::Queryable;
use tonic::Code;

async fn server_and_agent(name: &str, extra: &[&str]) -> anyhow::Result<(MariaDb, AgentProc)> {
    let db = MariaDb::start(MariaDbOptions::named(name)).await?;
    create_probe_table(&db).await?;
    let mut opts = AgentOptions::new(format!("{name}-agent"), db.url());
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    let agent = AgentProc::start(opts).await?;
    Ok((db, agent))
}

/// Starts `INSERT ... SELECT SLEEP(secs)` on its own connection and waits
/// until the server has run it for at least `age`.
async fn start_long_write(
    db: &MariaDb,
    secs: u32,
    age: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    db.exec("CREATE TABLE IF NOT EXISTS lockstep_probe.slow (v INT) ENGINE=InnoDB")
        .await?;
    let mut conn = db.conn().await?;
    let sql = format!("INSERT INTO lockstep_probe.slow SELECT SLEEP({secs})");
    let task = tokio::spawn(async move {
        let _ = conn.query_drop(sql).await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: Option<u64> = db
            .query_first(
                "SELECT CAST(MAX(TIME_MS) AS UNSIGNED) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO lockstep_probe.slow%'",
            )
            .await?
            .flatten();
        if running.is_some_and(|ms| ms >= age.as_millis() as u64) {
            return Ok(task);
        }
        anyhow::ensure!(Instant::now() < deadline, "the long write never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PREPARE locks the server and keeps it locked until COMMIT; COMMIT reports
/// the hold time and every snapshot sits at the captured position.
#[tokio::test]
async fn lock_is_held_until_commit() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent("lock-held", &[]).await?;
    let mut client = agent.client().await?;

    step!("prepare");
    let mut cut = probe::prepare(&mut client, "b-held", Duration::from_secs(30), None).await?;
    let pos = cut.position();
    assert!(pos.binlog_file.starts_with("mysql-bin."), "{pos:?}");
    assert_eq!(cut.prepared.lock_method, "backup-stage");
    assert_eq!(pos, {
        let (file, off) = db.binlog_position().await?.expect("binlog on");
        pb::Position {
            binlog_file: file,
            binlog_pos: off,
            gtid_set: db.gtid_binlog_pos().await?,
        }
    });

    step!("writes are blocked while prepared");
    assert!(
        !write_commits_within(&db, Duration::from_millis(400)).await?,
        "a write committed while the server was locked"
    );
    let status = client.status(pb::StatusRequest {}).await?.into_inner();
    assert_eq!(status.state, "prepared");
    assert!(
        status.lock_held && status.lock_held_for_us >= 400_000,
        "{status:?}"
    );
    assert_eq!(
        status.server.as_ref().map(|s| s.flavour.as_str()),
        Some("mariadb")
    );

    step!("commit releases the lock");
    let committed = client
        .commit(pb::CommitRequest {
            backup_id: "b-held".into(),
            term: 0,
        })
        .await?
        .into_inner();
    assert!(
        committed.held_us >= 400_000,
        "held {} us",
        committed.held_us
    );
    assert_eq!(committed.snapshot_positions.len(), 2);
    for p in &committed.snapshot_positions {
        assert_eq!(
            (p.binlog_file.as_str(), p.binlog_pos),
            (pos.binlog_file.as_str(), pos.binlog_pos)
        );
    }
    let took = wait_writable(&db, Duration::from_secs(2)).await?;
    assert!(
        took < Duration::from_secs(1),
        "writes resumed only after {took:?}"
    );
    let released = cut.released(Duration::from_secs(2)).await?;
    assert_eq!(released.reason, "commit");

    step!("a second commit answers the same release; abort drops the snapshots");
    let again = client
        .commit(pb::CommitRequest {
            backup_id: "b-held".into(),
            term: 0,
        })
        .await?
        .into_inner();
    assert_eq!(again.held_us, committed.held_us);
    assert!(
        client
            .abort(pb::AbortRequest {
                backup_id: "b-held".into(),
                reason: "test".into(),
                term: 0,
            })
            .await
            .is_ok()
    );
    assert_eq!(
        client
            .status(pb::StatusRequest {})
            .await?
            .into_inner()
            .state,
        "idle"
    );
    let err = client
        .commit(pb::CommitRequest {
            backup_id: "b-held".into(),
            term: 0,
        })
        .await
        .expect_err("commit after abort");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    Ok(())
}

/// Two-step prepare: with `wait_for_go` the agent answers READY with nothing
/// locked (writes still commit) and locks only on GO; a GO for another
/// backup is refused; a caller that goes away while armed leaves nothing
/// locked and the agent idle.
#[tokio::test]
async fn armed_prepare_locks_only_on_go() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent("go", &[]).await?;
    let mut client = agent.client().await?;
    let request = |id: &str| pb::PrepareRequest {
        kind: String::new(),
        backup_id: id.into(),
        lease_ms: 30_000,
        budgets: None,
        snapshot_connections: 1,
        term: 0,
        wait_for_go: true,
        position_only: false,
    };
    let event = |m: Option<pb::PrepareEvent>| m.and_then(|m| m.event);

    step!("READY: armed, nothing locked");
    let mut events = client.prepare(request("b-go")).await?.into_inner();
    assert!(
        matches!(
            event(events.message().await?),
            Some(pb::prepare_event::Event::Ready(_))
        ),
        "no READY"
    );
    assert!(
        write_commits_within(&db, Duration::from_secs(2)).await?,
        "a write blocked while only armed"
    );
    let err = client
        .go(pb::GoRequest {
            backup_id: "other".into(),
            term: 0,
        })
        .await
        .expect_err("GO for another backup");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    step!("GO: locked and PREPARED");
    client
        .go(pb::GoRequest {
            backup_id: "b-go".into(),
            term: 0,
        })
        .await?;
    assert!(
        matches!(
            event(events.message().await?),
            Some(pb::prepare_event::Event::Prepared(_))
        ),
        "no PREPARED"
    );
    assert!(
        !write_commits_within(&db, Duration::from_millis(300)).await?,
        "a write committed while locked"
    );
    client
        .commit(pb::CommitRequest {
            backup_id: "b-go".into(),
            term: 0,
        })
        .await?;
    client
        .abort(pb::AbortRequest {
            backup_id: "b-go".into(),
            reason: "test done".into(),
            term: 0,
        })
        .await?;

    step!("a caller gone while armed leaves nothing locked");
    let mut events = client.prepare(request("b-gone")).await?.into_inner();
    assert!(matches!(
        event(events.message().await?),
        Some(pb::prepare_event::Event::Ready(_))
    ));
    drop(events);
    agent
        .wait_status("idle", Duration::from_secs(5), |st| st.state == "idle")
        .await?;
    assert!(write_commits_within(&db, Duration::from_secs(2)).await?);
    Ok(())
}

/// Fencing: once a coordinator leader of term N has called, calls from a
/// lower term (a deposed leader) are refused and change nothing; the lock
/// and the snapshots stay with the current leader's backup.
#[tokio::test]
async fn deposed_coordinator_is_fenced_off() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent("fence", &[]).await?;
    let mut client = agent.client().await?;
    let id = "b-fence";
    let abort = |term| pb::AbortRequest {
        backup_id: id.into(),
        reason: "from a deposed leader".into(),
        term,
    };

    step!("prepare in term 7");
    let mut events = client
        .prepare(pb::PrepareRequest {
            kind: String::new(),
            backup_id: id.into(),
            lease_ms: 30_000,
            budgets: None,
            snapshot_connections: 1,
            term: 7,
            wait_for_go: false,
            position_only: false,
        })
        .await?
        .into_inner();
    assert!(
        matches!(
            events.message().await?.and_then(|m| m.event),
            Some(pb::prepare_event::Event::Prepared(_))
        ),
        "no PREPARED"
    );

    step!("an ABORT from term 6 is refused; the lock stays held");
    let err = client.abort(abort(6)).await.expect_err("stale abort");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("term 6") && err.message().contains("term 7"),
        "{}",
        err.message()
    );
    let status = client.status(pb::StatusRequest {}).await?.into_inner();
    assert!(status.lock_held && status.backup_id == id, "{status:?}");

    step!("COMMIT from term 7, then a new leader (term 8) transfers");
    client
        .commit(pb::CommitRequest {
            backup_id: id.into(),
            term: 7,
        })
        .await?;
    wait_writable(&db, Duration::from_secs(2)).await?;
    let mut transfer = client
        .transfer(pb::TransferRequest {
            sink: None,
            cluster: String::new(),
            cut_servers: Vec::new(),
            backup_id: id.into(),
            zstd_level: 0,
            term: 8,
        })
        .await?
        .into_inner();

    step!("the deposed term-7 leader cannot abort the transfer");
    let err = client.abort(abort(7)).await.expect_err("stale abort");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let mut artifact = None;
    while let Some(m) = transfer.message().await? {
        if m.done {
            artifact = m.artifact;
        }
    }
    let artifact = artifact.expect("the transfer finished with an artifact");
    assert!(
        agent
            .sink_dir()
            .join(&artifact.location)
            .join("manifest.json")
            .exists(),
        "{artifact:?}"
    );
    Ok(())
}

/// Only one backup at a time: a second PREPARE while one holds the lock is
/// refused with the running backup's id, and changes nothing.
#[tokio::test]
async fn second_prepare_is_refused_while_busy() -> anyhow::Result<()> {
    let (_db, agent) = server_and_agent("lock-busy", &[]).await?;
    let mut client = agent.client().await?;
    let _cut = probe::prepare(&mut client, "first", Duration::from_secs(30), None).await?;
    let err = probe::prepare(&mut client, "second", Duration::from_secs(30), None)
        .await
        .expect_err("busy");
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message().contains("first") && err.message().contains("second"),
        "{}",
        err.message()
    );
    let status = client.status(pb::StatusRequest {}).await?.into_inner();
    assert_eq!(
        (status.state.as_str(), status.backup_id.as_str()),
        ("prepared", "first")
    );
    Ok(())
}

/// With nobody calling COMMIT, the agent releases the lock when the lease
/// runs out; a late COMMIT fails and says why.
#[tokio::test]
async fn lease_releases_the_lock() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent("lock-lease", &[]).await?;
    let mut client = agent.client().await?;
    step!("prepare with a 1 s lease and keep the stream open");
    let started = Instant::now();
    let mut cut = probe::prepare(&mut client, "b-lease", Duration::from_secs(1), None).await?;
    assert!(!write_commits_within(&db, Duration::from_millis(300)).await?);
    step!("the lease expires");
    let released = cut.released(Duration::from_secs(5)).await?;
    assert_eq!(released.reason, "lease-expired");
    assert!(
        (900_000..3_000_000).contains(&released.held_us),
        "held {} us for a 1 s lease",
        released.held_us
    );
    wait_writable(&db, Duration::from_secs(2)).await?;
    assert!(started.elapsed() < Duration::from_secs(4));
    let err = client
        .commit(pb::CommitRequest {
            backup_id: "b-lease".into(),
            term: 0,
        })
        .await
        .expect_err("late commit");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("lease-expired"), "{}", err.message());
    Ok(())
}

/// A caller killed while holding the lock (SIGKILL of a `lockstep-agent cut`
/// process) releases the lock at once, long before its 60 s lease, and the
/// backup is dropped: a later Commit is refused (this server did not hold
/// its lock until COMMIT, so no cut including it can be proven).
#[tokio::test]
async fn killed_caller_releases_the_lock() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent("lock-caller", &[]).await?;
    step!("a separate process prepares with a 60 s lease and holds");
    let dir = lockstep_tests::process::short_temp_dir("ls-cut-")?;
    let mut cmd = std::process::Command::new(lockstep_tests::bin_path("lockstep-agent")?);
    cmd.args([
        "cut",
        "--agent",
        &agent.addr(),
        "--backup-id",
        "b-caller",
        "--lease",
        "60s",
        "--hold",
        "120s",
        "--json",
    ]);
    let mut caller =
        lockstep_tests::ChildProcess::spawn("cut caller", cmd, dir.path().join("cut.log"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !caller.log_tail(20).contains("\"step\":\"prepared\"") {
        anyhow::ensure!(
            caller.is_running(),
            "cut caller exited: {}",
            caller.log_tail(20)
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "cut caller never prepared: {}",
            caller.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !write_commits_within(&db, Duration::from_millis(300)).await?,
        "not locked"
    );

    step!("SIGKILL the caller");
    caller.kill()?;
    let took = wait_writable(&db, Duration::from_secs(10)).await?;
    assert!(
        took < Duration::from_secs(6),
        "released {took:?} after the caller died"
    );
    let mut client = agent.client().await?;
    let status = agent
        .wait_status("done releasing", Duration::from_secs(5), |st| {
            st.state != "preparing"
        })
        .await?;
    assert_eq!(status.state, "idle", "{status:?}");
    let release = status.last_release.expect("a release");
    assert_eq!(release.reason, "caller-gone");

    step!("a later COMMIT is refused: the lock was not held until it came");
    let err = client
        .commit(pb::CommitRequest {
            backup_id: "b-caller".into(),
            term: 0,
        })
        .await
        .expect_err("a commit after the caller went away must not pass");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("caller-gone") && err.message().contains("until COMMIT"),
        "{}",
        err.message()
    );
    Ok(())
}

/// A frozen agent (SIGSTOP while it holds the lock, as a paused VM would
/// be) cannot run its own lease, and its TCP connection stays open: the
/// server's idle timeout on the lock connection (the lease plus a margin)
/// ends the lock anyway, so writes resume seconds after the lease instead
/// of after the server's default `wait_timeout` of 8 hours.
#[tokio::test]
async fn frozen_agent_is_unlocked_by_the_server() -> anyhow::Result<()> {
    use lockstep_tests::process::Supervised as _;
    let (db, mut agent) = server_and_agent("lock-frozen", &[]).await?;
    let mut client = agent.client().await?;
    step!("prepare with a 2 s lease");
    let _cut = probe::prepare(&mut client, "b-frozen", Duration::from_secs(2), None).await?;
    let locked_at = Instant::now();
    assert!(!write_commits_within(&db, Duration::from_millis(200)).await?);

    step!("SIGSTOP the agent; a write must commit soon after the lease");
    agent.pause()?;
    let took = wait_writable(&db, Duration::from_secs(15)).await;
    agent.resume()?;
    took?;
    let after = locked_at.elapsed();
    step!("writes resumed {after:?} after the lock");
    assert!(
        after >= Duration::from_millis(1500),
        "unlocked after {after:?}: was it locked at all?"
    );
    assert!(
        after < Duration::from_secs(9),
        "unlocked only {after:?} after the lock (lease 2 s)"
    );

    step!("the resumed agent drops the backup and takes the next one");
    agent
        .wait_status("idle", Duration::from_secs(10), |st| st.state == "idle")
        .await?;
    let mut next = probe::prepare(&mut client, "b-frozen-2", Duration::from_secs(10), None).await?;
    client
        .commit(pb::CommitRequest {
            backup_id: "b-frozen-2".into(),
            term: 0,
        })
        .await?;
    assert_eq!(
        next.released(Duration::from_secs(2)).await?.reason,
        "commit"
    );
    Ok(())
}

/// Pre-flight refuses to queue the lock behind a long write and names the
/// thread, user and statement; nothing is locked.
#[tokio::test]
async fn preflight_refuses_behind_a_long_write() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent("lock-preflight", &["--preflight-budget", "500ms"]).await?;
    let long = start_long_write(&db, 4, Duration::from_millis(700)).await?;
    let mut client = agent.client().await?;
    step!("prepare while an INSERT ... SELECT SLEEP(4) runs");
    let err = probe::prepare(&mut client, "b-pre", Duration::from_secs(10), None)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let msg = err.message();
    for part in [
        "refusing to lock",
        "thread",
        "user root",
        "write statement",
        "INSERT INTO lockstep_probe.slow SELECT SLEEP(4)",
        db.address().as_str(),
    ] {
        assert!(msg.contains(part), "{part:?} missing from {msg}");
    }
    step!("nothing was locked");
    assert!(write_commits_within(&db, Duration::from_millis(500)).await?);
    assert_eq!(
        client
            .status(pb::StatusRequest {})
            .await?
            .into_inner()
            .state,
        "idle"
    );
    long.abort();
    Ok(())
}

/// FLUSH TABLES WITH READ LOCK queued behind a long write is cancelled by the
/// watchdog within the lock-wait budget, so writers do not pile up behind it.
#[tokio::test]
async fn ftwrl_is_bounded_by_the_lock_wait_budget() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent(
        "lock-ftwrl",
        &[
            "--lock-method",
            "ftwrl",
            "--preflight-budget",
            "30s",
            "--lock-wait-budget",
            "300ms",
        ],
    )
    .await?;
    let long = start_long_write(&db, 4, Duration::from_millis(200)).await?;
    let mut client = agent.client().await?;
    step!("prepare with FTWRL while an INSERT ... SELECT SLEEP(4) runs");
    let started = Instant::now();
    let err = probe::prepare(&mut client, "b-ftwrl", Duration::from_secs(10), None)
        .await
        .expect_err("timed out");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("FLUSH TABLES WITH READ LOCK") && err.message().contains("300 ms"),
        "{}",
        err.message()
    );
    assert!(
        took < Duration::from_millis(1500),
        "prepare took {took:?} with a 300 ms budget"
    );
    step!("no pile-up: other writers proceed while the long write still runs");
    assert!(
        write_commits_within(&db, Duration::from_millis(500)).await?,
        "writes blocked after the lock was cancelled"
    );
    let queued: Option<u64> = db
        .query_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'FLUSH TABLES WITH READ LOCK%'")
        .await?;
    assert_eq!(queued, Some(0), "our FTWRL is still queued");
    long.abort();
    Ok(())
}

/// MariaDB's BACKUP STAGE BLOCK_COMMIT does not wait for a running InnoDB
/// write: the lock is granted at once and the write's commit waits instead.
#[tokio::test]
async fn backup_stage_does_not_queue_behind_writes() -> anyhow::Result<()> {
    let (db, agent) = server_and_agent(
        "lock-stage",
        &["--preflight-budget", "30s", "--lock-wait-budget", "300ms"],
    )
    .await?;
    let _long = start_long_write(&db, 3, Duration::from_millis(200)).await?;
    let mut client = agent.client().await?;
    let cut = probe::prepare(&mut client, "b-stage", Duration::from_secs(10), None).await?;
    assert_eq!(cut.prepared.lock_method, "backup-stage");
    assert!(
        cut.prepared.lock_wait_us < 300_000,
        "waited {} us",
        cut.prepared.lock_wait_us
    );
    let committed = client
        .commit(pb::CommitRequest {
            backup_id: "b-stage".into(),
            term: 0,
        })
        .await?
        .into_inner();
    assert!(committed.held_us < 300_000, "held {} us", committed.held_us);
    wait_writable(&db, Duration::from_secs(2)).await?;
    Ok(())
}
