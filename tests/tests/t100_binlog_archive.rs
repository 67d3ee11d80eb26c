//! The binlog archiver (node-agent `binlog`): real MariaDB servers under the
//! causal writer, the archiver task in this process. Closed archived files
//! must be byte-identical to the server's files in its datadir; the file
//! being written must be a byte-prefix of the server's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lockstep_node_agent::binlog::{ArchiveConfig, ArchiveProgress, Archiver, event, local};
use lockstep_node_agent::mysql::Server;
use lockstep_tests::causal::Target;
use lockstep_tests::{CausalWriter, MariaDb, MariaDbOptions, Proxy, Supervised, step};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the archive may take to catch up with the server.
const CATCH_UP: Duration = Duration::from_secs(60);
/// Offset of the flags of the first event (the Format_description) in a
/// binlog file: 4 bytes of magic + 17 bytes of header.
const FD_FLAGS_AT: usize = 4 + 17;

/// A running archiver task.
struct Running {
    task: JoinHandle<lockstep_node_agent::Result<()>>,
    cancel: CancellationToken,
    progress: watch::Receiver<ArchiveProgress>,
}

fn start_archiver(db: &MariaDb, dir: &Path, start_file: Option<&str>) -> anyhow::Result<Running> {
    let server = Server::parse(&db.url())?;
    let mut config = ArchiveConfig::new(dir, 90_000 + db.server_id());
    config.start_file = start_file.map(str::to_string);
    config.max_backoff = Duration::from_millis(500);
    let archiver = Archiver::new(server, config);
    let progress = archiver.progress();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(archiver.run(cancel.clone()));
    Ok(Running {
        task,
        cancel,
        progress,
    })
}

impl Running {
    /// Cancels the archiver and waits for it to return.
    async fn stop(self) -> anyhow::Result<ArchiveProgress> {
        self.cancel.cancel();
        let progress = self.progress.borrow().clone();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("the archiver did not stop within 10 s of cancel")?
            .context("join the archiver")??;
        Ok(progress)
    }
}

/// Waits until the archiver's progress satisfies `pred`; errors with the
/// last progress (and the archiver's last error) if it ends or times out.
async fn wait_progress(
    run: &Running,
    what: &str,
    pred: impl FnMut(&ArchiveProgress) -> bool,
) -> anyhow::Result<ArchiveProgress> {
    let mut rx = run.progress.clone();
    let waited = tokio::time::timeout(CATCH_UP, rx.wait_for(pred)).await;
    let now = run.progress.borrow().clone();
    match waited {
        Ok(Ok(_)) => Ok(now),
        Ok(Err(_)) => bail!("the archiver ended before {what}; last progress {now:?}"),
        Err(_) => bail!("the archive did not get to {what} within {CATCH_UP:?}; progress {now:?}"),
    }
}

/// The number of a binlog file name (`mysql-bin.000007` → 7).
fn number(file: &str) -> u64 {
    local::parse_name(file).map_or(0, |(_, n)| n)
}

/// Waits until the archive is durable at the server's current position.
async fn wait_caught_up(db: &MariaDb, run: &Running) -> anyhow::Result<ArchiveProgress> {
    let (file, pos) = db.binlog_position().await?.context("binlog is on")?;
    wait_progress(run, &format!("{file}:{pos}"), |p| {
        number(&p.file) > number(&file) || (p.file == file && p.durable >= pos)
    })
    .await
}

/// The server's binlogs (`SHOW BINARY LOGS`), oldest first; the last is open.
async fn server_binlogs(db: &MariaDb) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String, u64)> = db.query("SHOW BINARY LOGS").await?;
    Ok(rows.into_iter().map(|(name, _)| name).collect())
}

/// Every binlog the server still has is archived: the closed ones
/// byte-identical, the open one a byte-prefix. The in-use flag of the
/// Format_description event, which the server sets while it writes a file
/// and sends clear, is masked in the open file and in `crashed` (files the
/// server never closed because it was killed; it does not clear the flag on
/// recovery). Returns the number of closed files compared.
async fn check_archive(db: &MariaDb, dir: &Path, crashed: &[&str]) -> anyhow::Result<usize> {
    let files = server_binlogs(db).await?;
    let (open, closed) = files.split_last().context("the server has no binlog")?;
    for name in closed {
        let mut theirs = std::fs::read(db.datadir().join(name))
            .with_context(|| format!("read server's {name}"))?;
        let ours =
            std::fs::read(dir.join(name)).with_context(|| format!("read archived {name}"))?;
        if crashed.contains(&name.as_str()) && theirs.len() > FD_FLAGS_AT {
            ensure!(
                theirs[FD_FLAGS_AT] & 1 == 1,
                "the server's crashed {name} has its in-use flag clear"
            );
            theirs[FD_FLAGS_AT] &= !1;
        }
        if theirs != ours {
            let at = theirs.iter().zip(&ours).position(|(a, b)| a != b);
            bail!(
                "archived {name} differs from the server's: {} vs {} bytes, first difference at {at:?}",
                ours.len(),
                theirs.len()
            );
        }
    }
    let mut theirs =
        std::fs::read(db.datadir().join(open)).with_context(|| format!("read server's {open}"))?;
    let ours = std::fs::read(dir.join(open)).with_context(|| format!("read archived {open}"))?;
    ensure!(
        ours.len() <= theirs.len(),
        "archived {open} is longer than the server's"
    );
    if theirs.len() > FD_FLAGS_AT && ours.len() > FD_FLAGS_AT {
        theirs[FD_FLAGS_AT] &= !1;
    }
    ensure!(
        theirs[..ours.len()] == ours[..],
        "archived {open} ({} bytes) is not a prefix of the server's ({} bytes)",
        ours.len(),
        theirs.len()
    );
    // Nothing archived that the server does not have (or had and purged).
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        ensure!(
            files.contains(&name) || number(&name) < number(&files[0]),
            "the archive has {name}, which the server never had"
        );
    }
    Ok(closed.len())
}

/// Waits until the server has no binlog dump thread left (a stopped
/// archiver's thread ends when the server's next write to it, at the latest
/// its heartbeat, fails); a file a dump thread reads is not purged.
async fn wait_no_dump_threads(db: &MariaDb) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: u64 = db
            .query_one("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
            .await?;
        if n == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{n} binlog dump threads still run on {}",
            db.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The longest event in a binlog file.
fn longest_event(path: &Path) -> anyhow::Result<u32> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut at = 4;
    let mut longest = 0;
    while at < bytes.len() {
        let h = event::Header::parse(&bytes[at..])
            .with_context(|| format!("an event header at {at} of {}", path.display()))?;
        longest = longest.max(h.event_len);
        at += h.event_len as usize;
    }
    Ok(longest)
}

/// A causal writer on `chain.rec` of one server.
async fn writer(db: &MariaDb) -> anyhow::Result<CausalWriter> {
    CausalWriter::start(vec![Target::on(db, "chain", "rec")]).await
}

/// Writes a little of everything: a multi-row transaction, DDL, a
/// non-transactional (MyISAM) statement, a rolled-back mix, and a large row
/// (an event over 1 MiB).
async fn mixed_writes(db: &MariaDb, round: u32) -> anyhow::Result<()> {
    db.exec("CREATE DATABASE IF NOT EXISTS mix").await?;
    db.exec(&format!(
        "CREATE TABLE IF NOT EXISTS mix.t{round} (id INT PRIMARY KEY AUTO_INCREMENT, v LONGTEXT) ENGINE=InnoDB"
    ))
    .await?;
    db.exec("CREATE TABLE IF NOT EXISTS mix.m (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT) ENGINE=MyISAM")
        .await?;
    db.exec(&format!(
        "BEGIN; INSERT INTO mix.t{round} (v) VALUES ('a'), ('b'), ('c'); UPDATE mix.t{round} SET v = CONCAT(v, 'x'); COMMIT"
    ))
    .await?;
    db.exec("INSERT INTO mix.m (v) VALUES ('non-transactional')")
        .await?;
    db.exec(&format!(
        "INSERT INTO mix.t{round} (v) VALUES (REPEAT('z', 1500000))"
    ))
    .await?;
    db.exec(&format!("DELETE FROM mix.t{round} WHERE v = 'ax'"))
        .await?;
    Ok(())
}

fn archive_dir(db: &MariaDb) -> PathBuf {
    db.dir().join("archive")
}

/// Archiving while the causal writer runs and binlogs rotate: after several
/// `FLUSH BINARY LOGS`, every closed archived file is byte-identical to the
/// server's, including a backlog archived at full speed (measured) with an
/// event larger than one protocol packet.
#[tokio::test]
async fn archives_byte_identical_files_across_rotations() -> anyhow::Result<()> {
    let mut opts = MariaDbOptions::named("arch-rot");
    opts.extra_args.push("--max-allowed-packet=64M".into());
    let db = MariaDb::start(opts).await?;
    let dir = archive_dir(&db);

    step!("a backlog of about 54 MB, one event of 20 MB before the archiver starts");
    db.exec("CREATE DATABASE bulk").await?;
    db.exec(
        "CREATE TABLE bulk.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(1000)) ENGINE=InnoDB",
    )
    .await?;
    db.exec("INSERT INTO bulk.t (v) VALUES (REPEAT('b', 1000))")
        .await?;
    for _ in 0..15 {
        db.exec("INSERT INTO bulk.t (v) SELECT v FROM bulk.t")
            .await?;
    }
    // One row event of about 20 MB: more than one 16 MB protocol packet.
    db.exec("CREATE TABLE bulk.big (v LONGTEXT) ENGINE=InnoDB")
        .await?;
    db.exec("INSERT INTO bulk.big VALUES (REPEAT('g', 20000000))")
        .await?;
    let (_, backlog) = db.binlog_position().await?.context("binlog is on")?;

    step!("archive from the oldest binlog; measure the catch-up");
    let started = Instant::now();
    let run = start_archiver(&db, &dir, None)?;
    let caught = wait_caught_up(&db, &run).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "archived a backlog of {:.1} MB ({} events) in {secs:.2} s: {:.0} MB/s, {:.0} events/s",
        backlog as f64 / 1e6,
        caught.events,
        backlog as f64 / 1e6 / secs,
        caught.events as f64 / secs
    );

    let longest = longest_event(&dir.join("mysql-bin.000001"))?;
    ensure!(
        longest > 0xff_ffff,
        "the big row must make an event over 16 MiB, longest is {longest}"
    );

    step!("causal writer, mixed writes and rotations");
    let w = writer(&db).await?;
    for round in 0..4 {
        w.wait_committed(w.committed() + 50, Duration::from_secs(30))
            .await?;
        mixed_writes(&db, round).await?;
        db.exec("FLUSH BINARY LOGS").await?;
    }
    let written = Instant::now();
    let committed = w.stop().await;
    // The last group is non-transactional: it ends with a COMMIT query, not
    // an XID, and the archive must still count it durable.
    db.exec("INSERT INTO mix.m (v) VALUES ('last')").await?;
    step!("wait until the archive is durable at the server's position");
    let p = wait_caught_up(&db, &run).await?;
    println!(
        "causal writer committed {committed} records; archive caught up {:?} after the writer stopped; {p:?}",
        written.elapsed()
    );
    ensure!(
        p.files_closed >= 4,
        "expected at least 4 closed files: {p:?}"
    );
    ensure!(p.connections == 1, "no reconnect expected: {p:?}");

    step!("compare: closed files byte-identical, the open one a prefix");
    let closed = check_archive(&db, &dir, &[]).await?;
    ensure!(closed >= 4, "compared only {closed} closed files");

    step!("close the last file too and compare again");
    db.exec("FLUSH BINARY LOGS").await?;
    wait_caught_up(&db, &run).await?;
    check_archive(&db, &dir, &[]).await?;
    run.stop().await?;
    Ok(())
}

/// An archiver stopped mid-stream (its task aborted, like a crash) and a
/// new one on the same directory: it cuts a torn tail, resumes where the
/// archive ends, follows the rotations it missed, and the files still
/// compare byte-identical.
#[tokio::test]
async fn resumes_after_stop_and_torn_tail() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("arch-resume")).await?;
    let dir = archive_dir(&db);
    let w = writer(&db).await?;

    step!("archive for a while, with a rotation");
    let run = start_archiver(&db, &dir, None)?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    db.exec("FLUSH BINARY LOGS").await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    wait_progress(&run, "a closed file", |p| {
        p.files_closed >= 1 && p.durable > 4
    })
    .await?;

    step!("abort the archiver mid-stream");
    run.task.abort();
    let _ = run.task.await;
    let at_stop = run.progress.borrow().clone();
    println!("stopped at {at_stop:?}");

    step!("the server moves on: writes and two rotations while no archiver runs");
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    db.exec("FLUSH BINARY LOGS").await?;
    mixed_writes(&db, 0).await?;
    db.exec("FLUSH BINARY LOGS").await?;

    step!("tear the tail of the newest archived file (half an event)");
    let newest = local::list(&dir)?
        .last()
        .context("an archived file")?
        .1
        .clone();
    let path = dir.join(&newest);
    let before = std::fs::metadata(&path)?.len();
    let theirs = std::fs::read(db.datadir().join(&newest))?;
    let mut torn = std::fs::read(&path)?;
    ensure!(
        theirs.len() as u64 > before + 10,
        "the server's {newest} must go on past the archive"
    );
    torn.extend_from_slice(&theirs[before as usize..before as usize + 10]);
    torn.extend_from_slice(&[0xAB; 7]);
    std::fs::write(&path, &torn)?;

    step!("a new archiver on the same directory resumes");
    let run = start_archiver(&db, &dir, None)?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    let p = wait_caught_up(&db, &run).await?;
    check_archive(&db, &dir, &[]).await?;
    ensure!(p.connections == 1, "{p:?}");

    step!("stop it by cancel while the writer runs; resume once more");
    let stopped = run.stop().await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    let run = start_archiver(&db, &dir, None)?;
    let committed = w.stop().await;
    let p = wait_caught_up(&db, &run).await?;
    println!("{committed} records; cancelled at {stopped:?}; now {p:?}");
    db.exec("FLUSH BINARY LOGS").await?;
    wait_caught_up(&db, &run).await?;
    let closed = check_archive(&db, &dir, &[]).await?;
    ensure!(closed >= 4, "compared only {closed} closed files");
    run.stop().await?;
    Ok(())
}

/// The server restarts (cleanly, then after SIGKILL) while the archiver
/// streams under the causal writer: the archiver reconnects, continues in
/// the new binlog each restart opens, and leaves no gap: every closed file
/// compares byte-identical.
#[tokio::test]
async fn reconnects_across_server_restarts() -> anyhow::Result<()> {
    let mut db = MariaDb::start(MariaDbOptions::named("arch-restart")).await?;
    let dir = archive_dir(&db);
    let run = start_archiver(&db, &dir, None)?;
    let w = writer(&db).await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;

    step!("restart the server cleanly");
    db.restart().await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(60))
        .await?;
    let p = wait_caught_up(&db, &run).await?;
    ensure!(
        p.connections >= 2,
        "the archiver must have reconnected: {p:?}"
    );

    step!("kill the server (SIGKILL) and start it again");
    let (killed, _) = db.binlog_position().await?.context("binlog is on")?;
    db.kill()?;
    db.restart().await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(60))
        .await?;
    let committed = w.stop().await;
    let p = wait_caught_up(&db, &run).await?;
    println!("{committed} records; {p:?}");
    ensure!(
        p.connections >= 3,
        "the archiver must have reconnected twice: {p:?}"
    );

    step!("close the open file and compare everything");
    db.exec("FLUSH BINARY LOGS").await?;
    wait_caught_up(&db, &run).await?;
    let closed = check_archive(&db, &dir, &[killed.as_str()]).await?;
    ensure!(
        closed >= 3,
        "two restarts and a flush make at least 3 closed files, got {closed}"
    );
    run.stop().await?;
    Ok(())
}

/// A binlog purged before it was archived is a typed error naming the file
/// and the server: when asked for at the start, and when the archive
/// resumes after the server purged the next file while no archiver ran.
#[tokio::test]
async fn purged_binlog_is_a_typed_error() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("arch-purge")).await?;
    let dir = archive_dir(&db);
    let address = db.address();

    step!("archive mysql-bin.000001 until it is closed");
    db.exec("CREATE DATABASE p").await?;
    db.exec("CREATE TABLE p.t (a INT) ENGINE=InnoDB").await?;
    let run = start_archiver(&db, &dir, None)?;
    db.exec("FLUSH BINARY LOGS").await?;
    wait_progress(&run, "a closed file", |p| p.files_closed >= 1).await?;
    run.stop().await?;

    step!("rotate and purge what the archive has not reached");
    db.exec("INSERT INTO p.t VALUES (1)").await?;
    db.exec("FLUSH BINARY LOGS").await?;
    db.exec("INSERT INTO p.t VALUES (2)").await?;
    db.exec("FLUSH BINARY LOGS").await?;
    wait_no_dump_threads(&db).await?;
    // MariaDB keeps a binlog its last binlog checkpoint still needs (until
    // InnoDB has flushed the commits in it), so the purge is retried.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        db.exec("PURGE BINARY LOGS TO 'mysql-bin.000003'").await?;
        let first = server_binlogs(&db).await?.remove(0);
        if first == "mysql-bin.000003" {
            break;
        }
        ensure!(Instant::now() < deadline, "PURGE kept {first} for 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    step!("resuming the archive fails, naming mysql-bin.000002 and the server");
    let run = start_archiver(&db, &dir, None)?;
    let err = tokio::time::timeout(Duration::from_secs(30), run.task)
        .await
        .context("the archiver kept going after a purge")??
        .expect_err("resuming across a purged binlog must fail");
    assert!(
        matches!(&err, lockstep_node_agent::Error::BinlogPurged { file, server } if file == "mysql-bin.000002" && *server == address),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("binlog mysql-bin.000002 was purged on server {address} before it was archived")
    );

    step!("a fresh archive asking for mysql-bin.000001 fails the same way");
    let fresh = db.dir().join("fresh");
    let run = start_archiver(&db, &fresh, Some("mysql-bin.000001"))?;
    let err = tokio::time::timeout(Duration::from_secs(30), run.task)
        .await
        .context("the archiver kept going after a purge")??
        .expect_err("asking for a purged binlog must fail");
    assert_eq!(
        err.to_string(),
        format!("binlog mysql-bin.000001 was purged on server {address} before it was archived")
    );
    ensure!(
        local::list(&fresh)?.is_empty(),
        "nothing is archived from a purged start"
    );
    Ok(())
}

/// Waits for an archiver that must fail, and returns its error.
async fn expect_failure(run: Running, what: &str) -> anyhow::Result<lockstep_node_agent::Error> {
    match tokio::time::timeout(Duration::from_secs(30), run.task).await {
        Ok(joined) => match joined.context("join the archiver")? {
            Ok(()) => bail!("{what}: the archiver returned Ok"),
            Err(e) => Ok(e),
        },
        Err(_) => bail!(
            "{what}: the archiver kept going; progress {:?}",
            run.progress.borrow()
        ),
    }
}

fn archiver_for_url(url: &str, dir: &Path, id: u32) -> anyhow::Result<Running> {
    let archiver = Archiver::new(Server::parse(url)?, ArchiveConfig::new(dir, id));
    let progress = archiver.progress();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(archiver.run(cancel.clone()));
    Ok(Running {
        task,
        cancel,
        progress,
    })
}

/// Logging in: an account with a password and `REPLICATION SLAVE` archives
/// (and shows in `SHOW SLAVE HOSTS`); a wrong password, an account without
/// the privilege, and an `ssl-mode` that requires TLS each stop the
/// archiver at once with an error naming the server.
#[tokio::test]
async fn logs_in_with_a_password_and_refuses_clearly() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("arch-login")).await?;
    let port = db.port();
    let address = db.address();
    db.exec("CREATE USER 'arch'@'127.0.0.1' IDENTIFIED BY 's3cret pw'; GRANT REPLICATION SLAVE ON *.* TO 'arch'@'127.0.0.1'")
        .await?;
    db.exec("CREATE USER 'nopriv'@'127.0.0.1' IDENTIFIED BY 'pw'")
        .await?;

    step!("a password account with REPLICATION SLAVE archives");
    let dir = db.dir().join("pw");
    let run = archiver_for_url(
        &format!("mysql://arch:s3cret%20pw@127.0.0.1:{port}"),
        &dir,
        4242,
    )?;
    db.exec("FLUSH BINARY LOGS").await?;
    wait_progress(&run, "a closed file", |p| p.files_closed >= 1).await?;
    let hosts: Vec<mysql_async::Row> = db.query("SHOW SLAVE HOSTS").await?;
    ensure!(
        hosts.iter().any(|r| r.get::<u32, _>(0) == Some(4242)),
        "the archiver is not in SHOW SLAVE HOSTS: {hosts:?}"
    );
    run.stop().await?;
    check_archive(&db, &dir, &[]).await?;

    step!("a wrong password");
    let run = archiver_for_url(
        &format!("mysql://arch:wrong@127.0.0.1:{port}"),
        &db.dir().join("bad"),
        4243,
    )?;
    let err = expect_failure(run, "wrong password").await?.to_string();
    ensure!(err.contains(&address) && err.contains("1045"), "{err}");

    step!("an account without REPLICATION SLAVE");
    let run = archiver_for_url(
        &format!("mysql://nopriv:pw@127.0.0.1:{port}"),
        &db.dir().join("np"),
        4244,
    )?;
    let err = expect_failure(run, "no privilege").await?.to_string();
    ensure!(
        err.contains(&address) && err.contains("needs the REPLICATION SLAVE privilege"),
        "{err}"
    );

    step!("ssl-mode=required is refused: no TLS for the archiver yet");
    let run = archiver_for_url(
        &format!("mysql://root@127.0.0.1:{port}?ssl-mode=required"),
        &db.dir().join("tls"),
        4245,
    )?;
    let err = expect_failure(run, "ssl-mode=required").await?.to_string();
    ensure!(
        err.contains(&address) && err.contains("TLS for the binlog archiver is not done yet"),
        "{err}"
    );
    Ok(())
}

/// A connection that goes silent without closing (a stalled network path)
/// is declared dead after three missed heartbeats; the archiver reconnects
/// once the path heals and continues with no gap.
#[tokio::test]
async fn reconnects_after_a_silent_connection() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("arch-silent")).await?;
    let proxy = Proxy::start("arch-silent-link", db.address().parse()?).await?;
    let link = proxy.handle();
    let dir = archive_dir(&db);
    let mut config = ArchiveConfig::new(&dir, 4300);
    config.heartbeat = Duration::from_millis(200);
    config.max_backoff = Duration::from_millis(300);
    let archiver = Archiver::new(
        Server::parse(&format!("mysql://root@{}", proxy.addr()))?,
        config,
    );
    let progress = archiver.progress();
    let cancel = CancellationToken::new();
    let run = Running {
        task: tokio::spawn(archiver.run(cancel.clone())),
        cancel,
        progress,
    };
    let w = writer(&db).await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    wait_progress(&run, "a first durable group", |p| p.durable > 4).await?;

    step!("stall the link both ways: the connection stays open but silent");
    link.stall();
    let stalled = Instant::now();
    let p = wait_progress(&run, "the dead connection noticed", |p| {
        p.last_error
            .as_deref()
            .is_some_and(|e| e.contains("the connection is dead"))
    })
    .await?;
    println!("noticed after {:?}: {p:?}", stalled.elapsed());
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;

    step!("heal: the archiver reconnects and catches up");
    link.heal();
    let committed = w.stop().await;
    let p = wait_caught_up(&db, &run).await?;
    ensure!(p.connections >= 2, "{p:?}");
    println!("{committed} records; {p:?}");
    db.exec("FLUSH BINARY LOGS").await?;
    wait_caught_up(&db, &run).await?;
    check_archive(&db, &dir, &[]).await?;
    run.stop().await?;
    Ok(())
}

/// A server with `binlog_checksum=NONE`: events carry no CRC, so Rotate
/// names and commit boundaries are read without one; archiving, resuming
/// and rotating still give byte-identical files.
#[tokio::test]
async fn archives_binlogs_without_checksums() -> anyhow::Result<()> {
    let mut opts = MariaDbOptions::named("arch-nocrc");
    opts.extra_args.push("--binlog-checksum=NONE".into());
    let db = MariaDb::start(opts).await?;
    let dir = archive_dir(&db);
    let w = writer(&db).await?;

    step!("archive, rotate, stop, resume, rotate");
    let run = start_archiver(&db, &dir, None)?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    mixed_writes(&db, 0).await?;
    db.exec("FLUSH BINARY LOGS").await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    let p = wait_caught_up(&db, &run).await?;
    ensure!(p.files_closed >= 1, "{p:?}");
    run.stop().await?;
    w.wait_committed(w.committed() + 100, Duration::from_secs(30))
        .await?;
    let run = start_archiver(&db, &dir, None)?;
    db.exec("FLUSH BINARY LOGS").await?;
    let committed = w.stop().await;
    // A last group that ends with a COMMIT query (MyISAM), read without CRC.
    db.exec("INSERT INTO mix.m (v) VALUES ('last')").await?;
    wait_caught_up(&db, &run).await?;
    println!("{committed} records");

    step!("compare");
    let closed = check_archive(&db, &dir, &[]).await?;
    ensure!(closed >= 2, "compared only {closed} closed files");
    run.stop().await?;
    Ok(())
}
