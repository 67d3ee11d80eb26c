//! Sink faults: a media agent killed mid-transfer (the stream resumes), a
//! stalled S3 server (retries), damaged copies (the next copy is used and
//! the bad one reported), a wrong operator key, and unreachable sinks.

use std::time::{Duration, Instant};

use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::sinks::{
    Keyed, add_pool, damage_a_data_file, fill_bulk, key_file, media_agent, media_agent_with,
    partial_files, sink_policy, wait_copies,
};
use lockstep_tests::{CatalogCli, CausalWriter, MariaDb, Supervised, Target, check_chain, step};
use serde_json::Value;

/// The media agent is SIGKILLed in the middle of a TRANSFER and started
/// again on the same port and pool: the source agent's stream resumes at
/// the acknowledged offset (it resends less than the artifact), the backup
/// completes, and its restore passes the chain check.
#[tokio::test]
async fn a_media_agent_killed_mid_transfer_resumes_the_stream() -> anyhow::Result<()> {
    let cluster = Cluster::start("mr").await?;
    let mut media = media_agent(&cluster, "vault").await?;
    let (pool, _) = add_pool(&cluster, &media).await?;
    sink_policy(&cluster, "pool", &[]).await?;

    step!("one server holds ~150 MB of barely compressible rows");
    let big = &cluster.servers[0];
    fill_bulk(big, 1000000).await?;
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;

    step!("start the backup; SIGKILL the media agent once a stream is under way");
    let id = cluster.start_backup().await?;
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
    cluster.restore_into(&id, "mr", &fresh).await?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    Ok(())
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
    let (keyed, cluster) = Keyed::start(
        "dc",
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
    )
    .await?;
    let s3 = &keyed.s3;
    let mut media = keyed.media(&cluster, "vault").await?;
    let (pool, _) = add_pool(&cluster, &media).await?;
    keyed.add_s3(&cluster, "offsite", "dc").await?;
    sink_policy(&cluster, "pool", &["offsite"]).await?;

    step!("a backup under the causal writer, copied to S3");
    let writer = CausalWriter::start(cluster.chain()).await?;
    writer.wait_committed(100, Duration::from_secs(60)).await?;
    let backup = cluster.backup_and_wait(None).await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let id = backup["id"].as_str().expect("id").to_string();
    wait_copies(&cluster, &id, "offsite").await?;

    step!("one data file of server dc1's pool copy is damaged");
    let damaged = damage_a_data_file(&pool.join(&id).join("dc1"))?;

    step!("the restore skips the damaged copy for the S3 copy");
    let fresh = MariaDb::start_many(&["dr0", "dr1", "dr2"]).await?;
    let restore = cluster.restore_into(&id, "dc", &fresh).await?;
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
    let failed = cluster.backup_and_wait(Some("pool")).await?;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("pool") && reason.contains("vault"),
        "{reason}"
    );
    let endpoint = s3.endpoint();
    let nobucket = [
        "sink",
        "add",
        "nobucket",
        "--cluster",
        CLUSTER,
        "--kind",
        "s3",
        "--url",
        "s3://no-such-bucket/x",
        "--endpoint",
        &endpoint,
    ];
    let refused = cluster.cli(&nobucket).await?;
    assert!(
        !refused.status.success()
            && refused.stderr.contains("no-such-bucket")
            && refused.stderr.contains("nothing was added"),
        "sink add checks the sink first: {}",
        refused.stderr
    );
    let mut unchecked = nobucket.to_vec();
    unchecked.push("--no-check");
    cluster.cli(&unchecked).await?.success()?;
    let failed = cluster.backup_and_wait(Some("nobucket")).await?;
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
    let (mut keyed, cluster) = Keyed::start(
        "ss",
        "a1a2a3a4a5a6a7a8a9b0b1b2b3b4b5b6b7b8b9c0c1c2c3c4c5c6c7c8c9d0d1d2",
    )
    .await?;
    keyed.add_s3(&cluster, "offsite", "ss").await?;
    let big = &cluster.servers[0];
    fill_bulk(big, 400000).await?;
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
    keyed.s3.pause()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stalled = cluster.cli_json(&["catalog", "show", &id]).await?;
    assert_eq!(
        stalled["status"], "TRANSFERRING",
        "the transfer waits on the frozen server: {stalled}"
    );
    keyed.s3.resume()?;
    let backup = cluster
        .wait_backup(&id, Duration::from_secs(240), |s| {
            s == "COMPLETE" || s == "FAILED"
        })
        .await?;
    let written = writer.stop().await;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    assert!(
        keyed.s3.pending_uploads().await?.is_empty(),
        "no upload left open"
    );

    step!("the backup restores from S3 with a gap-free chain");
    let fresh = MariaDb::start_many(&["ssr0", "ssr1", "ssr2"]).await?;
    cluster.restore_into(&id, "ss", &fresh).await?;
    let m = check_chain(&Target::chain_on(&fresh)).await?;
    assert!(m >= 100 && m <= written, "restored 1..{m} of {written}");
    Ok(())
}
