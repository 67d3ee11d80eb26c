//! The `lockstep` CLI against a test cluster, and the catalog polls that
//! cluster tests share. A cluster says how to run the CLI
//! ([`CatalogCli::cli`]) and how many servers it has; the rest comes with
//! the trait.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::agent::CliOutput;
use crate::mariadb::MariaDb;

/// The cluster name the test clusters' agents register under.
pub const CLUSTER: &str = "c1";

/// How often the polls below ask again.
const POLL: Duration = Duration::from_millis(20);

/// The `lockstep` CLI against a test cluster's coordinators.
#[allow(async_fn_in_trait)]
pub trait CatalogCli {
    /// `lockstep ARGS` against the cluster's coordinators.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput>;

    /// How many database servers (and agents) the cluster has.
    fn server_count(&self) -> usize;

    /// `lockstep --json ARGS`, which must succeed, parsed.
    async fn cli_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all).await?;
        out.success()?;
        serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("parse the output of lockstep {}", all.join(" ")))
    }

    /// Waits until `lockstep server list` shows every server healthy.
    async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cli(&["--json", "server", "list"]).await?;
            if out.status.success() {
                let list: Value = serde_json::from_str(out.stdout.trim())?;
                let healthy = list.as_array().map_or(0, |l| {
                    l.iter()
                        .filter(|s| s["healthy"] == true && s["media"] != true)
                        .count()
                });
                if healthy == self.server_count() {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "servers not all healthy after {timeout:?}: {} {}",
                out.stdout,
                out.stderr
            );
            tokio::time::sleep(5 * POLL).await;
        }
    }

    /// `lockstep backup start` of [`CLUSTER`] without waiting; returns the
    /// backup id.
    async fn start_backup(&self) -> anyhow::Result<String> {
        let started = self
            .cli_json(&["backup", "start", "--cluster", CLUSTER])
            .await?;
        Ok(started["id"].as_str().context("backup id")?.to_string())
    }

    /// Polls `lockstep catalog show ID` until `done(status)` holds, for at
    /// most `timeout`; returns the backup. A failed call (no leader yet
    /// after a kill or a partition) is polled again.
    async fn wait_backup(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cli(&["--json", "catalog", "show", id]).await?;
            if out.status.success() {
                let b: Value = serde_json::from_str(out.stdout.trim())?;
                if done(b["status"].as_str().unwrap_or_default()) {
                    return Ok(b);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "backup {id} not resolved within {timeout:?}: {} {}",
                out.stdout,
                out.stderr
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `--json restore run --backup ID --wait` with server `{prefix}{i}` of the
/// backup going to `fresh[i]`.
pub fn restore_args(id: &str, prefix: &str, fresh: &[MariaDb]) -> Vec<String> {
    let mut args: Vec<String> = ["--json", "restore", "run", "--backup", id, "--wait"]
        .map(String::from)
        .to_vec();
    for (i, dst) in fresh.iter().enumerate() {
        args.push("--target".into());
        args.push(format!("{prefix}{i}={}", dst.url()));
    }
    args
}
