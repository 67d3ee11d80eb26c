//! Point-in-time recovery of a whole cluster (`lockstep pitr`): 3 real
//! MariaDB servers under the causal writer, every agent archiving its
//! binlogs, restore points every second. The recovered fleet is one
//! consistent cut (the causal chain has no gap) taken after the last full
//! backup; a rogue `DROP TABLE` is found with `catalog search-binlog` and
//! undone with `pitr --before-event`, reading the archive's copies when the
//! host-local archive is lost; bad targets are refused before anything is
//! touched.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::sinks::{add_sink, sink_policy};
use lockstep_tests::{CatalogCli, CausalWriter, MariaDb, Target, check_chain, step};
use serde_json::Value;

/// Turns on restore points every second.
async fn every_second(cluster: &Cluster) -> anyhow::Result<()> {
    cluster
        .cli(&[
            "restore-point",
            "schedule",
            "--cluster",
            CLUSTER,
            "--every",
            "1s",
        ])
        .await?
        .success()?;
    Ok(())
}

/// Waits until a sealed restore point created after `after_ms` exists;
/// returns it.
async fn wait_sealed_point(cluster: &Cluster, after_ms: i64) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = cluster.restore_points().await?;
        if let Some(p) = list["points"].as_array().and_then(|ps| {
            ps.iter()
                .filter(|p| p["sealed"] == true)
                .filter(|p| p["created_at_unix_ms"].as_i64().unwrap_or(0) > after_ms)
                .max_by_key(|p| p["created_at_unix_ms"].as_i64())
                .cloned()
        }) {
            return Ok(p);
        }
        ensure!(
            Instant::now() < deadline,
            "no sealed restore point after {after_ms} within 60 s: {list:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every server's `file` has a copy in `vault`.
async fn wait_copied(cluster: &Cluster, vault: &std::path::Path, file: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<&str> = cluster
            .servers
            .iter()
            .map(|db| db.name())
            .filter(|name| {
                !vault
                    .join("binlog")
                    .join(CLUSTER)
                    .join(name)
                    .join(file)
                    .is_dir()
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{file} of {missing:?} not copied to the vault within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> anyhow::Result<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)?;
    Ok(t.format(&time::format_description::well_known::Rfc3339)?)
}

/// `--target` arguments loading server `{prefix}i` into `fresh[i]`.
fn targets(prefix: &str, fresh: &[MariaDb]) -> Vec<String> {
    fresh
        .iter()
        .enumerate()
        .flat_map(|(i, db)| ["--target".to_string(), format!("{prefix}{i}={}", db.url())])
        .collect()
}

async fn pitr(cluster: &Cluster, args: &[String]) -> anyhow::Result<(Value, bool, String)> {
    let mut all = vec![
        "--json".to_string(),
        "pitr".into(),
        "--cluster".into(),
        CLUSTER.into(),
    ];
    all.extend_from_slice(args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = cluster.cli(&refs).await?;
    let v = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    Ok((v, out.status.success(), out.stderr))
}

/// The chain PITR: a full backup, then minutes of writes compressed into
/// seconds with restore points every second; `pitr --to T` (T in the middle
/// of the writes) into 3 fresh servers restores more records than the
/// backup held, fewer than were written, with no gap in the chain, and each
/// server's gtid_slave_pos is the point's. Recovery into the live servers
/// without --force, to a time before the backup, and to an unknown point
/// are refused and change nothing.
#[tokio::test]
async fn chain_pitr_to_a_time_between_backups() -> anyhow::Result<()> {
    let cluster = Cluster::start_archiving("pt").await?;
    every_second(&cluster).await?;
    step!("causal writer across the 3 servers; a full backup under it");
    let before_backup = now_ms();
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(30)).await?;
    let backup = cluster.backup_and_wait(None).await?;
    ensure!(backup["status"] == "COMPLETE", "{backup:#}");
    let after_backup = writer.committed();
    step!(
        "backup {} done with at most {after_backup} records",
        backup["id"]
    );
    // Restore points come every second: let two pass after the backup,
    // take the middle, and let two more pass.
    let backed_up = now_ms();
    wait_sealed_point(&cluster, backed_up + 1_000).await?;
    let middle = now_ms();
    let at_middle = writer.committed();
    step!(
        "the middle: {} ({at_middle} records committed)",
        rfc3339(middle)?
    );
    wait_sealed_point(&cluster, middle + 1_000).await?;
    let total = writer.stop().await;
    cluster.wait_archive_caught_up().await?;

    step!("pitr --plan --to the middle");
    let to = rfc3339(middle)?;
    let (plan, ok, err) = pitr(&cluster, &["--to".into(), to.clone(), "--plan".into()]).await?;
    ensure!(ok, "plan failed: {err}");
    if !plan["point"]
        .as_str()
        .is_some_and(|p| p.starts_with("restore point"))
    {
        let list = cluster.restore_points().await?;
        bail!("the plan should go to a restore point: {plan:#}\nrestore points: {list:#}");
    }
    let point_ms = plan["point_unix_ms"].as_i64().context("point time")?;
    ensure!(
        point_ms <= middle && middle - point_ms < 5_000,
        "the point ({point_ms}) should be the last one before {middle}"
    );
    for s in plan["servers"].as_array().context("servers")? {
        ensure!(s["base_backup"] == backup["id"], "{s:#}");
        ensure!(s["replay_bytes"].as_u64().unwrap_or(0) > 0, "{s:#}");
    }

    step!("pitr --exact --plan: each server to its own moment, said to be per server");
    let (exact, ok, err) = pitr(&cluster, &["--exact".into(), to.clone(), "--plan".into()]).await?;
    ensure!(ok, "exact plan failed: {err}");
    ensure!(
        exact["consistent"] == false
            && exact["point"]
                .as_str()
                .is_some_and(|p| p.contains("each server's last transaction before")),
        "{exact:#}"
    );
    for s in exact["servers"].as_array().context("servers")? {
        ensure!(s["replay_bytes"].as_u64().unwrap_or(0) > 0, "{s:#}");
    }
    let human = cluster
        .cli(&["pitr", "--cluster", CLUSTER, "--exact", &to, "--plan"])
        .await?;
    ensure!(
        human.stdout.contains("NOT cluster-consistent"),
        "{}",
        human.stdout
    );

    step!("bad input is refused and changes nothing");
    let (_, ok, err) = pitr(&cluster, &["--to".into(), to.clone()]).await?;
    ensure!(
        !ok && err.contains("nothing was changed")
            && err.contains("not empty")
            && err.contains("--force"),
        "in place without --force: {err}"
    );
    step!("refused: {}", err.trim());
    ensure!(
        check_chain(&cluster.chain()).await? == total,
        "the live servers changed"
    );
    let (_, ok, err) = pitr(&cluster, &["--to".into(), rfc3339(before_backup - 60_000)?]).await?;
    ensure!(
        !ok && err.contains("no sealed point at or before"),
        "before the backup: {err}"
    );
    let (_, ok, err) = pitr(&cluster, &["--to-restore-point".into(), "nope".into()]).await?;
    ensure!(
        !ok && err.contains("no restore point or backup \"nope\""),
        "{err}"
    );

    step!("a corrupt archived segment refuses the recovery before anything is loaded");
    let fresh = MariaDb::start_many(&["ptr0", "ptr1", "ptr2"]).await?;
    let mut args = vec!["--to".to_string(), to];
    args.extend(targets("pt", &fresh));
    let segment = first_segment(cluster.agents[2].sink_dir(), "pt2")?;
    let original = std::fs::read(&segment)?;
    let mut bad = original.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&segment, &bad)?;
    let (_, ok, err) = pitr(&cluster, &args).await?;
    std::fs::write(&segment, &original)?;
    step!("refused: {}", err.trim());
    ensure!(
        !ok && err.contains("nothing was changed")
            && err.contains("server pt2")
            && err.contains("corrupt")
            && err.contains("mysql-bin.000001"),
        "a corrupt segment: {err}"
    );
    for db in &fresh {
        let dbs: Vec<String> = db.query("SHOW DATABASES LIKE 'chain'").await?;
        ensure!(
            dbs.is_empty(),
            "{} was loaded although the recovery was refused",
            db.name()
        );
    }

    step!("pitr --to the middle into 3 fresh servers");
    let started = Instant::now();
    let (done, ok, err) = pitr(&cluster, &args).await?;
    ensure!(ok && done["done"] == true, "pitr failed: {err}\n{done:#}");
    step!("recovered in {:?}: {done:#}", started.elapsed());
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("chain of {m} records (backup ≤ {after_backup}, middle {at_middle}, total {total})");
    ensure!(
        m > after_backup,
        "PITR restored {m} records, no more than the backup's {after_backup}"
    );
    ensure!(
        m < total,
        "PITR restored all {total} records: the point is not in the middle"
    );

    step!("each server's gtid_slave_pos is the point's");
    let point_id = plan["point"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("restore point ");
    let list = cluster.restore_points().await?;
    let point = list["points"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == point_id))
        .with_context(|| format!("restore point {point_id} in {list:#}"))?;
    for (i, db) in fresh.iter().enumerate() {
        let name = format!("pt{i}");
        let want = point["servers"]
            .as_array()
            .and_then(|ss| ss.iter().find(|s| s["server"] == name))
            .and_then(|s| s["gtid"].as_str())
            .context("gtid")?;
        let have: String = db.query_one("SELECT @@gtid_slave_pos").await?;
        ensure!(
            same_gtids(&have, want),
            "{name}: gtid_slave_pos {have:?}, the point's {want:?}"
        );
    }
    Ok(())
}

/// The first segment of `server`'s first archived binlog in a host-local
/// sink.
fn first_segment(sink: &std::path::Path, server: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = sink
        .join("binlog")
        .join(CLUSTER)
        .join(server)
        .join("mysql-bin.000001");
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    segs.sort();
    segs.into_iter().next().context("no segment")
}

/// GTID sets compare as sets of domain-server-seq.
fn same_gtids(a: &str, b: &str) -> bool {
    let set = |s: &str| {
        let mut v: Vec<String> = s
            .split(',')
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        v.sort();
        v
    };
    set(a) == set(b)
}

/// A rogue `DROP TABLE` on one server: `catalog search-binlog --type ddl
/// --grep "drop table"` finds it (server, file:pos, GTID), and `pitr
/// --before-event SERVER:GTID` into fresh servers brings the table back
/// with every row it had, the chain consistent across servers. The archive
/// is copied to a second sink by policy; the victim's host-local archive
/// is deleted before the recovery, which then reads the copies.
#[tokio::test]
async fn rogue_drop_table_is_found_and_undone() -> anyhow::Result<()> {
    // Agent pd0 also holds a disk pool: the archive's copy sink.
    let vault = tempfile::tempdir()?;
    let vault_path = vault.path().to_string_lossy().into_owned();
    let cluster = Cluster::start_with("pd", &["--archive", "--pool", &vault_path], &[]).await?;
    add_sink(
        &cluster,
        &[
            "vault",
            "--kind",
            "disk",
            "--agent",
            "pd0",
            "--path",
            &vault_path,
        ],
    )
    .await?;
    sink_policy(&cluster, "host-local", &["vault"]).await?;
    // Segments stored from now on are copied: start every server's next
    // binlog once the shippers have the policy, so what the recovery needs
    // is all copied.
    for db in &cluster.servers {
        db.exec("FLUSH BINARY LOGS").await?;
    }
    wait_copied(&cluster, vault.path(), "mysql-bin.000002").await?;
    every_second(&cluster).await?;
    let victim = &cluster.servers[1];
    victim
        .exec("CREATE DATABASE app; CREATE TABLE app.orders (id INT PRIMARY KEY, note VARCHAR(40))")
        .await?;
    for chunk in 0..5 {
        let values: Vec<String> = (0..100)
            .map(|i| format!("({}, 'order {}')", chunk * 100 + i, chunk * 100 + i))
            .collect();
        victim
            .exec(&format!(
                "INSERT INTO app.orders VALUES {}",
                values.join(",")
            ))
            .await?;
    }
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(30)).await?;
    step!("a full backup, then 100 more orders and more chain records");
    let backup = cluster.backup_and_wait(None).await?;
    ensure!(backup["status"] == "COMPLETE", "{backup:#}");
    for i in 500..600 {
        victim
            .exec(&format!(
                "INSERT INTO app.orders VALUES ({i}, 'late order {i}')"
            ))
            .await?;
    }
    let checksum: Vec<(String, u64)> = victim.query("CHECKSUM TABLE app.orders").await?;
    let before_drop = now_ms();
    wait_sealed_point(&cluster, before_drop).await?;
    writer
        .wait_committed(writer.committed() + 100, Duration::from_secs(30))
        .await?;
    step!("the rogue DROP TABLE on {}", victim.name());
    victim.exec("DROP TABLE app.orders").await?;
    writer
        .wait_committed(writer.committed() + 200, Duration::from_secs(30))
        .await?;
    let total = writer.stop().await;
    cluster.wait_archive_caught_up().await?;

    step!("catalog search-binlog --type ddl --grep 'drop table'");
    let found = cluster
        .cli_json(&[
            "catalog",
            "search-binlog",
            "--cluster",
            CLUSTER,
            "--type",
            "ddl",
            "--grep",
            "drop table",
        ])
        .await?;
    let events = found.as_array().context("events")?;
    ensure!(events.len() == 1, "one DROP TABLE expected: {found:#}");
    let ev = &events[0];
    ensure!(ev["server"] == victim.name(), "{ev:#}");
    ensure!(
        ev["summary"]
            .as_str()
            .is_some_and(|s| s.contains("DROP TABLE")),
        "{ev:#}"
    );
    let gtid = ev["gtid"].as_str().context("gtid")?;
    step!("found at {} ({gtid}): {}", ev["at"], ev["summary"]);
    let human = cluster
        .cli(&[
            "catalog",
            "search-binlog",
            "--cluster",
            CLUSTER,
            "--table",
            "app.orders",
            "--type",
            "ddl",
        ])
        .await?;
    human.success()?;
    ensure!(human.stdout.contains(gtid), "{}", human.stdout);

    step!(
        "{}'s host-local archive is lost: the recovery reads the vault's copies",
        victim.name()
    );
    let local = cluster.agents[1]
        .sink_dir()
        .join("binlog")
        .join(CLUSTER)
        .join(victim.name());
    ensure!(
        local.is_dir(),
        "no host-local archive at {}",
        local.display()
    );
    std::fs::remove_dir_all(&local)?;
    let copied = std::path::Path::new(&vault_path)
        .join("binlog")
        .join(CLUSTER)
        .join(victim.name());
    ensure!(
        copied.is_dir(),
        "no copy of the archive in the vault: {}",
        copied.display()
    );

    step!(
        "pitr --before-event {}:{gtid} into 3 fresh servers",
        victim.name()
    );
    let fresh = MariaDb::start_many(&["pdr0", "pdr1", "pdr2"]).await?;
    let mut args = vec![
        "--before-event".to_string(),
        format!("{}:{gtid}", victim.name()),
    ];
    args.extend(targets("pd", &fresh));
    let (done, ok, err) = pitr(&cluster, &args).await?;
    ensure!(ok && done["done"] == true, "pitr failed: {err}\n{done:#}");
    let restored: Vec<(String, u64)> = fresh[1].query("CHECKSUM TABLE app.orders").await?;
    ensure!(
        restored.first().map(|r| r.1) == checksum.first().map(|r| r.1),
        "app.orders differs: {restored:?} vs {checksum:?} before the drop"
    );
    let rows: u64 = fresh[1]
        .query_one("SELECT COUNT(*) FROM app.orders")
        .await?;
    ensure!(rows == 600, "app.orders has {rows} rows, not 600");
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("app.orders back with 600 rows; chain of {m} of {total} records, no gap");
    if m == 0 || m >= total {
        bail!("the chain should stop between the backup and the end: {m} of {total}");
    }
    Ok(())
}
