//! Bad input never loses data: wrong URLs and credentials, unreachable
//! servers, binary logging off, damaged or incomplete backups, a full disk and
//! a non-empty output directory each give an error naming the thing, a
//! non-zero exit, and leave everything already on disk (and the target
//! server) as it was.

use std::path::Path;

use lockstep_tests::{CliOutput, MariaDb, MariaDbOptions, run_agent_cli, step};

fn assert_failed(out: &CliOutput, must_contain: &[&str]) {
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{}",
        out.stdout
    );
    for part in must_contain {
        assert!(
            out.stderr.contains(part),
            "{part:?} missing from stderr:\n{}",
            out.stderr
        );
    }
}

async fn dump_to(url: &str, dir: &Path) -> anyhow::Result<CliOutput> {
    run_agent_cli(&[
        "dump",
        "--mysql",
        url,
        "--out",
        dir.to_str().expect("utf-8"),
        "--quiet",
    ])
    .await
}

async fn user_databases(server: &MariaDb) -> anyhow::Result<Vec<String>> {
    server
        .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ('mysql','information_schema','performance_schema','sys')")
        .await
}

/// Connection problems name the server and create no output directory; a
/// password never appears in an error.
#[tokio::test]
async fn dump_names_the_server_it_cannot_use() -> anyhow::Result<()> {
    let (db, nobinlog) = tokio::try_join!(
        MariaDb::start(MariaDbOptions::named("bad-creds")),
        MariaDb::start(MariaDbOptions {
            binlog: false,
            ..MariaDbOptions::named("bad-nobinlog")
        })
    )?;
    db.exec("CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'right-secret'")
        .await?;
    let tmp = tempfile::Builder::new()
        .prefix("ls-bad-")
        .tempdir_in("/tmp")?;
    let out = tmp.path().join("out");

    step!("unreachable server");
    let closed = lockstep_tests::ports::free_port()?;
    let r = dump_to(&format!("mysql://root@127.0.0.1:{closed}"), &out).await?;
    assert_failed(
        &r,
        &[
            &format!("127.0.0.1:{closed}"),
            "cannot open lock connection",
        ],
    );
    assert!(!out.exists());

    step!("wrong password");
    let r = dump_to(
        &format!("mysql://app:wrong-secret@127.0.0.1:{}", db.port()),
        &out,
    )
    .await?;
    assert_failed(&r, &[&db.address(), "Access denied"]);
    assert!(
        !r.stderr.contains("wrong-secret"),
        "the password leaked: {}",
        r.stderr
    );
    assert!(!out.exists());

    step!("not a MySQL URL");
    let r = dump_to("postgres://root:pw@127.0.0.1:5432", &out).await?;
    assert_failed(&r, &["invalid MySQL URL", "mysql://USER"]);
    assert!(!r.stderr.contains(":pw@"), "{}", r.stderr);

    step!("binary logging off");
    let r = dump_to(&nobinlog.url(), &out).await?;
    assert_failed(&r, &[&nobinlog.address(), "binary logging is off"]);
    assert!(!out.exists());
    Ok(())
}

/// `dump` never writes into a directory that has files, and leaves them alone.
#[tokio::test]
async fn dump_refuses_a_non_empty_directory() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("bad-outdir")).await?;
    let tmp = tempfile::Builder::new()
        .prefix("ls-bad-")
        .tempdir_in("/tmp")?;
    std::fs::write(tmp.path().join("precious.txt"), b"keep me")?;
    let r = dump_to(&db.url(), tmp.path()).await?;
    assert_failed(&r, &[tmp.path().to_str().expect("utf-8"), "not empty"]);
    assert_eq!(std::fs::read(tmp.path().join("precious.txt"))?, b"keep me");
    assert_eq!(std::fs::read_dir(tmp.path())?.count(), 1);
    Ok(())
}

/// Damaged or incomplete backups are refused before the target is touched,
/// and the error names the file.
#[tokio::test]
async fn load_refuses_damaged_backups() -> anyhow::Result<()> {
    let (src, dst) = tokio::try_join!(
        MariaDb::start(MariaDbOptions::named("bad-src")),
        MariaDb::start(MariaDbOptions::named("bad-dst"))
    )?;
    src.exec("CREATE DATABASE d").await?;
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY, v VARCHAR(20))")
        .await?;
    src.exec("INSERT INTO d.t SELECT seq, CONCAT('v', seq) FROM d.seq_1_to_1000")
        .await?;
    let tmp = tempfile::Builder::new()
        .prefix("ls-bad-")
        .tempdir_in("/tmp")?;
    let good = tmp.path().join("good");
    dump_to(&src.url(), &good).await?.success()?;

    let copy = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let to = tmp.path().join(name);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&good)
            .arg(&to)
            .status()?
            .success();
        anyhow::ensure!(ok, "copy backup");
        Ok(to)
    };
    let load = |dir: std::path::PathBuf| {
        let url = dst.url();
        async move {
            run_agent_cli(&[
                "load",
                "--mysql",
                &url,
                "--from",
                dir.to_str().expect("utf-8"),
                "--quiet",
            ])
            .await
        }
    };

    step!("no manifest: a dump that never finished");
    let d = copy("no-manifest")?;
    std::fs::remove_file(d.join("manifest.json"))?;
    assert_failed(
        &load(d.clone()).await?,
        &[d.to_str().expect("utf-8"), "not a complete lockstep backup"],
    );

    step!("unknown manifest version");
    let d = copy("future")?;
    let text = std::fs::read_to_string(d.join("manifest.json"))?
        .replace("\"version\": 1,", "\"version\": 99,");
    std::fs::write(d.join("manifest.json"), text)?;
    assert_failed(
        &load(d).await?,
        &["manifest.json", "unknown manifest version 99"],
    );

    step!("a data file is missing");
    let d = copy("missing")?;
    std::fs::remove_file(d.join("d/t.00000.tsv.zst"))?;
    assert_failed(&load(d).await?, &["d/t.00000.tsv.zst", "missing"]);

    step!("one byte flipped in a data file");
    let d = copy("corrupt")?;
    let f = d.join("d/t.00000.tsv.zst");
    let mut bytes = std::fs::read(&f)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&f, bytes)?;
    assert_failed(
        &load(d.clone()).await?,
        &[f.to_str().expect("utf-8"), "checksum mismatch"],
    );
    let v = run_agent_cli(&["verify", "--from", d.to_str().expect("utf-8")]).await?;
    assert_failed(&v, &["d/t.00000.tsv.zst", "checksum mismatch"]);

    step!("the target was never touched; the good backup still loads");
    assert!(user_databases(&dst).await?.is_empty());
    load(good).await?.success()?;
    lockstep_tests::assert_same_data(&src, &dst, &["d"]).await?;
    Ok(())
}

/// A full disk fails the dump with an error naming the file, removes what it
/// wrote (no manifest: never a backup), and damages nothing already there.
#[tokio::test]
async fn full_disk_fails_cleanly() -> anyhow::Result<()> {
    let db = MariaDb::start(MariaDbOptions::named("bad-full")).await?;
    db.exec("CREATE DATABASE d").await?;
    db.exec("CREATE TABLE d.t (id INT PRIMARY KEY, c CHAR(64))")
        .await?;
    db.exec("INSERT INTO d.t SELECT seq, SHA2(seq, 256) FROM d.seq_1_to_100000")
        .await?;
    let tmp = tempfile::Builder::new()
        .prefix("ls-full-")
        .tempdir_in("/tmp")?;
    let mount = Mount::tmpfs(tmp.path(), "1m")?;
    std::fs::write(mount.path.join("older-backup.txt"), b"an older backup")?;

    let out = mount.path.join("snap");
    let r = dump_to(&db.url(), &out).await?;
    assert_failed(
        &r,
        &["No space left on device", out.to_str().expect("utf-8")],
    );
    assert!(!out.join("manifest.json").exists());
    assert!(
        !out.exists() || std::fs::read_dir(&out)?.next().is_none(),
        "the failed dump's files were removed"
    );
    assert_eq!(
        std::fs::read(mount.path.join("older-backup.txt"))?,
        b"an older backup"
    );
    Ok(())
}

/// A small tmpfs mounted for one test; unmounted on drop.
struct Mount {
    path: std::path::PathBuf,
}

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> anyhow::Result<Mount> {
        let path = at.join("disk");
        std::fs::create_dir(&path)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mount a {size} tmpfs at {} (the full-disk test needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Mount { path })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

/// A Restore through the agent checks what the catalog says before it
/// touches the target: a manifest whose sha256 or backup id differs from the
/// request, or a location outside the agent's sink directory, is refused
/// naming the location, and the target stays empty. Two restores into one
/// server never race: the second is refused while the first loads, and the
/// first restores every row.
#[tokio::test]
async fn agent_restore_checks_the_catalog_and_runs_alone() -> anyhow::Result<()> {
    use lockstep_proto::agent as pb;
    use lockstep_tests::probe;
    use lockstep_tests::{AgentOptions, AgentProc};
    use std::time::{Duration, Instant};

    let (source, target) = tokio::try_join!(
        MariaDb::start(MariaDbOptions::named("rchk-src")),
        MariaDb::start(MariaDbOptions::named("rchk-dst"))
    )?;
    for sql in [
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(40))",
        "INSERT INTO shop.t SELECT seq, CONCAT('row ', seq) FROM shop.seq_1_to_300000",
    ] {
        source.exec(sql).await?;
    }
    let agent = AgentProc::start(AgentOptions::new("rchk", source.url())).await?;
    let mut client = agent.client().await?;

    step!("a backup through the agent: prepare, commit, transfer");
    let _cut = probe::prepare(&mut client, "b-chk", Duration::from_secs(10), None).await?;
    client
        .commit(pb::CommitRequest {
            backup_id: "b-chk".into(),
            term: 0,
        })
        .await?;
    let artifact = probe::transfer(&mut client, "b-chk").await?;
    let req = |sha: &str, id: &str, location: &str| pb::RestoreRequest {
        location: location.into(),
        target_mysql: target.url(),
        threads: 1,
        backup_id: id.into(),
        manifest_sha256: sha.into(),
        ..Default::default()
    };

    step!("a manifest other than the catalog's is refused");
    let wrong_sha = probe::restore_with(&mut client, req("0123", "b-chk", &artifact.location))
        .await
        .expect_err("wrong sha256");
    assert!(
        wrong_sha.message().contains("catalog recorded 0123"),
        "{}",
        wrong_sha.message()
    );
    let wrong_id = probe::restore_with(
        &mut client,
        req(&artifact.manifest_sha256, "b-other", &artifact.location),
    )
    .await
    .expect_err("wrong backup id");
    assert!(
        wrong_id
            .message()
            .contains("the catalog says backup b-other"),
        "{}",
        wrong_id.message()
    );

    step!("a location outside the sink directory is refused");
    let outside = tempfile::tempdir()?;
    let copied = outside.path().join("copy");
    let stored = agent.sink_dir().join(&artifact.location);
    let status = std::process::Command::new("cp")
        .args([
            "-a",
            stored.to_str().expect("utf-8"),
            copied.to_str().expect("utf-8"),
        ])
        .status()?;
    anyhow::ensure!(status.success(), "cp failed");
    let outside_err = probe::restore_with(
        &mut client,
        req(
            &artifact.manifest_sha256,
            "b-chk",
            copied.to_str().expect("utf-8"),
        ),
    )
    .await
    .expect_err("outside the sink");
    assert!(
        outside_err
            .message()
            .contains("outside this agent's sink directory"),
        "{}",
        outside_err.message()
    );
    let escape = format!("b-chk/../../{}", copied.display());
    let escape_err = probe::restore_with(
        &mut client,
        req(&artifact.manifest_sha256, "b-chk", &escape),
    )
    .await
    .expect_err("a location leaving the sink");
    assert!(
        escape_err.message().contains("`..` component"),
        "{}",
        escape_err.message()
    );
    assert!(user_databases(&target).await?.is_empty(), "target touched");

    step!("a second restore into the same server is refused while the first loads");
    let mut first_client = agent.client().await?;
    let good = req(&artifact.manifest_sha256, "b-chk", &artifact.location);
    let first = tokio::spawn({
        let good = good.clone();
        async move { probe::restore_with(&mut first_client, good).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let loading: Option<u64> = target
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'LOAD DATA%'",
            )
            .await?;
        if loading.unwrap_or(0) > 0 {
            break;
        }
        anyhow::ensure!(
            !first.is_finished() && Instant::now() < deadline,
            "the first restore never loaded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut forced = good.clone();
    forced.force = true;
    let second = probe::restore_with(&mut client, forced)
        .await
        .expect_err("a racing restore");
    assert_eq!(second.code(), tonic::Code::Aborted, "{second:?}");
    assert!(
        second
            .message()
            .contains(&format!("a restore into {}", target.address())),
        "{}",
        second.message()
    );
    let report = first.await??;
    assert_eq!(report.rows, 300_000);
    let rows: u64 = target.query_one("SELECT COUNT(*) FROM shop.t").await?;
    assert_eq!(rows, 300_000);
    Ok(())
}
