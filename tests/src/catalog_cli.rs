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

    /// `lockstep restore run` of backup `id` with server `{prefix}{i}` going
    /// to `fresh[i]` (see [`restore_args`]), which must succeed; its JSON.
    async fn restore_into(
        &self,
        id: &str,
        prefix: &str,
        fresh: &[MariaDb],
    ) -> anyhow::Result<Value> {
        let args = restore_args(id, prefix, fresh);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cli(&argv).await?;
        out.success()?;
        serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("parse the output of lockstep {}", argv.join(" ")))
    }

    /// `lockstep --json backup start --cluster` [`CLUSTER`] `[--sink SINK]
    /// --wait`: the backup as it ended. The exit code must match its end
    /// (0 for COMPLETE, 1 for FAILED).
    async fn backup_and_wait(&self, sink: Option<&str>) -> anyhow::Result<Value> {
        let mut argv = vec!["--json", "backup", "start", "--cluster", CLUSTER];
        if let Some(sink) = sink {
            argv.extend(["--sink", sink]);
        }
        argv.push("--wait");
        let out = self.cli(&argv).await?;
        let backup: Value = serde_json::from_str(out.stdout.trim()).with_context(|| {
            format!(
                "parse the output of lockstep {}: {}",
                argv.join(" "),
                out.stderr
            )
        })?;
        anyhow::ensure!(
            out.status.success() == (backup["status"] == "COMPLETE"),
            "exit {} for a {} backup: {}",
            out.status,
            backup["status"],
            out.stderr
        );
        Ok(backup)
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
