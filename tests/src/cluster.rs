//! A cluster whose links go through fault-injecting proxies: real MariaDB
//! servers, an agent beside each, and a raft group of coordinators, wired so
//! that every connection between two roles crosses a [`Proxy`]:
//!
//! - each agent advertises the URL of a proxy in front of it, so every
//!   coordinator reaches it through that proxy;
//! - each coordinator's peer URL (in every member's `--peers`) is a proxy in
//!   front of it, so raft traffic, status calls and leader redirects cross
//!   it; the agents register and heartbeat through the same proxies.
//!
//! A link between two nodes is faulted in both proxies involved, for the
//! connections of the other node's process only ([`ProxyHandle::set_from`]),
//! so cutting the leader off from an agent leaves the other coordinators'
//! connections to that agent alone. The test's own CLI calls use the
//! coordinators' direct URLs (skipping an isolated one) and are never faulted.
//!
//! [`ProxyHandle::set_from`]: crate::proxy::ProxyHandle::set_from

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lockstep_proto::agent::{StatusReply, StatusRequest};
use serde_json::Value;

use crate::agent::{AgentOptions, AgentProc, CliOutput};
use crate::catalog_cli::CatalogCli;
use crate::causal::Target;
use crate::coordinator::{CoordinatorGroup, CoordinatorOptions, run_lockstep};
use crate::mariadb::MariaDb;
use crate::ports;
use crate::process::Supervised as _;
use crate::proxy::{Fault, Proxy};

pub use crate::catalog_cli::CLUSTER;
/// How often cluster state is polled.
const POLL: Duration = Duration::from_millis(20);

/// A process of the cluster that has a proxy in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// `group.members[i]`.
    Coordinator(usize),
    /// `agents[i]` (beside `servers[i]`).
    Agent(usize),
}

/// How to build a [`ProxiedCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Server `i` is named `{prefix}{i}`.
    pub prefix: String,
    /// How many servers (each with an agent).
    pub servers: usize,
    /// How many coordinators (1, 3 or 5).
    pub coordinators: usize,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// Extra settings for every coordinator.
    pub coordinator: CoordinatorOptions,
}

impl ClusterOptions {
    /// 3 servers named `{prefix}0..2` and 3 coordinators.
    pub fn new(prefix: impl Into<String>) -> ClusterOptions {
        ClusterOptions {
            prefix: prefix.into(),
            servers: 3,
            coordinators: 3,
            agent_args: Vec::new(),
            coordinator: CoordinatorOptions::default(),
        }
    }
}

/// Servers, agents and coordinators with a proxy in front of every agent and
/// every coordinator. Dropping it stops everything.
#[derive(Debug)]
pub struct ProxiedCluster {
    /// The database servers, by position.
    pub servers: Vec<MariaDb>,
    /// The agents; `agents[i]` manages `servers[i]`.
    pub agents: Vec<AgentProc>,
    /// The coordinators.
    pub group: CoordinatorGroup,
    agent_proxies: Vec<Proxy>,
    coordinator_proxies: Vec<Proxy>,
    /// Coordinators the CLI calls avoid (isolated ones).
    cli_skips: Mutex<Vec<usize>>,
}

impl ProxiedCluster {
    /// Starts everything and waits until every server is registered and
    /// healthy.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<ProxiedCluster> {
        crate::init_tracing();
        let ports = (0..opts.coordinators)
            .map(|_| ports::free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let mut coordinator_proxies = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let target = ([127, 0, 0, 1], *port).into();
            coordinator_proxies.push(Proxy::start(format!("coordinator {}", i + 1), target).await?);
        }
        let peers = coordinator_proxies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}={}", i + 1, p.url()))
            .collect::<Vec<_>>()
            .join(",");
        let names: Vec<String> = (0..opts.servers)
            .map(|i| format!("{}{i}", opts.prefix))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (servers, group) = tokio::try_join!(
            MariaDb::start_many(&refs),
            CoordinatorGroup::start_on(&ports, &peers, &opts.coordinator)
        )?;
        let coordinator_urls = coordinator_proxies
            .iter()
            .map(Proxy::url)
            .collect::<Vec<_>>()
            .join(",");
        let mut agent_proxies = Vec::new();
        for s in &servers {
            agent_proxies.push(Proxy::start_without_target(format!("agent {}", s.name())).await?);
        }
        let starts = servers.iter().zip(&agent_proxies).map(|(s, proxy)| {
            let mut a = AgentOptions::new(s.name(), s.url());
            a.advertise = Some(proxy.url());
            a.extra_args = vec![
                "--cluster".into(),
                CLUSTER.into(),
                "--coordinators".into(),
                coordinator_urls.clone(),
            ];
            a.extra_args.extend(opts.agent_args.iter().cloned());
            AgentProc::start(a)
        });
        let agents = futures::future::try_join_all(starts).await?;
        for (agent, proxy) in agents.iter().zip(&agent_proxies) {
            proxy
                .handle()
                .set_target(([127, 0, 0, 1], agent.port()).into());
        }
        for s in &servers {
            crate::probe::create_probe_table(s).await?;
        }
        let cluster = ProxiedCluster {
            servers,
            agents,
            group,
            agent_proxies,
            coordinator_proxies,
            cli_skips: Mutex::new(Vec::new()),
        };
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// The proxy in front of `node`.
    pub fn proxy(&self, node: Node) -> &Proxy {
        match node {
            Node::Coordinator(i) => &self.coordinator_proxies[i],
            Node::Agent(i) => &self.agent_proxies[i],
        }
    }

    /// The PID of `node`'s process.
    pub fn pid(&self, node: Node) -> anyhow::Result<u32> {
        match node {
            Node::Coordinator(i) => self.group.members[i].pid(),
            Node::Agent(i) => self.agents[i].pid(),
        }
        .with_context(|| format!("{node:?} is not running"))
    }

    /// Every node of the cluster.
    pub fn nodes(&self) -> Vec<Node> {
        (0..self.group.members.len())
            .map(Node::Coordinator)
            .chain((0..self.agents.len()).map(Node::Agent))
            .collect()
    }

    /// Applies `fault` to the link between `a` and `b`, both ways: to `a`'s
    /// connections to `b` and `b`'s connections to `a`. Directions in the
    /// fault are those of each connection (up = towards the one connected
    /// to), so use symmetric faults here.
    pub fn set_link(&self, a: Node, b: Node, fault: Fault) -> anyhow::Result<()> {
        let (pa, pb) = (self.pid(a)?, self.pid(b)?);
        self.proxy(b).handle().set_from(pa, fault);
        self.proxy(a).handle().set_from(pb, fault);
        Ok(())
    }

    /// Applies `fault` to every link of `node`. An isolated coordinator is
    /// left out of the CLI calls until [`ProxiedCluster::heal`].
    pub fn isolate(&self, node: Node, fault: Fault) -> anyhow::Result<()> {
        for other in self.nodes().into_iter().filter(|n| *n != node) {
            self.set_link(node, other, fault)?;
        }
        if let Node::Coordinator(i) = node {
            self.cli_skips
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(i);
        }
        Ok(())
    }

    /// Every proxy forwards normally again (stalled bytes are delivered).
    pub fn heal(&self) {
        for p in self.agent_proxies.iter().chain(&self.coordinator_proxies) {
            p.handle().heal();
        }
        self.cli_skips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The direct URLs of the coordinators the CLI uses (all but isolated
    /// ones).
    pub fn cli_urls(&self) -> String {
        let skips = self
            .cli_skips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.group
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| !skips.contains(i))
            .map(|(_, m)| m.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `lockstep backup start --wait`: the finished backup (COMPLETE or
    /// FAILED).
    pub async fn backup_and_wait(&self) -> anyhow::Result<Value> {
        let out = self
            .cli(&["--json", "backup", "start", "--cluster", CLUSTER, "--wait"])
            .await?;
        serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("parse `backup start --wait`: {} {}", out.stdout, out.stderr))
    }

    /// Agent `i`'s `Status`.
    pub async fn agent_status(&self, i: usize) -> anyhow::Result<StatusReply> {
        let mut client = self.agents[i].client().await?;
        Ok(client
            .status(StatusRequest {})
            .await
            .with_context(|| format!("Status of agent {}", self.agents[i].name()))?
            .into_inner())
    }

    /// Waits until agent `i` holds its server's lock for backup `id`.
    pub async fn wait_locked(&self, i: usize, id: &str, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("locked for backup {id}");
        self.agents[i]
            .wait_status(&what, timeout, |st| st.lock_held && st.backup_id == id)
            .await
            .map(drop)
    }

    /// Waits until no agent is preparing, locked or transferring (a
    /// transfer whose caller vanished runs to its end). Snapshots kept for a
    /// vanished caller (`committed`) do not count: a new backup supersedes
    /// them.
    pub async fn wait_agents_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for agent in &self.agents {
            let left = deadline.saturating_duration_since(Instant::now());
            agent
                .wait_status("settled", left, |st| {
                    st.state == "idle" || st.state == "committed"
                })
                .await?;
        }
        Ok(())
    }

    /// Waits until a coordinator other than those in `not` leads and every
    /// coordinator the CLI uses names it; returns its index.
    pub async fn wait_new_leader(&self, not: &[usize], timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let skips = self
            .cli_skips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        loop {
            let mut seen = Vec::new();
            for (i, m) in self.group.members.iter().enumerate() {
                if !skips.contains(&i)
                    && let Ok(st) = m.status().await
                {
                    seen.push((i, st));
                }
            }
            if let Some((i, leader)) = seen
                .iter()
                .find(|(i, s)| s.role == "leader" && !not.contains(i))
                && seen.iter().all(|(_, s)| s.leader_id == leader.id)
            {
                return Ok(*i);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no new leader within {timeout:?}: {seen:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The causal chain's targets: record k on server k mod N.
    pub fn chain(&self) -> Vec<Target> {
        Target::chain_on(&self.servers)
    }
}

impl CatalogCli for ProxiedCluster {
    /// `lockstep ARGS` against [`ProxiedCluster::cli_urls`].
    async fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        run_lockstep(&self.cli_urls(), args).await
    }

    fn server_count(&self) -> usize {
        self.servers.len()
    }
}
