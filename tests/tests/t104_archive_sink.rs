//! Continuous binlog archiving by the agent daemons (`--archive`): each
//! agent streams its server's binlogs, stores them in the cluster's primary
//! sink as segments and records them in the catalog. Under the causal writer
//! and a `FLUSH BINARY LOGS` storm, a server restart and an agent SIGKILL,
//! the archive catches up with every server, has no gap, and each closed
//! file reassembled from the sink is byte-identical to the server's. A
//! `PURGE BINARY LOGS` of a file not yet archived is reported as a gap.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::{CatalogCli, CausalWriter, MariaDb, Supervised, step};

/// Offset of the Format_description event's flags in a binlog file.
const FD_FLAGS_AT: usize = 4 + 17;

/// The segments of `server` in a host-local sink, reassembled per file
/// along a chain of contiguous segments from offset 0 to the file's
/// furthest end; fails if there is none. A segment stored but never
/// recorded (the agent was killed between the two) can remain beside the
/// chain, with the same bytes: the catalog ignores it, and so does this, as it ignores
/// the partial file of a write the kill cut short.
fn sink_files(sink: &Path, server: &str) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let root = sink.join("binlog").join(CLUSTER).join(server);
    let mut out = BTreeMap::new();
    for file in std::fs::read_dir(&root).with_context(|| format!("list {}", root.display()))? {
        let file = file?;
        let name = file.file_name().to_string_lossy().into_owned();
        let mut from: BTreeMap<u64, Vec<(u64, std::path::PathBuf)>> = BTreeMap::new();
        for seg in std::fs::read_dir(file.path())? {
            let seg = seg?;
            let n = seg.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') {
                // `.NAME.partial`: a write the SIGKILLed agent never
                // finished (the disk sink's objects appear only whole).
                continue;
            }
            let (a, b) = n.split_once('-').context("segment name")?;
            from.entry(a.parse()?)
                .or_default()
                .push((b.parse()?, seg.path()));
        }
        let last = from.values().flatten().map(|(e, _)| *e).max().unwrap_or(0);
        let chain = chain(&from, 0, last).with_context(|| {
            format!("{name}: no contiguous segments from 0 to {last}: {from:?}")
        })?;
        let mut bytes = Vec::new();
        for (start, end, path) in chain {
            let data = std::fs::read(&path)?;
            ensure!(
                data.len() as u64 == end - start,
                "{name}: segment {start}-{end} size"
            );
            bytes.extend_from_slice(&data);
        }
        out.insert(name, bytes);
    }
    Ok(out)
}

/// Segments leading from `at` to `last`, longest first.
fn chain(
    from: &BTreeMap<u64, Vec<(u64, std::path::PathBuf)>>,
    at: u64,
    last: u64,
) -> Option<Vec<(u64, u64, std::path::PathBuf)>> {
    if at == last {
        return Some(Vec::new());
    }
    let mut next = from.get(&at)?.clone();
    next.sort_by_key(|n| std::cmp::Reverse(n.0));
    next.into_iter().find_map(|(end, path)| {
        let mut rest = chain(from, end, last)?;
        rest.insert(0, (at, end, path));
        Some(rest)
    })
}

/// Every binlog the server has is in the sink: closed ones byte-identical
/// (the in-use flag masked for `crashed` files, which the server never
/// closed), the current one equal. Returns the number of files compared.
async fn check_sink(db: &MariaDb, sink: &Path, crashed: &[String]) -> anyhow::Result<usize> {
    let ours = sink_files(sink, db.name())?;
    let theirs: Vec<(String, u64)> = db.query("SHOW BINARY LOGS").await?;
    for (name, _) in &theirs {
        let mut server = std::fs::read(db.datadir().join(name))?;
        let archived = ours
            .get(name)
            .with_context(|| format!("{}: {name} is not in the sink", db.name()))?;
        let open = Some(name) == theirs.last().map(|(n, _)| n);
        if (open || crashed.contains(name)) && server.len() > FD_FLAGS_AT {
            server[FD_FLAGS_AT] &= !1;
        }
        if &server != archived {
            let at = server.iter().zip(archived).position(|(a, b)| a != b);
            bail!(
                "{}: {name} in the sink differs from the server's: {} vs {} bytes, first difference at {at:?}",
                db.name(),
                archived.len(),
                server.len()
            );
        }
    }
    Ok(theirs.len())
}

/// The archive survives a FLUSH BINARY LOGS storm, a server restart and an
/// agent SIGKILL under the causal writer: no gaps, every file in the sink
/// byte-identical to the server's.
#[tokio::test]
async fn archive_survives_restarts_and_rotations_byte_for_byte() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_archiving("ar").await?;
    step!("causal writer across the 3 servers");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(200, Duration::from_secs(30)).await?;

    step!("FLUSH BINARY LOGS storm on server 0 (20 rotations)");
    for _ in 0..20 {
        cluster.servers[0].exec("FLUSH BINARY LOGS").await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    step!("SIGKILL agent 1 while it archives; start it again");
    cluster.agents[1].kill()?;
    writer
        .wait_committed(writer.committed() + 100, Duration::from_secs(30))
        .await?;
    cluster.agents[1].restart().await?;
    step!("restart server 2 (clean shutdown) while its agent archives");
    cluster.servers[2].restart().await?;
    writer
        .wait_committed(writer.committed() + 200, Duration::from_secs(60))
        .await?;
    let rows = writer.stop().await;
    step!("stopped the writer at {rows} rows; wait for the archive to catch up");

    let list = cluster.wait_archive_caught_up().await?;
    for s in &list {
        ensure!(
            s["gaps"].as_array().is_some_and(|g| g.is_empty()),
            "gaps reported: {s:#}"
        );
    }
    let (_, ok) = cluster.archive_status().await?;
    ensure!(ok, "archive status exits non-zero without gaps");
    step!("every binlog reassembled from the sink equals the server's file");
    for (db, agent) in cluster.servers.iter().zip(&cluster.agents) {
        let n = check_sink(db, agent.sink_dir(), &[]).await?;
        step!("{}: {n} files byte-identical", db.name());
        if db.name().ends_with('0') {
            ensure!(n >= 21, "server 0 should have at least 21 binlogs, has {n}");
        }
    }
    let human = cluster
        .cli(&["archive", "status", "--cluster", CLUSTER])
        .await?;
    human.success()?;
    ensure!(
        human.stdout.contains("ARCHIVED TO") && human.stdout.contains("streaming"),
        "{}",
        human.stdout
    );
    Ok(())
}

/// A binlog purged on the server before its agent archived it is a gap:
/// `archive status` names the server and the file and exits 1, and the
/// archive continues with the server's oldest binlog.
#[tokio::test]
async fn purge_of_an_unarchived_binlog_is_a_gap() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_archiving("ap").await?;
    let db = &cluster.servers[0];
    db.exec("CREATE DATABASE p; CREATE TABLE p.t (id INT PRIMARY KEY)")
        .await?;
    cluster.wait_archive_caught_up().await?;
    step!("a full backup before the gap");
    let backup = cluster.backup_and_wait(None).await?;
    ensure!(backup["status"] == "COMPLETE", "{backup:#}");
    step!("stop agent 0, then write, rotate and purge on its server");
    cluster.agents[0].stop()?;
    let db = &cluster.servers[0];
    let mut purged = Vec::new();
    for i in 0..3 {
        db.exec(&format!("INSERT INTO p.t VALUES ({i})")).await?;
        let (file, _) = db.binlog_position().await?.context("binlog")?;
        purged.push(file);
        db.exec("FLUSH BINARY LOGS").await?;
    }
    let (current, _) = db.binlog_position().await?.context("binlog")?;
    // The server keeps a binlog until its binlog checkpoint has passed it:
    // purge until the oldest one left is the current one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        db.exec(&format!("PURGE BINARY LOGS TO '{current}'"))
            .await?;
        let left: Vec<(String, u64)> = db.query("SHOW BINARY LOGS").await?;
        if left.first().is_some_and(|(f, _)| *f == current) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the server keeps {left:?} after PURGE"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step!("purged {purged:?}; start agent 0 again");
    cluster.agents[0].restart().await?;
    let db = &cluster.servers[0];
    db.exec("INSERT INTO p.t VALUES (100)").await?;
    let list = cluster.wait_archive_caught_up().await?;
    let gaps: Vec<String> = list[0]["gaps"]
        .as_array()
        .context("gaps")?
        .iter()
        .map(|g| g.as_str().unwrap_or_default().to_string())
        .collect();
    step!("gaps: {gaps:?}");
    ensure!(
        gaps.iter()
            .any(|g| g.contains("purged") && g.contains(&current)),
        "the gap should say a binlog was purged and where the archive continues: {gaps:?}"
    );
    ensure!(
        list[1]["gaps"].as_array().is_some_and(|g| g.is_empty()),
        "server 1 has no gap: {:#}",
        list[1]
    );
    let (_, ok) = cluster.archive_status().await?;
    ensure!(!ok, "archive status must exit non-zero with a gap");
    let human = cluster
        .cli(&["archive", "status", "--cluster", CLUSTER])
        .await?;
    ensure!(
        human.stdout.contains(&format!("gap on {}", db.name())),
        "{}",
        human.stdout
    );

    step!("a restore point after the gap: recovery to it across the gap is refused");
    let point = cluster
        .cli_json(&["restore-point", "create", "--cluster", CLUSTER])
        .await?;
    let id = point["id"]
        .as_str()
        .context("restore point id")?
        .to_string();
    cluster.wait_archive_caught_up().await?;
    for plan in [true, false] {
        let mut args = vec!["pitr", "--cluster", CLUSTER, "--to-restore-point", &id];
        if plan {
            args.push("--plan");
        }
        let out = cluster.cli(&args).await?;
        step!("pitr (plan: {plan}): {}", out.stderr.trim());
        ensure!(
            !out.status.success()
                && out.stderr.contains(&format!("server {}", db.name()))
                && out.stderr.contains("no binlog between"),
            "recovery across the gap must be refused naming the server and the files: {} {}",
            out.stdout,
            out.stderr
        );
    }
    ensure!(
        db.query_one::<u64>("SELECT COUNT(*) FROM p.t").await? == 4,
        "the refused recovery changed the server"
    );
    Ok(())
}
