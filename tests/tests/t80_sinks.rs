//! Sinks: backups leave the host. A media agent holds a disk pool; the
//! cluster's policy sends every backup there and copies it to S3 (a real
//! moto server); the catalog records each copy. When the hosts of the
//! servers are lost (agents killed, servers stopped, their directories
//! deleted), the media agent alone restores the fleet, from its pool or from
//! S3, and the causal chain across the restored servers has no gaps; when
//! the coordinators are lost, the catalog is rebuilt from the pool.

use std::time::Duration;

use lockstep_tests::plain_cluster::{CLUSTER, Cluster, restore_args};
use lockstep_tests::sinks::{Keyed, add_pool, media_agent, sink_policy, wait_copies};
use lockstep_tests::{CatalogCli, CausalWriter, MariaDb, Supervised, Target, check_chain, step};
use serde_json::Value;

/// The host-loss runbook, end to end: the primary sink is a media agent's
/// pool and the policy copies every backup to S3 (encrypted). After the
/// backup the three source hosts are lost (agents SIGKILLed, servers
/// stopped, sink dirs and datadirs deleted); `restore plan` names the media
/// agent for every server and `restore run` through it into three fresh
/// servers gives a gap-free causal chain. Then the pool's copy is deleted
/// too, and a restore from S3 alone gives the same chain. Nothing of the
/// backup was ever written to the source hosts.
#[tokio::test]
async fn a_lost_host_is_restored_through_the_media_agent() -> anyhow::Result<()> {
    let (keyed, mut cluster) = Keyed::start(
        "hl",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .await?;
    let s3 = &keyed.s3;
    step!("a media agent with a disk pool joins the cluster");
    let media = keyed.media(&cluster, "vault").await?;

    step!("sink add: bad input is refused, naming what is wrong");
    for (kind, place, expect) in [
        (["--agent", "nobody", "--path", "/srv/p"], "disk", "nobody"),
        (["--agent", "vault", "--path", "pool"], "disk", "absolute"),
        (
            ["--agent", "vault", "--path", "/srv/not-a-pool"],
            "disk",
            "holds no disk pool",
        ),
        (
            ["--url", "http://bucket/x", "--region", "eu"],
            "s3",
            "s3://BUCKET",
        ),
    ]
    .map(|(args, kind, expect)| (kind, args, expect))
    {
        let mut argv = vec!["sink", "add", "x", "--cluster", CLUSTER, "--kind", kind];
        argv.extend_from_slice(&place);
        let out = cluster.cli(&argv).await?;
        assert!(
            !out.status.success() && out.stderr.contains(expect),
            "{argv:?}: {}",
            out.stderr
        );
    }

    let (pool, added) = add_pool(&cluster, &media).await?;
    assert_eq!(added["kind"], "disk", "{added}");
    let listed = cluster.cli_json(&["server", "list"]).await?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["name"] == "vault" && s["media"] == true)),
        "server list shows the media agent: {listed}"
    );
    let offsite = keyed.add_s3(&cluster, "offsite", "prod").await?;
    assert_eq!(
        offsite["encrypt"], true,
        "s3 sinks encrypt by default: {offsite}"
    );
    sink_policy(&cluster, "pool", &["offsite"]).await?;
    let sinks = cluster
        .cli_json(&["sink", "list", "--cluster", CLUSTER])
        .await?;
    let listed = sinks["sinks"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = listed.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["host-local", "offsite", "pool"], "{sinks}");
    assert_eq!(listed[2]["primary"], true, "{sinks}");
    assert_eq!(listed[1]["copy"], true, "{sinks}");

    step!("back up under the causal writer: the artifacts go straight to the pool");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(200, Duration::from_secs(60)).await?;
    let backup = cluster.backup_and_wait(None).await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().expect("id").to_string();
    for s in backup["servers"].as_array().expect("servers") {
        let location = s["artifact"]["location"].as_str().expect("location");
        assert!(
            pool.join(location).join("manifest.json").is_file(),
            "{location} is in the pool"
        );
    }
    for a in &cluster.agents {
        let local = std::fs::read_dir(a.sink_dir())?.count();
        assert_eq!(local, 0, "nothing staged in {}", a.sink_dir().display());
    }
    step!("the policy copies it to S3; the copy is encrypted");
    let shown = wait_copies(&cluster, &id, "offsite").await?;
    let objects = s3.list_keys("prod/").await?;
    let data_key = objects
        .iter()
        .find(|k| k.ends_with(".tsv.zst"))
        .expect("a data file in the bucket")
        .clone();
    let stored = s3.get(&data_key).await?;
    let local_copy = std::fs::read(pool.join(data_key.trim_start_matches("prod/")))?;
    assert_ne!(
        stored, local_copy,
        "the S3 copy is not the plaintext: {shown}"
    );
    assert!(
        objects.iter().any(|k| k.ends_with("encryption.json")),
        "{objects:?}"
    );

    step!("the source hosts are lost: agents SIGKILLed, servers stopped, directories deleted");
    for a in &mut cluster.agents {
        let dir = a.sink_dir().to_path_buf();
        a.kill()?;
        std::fs::remove_dir_all(&dir)?;
    }
    for s in &mut cluster.servers {
        let datadir = s.datadir();
        s.kill()?;
        std::fs::remove_dir_all(&datadir)?;
    }

    step!("restore plan: every server from the pool, loaded by the media agent");
    let fresh = MariaDb::start_many(&["hr0", "hr1", "hr2"]).await?;
    let mut plan_args = restore_args(&id, "hl", &fresh);
    plan_args[2] = "plan".into();
    plan_args.retain(|a| a != "--wait");
    let argv: Vec<&str> = plan_args.iter().map(String::as_str).collect();
    let plan: Value = {
        let out = cluster.cli(&argv).await?;
        out.success()?;
        serde_json::from_str(out.stdout.trim())?
    };
    for s in plan["servers"].as_array().expect("servers") {
        assert_eq!(s["sink"], "pool", "{plan}");
        assert_eq!(s["agent"], "vault", "{plan}");
        assert!(s["bytes"].as_u64().is_some_and(|b| b > 0), "{plan}");
    }

    step!("restore run through the media agent into 3 fresh servers");
    let restore = cluster.restore_into(&id, "hl", &fresh).await?;
    assert_eq!(restore["ok"], true, "{restore}");
    for s in restore["servers"].as_array().expect("servers") {
        assert_eq!(s["agent"], "vault", "{restore}");
        assert_eq!(s["sink"], "pool", "{restore}");
    }
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("restored chain 1..{m} of {written} written");
    assert!(m >= 200 && m <= written, "restored 1..{m} of {written}");

    step!("the pool's copy is deleted too: the restore comes from S3 alone");
    std::fs::remove_dir_all(pool.join(&id))?;
    let again = MariaDb::start_many(&["hs0", "hs1", "hs2"]).await?;
    let restore = cluster.restore_into(&id, "hl", &again).await?;
    for s in restore["servers"].as_array().expect("servers") {
        assert_eq!(s["sink"], "offsite", "{restore}");
        assert_eq!(s["agent"], "vault", "{restore}");
    }
    let m3 = check_chain(&Target::chain_on(&again)).await?;
    assert_eq!(m3, m, "the same cut from S3");

    step!("catalog show records the pool's copies as bad (found missing by the restore)");
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    for s in shown["servers"].as_array().expect("servers") {
        let error = s["artifact"]["verify_error"].as_str().unwrap_or_default();
        assert!(error.contains("holds nothing"), "{shown}");
    }

    step!("sink remove: refused for the only good copy, allowed for copies known bad");
    sink_policy(&cluster, "host-local", &[]).await?;
    let refused = cluster
        .cli(&["sink", "remove", "offsite", "--cluster", CLUSTER])
        .await?;
    assert!(
        !refused.status.success() && refused.stderr.contains("only good copy"),
        "{}",
        refused.stderr
    );
    cluster
        .cli_json(&["sink", "remove", "pool", "--cluster", CLUSTER])
        .await?;
    let listed = cluster
        .cli_json(&["sink", "list", "--cluster", CLUSTER, "--no-usage"])
        .await?;
    assert_eq!(
        listed["sinks"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    drop(media);
    Ok(())
}

/// The lost-coordinators runbook: every coordinator's data dir is wiped and
/// a fresh group starts on the same addresses (the agents register again).
/// `sink scan` lists the backup the media agent's pool holds, `--import`
/// puts it back in the new catalog with its cut, and a restore from it
/// passes the causal-chain check.
#[tokio::test]
async fn lost_coordinators_rebuild_the_catalog_from_the_pool() -> anyhow::Result<()> {
    let mut cluster = Cluster::start("lc").await?;
    let media = media_agent(&cluster, "vault").await?;
    add_pool(&cluster, &media).await?;

    step!("a backup to the pool under the causal writer");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;
    let backup = cluster.backup_and_wait(Some("pool")).await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().expect("id").to_string();

    step!("every coordinator's data dir is wiped; a fresh group starts");
    for m in &mut cluster.group.members {
        m.stop()?;
        for entry in std::fs::read_dir(m.data_dir())? {
            let p = entry?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    for m in &mut cluster.group.members {
        m.restart().await?;
    }
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    let list = cluster
        .cli_json(&["catalog", "list", "--cluster", CLUSTER])
        .await?;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(0),
        "a new catalog: {list}"
    );

    step!("sink scan lists the backup; --import brings it back");
    add_pool(&cluster, &media).await?;
    let scan = cluster
        .cli_json(&["sink", "scan", "pool", "--cluster", CLUSTER])
        .await?;
    let found = scan["backups"].as_array().cloned().unwrap_or_default();
    assert_eq!(found.len(), 1, "{scan}");
    assert_eq!(found[0]["id"], id.as_str(), "{scan}");
    assert_eq!(found[0]["known"], false, "{scan}");
    assert_eq!(
        found[0]["servers"].as_array().map(Vec::len),
        Some(3),
        "{scan}"
    );
    let imported = cluster
        .cli_json(&["sink", "scan", "pool", "--cluster", CLUSTER, "--import"])
        .await?;
    assert_eq!(imported["backups"][0]["imported"], true, "{imported}");
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    assert_eq!(shown["status"], "COMPLETE", "{shown}");
    assert_eq!(shown["sink"], "pool", "{shown}");
    for (s, before) in shown["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .zip(backup["servers"].as_array().expect("servers"))
    {
        assert_eq!(s["binlog_file"], before["binlog_file"], "{shown}");
        assert_eq!(s["binlog_pos"], before["binlog_pos"], "{shown}");
        assert_eq!(s["gtid"], before["gtid"], "{shown}");
        assert_eq!(
            s["artifact"]["manifest_sha256"], before["artifact"]["manifest_sha256"],
            "{shown}"
        );
    }
    let again = cluster
        .cli_json(&["sink", "scan", "pool", "--cluster", CLUSTER, "--import"])
        .await?;
    assert_eq!(
        again["backups"][0]["imported"], false,
        "imported once: {again}"
    );

    step!("a restore of the imported backup passes the chain check");
    let fresh = MariaDb::start_many(&["lr0", "lr1", "lr2"]).await?;
    cluster.restore_into(&id, "lc", &fresh).await?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("restored chain 1..{m} of {written} written");
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    drop(media);
    Ok(())
}
