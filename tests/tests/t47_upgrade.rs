//! Rolling upgrades: every coordinator advertises the catalog version its
//! build supports, the group replicates a cluster version (the version
//! every voter supports), and `lockstep coordinator status` shows both.

use std::time::Duration;

use lockstep_tests::{CoordinatorGroup, Supervised, run_lockstep, step};
use serde_json::Value;

/// The catalog version this build of the coordinator supports.
const CATALOG_VERSION: u64 = 1;

/// A group of 3 coordinators of one build: `coordinator status --json`
/// shows cluster version 1, and every member supports and has applied
/// version 1; the human output says the cluster version. With one member
/// SIGKILLed, its versions are unknown (null, "-") and the cluster version
/// stays where it was.
#[tokio::test]
async fn status_shows_every_members_catalog_and_cluster_version() -> anyhow::Result<()> {
    step!("start 3 coordinators");
    let mut group = CoordinatorGroup::start(3).await?;
    let leader = group.wait_leader(Duration::from_secs(30)).await?;

    step!("coordinator status --json: cluster version 1 everywhere");
    let out = run_lockstep(&group.urls(), &["--json", "coordinator", "status"]).await?;
    out.success()?;
    let status: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(status["cluster_version"], 1, "{status}");
    let members = status["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{status}");
    for m in &members {
        assert_eq!(m["healthy"], true, "{m}");
        assert_eq!(m["catalog_version"], CATALOG_VERSION, "{m}");
        assert_eq!(m["cluster_version"], 1, "{m}");
    }

    step!("coordinator status (human): the cluster version and the columns");
    let out = run_lockstep(&group.urls(), &["coordinator", "status"]).await?;
    out.success()?;
    assert!(out.stdout.contains("cluster version: 1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("SUPPORTS") && out.stdout.contains("CLUSTER-V"),
        "{}",
        out.stdout
    );

    step!("SIGKILL a follower: its versions are unknown, the cluster's stays 1");
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    group.members[follower].kill()?;
    let out = run_lockstep(&group.urls(), &["--json", "coordinator", "status"]).await?;
    assert!(!out.status.success(), "a member is down: {}", out.stdout);
    let status: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(status["cluster_version"], 1, "{status}");
    let dead_id = group.members[follower].id();
    let dead = status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == dead_id))
        .cloned()
        .unwrap_or_default();
    assert_eq!(dead["healthy"], false, "{status}");
    assert!(
        dead["catalog_version"].is_null() && dead["cluster_version"].is_null(),
        "an unreachable member's versions are unknown: {dead}"
    );
    Ok(())
}
