//! What the cluster benchmarks (`tests/tests/bNN_*.rs`) share: a
//! [`BenchCluster`] of N MariaDB servers with an agent each and 3
//! coordinators, plaintext or with mutual TLS; [`FreezeSamples`], the
//! freeze window and its parts of each `lockstep backup start --wait`, read
//! from the backup's catalog JSON; and percentiles.
//!
//! Benchmarks print numbers instead of asserting on speed; only failures
//! to start or to complete any backup are errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{AgentOptions, AgentProc};
use crate::causal::Target;
use crate::coordinator::{CoordinatorGroup, CoordinatorOptions, run_lockstep_with};
use crate::mariadb::MariaDb;
use crate::tls::Pki;

/// The cluster name every benchmark cluster registers under.
pub const CLUSTER: &str = "bench";

/// How long the servers of a new cluster may take to be healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// N servers `{prefix}0..` with an agent each, registered with a 3-member
/// coordinator group. Dropping it stops every process and removes the
/// temp dirs (and the PKI).
#[derive(Debug)]
pub struct BenchCluster {
    /// The database servers.
    pub servers: Vec<MariaDb>,
    /// `agents[i]` serves `servers[i]`.
    pub agents: Vec<AgentProc>,
    /// The coordinators.
    pub group: CoordinatorGroup,
    /// With mutual TLS: the PKI of every process; the CLI runs as
    /// `operator`.
    pub tls: Option<Arc<Pki>>,
}

impl BenchCluster {
    /// Starts the servers, the coordinators and the agents (with mutual
    /// TLS on every connection when `tls`), and waits until every server
    /// is healthy. `LOCK_METHOD=ftwrl|backup-stage` in the environment
    /// sets the agents' `--lock-method`.
    pub async fn start(prefix: &str, n: usize, tls: bool) -> anyhow::Result<BenchCluster> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let tls = if tls { Some(Pki::new(&refs)?) } else { None };
        let opts = CoordinatorOptions {
            tls: tls.clone(),
            ..CoordinatorOptions::default()
        };
        let (servers, group) = tokio::try_join!(
            MariaDb::start_many(&refs),
            CoordinatorGroup::start_with_options(3, &opts)
        )?;
        let urls = group.urls();
        let lock_method = std::env::var("LOCK_METHOD").ok();
        let agents = futures::future::try_join_all(servers.iter().map(|s| {
            let mut o = AgentOptions::new(s.name(), s.url());
            o.extra_args = vec![
                "--cluster".into(),
                CLUSTER.into(),
                "--coordinators".into(),
                urls.clone(),
            ];
            if let Some(m) = &lock_method {
                o.extra_args.extend(["--lock-method".into(), m.clone()]);
            }
            o.tls = tls.clone();
            AgentProc::start(o)
        }))
        .await?;
        let cluster = BenchCluster {
            servers,
            agents,
            group,
            tls,
        };
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            let list = cluster.cli(&["server", "list"]).await?;
            if list
                .as_array()
                .is_some_and(|l| l.iter().filter(|s| s["healthy"] == true).count() == n)
            {
                return Ok(cluster);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "servers {prefix}0..{n} not healthy within {HEALTHY_TIMEOUT:?}: {list}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `plaintext` or `tls`.
    pub fn transport(&self) -> &'static str {
        if self.tls.is_some() {
            "tls"
        } else {
            "plaintext"
        }
    }

    /// `lockstep --json ARGS` (as `operator` with TLS), parsed.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let env = match &self.tls {
            Some(pki) => pki.env("operator")?,
            None => Vec::new(),
        };
        let out = run_lockstep_with(&self.group.urls(), &env, &all).await?;
        anyhow::ensure!(
            out.status.success(),
            "lockstep {args:?} failed: {}",
            out.stderr
        );
        Ok(serde_json::from_str(out.stdout.trim())?)
    }

    /// The causal chain's targets: record k on server k mod N.
    pub fn chain(&self) -> Vec<Target> {
        Target::chain_on(&self.servers)
    }
}

/// Per completed backup (ms): the freeze window (first lock statement to
/// last release, the catalog's `freeze_ms`); each server's lock hold; and
/// where the freeze goes: first to last lock statement (spread), last
/// PREPARED to first release (barrier and COMMIT), first to last release.
/// Also the whole `backup start --wait`: wall time of the CLI run (process,
/// connections, the job, TRANSFER) and the catalog's started → finished.
#[derive(Debug, Default, Clone)]
pub struct FreezeSamples {
    /// `freeze_ms` of each backup.
    pub freeze: Vec<f64>,
    /// `lock_ms` of every server of every backup.
    pub holds: Vec<f64>,
    /// First to last lock statement.
    pub spread: Vec<f64>,
    /// Last PREPARED to first release.
    pub decide: Vec<f64>,
    /// First to last release.
    pub unlock: Vec<f64>,
    /// Wall time of `lockstep backup start --wait` (its process, the
    /// connections, and a status poll every 200 ms: it moves in steps).
    pub wall: Vec<f64>,
    /// `finished_at_unix_ms - started_at_unix_ms` from the catalog.
    pub job: Vec<f64>,
    /// Backups that did not complete.
    pub failed: usize,
}

impl FreezeSamples {
    /// Runs one `lockstep backup start --wait` on `cluster` and records it
    /// (a backup that does not complete is counted and printed).
    pub async fn backup(&mut self, cluster: &BenchCluster) {
        let started = Instant::now();
        let b = cluster
            .cli(&["backup", "start", "--cluster", CLUSTER, "--wait"])
            .await;
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        match b {
            Ok(b) if b["status"] == "COMPLETE" => self.record(&b, wall),
            other => {
                self.failed += 1;
                println!("{} backup did not complete: {other:?}", cluster.transport());
            }
        }
    }

    fn record(&mut self, b: &Value, wall: f64) {
        self.wall.push(wall);
        if let (Some(s), Some(f)) = (
            b["started_at_unix_ms"].as_f64(),
            b["finished_at_unix_ms"].as_f64(),
        ) {
            self.job.push(f - s);
        }
        self.freeze
            .push(b["freeze_ms"].as_f64().unwrap_or(f64::NAN));
        let Some(servers) = b["servers"].as_array() else {
            return;
        };
        self.holds
            .extend(servers.iter().filter_map(|s| s["lock_ms"].as_f64()));
        let at = |k: &str| -> Vec<f64> { servers.iter().filter_map(|s| s[k].as_f64()).collect() };
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        let (locked, released) = (at("locked_at_unix_us"), at("released_at_unix_us"));
        let prepared: Vec<f64> = servers
            .iter()
            .filter_map(|s| {
                Some(
                    s["locked_at_unix_us"].as_f64()?
                        + 1000.0 * s["lock_wait_ms"].as_f64()?
                        + 1000.0 * s["capture_ms"].as_f64()?,
                )
            })
            .collect();
        self.spread.push((max(&locked) - min(&locked)) / 1000.0);
        self.decide.push((min(&released) - max(&prepared)) / 1000.0);
        self.unlock.push((max(&released) - min(&released)) / 1000.0);
    }

    /// Completed backups.
    pub fn completed(&self) -> usize {
        self.freeze.len()
    }
}

/// Median, p90, p99 and maximum of some samples.
#[derive(Debug, Clone, Copy)]
pub struct Dist {
    /// The median.
    pub median: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile: the slowest sample below 100 samples.
    pub p99: f64,
    /// The largest sample.
    pub max: f64,
}

impl Dist {
    /// The distribution of `samples` (NaN everywhere when empty).
    pub fn of(samples: &[f64]) -> Dist {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Dist {
            median: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
            p99: percentile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The `p` quantile of `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `$name` as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `$SERVERS` (comma-separated cluster sizes), or 3 and 9.
pub fn env_sizes() -> Vec<usize> {
    std::env::var("SERVERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 9])
}
