//! Mutual TLS on every connection: a cluster whose coordinators, agents,
//! media agent and CLI all speak TLS takes a backup under the causal-chain
//! writer and restores it with no gap; certificates are reloaded on SIGHUP
//! without an election; plaintext and strangers' certificates are refused on
//! every port; agents take orders only from coordinators; forged raft
//! messages are refused and never stop a coordinator; and a daemon will not
//! serve plaintext off loopback unless told to, and then says so.

use std::time::{Duration, Instant};

use lockstep_proto::agent::{PrepareRequest, RestoreRequest};
use lockstep_proto::coordinator::RegisterServerRequest;
use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use lockstep_proto::raft::RaftBatch;
use lockstep_proto::raft::raft_transport_client::RaftTransportClient;
use lockstep_tests::coordinator::COORDINATOR_BIN;
use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::sinks::{add_pool, media_agent, sink_policy};
use lockstep_tests::tls::{Pki, channel};
use lockstep_tests::{
    CatalogCli, CausalWriter, ChildProcess, MariaDb, Signal, Supervised, bin_path, check_chain,
    ports, run_lockstep, step,
};
use protobuf::Message as _;

/// The full cluster test with TLS on: 3 servers, 3 coordinators, 3 agents
/// and a media agent holding the primary sink, every link mutual TLS. A
/// backup under the causal-chain writer goes through the media stream; a
/// restore into fresh servers gives a gap-free chain; `coordinator status`
/// says every member serves mutual TLS. Then coordinator 1's certificate
/// is replaced and SIGHUP reloads it: no election, and the cluster keeps
/// working.
#[tokio::test]
async fn a_cluster_with_mutual_tls_backs_up_and_restores() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_tls("tl").await?;
    let status = cluster.cli_json(&["coordinator", "status"]).await?;
    for m in status["members"].as_array().cloned().unwrap_or_default() {
        assert_eq!(
            m["transport"],
            format!("mutual TLS as coordinator-{}", m["id"]),
            "{status}"
        );
    }

    step!("a media agent (TLS) holds the primary sink");
    let media = media_agent(&cluster, "tlvault").await?;
    add_pool(&cluster, &media).await?;
    sink_policy(&cluster, "pool", &[]).await?;

    step!("backup under the causal-chain writer, through the media stream");
    let chain = cluster.chain();
    let writer = CausalWriter::start(chain.clone()).await?;
    writer
        .wait_committed(writer.first() + 50, Duration::from_secs(20))
        .await?;
    let backup = cluster.backup_and_wait(None).await?;
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    assert_eq!(backup["sink"], "pool", "{backup}");
    let id = backup["id"].as_str().unwrap_or_default().to_string();
    writer.stop().await;

    step!("restore into 3 fresh servers: no gap in the chain");
    let fresh = MariaDb::start_many(&["tlr0", "tlr1", "tlr2"]).await?;
    let restored = cluster.restore_into(&id, "tl", &fresh).await?;
    assert_eq!(restored["ok"], true, "{restored}");
    let rows = check_chain(&lockstep_tests::Target::chain_on(&fresh)).await?;
    assert!(rows > 50, "restored chain has {rows} records");

    step!("SIGHUP reloads a replaced certificate without an election");
    let before = cluster.group.members[0].status().await?;
    let pki = cluster.tls.clone().expect("TLS cluster");
    pki.reissue("coordinator-1")?;
    cluster.group.members[0].signal(Signal::Hup)?;
    wait_for_log(
        cluster.group.members[0].log_path(),
        "TLS certificates reloaded",
    )
    .await?;
    cluster
        .cli_json(&["catalog", "list", "--cluster", CLUSTER])
        .await?;
    let after = cluster.group.members[0].status().await?;
    assert_eq!(
        (before.term, before.leader_id),
        (after.term, after.leader_id),
        "a certificate reload must not cost an election"
    );
    // New connections get the new certificate: the CLI still works, and a
    // backup (coordinator 1 calls agents afresh if it leads) completes.
    let again = cluster.backup_and_wait(None).await?;
    assert_eq!(again["status"], "COMPLETE", "{again}");
    Ok(())
}

/// Refusals on every port: plaintext and certificates of another CA reach
/// neither a coordinator nor an agent; an agent identity cannot call another
/// agent's Restore, nor an operator its Prepare (PERMISSION_DENIED naming
/// the identity and the call, logged by the agent); a viewer cannot start a
/// backup or a restore; another agent's identity cannot repoint a server;
/// every refusal, the agents' included, is in the audit trail; a raft message from
/// the wrong certificate is refused; a forged heartbeat committing past a
/// follower's log (sent with the leader's own certificate) is dropped and
/// the follower stays up.
#[tokio::test]
async fn strangers_and_forgeries_are_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start_tls("tr").await?;
    let pki = cluster.tls.clone().expect("TLS cluster");
    let urls = cluster.group.urls();

    step!("plaintext: the CLI and a gRPC client get no answer");
    let out = run_lockstep(
        &urls,
        &["--patience", "2s", "catalog", "list", "--cluster", CLUSTER],
    )
    .await?;
    assert!(
        !out.status.success(),
        "plaintext CLI answered: {}",
        out.stdout
    );
    let plain = lockstep_tests::tls::channel(
        &lockstep_proto::tls::Transport::Plaintext,
        &cluster.agents[0].addr(),
    )
    .await;
    if let Ok(ch) = plain {
        let mut c = lockstep_proto::agent::node_agent_client::NodeAgentClient::new(ch);
        assert!(
            c.status(lockstep_proto::agent::StatusRequest {})
                .await
                .is_err(),
            "an agent answered plaintext"
        );
    }

    step!("another CA's certificates: refused by coordinators and agents");
    let stranger = Pki::new(&["tr1"])?;
    let env = stranger.env("operator")?;
    let out = lockstep_tests::coordinator::run_lockstep_with(
        &urls,
        &env,
        &["--patience", "2s", "catalog", "list", "--cluster", CLUSTER],
    )
    .await?;
    assert!(
        !out.status.success(),
        "a stranger's CLI answered: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("TLS"),
        "the error says why: {}",
        out.stderr
    );
    let t = stranger.transport("coordinator-1")?;
    if let Ok(ch) = channel(&t, &cluster.agents[0].addr()).await {
        let mut c = lockstep_proto::agent::node_agent_client::NodeAgentClient::new(ch);
        assert!(
            c.status(lockstep_proto::agent::StatusRequest {})
                .await
                .is_err(),
            "an agent answered a stranger"
        );
    }

    step!("an agent identity cannot call another agent's Restore");
    let mut as_agent = cluster.agents[0].client_as("agent-tr1").await?;
    let err = as_agent
        .restore(RestoreRequest {
            location: "x".into(),
            target_mysql: cluster.servers[0].url(),
            force: true,
            ..Default::default()
        })
        .await
        .expect_err("an agent restored into another agent's server");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.message()
            .contains("identity 'agent-tr1' may not call NodeAgent/Restore on agent tr0"),
        "{}",
        err.message()
    );
    wait_for_log(
        cluster.agents[0].log_path(),
        "refused: identity 'agent-tr1'",
    )
    .await?;

    step!("an operator cannot drive an agent's cut");
    let mut as_operator = cluster.agents[1].client_as("operator").await?;
    let err = as_operator
        .prepare(PrepareRequest {
            backup_id: "forged".into(),
            ..Default::default()
        })
        .await
        .expect_err("an operator prepared");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    step!("a viewer reads the catalog but cannot start a backup or a restore");
    cluster
        .cli_as(
            "viewer",
            &["--json", "catalog", "list", "--cluster", CLUSTER],
        )
        .await?
        .success()?;
    let out = cluster
        .cli_as("viewer", &["backup", "start", "--cluster", CLUSTER])
        .await?;
    assert!(
        !out.status.success()
            && out
                .stderr
                .contains("identity 'viewer' (role viewer) may not call StartBackup"),
        "{}",
        out.stderr
    );
    let backup = cluster.backup_and_wait(None).await?;
    let id = backup["id"].as_str().unwrap_or_default().to_string();
    let fresh = MariaDb::start_many(&["trr0", "trr1", "trr2"]).await?;
    let args = lockstep_tests::plain_cluster::restore_args(&id, "tr", &fresh);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.cli_as("viewer", &argv).await?;
    assert!(
        !out.status.success() && out.stderr.contains("may not call RestoreBackup"),
        "{}",
        out.stderr
    );

    step!("a forged RegisterServer (another agent's identity) is refused");
    let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
    let leader_url = cluster.group.members[leader].url();
    let mut as_other =
        CoordinatorClient::new(channel(&pki.transport("agent-tr1")?, &leader_url).await?);
    let err = as_other
        .register_server(RegisterServerRequest {
            cluster: CLUSTER.into(),
            name: "tr0".into(),
            agent_addr: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .await
        .expect_err("another agent repointed tr0");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let servers = cluster.cli_json(&["server", "list"]).await?;
    let tr0 = servers
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "tr0").cloned())
        .unwrap_or_default();
    assert_eq!(tr0["agent_addr"], cluster.agents[0].addr(), "{servers}");

    step!("every refusal is in the audit trail, the agent's own included");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let audit = cluster.cli_json(&["audit", "list"]).await?;
        let refused: Vec<(String, String, String)> = audit
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["outcome"] == "refused")
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (text("identity"), text("call"), text("recorded_by"))
            })
            .collect();
        let has =
            |id: &str, call: &str| refused.iter().any(|(i, c, _)| i == id && c.contains(call));
        // Connections refused at the handshake: by the leader (the CLI's
        // attempts) and by agent tr0 (plaintext and the stranger).
        let connect_by = |who: &str| {
            refused
                .iter()
                .any(|(i, c, by)| i.is_empty() && c == "connect" && by.contains(who))
        };
        if connect_by("coordinator")
            && connect_by("tr0")
            && has("viewer", "StartBackup")
            && has("viewer", "RestoreBackup")
            && has("agent-tr1", "RegisterServer")
            && has("agent-tr1", "Restore")
            && has("operator", "Prepare")
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "refusals missing from the audit trail: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    step!("raft: a message claiming another node's id is refused");
    let leader = cluster.group.wait_leader(Duration::from_secs(10)).await?;
    let follower = (leader + 1) % 3;
    let (lid, fid) = (leader as u64 + 1, follower as u64 + 1);
    let f = &cluster.group.members[follower];
    let st = f.status().await?;
    let mut beat = raft::eraftpb::Message::default();
    beat.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    beat.from = lid;
    beat.to = fid;
    beat.term = st.term;
    beat.commit = st.commit + 1_000_000;
    let batch = RaftBatch {
        from: lid,
        to: fid,
        messages: vec![beat.write_to_bytes()?],
        voters: vec![1, 2, 3],
    };
    let third = 6 - lid - fid;
    let mut as_third = RaftTransportClient::new(
        channel(&pki.transport(&format!("coordinator-{third}"))?, &f.url()).await?,
    );
    let err = as_third
        .send(batch.clone())
        .await
        .expect_err("a coordinator spoke for another");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.message().contains(&format!(
            "only 'coordinator-{lid}' may speak for node {lid}"
        )),
        "{}",
        err.message()
    );

    step!("a heartbeat committing past the log, with the leader's certificate: dropped");
    let mut as_leader = RaftTransportClient::new(
        channel(&pki.transport(&format!("coordinator-{lid}"))?, &f.url()).await?,
    );
    as_leader.send(batch).await?;
    // raft-rs itself would panic: "to_commit N is out of range".
    let seen = wait_for_log_any(
        f.log_path(),
        &["refused a raft heartbeat committing past", "out of range"],
    )
    .await?;
    assert_eq!(
        seen, "refused a raft heartbeat committing past",
        "the follower crashed"
    );
    let later = f.status().await?;
    assert!(later.healthy, "the follower stays up: {later:?}");
    cluster.next_backup_completes().await?;
    Ok(())
}

/// A daemon refuses to serve plaintext on a non-loopback address; with
/// `--insecure-plaintext` it serves and says so in its log and in
/// `coordinator status`.
#[tokio::test]
async fn plaintext_off_loopback_needs_insecure_plaintext() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = ports::free_port()?;
    let coordinator = bin_path(COORDINATOR_BIN)?;
    let base = |listen: &str| {
        let mut cmd = std::process::Command::new(&coordinator);
        cmd.args(["--listen", listen, "--data-dir"])
            .arg(dir.path().join("data"));
        cmd
    };

    step!("coordinator on 0.0.0.0 without TLS: refused");
    let out = base(&format!("0.0.0.0:{port}")).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served plaintext on 0.0.0.0");
    assert!(
        err.contains("refuses to listen on 0.0.0.0") && err.contains("--insecure-plaintext"),
        "{err}"
    );

    step!("agent on 0.0.0.0 without TLS: refused");
    let out = std::process::Command::new(bin_path("lockstep-agent")?)
        .args([
            "serve",
            "--name",
            "m",
            "--listen",
            &format!("0.0.0.0:{port}"),
        ])
        .arg("--pool")
        .arg(dir.path())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "agent served plaintext on 0.0.0.0");
    assert!(err.contains("the agent refuses to listen"), "{err}");

    step!("with --insecure-plaintext: serves, and says so");
    let mut cmd = base(&format!("0.0.0.0:{port}"));
    cmd.arg("--insecure-plaintext");
    let log = dir.path().join("coordinator.log");
    let child = ChildProcess::spawn("insecure coordinator", cmd, &log)?;
    wait_for_log(&log, "INSECURE").await?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let out = run_lockstep(&url, &["coordinator", "status"]).await?;
        if out.stdout.contains("INSECURE PLAINTEXT") {
            assert!(out.stderr.contains("PLAINTEXT"), "{}", out.stderr);
            break out.stdout;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "status: {} {}",
            out.stdout,
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.contains("INSECURE PLAINTEXT (--insecure-plaintext)"),
        "{status}"
    );
    drop(child);
    Ok(())
}

/// Waits up to 15 s for `needle` in the log at `path`.
async fn wait_for_log(path: &std::path::Path, needle: &str) -> anyhow::Result<()> {
    wait_for_log_any(path, &[needle]).await.map(drop)
}

/// Waits up to 15 s for any of `needles` in the log at `path`; returns the
/// first found.
async fn wait_for_log_any<'a>(
    path: &std::path::Path,
    needles: &[&'a str],
) -> anyhow::Result<&'a str> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(found) = needles.iter().find(|n| text.contains(**n)) {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{needles:?} not in {} after 15 s; tail:\n{}",
            path.display(),
            text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `lockstep certs init`: a CA and certificates in a 0700 directory with
/// 0600 keys, valid for the given hosts; running it again issues more with
/// the same CA and refuses to overwrite an identity unless `--replace`.
#[tokio::test]
async fn certs_init_makes_a_private_pki() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let pki_arg = pki.display().to_string();
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    let out = run_lockstep(
        "http://127.0.0.1:1",
        &[
            "--json",
            "certs",
            "init",
            &pki_arg,
            "--coordinator-count",
            "3",
            "--agent",
            "db1",
        ],
    )
    .await?;
    out.success()?;
    let made: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    let ids: Vec<&str> = made["issued"]
        .as_array()
        .map(|l| l.iter().filter_map(|i| i["identity"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        [
            "coordinator-1",
            "coordinator-2",
            "coordinator-3",
            "agent-db1",
            "operator",
            "viewer"
        ],
        "{made}"
    );
    assert_eq!(mode(&pki)?, 0o700, "the directory is private");
    for id in &ids {
        assert_eq!(mode(&pki.join(format!("{id}.key")))?, 0o600, "{id}.key");
    }
    assert_eq!(mode(&pki.join("ca.key"))?, 0o600);

    step!("again: more identities with the same CA; an issued one is refused");
    let ca = std::fs::read(pki.join("ca.pem"))?;
    let out = run_lockstep(
        "http://127.0.0.1:1",
        &["certs", "init", &pki_arg, "--agent", "db1"],
    )
    .await?;
    assert!(
        !out.status.success()
            && out
                .stderr
                .contains("identity 'coordinator-1' is already issued"),
        "{}",
        out.stderr
    );
    let out = run_lockstep(
        "http://127.0.0.1:1",
        &[
            "certs",
            "init",
            &pki_arg,
            "--coordinator-count",
            "0",
            "--agent",
            "db2",
        ],
    )
    .await?;
    out.success()?;
    assert_eq!(std::fs::read(pki.join("ca.pem"))?, ca, "the CA is kept");
    let tls = lockstep_proto::tls::TlsFiles {
        cert: pki.join("agent-db2.pem"),
        key: pki.join("agent-db2.key"),
        ca: pki.join("ca.pem"),
    };
    let loaded = lockstep_proto::tls::Tls::load(tls)?;
    assert_eq!(loaded.identity(), "agent-db2");
    Ok(())
}
