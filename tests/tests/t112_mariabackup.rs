//! Physical backups with `mariadb-backup` as the data mover, where no
//! snapshotting filesystem exists (no root or loop devices needed): each
//! agent copies a base before the cut, the cut itself is the usual
//! millisecond lock, and the backup carries each server's binlog from its
//! base to the cut. A restore prepares the bases in fresh datadirs and
//! replays the binlogs to the cut. The causal-chain writer runs through
//! the base copies and the cut, so the roll-forward has real transactions
//! to apply, and the app's journal in a file set must end exactly where
//! the restored chain ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_tests::Supervised;
use lockstep_tests::plain_cluster::{Cluster, start_at_cut};
use lockstep_tests::{
    AgentOptions, CatalogCli, CausalWriter, MariaDb, check_chain, init_tracing, journal_last, step,
};
use serde_json::Value;

const PREFIX: &str = "mb";
/// Records the chain holds before the backup.
const BEFORE: u64 = 200;

/// The manifest of `server`'s artifact of backup `id` under `sink_dir`.
fn manifest(sink_dir: &Path, id: &str, server: &str) -> anyhow::Result<Value> {
    let mut stack = vec![sink_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "manifest.json") {
                let m: Value = serde_json::from_slice(&std::fs::read(&p)?)?;
                if m["backup_id"] == id && m["server"]["name"] == server {
                    return Ok(m);
                }
            }
        }
    }
    anyhow::bail!(
        "no manifest of {server} for backup {id} under {}",
        sink_dir.display()
    )
}

/// The file `name` of backup `id`'s artifact under `sink_dir`.
fn find_file(sink_dir: &Path, id: &str, name: &str) -> anyhow::Result<PathBuf> {
    let mut stack = vec![sink_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) && p.to_string_lossy().contains(id) {
                return Ok(p);
            }
        }
    }
    anyhow::bail!("no {name} of backup {id} under {}", sink_dir.display())
}

/// The whole scenario: backup with bases under writes, restore into fresh
/// datadirs, servers started on them at the cut, chain and journal exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_backup_base_is_rolled_to_the_cut() -> anyhow::Result<()> {
    init_tracing();
    let app = tempfile::tempdir()?;
    let journal = app.path().join("journal.log");
    let names: Vec<String> = (0..3).map(|i| format!("{PREFIX}{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let servers = MariaDb::start_many(&name_refs).await?;
    let ids: Vec<(u32, u32)> = servers
        .iter()
        .map(|s| (s.server_id(), s.gtid_domain_id()))
        .collect();
    let mut cluster = Cluster::start_on(servers, None, |i, s| {
        let mut o = AgentOptions::new(s.name(), s.url());
        o.extra_args = vec![
            "--backup-kind".into(),
            "physical".into(),
            "--mariabackup".into(),
        ];
        if i == 0 {
            o.extra_args
                .extend(["--file-set".into(), format!("app={}", app.path().display())]);
        }
        o
    })
    .await?;

    step!("the causal writer runs, appending each record to the app's journal");
    let writer = CausalWriter::start_with_journal(cluster.chain(), &journal).await?;
    writer
        .wait_committed(BEFORE, Duration::from_secs(60))
        .await?;

    step!("lockstep backup start --wait: bases first, then the cut, while the writer runs");
    let backup = cluster.backup_and_wait(None).await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().unwrap_or_default().to_string();
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    let servers = shown["servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 3, "{shown}");
    for s in &servers {
        assert_eq!(s["kind"], "physical", "{s}");
        assert_eq!(s["provider"], "mariabackup", "{s}");
    }
    let table = cluster.cli(&["catalog", "show", &id]).await?;
    assert!(
        table
            .stdout
            .contains("physical mariabackup (base before the cut)"),
        "{}",
        table.stdout
    );
    let cut: Vec<String> = servers
        .iter()
        .map(|s| s["gtid"].as_str().unwrap_or_default().to_string())
        .collect();

    step!("each artifact holds a base from before the cut and the binlog up to it");
    let mut rolled = 0;
    for (i, a) in cluster.agents.iter().enumerate() {
        let m = manifest(a.sink_dir(), &id, &names[i])?;
        let base = &m["physical"]["base"];
        let (base_file, base_pos) = (
            base["binlog_file"].as_str().unwrap_or_default(),
            base["binlog_pos"].as_u64().unwrap_or(0),
        );
        let (cut_file, cut_pos) = (
            m["position"]["binlog_file"].as_str().unwrap_or_default(),
            m["position"]["binlog_pos"].as_u64().unwrap_or(0),
        );
        assert!(!base_file.is_empty() && base_pos > 0, "{m}");
        assert!(
            (base_file, base_pos) <= (cut_file, cut_pos),
            "the base comes before the cut: {m}"
        );
        if (base_file, base_pos) < (cut_file, cut_pos) {
            rolled += 1;
        }
        let binlogs = m["physical"]["binlogs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!binlogs.is_empty(), "{m}");
        tracing::info!(server = %names[i], base_file, base_pos, cut_file, cut_pos, "base and cut");
        let staged = a.sink_dir().parent().expect("sink dir has a parent");
        let bases = staged.join("state").join(a.name()).join("bases");
        let left: Vec<PathBuf> = std::fs::read_dir(&bases)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "staged bases left: {left:?}");
    }
    assert!(
        rolled > 0,
        "the writer ran through the base copies: some base must be behind its cut"
    );

    step!("lockstep restore run --datadir ...=FRESH --files-to DIR");
    let root = tempfile::tempdir()?;
    let files_to = root.path().join("files");
    let mut argv: Vec<String> = ["--json", "restore", "run", "--backup", &id]
        .map(String::from)
        .to_vec();
    let mut datadirs = Vec::new();
    for name in &names {
        let d = root.path().join(name);
        argv.push("--datadir".into());
        argv.push(format!("{name}={}", d.display()));
        datadirs.push(d);
    }
    argv.extend(["--files-to".into(), files_to.display().to_string()]);
    step!("a typo in --datadir is refused naming the option, the name and the backup's servers");
    let typo = format!("{PREFIX}9={}", root.path().join("typo").display());
    let out = cluster
        .cli(&["restore", "run", "--backup", &id, "--datadir", &typo])
        .await?;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains(&format!(
            "--datadir names server {PREFIX}9, which is not in backup"
        )) && out.stderr.contains(&names[0]),
        "{}",
        out.stderr
    );
    step!("a datadir that is not empty is refused without --force, naming it");
    std::fs::create_dir_all(&datadirs[0])?;
    std::fs::write(datadirs[0].join("stray"), b"x")?;
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cluster.cli(&refs).await?;
    assert!(!out.status.success());
    assert!(
        out.stdout.contains(&format!(
            "{}: target is not empty: it holds 1 entry;",
            datadirs[0].display()
        )),
        "{} {}",
        out.stdout,
        out.stderr
    );
    let _ = std::fs::remove_dir_all(root.path());
    std::fs::create_dir_all(root.path())?;

    let out = cluster.cli(&refs).await?;
    let restore: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| anyhow::anyhow!("{e}: {} {}", out.stdout, out.stderr))?;
    let restored = start_at_cut(&restore, &datadirs, &ids, &cut).await?;
    let m = check_chain(&lockstep_tests::Target::chain_on(&restored)).await?;
    assert!(m >= BEFORE && m <= written, "{m} of {written}");

    step!("the app's journal was cut at the same moment: it ends at record {m}");
    let restored_journal = files_to.join(&names[0]).join("app").join("journal.log");
    assert_eq!(journal_last(&restored_journal)?, m);
    drop(restored);

    step!("a damaged base fails its restore, naming the server and the base");
    let base = find_file(cluster.agents[0].sink_dir(), &id, "base.mbstream.zst")?;
    let mut bytes = std::fs::read(&base)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&base, bytes)?;
    let again = root.path().join("again");
    let out = cluster
        .cli(&[
            "--json",
            "restore",
            "run",
            "--backup",
            &id,
            "--datadir",
            &format!("{}={}", names[0], again.display()),
            "--datadir",
            &format!("{}={}", names[1], root.path().join("again1").display()),
            "--datadir",
            &format!("{}={}", names[2], root.path().join("again2").display()),
        ])
        .await?;
    let failed: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| anyhow::anyhow!("{e}: {} {}", out.stdout, out.stderr))?;
    assert_eq!(failed["ok"], false, "{failed}");
    let error = failed["servers"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&names[0]) && error.contains("base.mbstream.zst"),
        "{failed}"
    );
    tracing::info!(error, "the damaged base's restore");

    step!("a base a killed agent left behind is deleted when the agent starts again");
    let a = &mut cluster.agents[0];
    let bases = a
        .sink_dir()
        .parent()
        .expect("sink dir has a parent")
        .join("state")
        .join(a.name())
        .join("bases");
    std::fs::create_dir_all(&bases)?;
    let left = bases.join("left-by-a-crash.mbstream.zst");
    std::fs::write(&left, b"partial")?;
    a.kill()?;
    a.restart().await?;
    assert!(!left.exists(), "{} is still there", left.display());
    drop(cluster);
    Ok(())
}
