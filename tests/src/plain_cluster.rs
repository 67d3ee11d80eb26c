//! A plain lockstep cluster (no proxies) on 127.0.0.1: 3 real MariaDB servers, a
//! 3-member coordinator group, and one agent per server registered with the
//! group under cluster [`CLUSTER`]; with the helpers cluster tests share
//! (the `lockstep` CLI against the group, polling the catalog, holding a
//! backup at the barrier, restore arguments).
//!
//! Dropping a [`Cluster`] stops every process it started and removes their
//! temp dirs (each process's own harness type does that).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mysql_async::prelude::Queryable as _;
use serde_json::Value;

use crate::agent::{AgentOptions, AgentProc, CliOutput};
use crate::catalog_cli::CatalogCli;
use crate::causal::{CausalWriter, Target};
use crate::coordinator::{CoordinatorGroup, CoordinatorOptions, run_lockstep_with};
use crate::mariadb::MariaDb;
use crate::step;
use crate::tls::Pki;

pub use crate::catalog_cli::{CLUSTER, restore_args};

/// Agent options that let a lock wait up to 4 s (less than the 5 s PREPARE
/// deadline), with [`hold_backup_stage`] to make one server's lock wait.
pub const SLOW_LOCK_ARGS: &[&str] = &["--lock-wait-budget", "4s"];

/// 3 servers with an agent each, registered with a 3-member group.
#[derive(Debug)]
pub struct Cluster {
    /// The database servers, `{prefix}0..2`.
    pub servers: Vec<MariaDb>,
    /// `agents[i]` serves `servers[i]`.
    pub agents: Vec<AgentProc>,
    /// The coordinators.
    pub group: CoordinatorGroup,
    /// With mutual TLS: the PKI every process uses; the CLI runs as
    /// `operator`.
    pub tls: Option<Arc<Pki>>,
}

impl Cluster {
    /// Starts servers `{prefix}0..2`, 3 coordinators and 3 agents, and
    /// waits until every server is healthy.
    pub async fn start(prefix: &str) -> anyhow::Result<Cluster> {
        Cluster::start_with(prefix, &[], &[]).await
    }

    /// Like [`Cluster::start`], with `agent_args` for every agent and
    /// `coordinator_env` for every coordinator.
    pub async fn start_with(
        prefix: &str,
        agent_args: &[&str],
        coordinator_env: &[(&str, &str)],
    ) -> anyhow::Result<Cluster> {
        Cluster::start_with_agent_env(prefix, agent_args, &[], coordinator_env).await
    }

    /// Like [`Cluster::start_with`], with `agent_env` in every agent's
    /// environment.
    pub async fn start_with_agent_env(
        prefix: &str,
        agent_args: &[&str],
        agent_env: &[(String, String)],
        coordinator_env: &[(&str, &str)],
    ) -> anyhow::Result<Cluster> {
        Cluster::start_all(prefix, agent_args, agent_env, coordinator_env, None).await
    }

    /// Like [`Cluster::start`], with every agent archiving its server's
    /// binlogs (`--archive`) to the cluster's primary sink.
    pub async fn start_archiving(prefix: &str) -> anyhow::Result<Cluster> {
        Cluster::start_with(prefix, &["--archive"], &[]).await
    }

    /// Like [`Cluster::start`], with mutual TLS on every connection: a new
    /// CA, `coordinator-N` for member N, `agent-NAME` for each agent, and
    /// the CLI as `operator`.
    pub async fn start_tls(prefix: &str) -> anyhow::Result<Cluster> {
        let names: Vec<String> = (0..3).map(|i| format!("{prefix}{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let pki = Pki::new(&refs)?;
        Cluster::start_all(prefix, &[], &[], &[], Some(pki)).await
    }

    async fn start_all(
        prefix: &str,
        agent_args: &[&str],
        agent_env: &[(String, String)],
        coordinator_env: &[(&str, &str)],
        tls: Option<Arc<Pki>>,
    ) -> anyhow::Result<Cluster> {
        let names: Vec<String> = (0..3).map(|i| format!("{prefix}{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        step!(
            "start 3 MariaDB servers and 3 coordinators (TLS: {})",
            tls.is_some()
        );
        let coordinator = CoordinatorOptions {
            tls: tls.clone(),
            ..CoordinatorOptions::with_env(coordinator_env)
        };
        let (servers, group) = tokio::try_join!(
            MariaDb::start_many(&refs),
            CoordinatorGroup::start_with_options(3, &coordinator)
        )?;
        step!("start 3 agents registering with the coordinators");
        Cluster::with_agents(servers, group, tls, |i, s| {
            let mut opts = AgentOptions::new(s.name(), s.url());
            // One listens on every interface and advertises its address.
            opts.all_interfaces = i == 0;
            opts.extra_args = agent_args.iter().map(|a| a.to_string()).collect();
            opts.env = agent_env.to_vec();
            opts
        })
        .await
    }

    /// 3 coordinators, and an agent beside each of `servers` (already
    /// running) with the options `agent(i, server)` gives and the cluster's
    /// flags added (and `tls`, if given, for every process and the CLI);
    /// waits until every server is healthy.
    pub async fn start_on(
        servers: Vec<MariaDb>,
        tls: Option<Arc<Pki>>,
        agent: impl Fn(usize, &MariaDb) -> AgentOptions,
    ) -> anyhow::Result<Cluster> {
        let coordinator = CoordinatorOptions {
            tls,
            ..CoordinatorOptions::default()
        };
        Cluster::start_on_with(servers, coordinator, agent).await
    }

    /// Like [`Cluster::start_on`], with the coordinators' options (their
    /// environment, e.g. `FAILPOINTS`, and TLS) given.
    pub async fn start_on_with(
        servers: Vec<MariaDb>,
        coordinator: CoordinatorOptions,
        agent: impl Fn(usize, &MariaDb) -> AgentOptions,
    ) -> anyhow::Result<Cluster> {
        let tls = coordinator.tls.clone();
        step!("start 3 coordinators (TLS: {})", tls.is_some());
        let group = CoordinatorGroup::start_with_options(3, &coordinator).await?;
        step!("start an agent beside each server, registering with the coordinators");
        Cluster::with_agents(servers, group, tls, agent).await
    }

    /// Starts an agent beside each of `servers` with the options `agent(i,
    /// server)` gives plus the cluster's flags (and `tls`), registering with
    /// `group`; waits until every server is healthy.
    async fn with_agents(
        servers: Vec<MariaDb>,
        group: CoordinatorGroup,
        tls: Option<Arc<Pki>>,
        agent: impl Fn(usize, &MariaDb) -> AgentOptions,
    ) -> anyhow::Result<Cluster> {
        let urls = group.urls();
        let starts = servers.iter().enumerate().map(|(i, s)| {
            let mut opts = agent(i, s);
            opts.extra_args.extend([
                "--cluster".into(),
                CLUSTER.into(),
                "--coordinators".into(),
                urls.clone(),
            ]);
            opts.tls = tls.clone();
            AgentProc::start(opts)
        });
        let agents = futures::future::try_join_all(starts).await?;
        let cluster = Cluster {
            servers,
            agents,
            group,
            tls,
        };
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// `lockstep restore-point list --json` (the newest 1000 points).
    pub async fn restore_points(&self) -> anyhow::Result<Value> {
        self.cli_json(&[
            "restore-point",
            "list",
            "--cluster",
            CLUSTER,
            "--limit",
            "1000",
        ])
        .await
    }

    /// `lockstep archive status --json`: one entry per server, and whether
    /// the command exited 0 (it exits 1 when a server has a gap).
    pub async fn archive_status(&self) -> anyhow::Result<(Vec<Value>, bool)> {
        let out = self
            .cli(&["--json", "archive", "status", "--cluster", CLUSTER])
            .await?;
        let list: Value = serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("archive status: {} {}", out.stdout, out.stderr))?;
        Ok((
            list.as_array().cloned().unwrap_or_default(),
            out.status.success(),
        ))
    }

    /// Waits until the catalog's archive of every server reaches the
    /// server's current binlog position and the agents report no lag;
    /// returns the last `archive status`.
    pub async fn wait_archive_caught_up(&self) -> anyhow::Result<Vec<Value>> {
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        loop {
            let (list, _) = self.archive_status().await?;
            let mut behind = Vec::new();
            for (db, s) in self.servers.iter().zip(&list) {
                let (file, pos) = db.binlog_position().await?.context("binlog is off")?;
                let at = (
                    s["file"].as_str().unwrap_or(""),
                    s["end"].as_u64().unwrap_or(0),
                );
                if at != (file.as_str(), pos) || s["head"]["lag_bytes"] != 0 {
                    behind.push(format!(
                        "{}: archived {at:?}, server {file}:{pos}",
                        db.name()
                    ));
                }
            }
            if behind.is_empty() {
                return Ok(list);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the archive did not catch up within {timeout:?}: {behind:?}\n{list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn backups(&self) -> anyhow::Result<Vec<Value>> {
        let out = self
            .cli(&["--json", "catalog", "list", "--cluster", CLUSTER])
            .await?;
        if !out.status.success() {
            return Ok(Vec::new());
        }
        let list: Value = serde_json::from_str(out.stdout.trim())?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    /// Polls `lockstep catalog list` until a backup in `status` is listed,
    /// for at most `timeout`; returns it.
    pub async fn wait_listed(&self, status: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.backups().await?;
            if let Some(b) = list.iter().find(|b| b["status"] == status) {
                return Ok(b.clone());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no {status} backup listed within {timeout:?}: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a backup whose barrier waits: server `slow`'s lock queues
    /// behind a BACKUP STAGE held by the returned connection (see
    /// [`hold_backup_stage`]). Returns the backup id and that connection.
    pub async fn start_backup_held_at_barrier(
        &self,
        slow: usize,
    ) -> anyhow::Result<(String, mysql_async::Conn)> {
        let blocker = hold_backup_stage(&self.servers[slow]).await?;
        Ok((self.start_backup().await?, blocker))
    }

    /// Starts `lockstep restore run` of backup `id` (whose servers are
    /// `{prefix}0..`) into `targets` in a task, and waits until the catalog
    /// shows it (the `nth` restore of the backup) RUNNING. Dropping or
    /// aborting the task kills the CLI process.
    pub async fn restore_running(
        &self,
        id: &str,
        prefix: &str,
        nth: usize,
        targets: &[MariaDb],
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<CliOutput>>> {
        let args = restore_args(id, prefix, targets);
        let urls = self.group.urls();
        let env = self.cli_env()?;
        let run = tokio::spawn(async move {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            run_lockstep_with(&urls, &env, &argv).await
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.cli_json(&["restore", "list", "--backup", id]).await?;
            if list[nth]["status"] == "RUNNING" {
                return Ok(run);
            }
            anyhow::ensure!(Instant::now() < deadline, "restore never ran: {list}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until agent `i` holds its server's lock for a backup.
    pub async fn wait_locked(&self, i: usize) -> anyhow::Result<()> {
        self.wait_agent(i, "locked", |st| st.lock_held).await
    }

    /// Waits until agent `i`'s `Status` satisfies `done` (`what` names it).
    pub async fn wait_agent(
        &self,
        i: usize,
        what: &str,
        done: impl Fn(&lockstep_proto::agent::StatusReply) -> bool,
    ) -> anyhow::Result<()> {
        self.agents[i]
            .wait_status(what, Duration::from_secs(10), done)
            .await
            .map(drop)
    }

    /// After a fault: the next backup of the cluster completes.
    pub async fn next_backup_completes(&self) -> anyhow::Result<()> {
        self.wait_healthy(Duration::from_secs(30)).await?;
        let next = self
            .cli_json(&["backup", "start", "--cluster", CLUSTER, "--wait"])
            .await?;
        anyhow::ensure!(next["status"] == "COMPLETE", "next backup: {next}");
        Ok(())
    }

    /// The causal chain's targets: record k on server k mod N.
    pub fn chain(&self) -> Vec<Target> {
        Target::chain_on(&self.servers)
    }

    /// The environment of a CLI run as `identity` (with TLS; none without).
    pub fn cli_env_as(&self, identity: &str) -> anyhow::Result<Vec<(String, String)>> {
        match &self.tls {
            Some(pki) => pki.env(identity),
            None => Ok(Vec::new()),
        }
    }

    fn cli_env(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.cli_env_as("operator")
    }

    /// `lockstep ARGS` as `identity` (with TLS).
    pub async fn cli_as(&self, identity: &str, args: &[&str]) -> anyhow::Result<CliOutput> {
        run_lockstep_with(&self.group.urls(), &self.cli_env_as(identity)?, args).await
    }
}

/// Holds `BACKUP STAGE START` on `db` from an idle connection: pre-flight
/// passes, and an agent's own BACKUP STAGE queues behind it until its
/// lock-wait budget. Dropping the connection ends it.
pub async fn hold_backup_stage(db: &MariaDb) -> anyhow::Result<mysql_async::Conn> {
    let mut conn = db.conn().await?;
    conn.query_drop("BACKUP STAGE START")
        .await
        .with_context(|| format!("BACKUP STAGE START on {}", db.name()))?;
    Ok(conn)
}

/// After a fault: no server stays locked, so the causal chain keeps growing.
pub async fn writes_resume(writer: &CausalWriter) -> anyhow::Result<()> {
    let now = writer.committed();
    writer
        .wait_committed(now + 30, Duration::from_secs(15))
        .await?;
    Ok(())
}

impl CatalogCli for Cluster {
    /// `lockstep --coordinators <every member> ARGS`.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        run_lockstep_with(&self.group.urls(), &self.cli_env()?, args).await
    }

    fn server_count(&self) -> usize {
        self.servers.len()
    }
}

/// After a physical `restore run --json` (`report`) into `datadirs` (one
/// per server, in the backup's order): every server of the report is
/// physical and recovered to its `cut` GTID position, and a server started
/// on each datadir (with the source's server and domain ids, `ids`) is at
/// it too. Returns the started servers.
pub async fn start_at_cut(
    report: &Value,
    datadirs: &[std::path::PathBuf],
    ids: &[(u32, u32)],
    cut: &[String],
) -> anyhow::Result<Vec<MariaDb>> {
    anyhow::ensure!(report["ok"] == true, "restore failed: {report}");
    let servers = report["servers"].as_array().cloned().unwrap_or_default();
    anyhow::ensure!(servers.len() == cut.len(), "{report}");
    for (s, want) in servers.iter().zip(cut) {
        anyhow::ensure!(s["kind"] == "physical", "{s}");
        anyhow::ensure!(
            s["gtid_binlog_pos"] == want.as_str(),
            "recovered to {} instead of the cut's {want}: {s}",
            s["gtid_binlog_pos"]
        );
    }
    step!("start servers on the restored datadirs: each at its cut");
    let mut restored = Vec::new();
    for (i, d) in datadirs.iter().enumerate() {
        let opts = crate::mariadb::MariaDbOptions {
            server_id: Some(ids[i].0),
            gtid_domain_id: Some(ids[i].1),
            ..crate::mariadb::MariaDbOptions::named(format!("restored{i}"))
        };
        let db = MariaDb::start_on(d.clone(), opts).await?;
        let at = db.gtid_binlog_pos().await?;
        anyhow::ensure!(
            at == cut[i],
            "server {i} started at {at}, not the cut's {}",
            cut[i]
        );
        restored.push(db);
    }
    Ok(restored)
}
