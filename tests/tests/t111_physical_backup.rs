//! Physical backups end to end on loop-mounted filesystems (root only,
//! behind `LOCKSTEP_LOOPFS_TESTS=1`, which `scripts/test.sh` sets as root):
//! 3 servers whose datadirs live on btrfs subvolumes (or XFS directories,
//! reflink), the causal-chain writer with a journal file in an application
//! file set, a physical cluster backup, and a restore into fresh datadirs on
//! which servers are started again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_tests::loopfs::{self, LoopFs, run_cmd};
use lockstep_tests::plain_cluster::{Cluster, start_at_cut};
use lockstep_tests::sinks::{add_pool, media_agent, sink_policy};
use lockstep_tests::{
    AgentOptions, CatalogCli, CausalWriter, MariaDb, MariaDbOptions, check_chain, init_tracing,
    journal_last, step,
};
use lockstep_tests::{CoordinatorOptions, Supervised};
use serde_json::Value;

const CLUSTER_PREFIX: &str = "ph";
/// Records the chain holds before the backup.
const BEFORE: u64 = 300;

/// Which filesystem and provider a run uses.
#[derive(Clone, Copy, Debug)]
enum Fs {
    Btrfs,
    Xfs,
}

impl Fs {
    fn provider(self) -> &'static str {
        match self {
            Fs::Btrfs => "btrfs",
            Fs::Xfs => "reflink",
        }
    }
}

/// The btrfs case: each datadir in its own subvolume, snapshotted
/// read-only inside the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn physical_backup_on_btrfs_restores_the_cut_and_the_file_set() -> anyhow::Result<()> {
    run(Fs::Btrfs).await
}

/// The XFS case: each datadir in a directory, copied with
/// `cp --reflink=always` (redo log first) inside the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn physical_backup_on_xfs_reflink_restores_the_cut_and_the_file_set() -> anyhow::Result<()> {
    run(Fs::Xfs).await
}

/// A btrfs snapshot, the chain check and the journal: the whole scenario
/// for one filesystem.
async fn run(fs_kind: Fs) -> anyhow::Result<()> {
    init_tracing();
    if !loopfs::enabled() {
        return Ok(());
    }
    let Setup {
        fs,
        snapdirs,
        app,
        mut cluster,
        ids,
        ..
    } = setup(fs_kind, &[]).await?;
    let journal = app.path().join("journal.log");
    let provider = fs_kind.provider();
    // The XFS run backs up to a media agent's pool and restores with the
    // source host gone; the btrfs run keeps its copies on each host.
    let vault = match fs_kind {
        Fs::Xfs => {
            step!("backups go to the pool of media agent vault");
            let vault = media_agent(&cluster, "vault").await?;
            add_pool(&cluster, &vault).await?;
            sink_policy(&cluster, "pool", &[]).await?;
            Some(vault)
        }
        Fs::Btrfs => None,
    };

    step!("the causal writer runs, appending each record to the app's journal");
    let writer = CausalWriter::start_with_journal(cluster.chain(), &journal).await?;
    writer
        .wait_committed(BEFORE, Duration::from_secs(60))
        .await?;

    step!("lockstep backup start --wait (each agent's default kind: physical)");
    let backup = cluster.backup_and_wait(None).await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().unwrap_or_default().to_string();
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    let servers = shown["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 3, "{shown}");
    for s in &servers {
        assert_eq!(s["kind"], "physical", "{s}");
        assert_eq!(s["provider"], provider, "{s}");
        let snap_ms = s["snapshot_ms"].as_f64().unwrap_or(0.0);
        assert!(snap_ms > 0.0, "snapshot time recorded: {s}");
        let lock_ms = s["lock_ms"].as_f64().unwrap_or(0.0);
        assert!(snap_ms <= lock_ms, "the snapshot is inside the lock: {s}");
        let art = &s["artifact"];
        assert!(
            art["snapshot_bytes"].as_u64().unwrap_or(0) > 10 << 20,
            "{s}"
        );
        assert!(art["free_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    }
    assert_eq!(
        servers[0]["artifact"]["file_sets"],
        serde_json::json!(["app"])
    );
    let cut: Vec<String> = servers
        .iter()
        .map(|s| s["gtid"].as_str().unwrap_or_default().to_string())
        .collect();
    tracing::info!(?cut, written, "backup {id} complete");

    step!("every snapshot was deleted and forgotten once streamed");
    assert_no_snapshots(fs_kind, fs.mount(), &snapdirs)?;
    for a in &cluster.agents {
        let state = a.sink_dir().parent().expect("sink dir has a parent");
        let records = state.join("state").join(a.name()).join("snapshots");
        let left: Vec<_> = std::fs::read_dir(&records)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "registry records left: {left:?}");
    }

    step!("a restore without --datadir is refused, naming the server");
    let out = cluster
        .cli(&["restore", "run", "--backup", &id, "--in-place"])
        .await?;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("physical") && out.stderr.contains("--datadir"),
        "{}",
        out.stderr
    );

    step!("lockstep restore run --datadir ...=FRESH --files-to DIR");
    let restored_root = fs.dir("restored")?;
    let files_to = fs.dir("files")?;
    let mut argv: Vec<String> = ["--json", "restore", "run", "--backup", &id]
        .map(String::from)
        .to_vec();
    let mut datadirs = Vec::new();
    for i in 0..3 {
        let d = restored_root.join(format!("{CLUSTER_PREFIX}{i}"));
        argv.push("--datadir".into());
        argv.push(format!("{CLUSTER_PREFIX}{i}={}", d.display()));
        datadirs.push(d);
    }
    argv.extend(["--files-to".into(), files_to.display().to_string()]);

    step!("a typo in --datadir is refused, naming the servers the backup has");
    let mut typo: Vec<&str> = argv[1..5].iter().map(String::as_str).collect();
    let bad = format!("{CLUSTER_PREFIX}9={}", datadirs[0].display());
    typo.extend(["--datadir", &bad]);
    let out = cluster.cli(&typo).await?;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains(&format!("{CLUSTER_PREFIX}9"))
            && out.stderr.contains(&format!("{CLUSTER_PREFIX}0")),
        "{}",
        out.stderr
    );

    if vault.is_some() {
        step!("the source host of {CLUSTER_PREFIX}0 is gone: its agent is killed");
        cluster.agents[0].kill()?;
        step!("at once: restore without --agent is refused, naming the server");
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = cluster.cli(&refs).await?;
        assert!(!out.status.success(), "{}", out.stdout);
        tracing::info!(error = %out.stderr.trim(), "restore with the source host gone");
        assert!(
            out.stderr.contains(&format!("{CLUSTER_PREFIX}0")) && out.stderr.contains("--agent"),
            "{}",
            out.stderr
        );
        step!(
            "--agent {CLUSTER_PREFIX}0={CLUSTER_PREFIX}1: another host's agent writes its datadir"
        );
        argv.extend([
            "--agent".into(),
            format!("{CLUSTER_PREFIX}0={CLUSTER_PREFIX}1"),
        ]);
    }
    let mut plan_argv = argv.clone();
    plan_argv[2] = "plan".into();
    let plan_refs: Vec<&str> = plan_argv.iter().map(String::as_str).collect();
    let plan = cluster.cli_json(&plan_refs[1..]).await?;
    tracing::info!(%plan, "restore plan");
    let planned = plan["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(planned.len(), 3, "{plan}");
    for p in &planned {
        let target = p["target"].as_str().unwrap_or_default();
        assert!(target.starts_with("datadir /"), "{plan}");
        assert!(p["estimated_ms"].as_u64().unwrap_or(0) > 0, "{plan}");
    }
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cluster.cli(&refs).await?;
    let restore: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| anyhow::anyhow!("{e}: {} {}", out.stdout, out.stderr))?;
    let restored = start_at_cut(&restore, &datadirs, &ids, &cut).await?;
    let targets = lockstep_tests::Target::chain_on(&restored);
    let m = check_chain(&targets).await?;
    assert!(
        m >= BEFORE,
        "the backup holds at least {BEFORE} records, got {m}"
    );
    assert!(m <= written, "{m} > {written} written");

    step!("the app's journal was cut at the same moment: it ends at record {m}");
    let restored_journal = files_to
        .join(format!("{CLUSTER_PREFIX}0"))
        .join("app")
        .join("journal.log");
    assert_eq!(journal_last(&restored_journal)?, m);
    drop(restored);
    drop(vault);
    drop(cluster);
    drop(fs);
    Ok(())
}

/// A loop-mounted filesystem with a volume and a snapshot directory per
/// server, 3 servers on it, coordinators, and agents taking physical
/// backups of their volume; agent 0 has the file set `app`.
struct Setup {
    // Dropped in this order: the cluster (its servers) before the
    // filesystem they live on.
    cluster: Cluster,
    app: tempfile::TempDir,
    snapdirs: Vec<PathBuf>,
    /// Each server's (server id, GTID domain id).
    ids: Vec<(u32, u32)>,
    fs: LoopFs,
}

async fn setup(fs_kind: Fs, coordinator_env: &[(&str, &str)]) -> anyhow::Result<Setup> {
    step!("make a loop-mounted {fs_kind:?} filesystem with a volume per server");
    let fs = match fs_kind {
        Fs::Btrfs => LoopFs::btrfs(2048)?,
        Fs::Xfs => LoopFs::xfs(2048)?,
    };
    let mut volumes = Vec::new();
    let mut snapdirs = Vec::new();
    for i in 0..3 {
        volumes.push(match fs_kind {
            Fs::Btrfs => fs.subvolume(&format!("db{i}"))?,
            Fs::Xfs => fs.dir(&format!("db{i}"))?,
        });
        snapdirs.push(fs.dir(&format!("snaps{i}"))?);
    }
    let app = tempfile::tempdir()?;

    step!("start 3 servers with their datadirs on the volumes");
    let mut servers = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let opts = MariaDbOptions {
            datadir: Some(v.join("data")),
            ..MariaDbOptions::named(format!("{CLUSTER_PREFIX}{i}"))
        };
        servers.push(MariaDb::start(opts).await?);
    }
    let ids: Vec<(u32, u32)> = servers
        .iter()
        .map(|s| (s.server_id(), s.gtid_domain_id()))
        .collect();
    let provider = fs_kind.provider();
    let cluster = Cluster::start_on_with(
        servers,
        CoordinatorOptions::with_env(coordinator_env),
        |i, s| {
            let mut o = AgentOptions::new(s.name(), s.url());
            o.extra_args = vec![
                "--backup-kind".into(),
                "physical".into(),
                "--snapshot-provider".into(),
                provider.into(),
                "--snapshot-volume".into(),
                volumes[i].display().to_string(),
                "--snapshot-dir".into(),
                snapdirs[i].display().to_string(),
            ];
            if i == 0 {
                o.extra_args
                    .extend(["--file-set".into(), format!("app={}", app.path().display())]);
            }
            o
        },
    )
    .await?;
    Ok(Setup {
        cluster,
        app,
        snapdirs,
        ids,
        fs,
    })
}

/// No snapshot of ours is left: no `lockstep-*` subvolume (btrfs) and
/// every snapshot directory empty.
fn assert_no_snapshots(fs: Fs, mount: &Path, snapdirs: &[PathBuf]) -> anyhow::Result<()> {
    if let Fs::Btrfs = fs {
        let list = run_cmd(
            "btrfs",
            &["subvolume", "list", &mount.display().to_string()],
        )?;
        assert!(!list.contains("lockstep-"), "snapshots left: {list}");
    }
    for d in snapdirs {
        let left: Vec<_> = std::fs::read_dir(d)?.filter_map(|e| e.ok()).collect();
        assert!(left.is_empty(), "{} holds {left:?}", d.display());
    }
    Ok(())
}

/// An agent killed while it holds its snapshot (between the cut and its
/// transfer, held open by the coordinator's `after-commit-cut` fail
/// point): the snapshot survives the crash, and the restarted agent
/// deletes it and its record before it serves; the backup fails naming
/// the server, and the other servers' snapshots are released too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agent_deletes_its_snapshot_when_it_starts_again() -> anyhow::Result<()> {
    init_tracing();
    if !loopfs::enabled() {
        return Ok(());
    }
    let Setup {
        fs,
        snapdirs,
        mut cluster,
        app: _app,
        ..
    } = setup(
        Fs::Btrfs,
        &[("FAILPOINTS", "after-commit-cut=return(3000)")],
    )
    .await?;

    step!("a physical backup, held for 3 s after its cut");
    let out = cluster
        .cli(&[
            "--json",
            "backup",
            "start",
            "--cluster",
            lockstep_tests::plain_cluster::CLUSTER,
        ])
        .await?;
    out.success()?;
    let started: Value = serde_json::from_str(out.stdout.trim())?;
    let id = started["backup_id"]
        .as_str()
        .or_else(|| started["id"].as_str())
        .unwrap_or_default()
        .to_string();
    let b = cluster
        .wait_backup(&id, Duration::from_secs(20), |s| s != "PREPARING")
        .await?;
    tracing::info!(status = %b["status"], reason = %b["reason"], "after the cut");
    let held = |d: &Path| std::fs::read_dir(d).map(|e| e.count()).unwrap_or(0);
    assert_eq!(
        held(&snapdirs[0]),
        1,
        "agent 0 holds its snapshot after the cut"
    );
    let records = {
        let a = &cluster.agents[0];
        let base = a.sink_dir().parent().expect("sink dir has a parent");
        base.join("state").join(a.name()).join("snapshots")
    };
    assert_eq!(held(&records), 1, "and its record");

    step!("SIGKILL agent 0 while it holds the snapshot: the snapshot survives");
    cluster.agents[0].kill()?;
    assert_eq!(held(&snapdirs[0]), 1);

    step!("restart agent 0: it deletes the snapshot and its record before serving");
    cluster.agents[0].restart().await?;
    assert_eq!(held(&snapdirs[0]), 0, "the leftover snapshot is deleted");
    assert_eq!(held(&records), 0, "and forgotten");
    let list = run_cmd(
        "btrfs",
        &["subvolume", "list", &fs.mount().display().to_string()],
    )?;
    assert!(!list.contains("snaps0/lockstep-"), "{list}");

    step!("the backup fails naming the server; no server keeps a snapshot");
    let b = cluster
        .wait_backup(&id, Duration::from_secs(60), |s| {
            s == "FAILED" || s == "COMPLETE"
        })
        .await?;
    assert_eq!(b["status"], "FAILED", "{b}");
    let reason = b["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("{CLUSTER_PREFIX}0")), "{reason}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while snapdirs.iter().any(|d| held(d) > 0) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "snapshots left: {:?}",
            snapdirs.iter().map(|d| held(d)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_snapshots(Fs::Btrfs, fs.mount(), &snapdirs)?;

    step!("the next physical backup, started right away, completes and leaves nothing");
    let next = cluster.backup_and_wait(None).await?;
    assert_eq!(next["status"], "COMPLETE", "{next}");
    assert_no_snapshots(Fs::Btrfs, fs.mount(), &snapdirs)?;
    drop(cluster);
    drop(fs);
    Ok(())
}

/// A logical backup cuts the file set too (runs without root): the
/// writer appends each record to a file of the set right after its insert,
/// and the restored file ends exactly at the restored chain's last record.
/// A physical backup of agents without a snapshot provider, and a file set
/// over its budget, are refused before anything is locked, naming the
/// server and the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logical_backup_cuts_the_file_set_with_the_databases() -> anyhow::Result<()> {
    init_tracing();
    let app = tempfile::tempdir()?;
    let journal = app.path().join("journal.log");
    let names = ["fs0", "fs1", "fs2"];
    let servers = MariaDb::start_many(&names).await?;
    let cluster = Cluster::start_on(servers, None, |i, s| {
        let mut o = AgentOptions::new(s.name(), s.url());
        if i == 0 {
            o.extra_args = vec!["--file-set".into(), format!("app={}", app.path().display())];
        }
        o
    })
    .await?;

    step!("the causal writer runs with its journal in file set app");
    let writer = CausalWriter::start_with_journal(cluster.chain(), &journal).await?;
    writer
        .wait_committed(BEFORE, Duration::from_secs(60))
        .await?;
    let backup = cluster.backup_and_wait(None).await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().unwrap_or_default().to_string();
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    assert_eq!(shown["servers"][0]["kind"], "logical", "{shown}");
    assert_eq!(
        shown["servers"][0]["artifact"]["file_sets"],
        serde_json::json!(["app"])
    );

    step!("restore into fresh servers with --files-to: the journal ends at the chain's end");
    let fresh = MariaDb::start_many(&["fs0r", "fs1r", "fs2r"]).await?;
    let files_to = tempfile::tempdir()?;
    let mut argv = lockstep_tests::plain_cluster::restore_args(&id, "fs", &fresh);
    argv.extend(["--files-to".into(), files_to.path().display().to_string()]);
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let restore = cluster.cli_json(&refs[1..]).await?;
    assert_eq!(restore["ok"], true, "{restore}");
    assert_eq!(
        restore["servers"][0]["file_sets"][0],
        format!(
            "app -> {}",
            files_to.path().join("fs0").join("app").display()
        ),
        "{restore}"
    );
    let m = check_chain(&lockstep_tests::Target::chain_on(&fresh)).await?;
    assert!(m >= BEFORE && m <= written, "{m} of {written}");
    assert_eq!(
        journal_last(&files_to.path().join("fs0").join("app").join("journal.log"))?,
        m
    );

    step!("--kind physical without snapshot providers is refused, naming the server");
    let out = cluster
        .cli(&[
            "--json",
            "backup",
            "start",
            "--cluster",
            lockstep_tests::plain_cluster::CLUSTER,
            "--kind",
            "physical",
            "--wait",
        ])
        .await?;
    let failed: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("snapshot provider") && reason.contains("fs"),
        "{reason}"
    );

    step!("a file set over its budget (64 MiB) is refused before the lock, naming it");
    std::fs::write(app.path().join("big.bin"), vec![0u8; 65 << 20])?;
    let failed = cluster.backup_and_wait(None).await?;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("over the budget") && reason.contains("app") && reason.contains("fs0"),
        "{reason}"
    );
    Ok(())
}
