//! Sinks: backups leave the host. A media agent holds a disk pool; the
//! cluster's policy sends every backup there and copies it to S3 (a real
//! moto server); the catalog records each copy. When the hosts of the
//! servers are lost (agents killed, servers stopped, their directories
//! deleted), the media agent alone restores the fleet, from its pool or from
//! S3, and the causal chain across the restored servers has no gaps.

use std::time::{Duration, Instant};

use lockstep_tests::plain_cluster::{CLUSTER, Cluster, restore_args};
use lockstep_tests::s3::S3Server;
use lockstep_tests::{
    AgentOptions, AgentProc, CatalogCli, CausalWriter, MariaDb, Supervised, Target, check_chain,
    step,
};
use serde_json::Value;

/// Starts a media agent named `name` registered with the cluster's group.
async fn media_agent(cluster: &Cluster, name: &str) -> anyhow::Result<AgentProc> {
    media_agent_with(cluster, name, Vec::new(), &[]).await
}

/// Like [`media_agent`], with `env` and `args`.
async fn media_agent_with(
    cluster: &Cluster,
    name: &str,
    env: Vec<(String, String)>,
    args: &[String],
) -> anyhow::Result<AgentProc> {
    let mut opts = AgentOptions::media(name);
    opts.extra_args = vec![
        "--cluster".into(),
        CLUSTER.into(),
        "--coordinators".into(),
        cluster.group.urls(),
    ];
    opts.extra_args.extend_from_slice(args);
    opts.env = env;
    AgentProc::start(opts).await
}

/// An operator key file (0600) in `dir`; returns its path.
fn key_file(dir: &std::path::Path, hex_key: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("operator.key");
    std::fs::write(&path, format!("{hex_key}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path.to_str().expect("utf-8").to_string())
}

/// Polls `catalog show ID` until every server has a copy in `sink`.
async fn wait_copies(cluster: &Cluster, id: &str, sink: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let shown = cluster.cli_json(&["catalog", "show", id]).await?;
        let servers = shown["servers"].as_array().cloned().unwrap_or_default();
        let copied = servers
            .iter()
            .filter(|s| {
                s["copies"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["sink"] == sink))
            })
            .count();
        if copied == servers.len() && copied > 0 {
            return Ok(shown);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "backup {id} not copied to {sink} in time: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `lockstep sink add ARGS`, retried while the media agent's registration
/// has not reached the catalog yet (it registers in the background).
async fn add_sink(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = vec!["--json", "sink", "add"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--cluster", CLUSTER]);
    loop {
        let out = cluster.cli(&all).await?;
        if out.status.success() {
            return Ok(serde_json::from_str(out.stdout.trim())?);
        }
        anyhow::ensure!(
            out.stderr.contains("is registered") && Instant::now() < deadline,
            "sink add {args:?}: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    let s3 = S3Server::start().await?;
    let keys = tempfile::tempdir()?;
    let key = key_file(
        keys.path(),
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )?;
    let key_args = ["--key-file", key.as_str()];
    let mut cluster = Cluster::start_with_agent_env("hl", &key_args, &s3.env(), &[]).await?;
    step!("a media agent with a disk pool joins the cluster");
    let media = media_agent_with(
        &cluster,
        "vault",
        s3.env(),
        &["--key-file".to_string(), key.clone()],
    )
    .await?;
    let pool = media
        .pool()
        .expect("a media agent has a pool")
        .to_path_buf();
    let pool_arg = pool.to_str().expect("utf-8").to_string();

    step!("sink add: bad input is refused, naming what is wrong");
    for (kind, place, expect) in [
        (["--agent", "nobody", "--path", "/srv/p"], "disk", "nobody"),
        (["--agent", "vault", "--path", "pool"], "disk", "absolute"),
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

    let added = add_sink(
        &cluster,
        &[
            "pool", "--kind", "disk", "--agent", "vault", "--path", &pool_arg,
        ],
    )
    .await?;
    assert_eq!(added["kind"], "disk", "{added}");
    let listed = cluster.cli_json(&["server", "list"]).await?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["name"] == "vault" && s["media"] == true)),
        "server list shows the media agent: {listed}"
    );
    let url = format!("s3://{}/prod", s3.bucket());
    let endpoint = s3.endpoint();
    let offsite = add_sink(
        &cluster,
        &[
            "offsite",
            "--kind",
            "s3",
            "--url",
            &url,
            "--endpoint",
            &endpoint,
        ],
    )
    .await?;
    assert_eq!(
        offsite["encrypt"], true,
        "s3 sinks encrypt by default: {offsite}"
    );
    cluster
        .cli_json(&[
            "sink",
            "policy",
            "--cluster",
            CLUSTER,
            "--primary",
            "pool",
            "--copy",
            "offsite",
        ])
        .await?;
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
    let out = cluster
        .cli(&["--json", "backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    out.success()?;
    let backup: Value = serde_json::from_str(out.stdout.trim())?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}\n{}", out.stderr);
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
    let args = restore_args(&id, "hl", &fresh);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.cli(&argv).await?;
    out.success()?;
    let restore: Value = serde_json::from_str(out.stdout.trim())?;
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
    let args = restore_args(&id, "hl", &again);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.cli(&argv).await?;
    out.success()?;
    let restore: Value = serde_json::from_str(out.stdout.trim())?;
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
    cluster
        .cli_json(&[
            "sink",
            "policy",
            "--cluster",
            CLUSTER,
            "--primary",
            "host-local",
        ])
        .await?;
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
    let pool_arg = media
        .pool()
        .expect("pool")
        .to_str()
        .expect("utf-8")
        .to_string();
    let pool_sink = [
        "pool", "--kind", "disk", "--agent", "vault", "--path", &pool_arg,
    ];
    add_sink(&cluster, &pool_sink).await?;

    step!("a backup to the pool under the causal writer");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;
    let out = cluster
        .cli(&[
            "--json",
            "backup",
            "start",
            "--cluster",
            CLUSTER,
            "--sink",
            "pool",
            "--wait",
        ])
        .await?;
    out.success()?;
    let backup: Value = serde_json::from_str(out.stdout.trim())?;
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
    add_sink(&cluster, &pool_sink).await?;
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
    let args = restore_args(&id, "lc", &fresh);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.cli(&argv).await?;
    out.success()?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    step!("restored chain 1..{m} of {written} written");
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    drop(media);
    Ok(())
}

/// Every `.partial` file under `dir` with its size.
fn partial_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(partial_files(&p));
        } else if p.to_string_lossy().ends_with(".partial") {
            out.push((p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
    out
}

/// The media agent is SIGKILLed in the middle of a TRANSFER and started
/// again on the same port and pool: the source agent's stream resumes at
/// the acknowledged offset (it resends less than the artifact), the backup
/// completes, and its restore passes the chain check.
#[tokio::test]
async fn a_media_agent_killed_mid_transfer_resumes_the_stream() -> anyhow::Result<()> {
    let cluster = Cluster::start("mr").await?;
    let mut media = media_agent(&cluster, "vault").await?;
    let pool = media.pool().expect("pool").to_path_buf();
    let pool_arg = pool.to_str().expect("utf-8").to_string();
    add_sink(
        &cluster,
        &[
            "pool", "--kind", "disk", "--agent", "vault", "--path", &pool_arg,
        ],
    )
    .await?;
    cluster
        .cli_json(&["sink", "policy", "--cluster", CLUSTER, "--primary", "pool"])
        .await?;

    step!("one server holds ~150 MB of barely compressible rows");
    let big = &cluster.servers[0];
    big.exec("CREATE DATABASE bulk").await?;
    big.exec("CREATE TABLE bulk.t (id INT PRIMARY KEY, a CHAR(64), b CHAR(64))")
        .await?;
    big.exec(
        "INSERT INTO bulk.t SELECT seq, SHA2(seq, 256), SHA2(-seq, 256) FROM bulk.seq_1_to_1000000",
    )
    .await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;

    step!("start the backup; SIGKILL the media agent once a stream is under way");
    let id = cluster
        .cli_json(&["backup", "start", "--cluster", CLUSTER])
        .await?["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if partial_files(&pool).iter().any(|(_, size)| *size > 4 << 20) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no stream reached 4 MiB in the pool"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    media.kill()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    step!("start it again on the same port and pool");
    media.restart().await?;

    let backup = cluster
        .wait_backup(&id, Duration::from_secs(180), |s| {
            s == "COMPLETE" || s == "FAILED"
        })
        .await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let log = std::fs::read_to_string(cluster.agents[0].log_path())?;
    let resumed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("media stream resumed"))
        .collect();
    assert!(
        !resumed.is_empty(),
        "the stream resumed:\n{}",
        cluster.agents[0].log_tail(40)
    );
    let resent: u64 = resumed
        .iter()
        .filter_map(|l| {
            l.split("resent=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let artifact_bytes = backup["servers"][0]["artifact"]["bytes"]
        .as_u64()
        .expect("bytes");
    step!("resent {resent} bytes of a {artifact_bytes}-byte artifact");
    assert!(
        resent < artifact_bytes,
        "resent {resent} of {artifact_bytes}"
    );

    step!("the backup restores with a gap-free chain");
    let fresh = MariaDb::start_many(&["mrr0", "mrr1", "mrr2"]).await?;
    let args = restore_args(&id, "mr", &fresh);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.cli(&argv).await?.success()?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    Ok(())
}

/// Flips one byte in the middle of the first data file under `dir`;
/// returns its path relative to `dir`.
fn damage_a_data_file(dir: &std::path::Path) -> anyhow::Result<String> {
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        entries.into_iter().find_map(|p| {
            if p.is_dir() {
                find(&p)
            } else {
                p.to_string_lossy().ends_with(".tsv.zst").then_some(p)
            }
        })
    }
    let file = find(dir).ok_or_else(|| anyhow::anyhow!("no data file under {}", dir.display()))?;
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&file, bytes)?;
    Ok(file.strip_prefix(dir)?.to_string_lossy().into_owned())
}

/// Damaged copies, wrong keys and unreachable sinks. A data file of one
/// server's pool copy is damaged: the restore finds it failing its checksum
/// before that target is touched, loads that server from the S3 copy
/// instead, records the bad copy, and the chain has no gaps; `lockstep
/// verify` reports the same file. An agent with another operator key cannot
/// open the encrypted copy (refused naming both key ids, nothing touched).
/// A backup whose sink cannot be reached (media agent stopped, bucket
/// missing) FAILs naming the sink.
#[tokio::test]
async fn damaged_copies_wrong_keys_and_unreachable_sinks_fail_clearly() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let keys = tempfile::tempdir()?;
    let key = key_file(
        keys.path(),
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
    )?;
    let key_args = ["--key-file", key.as_str()];
    let cluster = Cluster::start_with_agent_env("dc", &key_args, &s3.env(), &[]).await?;
    let mut media = media_agent_with(
        &cluster,
        "vault",
        s3.env(),
        &["--key-file".to_string(), key.clone()],
    )
    .await?;
    let pool = media.pool().expect("pool").to_path_buf();
    let pool_arg = pool.to_str().expect("utf-8").to_string();
    add_sink(
        &cluster,
        &[
            "pool", "--kind", "disk", "--agent", "vault", "--path", &pool_arg,
        ],
    )
    .await?;
    let url = format!("s3://{}/dc", s3.bucket());
    let endpoint = s3.endpoint();
    add_sink(
        &cluster,
        &[
            "offsite",
            "--kind",
            "s3",
            "--url",
            &url,
            "--endpoint",
            &endpoint,
        ],
    )
    .await?;
    cluster
        .cli_json(&[
            "sink",
            "policy",
            "--cluster",
            CLUSTER,
            "--primary",
            "pool",
            "--copy",
            "offsite",
        ])
        .await?;

    step!("a backup under the causal writer, copied to S3");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;
    let out = cluster
        .cli(&["--json", "backup", "start", "--cluster", CLUSTER, "--wait"])
        .await?;
    out.success()?;
    let backup: Value = serde_json::from_str(out.stdout.trim())?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().expect("id").to_string();
    wait_copies(&cluster, &id, "offsite").await?;

    step!("one data file of server dc1's pool copy is damaged");
    let damaged = damage_a_data_file(&pool.join(&id).join("dc1"))?;

    step!("the restore skips the damaged copy for the S3 copy");
    let fresh = MariaDb::start_many(&["dr0", "dr1", "dr2"]).await?;
    let args = restore_args(&id, "dc", &fresh);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.cli(&argv).await?;
    out.success()?;
    let restore: Value = serde_json::from_str(out.stdout.trim())?;
    let sinks: Vec<&str> = restore["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["sink"].as_str())
        .collect();
    assert_eq!(sinks, ["pool", "offsite", "pool"], "{restore}");
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    let shown = cluster.cli_json(&["catalog", "show", &id]).await?;
    let bad = shown["servers"][1]["artifact"]["verify_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        bad.contains("checksum mismatch") && bad.contains(&damaged),
        "{shown}"
    );

    step!("lockstep verify reports the same file, and the good copies");
    let verify = cluster
        .cli(&["--json", "verify", "--backup", &id, "--copy", "pool"])
        .await?;
    assert_eq!(verify.status.code(), Some(1), "{}", verify.stdout);
    let report: Value = serde_json::from_str(verify.stdout.trim())?;
    let outcomes = report["outcomes"].as_array().cloned().unwrap_or_default();
    assert_eq!(outcomes.len(), 3, "{report}");
    for o in &outcomes {
        let error = o["error"].as_str().unwrap_or_default();
        if o["server"] == "dc1" {
            assert!(error.contains(&damaged), "{report}");
        } else {
            assert_eq!(o["ok"], true, "{report}");
        }
    }
    let offsite = cluster
        .cli_json(&["verify", "--backup", &id, "--copy", "offsite"])
        .await?;
    assert!(
        offsite["outcomes"]
            .as_array()
            .is_some_and(|o| o.len() == 3 && o.iter().all(|o| o["ok"] == true)),
        "{offsite}"
    );

    step!("an agent with another operator key cannot open the encrypted copy");
    let other_keys = tempfile::tempdir()?;
    let other = key_file(
        other_keys.path(),
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    )?;
    let stranger = media_agent_with(
        &cluster,
        "stranger",
        s3.env(),
        &["--key-file".to_string(), other],
    )
    .await?;
    let target = MariaDb::start(lockstep_tests::MariaDbOptions::named("dk0")).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let out = cluster
            .cli(&[
                "restore",
                "plan",
                "--backup",
                &id,
                "--from",
                "offsite",
                "--target",
                &format!("dc0={}", target.url()),
                "--target",
                &format!("dc1={}", fresh[1].url()),
                "--target",
                &format!("dc2={}", fresh[2].url()),
                "--agent",
                "dc0=stranger",
            ])
            .await?;
        if !out.stderr.contains("no such agent") || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !refused.status.success()
            && refused.stderr.contains("server dc0")
            && refused.stderr.contains("does not open"),
        "{}",
        refused.stderr
    );
    drop(stranger);

    step!("a backup to a sink that cannot be reached FAILs naming it");
    media.stop()?;
    let out = cluster
        .cli(&[
            "--json",
            "backup",
            "start",
            "--cluster",
            CLUSTER,
            "--sink",
            "pool",
            "--wait",
        ])
        .await?;
    let failed: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("pool") && reason.contains("vault"),
        "{reason}"
    );
    add_sink(
        &cluster,
        &[
            "nobucket",
            "--kind",
            "s3",
            "--url",
            "s3://no-such-bucket/x",
            "--endpoint",
            &endpoint,
        ],
    )
    .await?;
    let out = cluster
        .cli(&[
            "--json",
            "backup",
            "start",
            "--cluster",
            CLUSTER,
            "--sink",
            "nobucket",
            "--wait",
        ])
        .await?;
    let failed: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no-such-bucket"), "{reason}");
    assert!(
        s3.list_keys("x/").await?.is_empty(),
        "nothing stored for the failed backup"
    );
    Ok(())
}

/// The S3 server stops answering (SIGSTOP) for a few seconds in the middle
/// of a backup's uploads: the agents' requests are retried and the backup
/// completes; its restore passes the chain check.
#[tokio::test]
async fn a_stalled_s3_server_is_ridden_out_by_retries() -> anyhow::Result<()> {
    let mut s3 = S3Server::start().await?;
    let keys = tempfile::tempdir()?;
    let key = key_file(
        keys.path(),
        "a1a2a3a4a5a6a7a8a9b0b1b2b3b4b5b6b7b8b9c0c1c2c3c4c5c6c7c8c9d0d1d2",
    )?;
    let key_args = ["--key-file", key.as_str()];
    let cluster = Cluster::start_with_agent_env("ss", &key_args, &s3.env(), &[]).await?;
    let url = format!("s3://{}/ss", s3.bucket());
    let endpoint = s3.endpoint();
    add_sink(
        &cluster,
        &[
            "offsite",
            "--kind",
            "s3",
            "--url",
            &url,
            "--endpoint",
            &endpoint,
        ],
    )
    .await?;
    let big = &cluster.servers[0];
    big.exec("CREATE DATABASE bulk").await?;
    big.exec("CREATE TABLE bulk.t (id INT PRIMARY KEY, a CHAR(64), b CHAR(64))")
        .await?;
    big.exec(
        "INSERT INTO bulk.t SELECT seq, SHA2(seq, 256), SHA2(-seq, 256) FROM bulk.seq_1_to_400000",
    )
    .await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;

    step!("start a backup to S3; freeze the S3 server as soon as the transfer starts");
    let id = cluster
        .cli_json(&["backup", "start", "--cluster", CLUSTER, "--sink", "offsite"])
        .await?["id"]
        .as_str()
        .expect("id")
        .to_string();
    let transferring = cluster
        .wait_backup(&id, Duration::from_secs(60), |s| s != "PREPARING")
        .await?;
    assert_eq!(transferring["status"], "TRANSFERRING", "{transferring}");
    s3.pause()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stalled = cluster.cli_json(&["catalog", "show", &id]).await?;
    assert_eq!(
        stalled["status"], "TRANSFERRING",
        "the transfer waits on the frozen server: {stalled}"
    );
    s3.resume()?;
    let backup = cluster
        .wait_backup(&id, Duration::from_secs(240), |s| {
            s == "COMPLETE" || s == "FAILED"
        })
        .await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    assert!(
        s3.pending_uploads().await?.is_empty(),
        "no upload left open"
    );

    step!("the backup restores from S3 with a gap-free chain");
    let fresh = MariaDb::start_many(&["ssr0", "ssr1", "ssr2"]).await?;
    let args = restore_args(&id, "ss", &fresh);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.cli(&argv).await?.success()?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    Ok(())
}
