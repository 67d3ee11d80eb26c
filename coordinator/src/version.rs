//! The leader's task that raises the cluster's catalog version once every
//! voter supports a higher one (see `catalog/version.rs` for the versions
//! themselves).
//!
//! Every [`CHECK_INTERVAL`] the leader asks each voter which catalog version
//! its build supports (`NodeStatus`); a voter that does not answer counts
//! as version 1. When the lowest is above the cluster version, it proposes
//! `SetClusterVersion`: every voter can decode it, and from then on commands
//! needing that version may be proposed. Followers do nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::{CATALOG_VERSION, Command, raise_to};
use crate::core::Core;

/// How often the leader checks whether the cluster version can rise.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// Runs until `shutdown`: on the leader, raises the cluster version when
/// every voter supports a higher one.
pub async fn raise_cluster_version(core: Arc<Core>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = check_once(&core).await {
            tracing::warn!(error = %crate::client::error_chain(&e), "raising the cluster's catalog version");
        }
    }
}

/// Why a command needing catalog version `needs` waits while the cluster is
/// at `cluster`, given each voter's advertised version (`None`: did not
/// answer): the coordinators that hold it back, and what to do.
pub fn behind(needs: u32, cluster: u32, voters: &BTreeMap<u64, Option<u32>>) -> String {
    let behind: Vec<String> = voters
        .iter()
        .filter_map(|(id, v)| match v {
            None => Some(format!(
                "coordinator {id} did not answer (its version is unknown)"
            )),
            Some(v) if *v < needs => Some(format!("coordinator {id} supports only version {v}")),
            Some(_) => None,
        })
        .collect();
    if behind.is_empty() {
        format!(
            "every coordinator supports it but the cluster version is still {cluster}; \
             the leader raises it within seconds: retry"
        )
    } else {
        format!(
            "{}: finish upgrading every coordinator (the cluster version is {cluster})",
            behind.join(", ")
        )
    }
}

/// One check: `Ok` whether or not the version rose.
async fn check_once(core: &Core) -> crate::error::Result<()> {
    if core.require_leader().await.is_err() {
        return Ok(());
    }
    let cluster = core.cluster_version().await?;
    // This build cannot raise past its own version: nothing to ask.
    if cluster >= CATALOG_VERSION {
        return Ok(());
    }
    let voters = core.voter_versions().await;
    let Some(version) = raise_to(cluster, voters.values().copied()) else {
        tracing::debug!(cluster, ?voters, "cluster version stays");
        return Ok(());
    };
    core.propose(&Command::SetClusterVersion { version })
        .await?;
    tracing::info!(
        from = cluster,
        to = version,
        ?voters,
        "every coordinator supports a newer catalog version: cluster version raised"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal names each coordinator below the needed version or not
    /// heard from, and says to finish the upgrade; with none behind, it
    /// says the version is about to rise.
    #[test]
    fn the_refusal_names_the_coordinators_behind() {
        let voters = BTreeMap::from([(1, Some(2)), (2, Some(2)), (3, Some(1))]);
        let e = crate::error::Error::VersionTooLow {
            command: "rotate_keys".into(),
            needs: 2,
            behind: behind(2, 1, &voters),
        };
        assert_eq!(
            e.to_string(),
            "catalog command rotate_keys needs catalog version 2; coordinator 3 supports only \
             version 1: finish upgrading every coordinator (the cluster version is 1)"
        );
        let voters = BTreeMap::from([(1, Some(2)), (2, None), (3, Some(2))]);
        assert!(
            behind(2, 1, &voters).starts_with("coordinator 2 did not answer"),
            "{}",
            behind(2, 1, &voters)
        );
        let voters = BTreeMap::from([(1, Some(2)), (2, Some(3))]);
        assert!(behind(2, 1, &voters).contains("raises it within seconds"));
    }
}
