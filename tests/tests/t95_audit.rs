//! The audit trail, through the CLI against a plaintext cluster: backups,
//! restores, sink and role changes are recorded with their caller, their
//! arguments (passwords redacted) and their outcome, and the records
//! survive a restart of every coordinator.

use std::time::{Duration, Instant};

use lockstep_tests::plain_cluster::{CLUSTER, Cluster};
use lockstep_tests::{CatalogCli, MariaDb, step};
use serde_json::Value;

/// The password the restore targets' user has; it must never be listed.
const PASSWORD: &str = "Aud1t-s3cret-pw";

/// The records of `audit list --json` (the newest 100).
async fn audit(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut argv = vec!["audit", "list"];
    argv.extend_from_slice(extra);
    let list = cluster.cli_json(&argv).await?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

/// The one record of `call` whose argument `key` is `value`.
fn find<'a>(records: &'a [Value], call: &str, key: &str, value: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["call"] == call && r["args"][key] == value)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {call} record with {key}={value}: {records:#?}"
    );
    found[0]
}

/// Every mutating CLI command leaves one audit record: a backup (ok, with
/// its id), a restore into servers reached with a password (ok, with the
/// restore id; the password shown as ***), a sink policy (ok), a sink add
/// and remove that fail (failed, with the error), a role set and remove
/// (ok). Callers are plaintext, with their address. `--since` and
/// `--limit` narrow the list. After every coordinator restarts, the same
/// records are listed.
#[tokio::test]
async fn mutating_calls_are_audited_and_the_trail_survives_restarts() -> anyhow::Result<()> {
    let mut cluster = Cluster::start("au").await?;
    let started = Instant::now();

    step!("a backup, then a restore into fresh servers reached with a password");
    let backup = cluster.backup_and_wait(None).await?;
    let id = backup["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(backup["status"], "COMPLETE", "{backup}");
    let fresh = MariaDb::start_many(&["au-f0", "au-f1", "au-f2"]).await?;
    for db in &fresh {
        db.exec(&format!(
            "CREATE USER 'loader'@'%' IDENTIFIED BY '{PASSWORD}'"
        ))
        .await?;
        db.exec("GRANT ALL ON *.* TO 'loader'@'%' WITH GRANT OPTION")
            .await?;
    }
    let mut argv: Vec<String> = ["--json", "restore", "run", "--backup", &id, "--wait"]
        .map(String::from)
        .to_vec();
    for (i, db) in fresh.iter().enumerate() {
        argv.push("--target".into());
        argv.push(format!("au{i}=mysql://loader:{PASSWORD}@{}", db.address()));
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cluster.cli(&argv).await?;
    out.success()?;
    let restored: Value = serde_json::from_str(out.stdout.trim())?;
    let restore_id = restored["restore_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!restore_id.is_empty(), "{restored}");

    step!("sink changes: a policy set, an add and a remove that fail");
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
    let add = cluster
        .cli(&[
            "sink",
            "add",
            "pool",
            "--cluster",
            CLUSTER,
            "--kind",
            "disk",
            "--agent",
            "nobody",
            "--path",
            "/srv/p",
        ])
        .await?;
    assert!(!add.status.success(), "no agent nobody: {}", add.stdout);
    let remove = cluster
        .cli(&["sink", "remove", "nope", "--cluster", CLUSTER])
        .await?;
    assert!(!remove.status.success(), "no sink nope: {}", remove.stdout);

    step!("role set, list, remove");
    let set = cluster
        .cli_json(&["role", "set", "alice", "viewer"])
        .await?;
    assert_eq!(set["source"], "catalog", "{set}");
    let roles = cluster.cli_json(&["role", "list"]).await?;
    let listed: Vec<(String, String, String)> = roles
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("pattern"), s("role"), s("source"))
        })
        .collect();
    assert!(
        listed.contains(&("alice".into(), "viewer".into(), "catalog".into()))
            && listed.contains(&("agent-*".into(), "agent".into(), "config".into())),
        "the catalog's and the default roles: {roles}"
    );
    let bad = cluster.cli(&["role", "set", "bob", "root"]).await?;
    assert!(
        !bad.status.success() && bad.stderr.contains("unknown role"),
        "{}",
        bad.stderr
    );
    cluster.cli_json(&["role", "remove", "alice"]).await?;

    step!("audit list --json: every call with its caller, arguments and outcome");
    let records = audit(&cluster, &[]).await?;
    let text = serde_json::to_string(&records)?;
    assert!(
        !text.contains(PASSWORD),
        "the password is never listed: {text}"
    );
    let b = find(&records, "StartBackup", "cluster", CLUSTER);
    assert_eq!(b["outcome"], "ok", "{b}");
    assert!(b["detail"].as_str().is_some_and(|d| d.contains(&id)), "{b}");
    assert_eq!(b["plaintext"], true, "{b}");
    assert!(
        b["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{b}"
    );
    assert!(
        b["recorded_by"]
            .as_str()
            .is_some_and(|r| r.starts_with("coordinator "))
    );
    let r = find(&records, "RestoreBackup", "backup", &id);
    assert_eq!(r["outcome"], "ok", "{r}");
    assert!(
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&restore_id)),
        "{r}"
    );
    assert_eq!(
        r["args"]["target.au0"],
        format!("mysql://loader:***@{}", fresh[0].address()),
        "{r}"
    );
    let p = find(&records, "SetSinkPolicy", "primary", "host-local");
    assert_eq!(p["outcome"], "ok", "{p}");
    let a = find(&records, "AddSink", "agent", "nobody");
    assert_eq!(a["outcome"], "failed", "{a}");
    assert!(
        a["detail"].as_str().is_some_and(|d| d.contains("nobody")),
        "{a}"
    );
    let rm = find(&records, "RemoveSink", "name", "nope");
    assert_eq!(rm["outcome"], "failed", "{rm}");
    assert_eq!(
        find(&records, "SetRole", "pattern", "alice")["outcome"],
        "ok"
    );
    assert_eq!(
        find(&records, "SetRole", "pattern", "bob")["outcome"],
        "failed"
    );
    assert_eq!(
        find(&records, "RemoveRole", "pattern", "alice")["outcome"],
        "ok"
    );
    assert!(
        records
            .iter()
            .all(|r| r["call"] != "ListBackups" && r["call"] != "Heartbeat"),
        "reads and heartbeats are not audited: {records:#?}"
    );
    let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );

    step!("audit list --since and --limit");
    let newest = audit(&cluster, &["--limit", "2"]).await?;
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[1]["call"], "RemoveRole", "{newest:?}");
    let window = format!("{}s", started.elapsed().as_secs() + 60);
    assert_eq!(
        audit(&cluster, &["--since", &window]).await?.len(),
        records.len()
    );
    assert!(
        audit(&cluster, &["--since", "2999-01-01T00:00:00Z"])
            .await?
            .is_empty()
    );
    let human = cluster.cli(&["audit", "list"]).await?;
    human.success()?;
    assert!(
        human.stdout.contains("StartBackup") && human.stdout.contains("plaintext 127.0.0.1:"),
        "{}",
        human.stdout
    );

    step!("restart every coordinator: the trail is still there");
    for m in &mut cluster.group.members {
        m.restart().await?;
    }
    cluster.group.wait_leader(Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let out = cluster.cli(&["--json", "audit", "list"]).await?;
        if out.status.success() {
            break serde_json::from_str::<Value>(out.stdout.trim())?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "audit list after restarts: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = after.as_array().cloned().unwrap_or_default();
    let calls = |rs: &[Value]| -> Vec<(u64, String, String)> {
        rs.iter()
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap_or_default(),
                    r["call"].as_str().unwrap_or_default().to_string(),
                    r["outcome"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        calls(&after[..records.len().min(after.len())]),
        calls(&records),
        "the same records after restarts"
    );
    Ok(())
}
