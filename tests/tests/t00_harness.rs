//! The harness's own smoke tests: real servers start, take writes, survive a
//! crash, carry a causal chain, compare, and leave nothing behind.

use std::process::Command;
use std::time::Duration;

use lockstep_tests::process::{ChildProcess, Signal, pid_exists};
use lockstep_tests::{
    CausalWriter, MariaDb, MariaDbOptions, Supervised, Target, assert_same_data, bin_path,
    check_chain, init_tracing, step,
};

/// Two servers: distinct ports and ids, binlogs on, writes and reads, data
/// comparison both ways, a causal chain that survives a SIGKILL + restart of
/// one server under load, gap detection, and full cleanup on drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_carry_a_causal_chain_and_clean_up() -> anyhow::Result<()> {
    init_tracing();
    step!("start two servers");
    let mut servers = MariaDb::start_many(&["a", "b"]).await?;
    let mut b = servers.pop().expect("two servers");
    let a = servers.pop().expect("two servers");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.server_id(), b.server_id());
    let id: u32 = a.query_one("SELECT @@server_id").await?;
    assert_eq!(id, a.server_id());
    let domain: u32 = b.query_one("SELECT @@gtid_domain_id").await?;
    assert_eq!(domain, b.gtid_domain_id());
    assert!(
        a.socket_path().as_os_str().len() < 107,
        "socket path too long: {}",
        a.socket_path().display()
    );

    step!("write the same rows to both and compare");
    for s in [&a, &b] {
        s.exec(
            "CREATE DATABASE app; \
             CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB; \
             INSERT INTO app.t (v) VALUES ('x'), ('y')",
        )
        .await?;
    }
    let rows: Vec<(u32, String)> = a.query("SELECT id, v FROM app.t ORDER BY id").await?;
    assert_eq!(rows, vec![(1, "x".to_string()), (2, "y".to_string())]);
    assert!(a.binlog_position().await?.is_some(), "binlog should be on");
    assert!(
        a.gtid_binlog_pos()
            .await?
            .starts_with(&format!("{}-", a.gtid_domain_id()))
    );
    assert_same_data(&a, &b, &["app"]).await?;
    // Same rows, different AUTO_INCREMENT counter: still the same data.
    b.exec("INSERT INTO app.t (v) VALUES ('z'); DELETE FROM app.t WHERE v = 'z'")
        .await?;
    assert_same_data(&a, &b, &["app"]).await?;
    b.exec("UPDATE app.t SET v = 'changed' WHERE id = 2")
        .await?;
    let err = assert_same_data(&a, &b, &["app"])
        .await
        .expect_err("data differs");
    assert!(format!("{err:#}").contains("app.t: checksum"), "{err:#}");

    step!("run the causal writer across both servers");
    let targets = vec![Target::on(&a, "chain", "c"), Target::on(&b, "chain", "c")];
    let writer = CausalWriter::start(targets.clone()).await?;
    writer.wait_committed(200, Duration::from_secs(30)).await?;

    step!("SIGKILL server b under load and restart it");
    let old_pid = b.pid().expect("b runs");
    b.kill()?;
    assert!(
        !pid_exists(old_pid),
        "killed server pid {old_pid} still exists"
    );
    b.restart().await?;
    let after = writer.committed();
    writer
        .wait_committed(after + 200, Duration::from_secs(30))
        .await?;
    let committed = writer.stop().await;
    step!("stopped the writer at k={committed}");

    step!("check the chain on the live servers");
    let m = check_chain(&targets).await?;
    assert_eq!(m, committed);
    let on_a: u64 = a.query_one("SELECT COUNT(*) FROM chain.c").await?;
    let on_b: u64 = b.query_one("SELECT COUNT(*) FROM chain.c").await?;
    assert_eq!(on_a + on_b, m);

    step!("a missing record is reported with its target");
    let gap = if m % 2 == 0 { m - 1 } else { m - 2 };
    b.exec(&format!("DELETE FROM chain.c WHERE k = {gap}"))
        .await?;
    let err = check_chain(&targets).await.expect_err("chain has a gap");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("missing k={gap} (belongs on target 1")),
        "{msg}"
    );

    step!("drop both servers; processes and temp dirs must be gone");
    let dirs = [a.dir().to_path_buf(), b.dir().to_path_buf()];
    let pids = [a.pid().expect("a runs"), b.pid().expect("b runs")];
    drop(a);
    drop(b);
    for pid in pids {
        assert!(!pid_exists(pid), "server pid {pid} still exists after drop");
    }
    if !lockstep_tests::process::keep_temp_dirs() {
        for dir in dirs {
            assert!(
                !dir.exists(),
                "temp dir {} still exists after drop",
                dir.display()
            );
        }
    }
    Ok(())
}

/// A server started without a binlog reports no binlog position; `stop` and
/// `restart` keep its data.
#[tokio::test]
async fn server_without_binlog_stops_and_restarts() -> anyhow::Result<()> {
    init_tracing();
    step!("start a server without binlog");
    let mut s = MariaDb::start(MariaDbOptions {
        binlog: false,
        ..MariaDbOptions::named("nobinlog")
    })
    .await?;
    assert_eq!(s.binlog_position().await?, None);
    s.exec("CREATE DATABASE d; CREATE TABLE d.t (k INT PRIMARY KEY); INSERT INTO d.t VALUES (7)")
        .await?;
    step!("stop (SIGTERM) and restart on the same port");
    let port = s.port();
    s.stop()?;
    assert!(s.pid().is_none());
    s.restart().await?;
    assert_eq!(s.port(), port);
    let k: u32 = s.query_one("SELECT k FROM d.t").await?;
    assert_eq!(k, 7);
    Ok(())
}

/// Generic child processes: stop/continue/kill by PID, exit observed, reaped.
#[test]
fn child_process_signals_and_reaps() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo hello; exec sleep 60"]);
    let mut child = ChildProcess::spawn("sleeper", cmd, dir.path().join("out.log"))?;
    let pid = child.pid();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.log_tail(5) != "hello" {
        assert!(
            std::time::Instant::now() < deadline,
            "no output from sh: {:?}",
            child.log_tail(5)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.signal(Signal::Stop)?;
    child.signal(Signal::Cont)?;
    assert_eq!(
        child.wait_exit(Duration::from_millis(50))?,
        None,
        "sleep should still run"
    );
    let status = child.terminate(Duration::from_secs(5))?;
    assert!(!status.success());
    assert!(!pid_exists(pid));
    assert!(
        child.signal(Signal::Kill).is_err(),
        "signalling a reaped child must fail"
    );
    Ok(())
}

/// A missing binary is reported with the command that builds it.
#[test]
fn missing_binary_says_how_to_build_it() {
    let err = bin_path("lockstep-no-such-binary").expect_err("must not exist");
    assert!(
        format!("{err:#}").contains("cargo build --workspace --bins"),
        "{err:#}"
    );
}
