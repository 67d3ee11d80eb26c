//! The harness for physical backups: servers on chosen and restored
//! datadirs, the causal writer's journal file, and loop-mounted btrfs and XFS
//! filesystems (root only, behind `LOCKSTEP_LOOPFS_TESTS=1`) that leave
//! nothing behind.

use std::path::Path;
use std::time::{Duration, Instant};

use lockstep_tests::loopfs::{self, LoopFs, is_attached, is_mounted};
use lockstep_tests::{
    CausalWriter, JournalEnd, MariaDb, MariaDbOptions, Supervised, Target, check_chain,
    init_tracing, journal_last, read_journal, step,
};
use mysql_async::prelude::Queryable as _;

/// How long the writer may take to reach a record count.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Records the chain holds before the snapshot, and adds after it.
const RECORDS: u64 = 2000;

/// The sequence number of `domain` in a `gtid_binlog_pos` (0 if absent).
fn gtid_seq(pos: &str, domain: u32) -> anyhow::Result<u64> {
    for gtid in pos.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let parts: Vec<&str> = gtid.split('-').collect();
        let [d, _server, seq] = parts[..] else {
            anyhow::bail!("malformed GTID {gtid:?} in {pos:?}");
        };
        if d.parse::<u32>()? == domain {
            return Ok(seq.parse()?);
        }
    }
    Ok(0)
}

/// Asserts that nothing of a dropped [`LoopFs`] is left: no loop device on
/// its image, no mount, no files.
fn assert_gone(image: &Path, mount: &Path) -> anyhow::Result<()> {
    assert!(
        !is_attached(image)?,
        "a loop device is still attached to {}",
        image.display()
    );
    assert!(!is_mounted(mount)?, "{} is still mounted", mount.display());
    assert!(!image.exists(), "image {} still exists", image.display());
    let dir = image.parent().expect("the image is in a temp dir");
    assert!(!dir.exists(), "temp dir {} still exists", dir.display());
    Ok(())
}

/// The journal check: lines exactly 1..=m in order; a gap, a repeat, stray
/// text or a partial trailing line is an error naming the file (the partial
/// line is returned by `read_journal`, an error from `journal_last`).
#[test]
fn journal_check_finds_gaps_repeats_and_partial_lines() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("journal");
    let check = |text: &str| -> anyhow::Result<u64> {
        std::fs::write(&path, text)?;
        journal_last(&path)
    };
    step!("good journals");
    assert_eq!(check("")?, 0);
    assert_eq!(check("1\n")?, 1);
    assert_eq!(check("1\n2\n3\n")?, 3);
    step!("broken journals");
    for (text, says) in [
        ("1\n3\n", "line 2 is \"3\", expected 2"),
        ("2\n", "line 1 is \"2\", expected 1"),
        ("1\n2\n2\n", "line 3 is \"2\", expected 3"),
        ("1\n\n2\n", "line 2 is \"\", expected 2"),
        ("\n", "line 1 is \"\", expected 1"),
        ("1\nx\n", "line 2 is \"x\""),
        ("1\n2\n3", "complete lines 1..=2, then a partial line \"3\""),
    ] {
        let err = check(text).expect_err(text);
        let msg = format!("{err:#}");
        assert!(msg.contains(says), "{text:?}: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
    std::fs::write(&path, "1\n2\n3")?;
    assert_eq!(
        read_journal(&path)?,
        JournalEnd {
            last: 2,
            partial: Some("3".into())
        }
    );
    Ok(())
}

/// A server whose datadir the test chose (outside the harness's temp dir)
/// keeps it after drop; `MariaDb::start_on` starts on it again with the same
/// ids, finds its binlog index and continues its GTID sequence; a non-empty
/// chosen datadir and a directory without a datadir are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_datadir_survives_drop_and_start_on_continues_it() -> anyhow::Result<()> {
    init_tracing();
    let root = tempfile::tempdir()?;
    let datadir = root.path().join("data");
    step!("start a server with its datadir in {}", datadir.display());
    let opts = MariaDbOptions {
        datadir: Some(datadir.clone()),
        ..MariaDbOptions::named("chosen")
    };
    let s = MariaDb::start(opts.clone()).await?;
    assert_eq!(s.datadir(), datadir);
    let reported: String = s.query_one("SELECT @@datadir").await?;
    assert_eq!(Path::new(reported.trim_end_matches('/')), datadir);
    assert!(!datadir.starts_with(s.dir()));
    s.exec(
        "CREATE DATABASE d; CREATE TABLE d.t (k INT PRIMARY KEY); INSERT INTO d.t VALUES (1), (2)",
    )
    .await?;
    let pos = s.gtid_binlog_pos().await?;
    let (id, domain, temp) = (s.server_id(), s.gtid_domain_id(), s.dir().to_path_buf());

    step!("a second server may not reuse the non-empty datadir");
    let err = MariaDb::start(MariaDbOptions {
        datadir: Some(datadir.clone()),
        ..MariaDbOptions::named("reuse")
    })
    .await
    .expect_err("a non-empty datadir is refused");
    assert!(format!("{err:#}").contains("is not empty"), "{err:#}");

    step!("drop the server: its temp dir goes, the datadir stays");
    drop(s);
    assert!(!temp.exists(), "temp dir {} still exists", temp.display());
    assert!(datadir.join("mysql").is_dir());
    assert!(datadir.join("mysql-bin.index").is_file());

    step!("start_on the datadir with the same ids");
    let mut again = MariaDb::start_on(
        datadir.clone(),
        MariaDbOptions {
            server_id: Some(id),
            gtid_domain_id: Some(domain),
            ..MariaDbOptions::named("again")
        },
    )
    .await?;
    assert_eq!(again.gtid_binlog_pos().await?, pos);
    let rows: Vec<u32> = again.query("SELECT k FROM d.t ORDER BY k").await?;
    assert_eq!(rows, vec![1, 2]);
    again.exec("INSERT INTO d.t VALUES (3)").await?;
    assert_eq!(
        gtid_seq(&again.gtid_binlog_pos().await?, domain)?,
        gtid_seq(&pos, domain)? + 1
    );
    again.stop()?;
    drop(again);
    assert!(datadir.join("mysql").is_dir());

    step!("start_on refuses a directory that is no datadir");
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty)?;
    let err = MariaDb::start_on(empty, MariaDbOptions::named("empty"))
        .await
        .expect_err("an empty directory is refused");
    assert!(
        format!("{err:#}").contains("not a server's datadir"),
        "{err:#}"
    );
    Ok(())
}

/// btrfs: a server's datadir in one subvolume and the causal writer's
/// journal in another; the chain and the journal agree on m.
///
/// Two snapshots of the datadir subvolume are taken under writes and each is
/// started with `MariaDb::start_on` on a writable snapshot of it (InnoDB
/// recovery):
/// - one while the server runs unhindered (a crash image): its rows are the
///   chain's prefix 1..=r, holding every record committed before the
///   snapshot began and none begun after it returned. Its binlog is only
///   logged: btrfs flushes file by file, so under writes the binlog
///   (buffered, `sync_binlog=0`) can end before InnoDB's rows (seen: 26
///   transactions short in 1 run of 12).
/// - one inside `FLUSH TABLES WITH READ LOCK`: its rows end exactly at the
///   chain's k and its `gtid_binlog_pos` is exactly the one read under the
///   lock.
///
/// Everything is unmounted, detached and removed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_datadir_snapshots_recover_a_chain_prefix() -> anyhow::Result<()> {
    if !loopfs::enabled() {
        return Ok(());
    }
    let started = Instant::now();
    step!("a btrfs image with subvolumes db and app");
    let fs = LoopFs::btrfs(256)?;
    let (image, mount) = (fs.image().to_path_buf(), fs.mount().to_path_buf());
    let db_vol = fs.subvolume("db")?;
    let app_vol = fs.subvolume("app")?;
    assert!(fs.dir("db").is_ok(), "dir() accepts an existing directory");
    assert!(fs.subvolume("db").is_err(), "the subvolume exists already");

    step!("a server with its datadir at the root of subvolume db");
    let src = MariaDb::start(MariaDbOptions {
        datadir: Some(db_vol.clone()),
        ..MariaDbOptions::named("btrfs-src")
    })
    .await?;
    let reported: String = src.query_one("SELECT @@datadir").await?;
    assert_eq!(Path::new(reported.trim_end_matches('/')), db_vol);
    let restore_opts = |name: &str| MariaDbOptions {
        server_id: Some(src.server_id()),
        gtid_domain_id: Some(src.gtid_domain_id()),
        ..MariaDbOptions::named(name)
    };
    let domain = src.gtid_domain_id();

    step!("the causal writer with its journal in subvolume app");
    let journal = app_vol.join("journal");
    let targets = vec![Target::on(&src, "chain", "rec")];
    let writer = CausalWriter::start_with_journal(targets.clone(), &journal).await?;
    writer.wait_committed(RECORDS, WRITE_TIMEOUT).await?;

    step!("snapshot subvolume db read-only under writes (a crash image)");
    let before = writer.committed();
    let snap_started = Instant::now();
    let crash = fs.snapshot(&db_vol, "db-crash", true)?;
    let crash_took = snap_started.elapsed();
    let after = writer.committed();
    tracing::info!(before, after, ?crash_took, "crash-image snapshot taken");
    writer
        .wait_committed(after + RECORDS, WRITE_TIMEOUT)
        .await?;

    step!("snapshot subvolume db read-only inside FLUSH TABLES WITH READ LOCK");
    let mut lock = src.conn().await?;
    lock.query_drop("FLUSH TABLES WITH READ LOCK").await?;
    let locked_k: Option<u64> = lock.query_first("SELECT MAX(k) FROM chain.rec").await?;
    let locked_k = locked_k.unwrap_or(0);
    let locked_pos: String = lock
        .query_first("SELECT @@gtid_binlog_pos")
        .await?
        .unwrap_or_default();
    let snap_started = Instant::now();
    let locked = fs.snapshot(&db_vol, "db-locked", true);
    let locked_took = snap_started.elapsed();
    lock.query_drop("UNLOCK TABLES").await?;
    drop(lock);
    let locked = locked?;
    tracing::info!(
        locked_k,
        locked_pos,
        ?locked_took,
        "snapshot under the lock taken"
    );
    writer
        .wait_committed(locked_k + RECORDS, WRITE_TIMEOUT)
        .await?;

    step!("stop the writer: the chain and the journal end at the same m");
    let m = writer.stop().await;
    assert_eq!(check_chain(&targets).await?, m);
    assert_eq!(journal_last(&journal)?, m);
    assert!(m > locked_k + RECORDS / 2, "m={m}, locked at {locked_k}");

    step!("start a server on a writable snapshot of the crash image");
    let crash_vol = fs.snapshot(&crash, "db-crash-rw", false)?;
    let restored = MariaDb::start_on(crash_vol.clone(), restore_opts("btrfs-crash")).await?;
    let r = check_chain(&[Target::on(&restored, "chain", "rec")]).await?;
    let pos = restored.gtid_binlog_pos().await?;
    // CREATE DATABASE and CREATE TABLE, then one transaction per record.
    tracing::info!(
        before,
        r,
        after,
        m,
        binlog_records = gtid_seq(&pos, domain)?.saturating_sub(2),
        "crash image recovered"
    );
    assert!(
        before <= r && r <= after + 1,
        "crash image's chain ends at {r}, outside [{before}, {}] (m={m})",
        after + 1
    );
    drop(restored);

    step!("start a server on a writable snapshot of the locked snapshot");
    let locked_vol = fs.snapshot(&locked, "db-locked-rw", false)?;
    let restored = MariaDb::start_on(locked_vol.clone(), restore_opts("btrfs-locked")).await?;
    let r = check_chain(&[Target::on(&restored, "chain", "rec")]).await?;
    assert_eq!(r, locked_k, "the locked snapshot's chain");
    assert_eq!(restored.gtid_binlog_pos().await?, locked_pos);
    assert_eq!(gtid_seq(&locked_pos, domain)?, locked_k + 2);
    drop(restored);

    step!("drop the servers: the subvolumes stay, then the filesystem goes");
    drop(src);
    for vol in [&db_vol, &crash_vol, &locked_vol] {
        assert!(vol.join("mysql").is_dir(), "{} was emptied", vol.display());
    }
    drop(fs);
    assert_gone(&image, &mount)?;
    tracing::info!(elapsed = ?started.elapsed(), "btrfs harness test done");
    Ok(())
}

/// XFS with reflinks: an image too small fails with mkfs.xfs's error and
/// leaves no loop device; a server with its datadir in a directory on the
/// mount starts and stops cleanly; a `cp --reflink=always` copy of the stopped
/// datadir starts with `MariaDb::start_on` with the same rows and binlog
/// position. Everything is unmounted, detached and removed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_datadir_starts_stops_and_reflink_copy_starts() -> anyhow::Result<()> {
    if !loopfs::enabled() {
        return Ok(());
    }
    let started = Instant::now();
    step!("an XFS image too small for mkfs.xfs: an error naming it, nothing left");
    let err = LoopFs::xfs(16).expect_err("XFS needs 300 MB");
    let msg = format!("{err:#}");
    assert!(msg.contains("mkfs.xfs -q -m reflink=1 /dev/loop"), "{msg}");
    assert!(msg.contains("300"), "mkfs.xfs's stderr is quoted: {msg}");
    let listing = loopfs::run_cmd("losetup", &["-a"])?;
    assert!(
        !listing
            .lines()
            .any(|l| l.contains("/lsfs-") && l.contains("xfs.img")),
        "the failed image is still attached:\n{listing}"
    );

    step!("an XFS (reflink) image with a directory db");
    let fs = LoopFs::xfs(320)?;
    let (image, mount) = (fs.image().to_path_buf(), fs.mount().to_path_buf());
    let err = fs.subvolume("nope").expect_err("XFS has no subvolumes");
    assert!(format!("{err:#}").contains("needs btrfs"), "{err:#}");
    let db_dir = fs.dir("db")?;

    step!("a server with its datadir in db: writes, clean stop");
    let mut src = MariaDb::start(MariaDbOptions {
        datadir: Some(db_dir.clone()),
        ..MariaDbOptions::named("xfs-src")
    })
    .await?;
    src.exec("CREATE DATABASE d; CREATE TABLE d.t (k INT PRIMARY KEY); INSERT INTO d.t VALUES (1), (2), (3)")
        .await?;
    let pos = src.gtid_binlog_pos().await?;
    let status = src.stop()?.expect("the server ran");
    assert!(status.success(), "clean shutdown, got {status}");

    step!("reflink-copy the stopped datadir and start_on the copy");
    let copy = mount.join("db-copy");
    loopfs::run_cmd(
        "cp",
        &[
            "-a",
            "--reflink=always",
            db_dir.to_str().expect("UTF-8 path"),
            copy.to_str().expect("UTF-8 path"),
        ],
    )?;
    let restored = MariaDb::start_on(
        copy.clone(),
        MariaDbOptions {
            server_id: Some(src.server_id()),
            gtid_domain_id: Some(src.gtid_domain_id()),
            ..MariaDbOptions::named("xfs-copy")
        },
    )
    .await?;
    assert_eq!(restored.gtid_binlog_pos().await?, pos);
    let rows: Vec<u32> = restored.query("SELECT k FROM d.t ORDER BY k").await?;
    assert_eq!(rows, vec![1, 2, 3]);

    step!("drop the servers, then the filesystem");
    drop(restored);
    drop(src);
    drop(fs);
    assert_gone(&image, &mount)?;
    tracing::info!(elapsed = ?started.elapsed(), "xfs harness test done");
    Ok(())
}
