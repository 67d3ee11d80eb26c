//! Rolling upgrades: every coordinator advertises the catalog version its
//! build supports, the group replicates a cluster version (the version
//! every voter supports), and `lockstep coordinator status` shows both; a
//! catalog entry a build cannot decode stops it instead of being skipped.

use std::time::{Duration, Instant};

use lockstep_tests::{CoordinatorGroup, Supervised, run_lockstep, step};
use serde_json::Value;

/// The catalog version this build of the coordinator supports.
const CATALOG_VERSION: u64 = 5;

/// A group of 3 coordinators of one build starts at cluster version 1 and
/// the leader raises it to the version every member supports:
/// `coordinator status --json` then shows cluster version 5, and every
/// member supports and has applied it; the human output says the cluster
/// version. With one member SIGKILLed, its versions are unknown (null, "-")
/// and the cluster version stays where it was.
#[tokio::test]
async fn status_shows_every_members_catalog_and_cluster_version() -> anyhow::Result<()> {
    step!("start 3 coordinators");
    let mut group = CoordinatorGroup::start(3).await?;
    let leader = group.wait_leader(Duration::from_secs(30)).await?;

    step!("coordinator status --json: the leader raises the cluster version to 4 everywhere");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status: Value = loop {
        let out = run_lockstep(&group.urls(), &["--json", "coordinator", "status"]).await?;
        out.success()?;
        let status: Value = serde_json::from_str(out.stdout.trim())?;
        let raised = status["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().all(|m| m["cluster_version"] == CATALOG_VERSION));
        if raised || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["cluster_version"], CATALOG_VERSION, "{status}");
    let members = status["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{status}");
    for m in &members {
        assert_eq!(m["healthy"], true, "{m}");
        assert_eq!(m["catalog_version"], CATALOG_VERSION, "{m}");
        assert_eq!(m["cluster_version"], CATALOG_VERSION, "{m}");
    }

    step!("coordinator status (human): the cluster version and the columns");
    let out = run_lockstep(&group.urls(), &["coordinator", "status"]).await?;
    out.success()?;
    assert!(
        out.stdout
            .contains(&format!("cluster version: {CATALOG_VERSION}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("SUPPORTS") && out.stdout.contains("CLUSTER-V"),
        "{}",
        out.stdout
    );

    step!("SIGKILL a follower: its versions are unknown, the cluster's stays 3");
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    group.members[follower].kill()?;
    let out = run_lockstep(&group.urls(), &["--json", "coordinator", "status"]).await?;
    assert!(!out.status.success(), "a member is down: {}", out.stdout);
    let status: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(status["cluster_version"], CATALOG_VERSION, "{status}");
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

/// A committed catalog entry that this build cannot decode (what a newer
/// leader ignoring the cluster version would write; injected with the
/// `propose-as-newer-build` fail point) is never skipped: the leader that
/// applies it stops and exits non-zero, naming the raft index and saying to
/// upgrade; every other member either stopped at the same index or has not
/// applied that far (it may not have learned the commit before the leader
/// stopped). Restarted, the group stops at the same entry again: it was
/// never recorded as applied.
#[tokio::test]
async fn an_entry_this_build_cannot_decode_stops_the_members_that_reach_it() -> anyhow::Result<()> {
    step!("start 3 coordinators with the fail point armed");
    let mut group =
        CoordinatorGroup::start_with_env(3, &[("FAILPOINTS", "propose-as-newer-build=return")])
            .await?;
    let leader = group.wait_leader(Duration::from_secs(30)).await?;

    step!("a proposal (server remove) is replicated as an undecodable entry");
    let before = stop_counts(&group);
    let out = run_lockstep(
        &group.urls(),
        &[
            "--patience",
            "3s",
            "server",
            "remove",
            "--cluster",
            "c1",
            "db9",
        ],
    )
    .await?;
    assert!(!out.status.success(), "{}\n{}", out.stdout, out.stderr);
    tracing::info!(stderr = %out.stderr.trim(), "server remove failed");
    // The leader applies it first (it learns of the commit first).
    wait_a_stop(&mut group, &before, Some(leader)).await?;
    let index = check_members(&mut group, &before, None).await?;

    step!("restart the stopped members: the group stops at index {index} again");
    let before = stop_counts(&group);
    for m in &mut group.members {
        if m.is_running() {
            continue;
        }
        // It may stop again before it answers NodeStatus: checked below.
        if let Err(e) = m.restart().await {
            tracing::info!(error = %format!("{e:#}"), "a member stopped while starting");
        }
    }
    wait_a_stop(&mut group, &before, None).await?;
    check_members(&mut group, &before, Some(index)).await?;
    Ok(())
}

/// What a member logs when it stops at an entry it cannot apply.
const STOPPED: &str = "cannot apply the committed entry at index ";

/// How many times each member's log says it stopped at an entry.
fn stop_counts(group: &CoordinatorGroup) -> Vec<usize> {
    group
        .members
        .iter()
        .map(|m| m.log_tail(2000).matches(STOPPED).count())
        .collect()
}

/// Waits (30 s at most) until member `which` (or any) logged a stop since
/// `before`.
async fn wait_a_stop(
    group: &mut CoordinatorGroup,
    before: &[usize],
    which: Option<usize>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = stop_counts(group);
        let stopped = |i: usize| now[i] > before[i];
        if which.map_or_else(|| (0..now.len()).any(stopped), stopped) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = group
                .members
                .iter()
                .map(|m| format!("coordinator {}:\n{}", m.id(), m.log_tail(30)))
                .collect();
            anyhow::bail!("no member stopped: {now:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each member either stopped since `before` (exited non-zero, every stop
/// in its log at one index, `index` if given, naming the newer command and
/// saying to upgrade) or runs with less than that index applied. Returns
/// the index.
async fn check_members(
    group: &mut CoordinatorGroup,
    before: &[usize],
    index: Option<u64>,
) -> anyhow::Result<u64> {
    let mut seen = index;
    let mut running = Vec::new();
    let now = stop_counts(group);
    for (i, m) in group.members.iter_mut().enumerate() {
        let id = m.id();
        if now[i] == before[i] {
            running.push(id);
            continue;
        }
        // `None`: already reaped (it stopped while `restart` waited).
        match m.wait_exit(Duration::from_secs(15)).await? {
            Some(status) => assert!(!status.success(), "coordinator {id} exited {status}"),
            None => anyhow::ensure!(!m.is_running(), "coordinator {id} did not exit"),
        }
        let log = m.log_tail(2000);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(STOPPED)).collect();
        assert!(!lines.is_empty(), "coordinator {id} log:\n{log}");
        for line in lines {
            assert!(
                line.contains("from_a_newer_build") && line.contains("upgrade this coordinator"),
                "coordinator {id}: {line}"
            );
            let at: u64 = line
                .split(STOPPED)
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no index in: {line}"));
            if let Some(want) = seen {
                assert_eq!(
                    at, want,
                    "coordinator {id} stopped at another entry: {line}"
                );
            }
            seen = Some(at);
        }
        tracing::info!(id, index = ?seen, "stopped at the undecodable entry");
    }
    let index = seen.ok_or_else(|| anyhow::anyhow!("no member stopped"))?;
    for m in group.members.iter().filter(|m| running.contains(&m.id())) {
        // One that stops right now may not answer; it never applied it.
        if let Ok(st) = m.status().await {
            assert!(
                st.applied < index,
                "coordinator {} runs with index {} applied, past {index}",
                m.id(),
                st.applied
            );
            tracing::info!(id = m.id(), applied = st.applied, "running, not past it");
        }
    }
    Ok(index)
}
