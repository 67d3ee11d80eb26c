//! A backup never stalls production after the lock: an `ALTER TABLE` on a
//! table the running transfer has read waits for the snapshot's metadata
//! lock, and every later query on that table queues behind the ALTER. The
//! agent notices the waiting DDL and yields (fails the transfer, closing its
//! snapshot connections) at once, or after a bound with `ddl_policy = wait`.
//! Real MariaDB, the real `lockstep-agent` (and coordinator for the catalog).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lockstep_proto::agent as pb;
use lockstep_tests::{
    AgentOptions, AgentProc, CoordinatorGroup, MariaDb, MariaDbOptions, run_agent_cli,
    run_lockstep, step,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde_json::Value;

/// The cluster name the agent registers under.
const CLUSTER: &str = "ddl";
/// Rows of `app.big`: enough that a dump at zstd level 19 on one
/// connection takes many seconds (the ALTER comes in the middle of it).
const BIG_ROWS: u32 = 500_000;
/// The zstd level that makes the dump slow: a real setting, no test hook.
const SLOW_ZSTD: &str = "19";
/// How long a production query may wait behind the ALTER when the agent
/// yields: a poll (~200 ms), the kill, and the ALTER itself.
const YIELD_BOUND: Duration = Duration::from_secs(2);

/// A server with an `app` user and the tables the application alters.
async fn app_server(name: &str) -> anyhow::Result<MariaDb> {
    let mut o = MariaDbOptions::named(name);
    o.extra_args = vec![
        "--innodb-buffer-pool-size=128M".into(),
        "--innodb-log-file-size=128M".into(),
    ];
    let db = MariaDb::start(o).await?;
    for sql in [
        "CREATE DATABASE app",
        "CREATE TABLE app.big (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(40) NOT NULL) ENGINE=InnoDB",
        &format!(
            "INSERT INTO app.big SELECT seq, seq MOD 977, MD5(seq) FROM app.seq_1_to_{BIG_ROWS}"
        ),
        "CREATE TABLE app.other (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
        "INSERT INTO app.other VALUES (1, 1), (2, 2)",
        "CREATE USER 'app'@'127.0.0.1'",
        "GRANT ALL ON app.* TO 'app'@'127.0.0.1'",
    ] {
        db.exec(sql).await?;
    }
    Ok(db)
}

/// A connection as the application user `app`.
async fn app_conn(db: &MariaDb) -> anyhow::Result<Conn> {
    let opts = OptsBuilder::from_opts(db.opts())
        .user(Some("app"))
        .pass(None::<String>);
    Conn::new(opts)
        .await
        .with_context(|| format!("connect as app to {}", db.address()))
}

/// Waits until some connection runs a SELECT on `app.big` (the dump has
/// read it, so its snapshot holds the table's metadata lock).
async fn wait_dump_reads_big(db: &MariaDb, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n: u64 = db
            .query_one(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND INFO LIKE 'SELECT %FROM `app`.`big`%'",
            )
            .await?;
        if n > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the dump never read app.big within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A DDL statement running on its own connection as user `app`.
struct Ddl {
    thread_id: u32,
    started: Instant,
    task: tokio::task::JoinHandle<anyhow::Result<Duration>>,
}

impl Ddl {
    /// Starts `sql` and waits until it either waits for a metadata lock or
    /// has finished.
    async fn start(db: &MariaDb, sql: &'static str) -> anyhow::Result<Ddl> {
        let mut conn = app_conn(db).await?;
        let thread_id = conn.id();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            conn.query_drop(sql)
                .await
                .with_context(|| format!("run `{sql}`"))?;
            Ok(started.elapsed())
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state: Option<Option<String>> = db
                .query_first(&format!(
                    "SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = {thread_id}"
                ))
                .await?;
            let waiting = matches!(&state, Some(Some(s)) if s == "Waiting for table metadata lock");
            if waiting || task.is_finished() {
                return Ok(Ddl {
                    thread_id,
                    started,
                    task,
                });
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "`{sql}` neither waited nor finished: state {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the statement to finish; returns how long it took.
    async fn finish(self, within: Duration) -> anyhow::Result<Duration> {
        tokio::time::timeout(within, self.task)
            .await
            .with_context(|| {
                format!(
                    "DDL of thread {} still running after {within:?}",
                    self.thread_id
                )
            })??
    }
}

/// An INSERT into `app.big` as the application would run it: how long it
/// took, or an error if it did not commit within `within`.
async fn timed_insert(db: &MariaDb, id: i64, within: Duration) -> anyhow::Result<Duration> {
    let mut conn = app_conn(db).await?;
    let started = Instant::now();
    let sql = format!("INSERT INTO app.big (id, k, c) VALUES ({id}, 0, 'production')");
    tokio::time::timeout(within, conn.query_drop(sql))
        .await
        .with_context(|| {
            format!("an INSERT into app.big still waited after {within:?}: production stalled behind the ALTER, which waited for the backup")
        })?
        .context("INSERT into app.big")?;
    Ok(started.elapsed())
}

/// `lockstep --json ARGS` against the group, which must succeed, parsed.
async fn lockstep_json(group: &CoordinatorGroup, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run_lockstep(&group.urls(), &all).await?;
    out.success()?;
    Ok(serde_json::from_str(out.stdout.trim())?)
}

/// Default policy `yield`, through the coordinator: an ALTER on a table the
/// transfer has read runs within a poll, an INSERT queued behind it commits
/// within 2 s, the backup is FAILED in the catalog with a reason naming the
/// server, the DDL, its thread and user, and the half-written artifact is
/// gone. A DDL waiting on a lock that is not ours (a table the dump has not
/// read yet, held by another session) does not make the backup yield.
#[tokio::test]
async fn alter_during_transfer_fails_the_backup_not_production() -> anyhow::Result<()> {
    step!("start MariaDB with 500k rows in app.big, and one coordinator");
    let (db, group) = tokio::try_join!(app_server("ddl-yield"), CoordinatorGroup::start(1))?;
    let cfg_dir = tempfile::Builder::new()
        .prefix("ls-ddl-")
        .tempdir_in("/tmp")?;
    let cfg = cfg_dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!("snapshot_connections = 1\nzstd_level = {SLOW_ZSTD}\n"),
    )?;
    let mut opts = AgentOptions::new("db1", db.url());
    opts.extra_args = vec![
        "--config".into(),
        cfg.display().to_string(),
        "--cluster".into(),
        CLUSTER.into(),
        "--coordinators".into(),
        group.urls(),
    ];
    let agent = AgentProc::start(opts).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = lockstep_json(&group, &["server", "list"]).await?;
        if list
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["healthy"] == true))
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "agent never healthy: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    step!("start a backup; wait until its transfer reads app.big");
    let started = lockstep_json(&group, &["backup", "start", "--cluster", CLUSTER]).await?;
    let id = started["id"].as_str().context("backup id")?.to_string();
    wait_dump_reads_big(&db, Duration::from_secs(60)).await?;

    step!("a DDL blocked by another session, on a table the dump has not read, is not ours");
    let mut holder = db.conn().await?;
    holder
        .query_drop("START TRANSACTION; SELECT * FROM app.other")
        .await?;
    let foreign = Ddl::start(&db, "ALTER TABLE app.other ADD COLUMN w INT").await?;
    let mut client = agent.client().await?;
    let watch_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < watch_until {
        let st = client.status(pb::StatusRequest {}).await?.into_inner();
        assert_eq!(
            st.state, "transferring",
            "the backup yielded to a DDL it did not block: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.query_drop("ROLLBACK").await?;
    foreign.finish(Duration::from_secs(5)).await?;

    step!("ALTER TABLE app.big mid-transfer; an INSERT queued behind it");
    let alter = Ddl::start(&db, "ALTER TABLE app.big ADD COLUMN note VARCHAR(20)").await?;
    let alter_thread = alter.thread_id;
    let insert_took = timed_insert(&db, 0, YIELD_BOUND).await?;
    let alter_took = alter.finish(YIELD_BOUND).await?;
    tracing::info!(?insert_took, ?alter_took, "production went on");
    let cols: u64 = db
        .query_one(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 'big' AND COLUMN_NAME = 'note'",
        )
        .await?;
    assert_eq!(cols, 1, "the ALTER took effect");

    step!("the backup is FAILED at once, naming the server, the DDL, its thread and user");
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let b = lockstep_json(&group, &["catalog", "show", &id]).await?;
        if b["status"] == "FAILED" || b["status"] == "COMPLETE" {
            break b;
        }
        anyhow::ensure!(Instant::now() < deadline, "backup {id} not resolved: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["status"], "FAILED", "{shown}");
    let reason = shown["reason"].as_str().unwrap_or_default();
    tracing::info!(reason, "backup failed");
    for part in [
        "server db1",
        "yielded to DDL",
        &format!("thread {alter_thread}"),
        "user app",
        "ALTER TABLE app.big ADD COLUMN note",
    ] {
        assert!(reason.contains(part), "reason lacks {part:?}: {reason}");
    }
    let human = run_lockstep(&group.urls(), &["catalog", "show", &id]).await?;
    human.success()?;
    assert!(
        human.stdout.contains("yielded to DDL"),
        "`lockstep catalog show` does not say why: {}",
        human.stdout
    );

    step!("the agent is idle and left no artifact");
    agent
        .wait_status("idle", Duration::from_secs(10), |st| st.state == "idle")
        .await?;
    let dir = agent.sink_dir().join(&id).join("db1");
    assert!(
        !dir.join("manifest.json").exists(),
        "a yielded transfer left a manifest in {}",
        dir.display()
    );
    Ok(())
}

/// `ddl_policy = wait` with `ddl_wait = 3s` (`lockstep-agent dump`): the
/// ALTER waits about the bound, not the whole dump, then the dump fails
/// (exit 75, worth retrying) naming the DDL and the wait, and removes what
/// it wrote.
#[tokio::test]
async fn wait_policy_yields_after_the_bound() -> anyhow::Result<()> {
    const WAIT: Duration = Duration::from_secs(3);
    let db = app_server("ddl-wait").await?;
    let out = tempfile::Builder::new()
        .prefix("ls-ddlw-")
        .tempdir_in("/tmp")?;
    let dir = out.path().join("snap");

    step!("dump with one connection at zstd level {SLOW_ZSTD}, ddl_policy wait 3s");
    let args: Vec<String> = [
        "dump",
        "--mysql",
        &db.url(),
        "--out",
        dir.to_str().context("utf-8 path")?,
        "--threads",
        "1",
        "--zstd-level",
        SLOW_ZSTD,
        "--ddl-policy",
        "wait",
        "--ddl-wait",
        "3s",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dump = tokio::spawn(async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_agent_cli(&refs).await
    });
    wait_dump_reads_big(&db, Duration::from_secs(60)).await?;

    step!("ALTER TABLE app.big mid-dump; an INSERT queued behind it");
    let alter = Ddl::start(&db, "ALTER TABLE app.big ADD COLUMN note VARCHAR(20)").await?;
    let alter_thread = alter.thread_id;
    let alter_started = alter.started;
    let insert_took = timed_insert(&db, 0, WAIT + YIELD_BOUND).await?;
    let alter_took = alter.finish(YIELD_BOUND).await?;
    let stalled = alter_started.elapsed();
    tracing::info!(?insert_took, ?alter_took, ?stalled, "production went on");
    assert!(
        alter_took >= WAIT - Duration::from_millis(300),
        "the ALTER ran after {alter_took:?}: the agent did not wait the {WAIT:?} bound"
    );
    assert!(
        stalled < WAIT + YIELD_BOUND,
        "production waited {stalled:?}, more than the bound {WAIT:?} plus {YIELD_BOUND:?}"
    );

    step!("the dump fails naming the DDL and the wait, exit 75, nothing left");
    let result = tokio::time::timeout(Duration::from_secs(30), dump)
        .await
        .context("dump still running after it yielded")???;
    assert_eq!(result.status.code(), Some(75), "{result:?}");
    tracing::info!(stderr = %result.stderr.trim(), "dump failed");
    for part in [
        "yielded to DDL",
        &format!("thread {alter_thread}"),
        "user app",
        "ALTER TABLE app.big ADD COLUMN note",
        "waited",
    ] {
        assert!(
            result.stderr.contains(part),
            "error lacks {part:?}: {}",
            result.stderr
        );
    }
    assert!(
        !dir.join("manifest.json").exists(),
        "a yielded dump left a manifest"
    );
    Ok(())
}
