//! The real `lockstep-coordinator` binary as test processes: one
//! [`CoordinatorProc`] per member, a [`CoordinatorGroup`] of 1, 3 or 5 on
//! free ports with their raft stores in temp dirs (kept across restarts),
//! and [`run_lockstep`] for runs of the `lockstep` CLI against a group.

use std::sync::Arc;

use crate::tls::Pki;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use lockstep_proto::coordinator::{Member, NodeStatusRequest};

use crate::agent::CliOutput;
use crate::ports;
use crate::process::{ChildProcess, Supervised, bin_path, short_temp_dir};

/// The coordinator binary's name in the target directory.
pub const COORDINATOR_BIN: &str = "lockstep-coordinator";
/// The CLI binary's name in the target directory.
pub const CLI_BIN: &str = "lockstep";
/// How long a coordinator may take to answer `NodeStatus` after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness and leadership are polled.
const POLL: Duration = Duration::from_millis(20);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of a log quoted in errors.
const LOG_TAIL_LINES: usize = 30;
/// How long one `lockstep` CLI run may take.
pub const LOCKSTEP_CLI_TIMEOUT: Duration = Duration::from_secs(300);

/// Extra settings for coordinators started by the harness.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorOptions {
    /// Extra environment variables, e.g. `FAILPOINTS` (which needs binaries
    /// built with `--features lockstep-coordinator/failpoints`).
    pub env: Vec<(String, String)>,
    /// Extra arguments, appended after ours, e.g. `--lease 4s`.
    pub args: Vec<String>,
    /// Mutual TLS: member N serves as `coordinator-N` of this PKI, and the
    /// harness's own calls go as `operator`.
    pub tls: Option<Arc<Pki>>,
}

impl CoordinatorOptions {
    /// Options with these environment variables and no extra arguments.
    pub fn with_env(env: &[(&str, &str)]) -> CoordinatorOptions {
        CoordinatorOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: Vec::new(),
            tls: None,
        }
    }
}

/// A running `lockstep-coordinator`. Dropping it kills the process and
/// removes its temp dir (raft store and log).
#[derive(Debug)]
pub struct CoordinatorProc {
    id: u64,
    port: u16,
    peers: String,
    /// Extra environment, e.g. `FAILPOINTS`.
    env: Vec<(String, String)>,
    /// Extra arguments, after ours.
    args: Vec<String>,
    tls: Option<Arc<Pki>>,
    /// Declared before `dir`: the process dies before its files go.
    child: Option<ChildProcess>,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl CoordinatorProc {
    /// Starts member `id` on `port` with `peers` ("ID=URL,..."), its store
    /// in a new temp dir, and waits until it answers `NodeStatus`.
    pub async fn start(id: u64, port: u16, peers: &str) -> anyhow::Result<CoordinatorProc> {
        CoordinatorProc::start_with_env(id, port, peers, &[]).await
    }

    /// Like [`CoordinatorProc::start`], with extra environment variables.
    pub async fn start_with_env(
        id: u64,
        port: u16,
        peers: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<CoordinatorProc> {
        let opts = CoordinatorOptions::with_env(env);
        CoordinatorProc::start_with_options(id, port, peers, &opts).await
    }

    /// Like [`CoordinatorProc::start`], with extra environment and arguments.
    pub async fn start_with_options(
        id: u64,
        port: u16,
        peers: &str,
        opts: &CoordinatorOptions,
    ) -> anyhow::Result<CoordinatorProc> {
        crate::init_tracing();
        let dir = short_temp_dir("ls-coord-")
            .with_context(|| format!("create temp dir for coordinator {id}"))?;
        let mut c = CoordinatorProc {
            id,
            port,
            peers: peers.to_string(),
            env: opts.env.clone(),
            args: opts.args.clone(),
            tls: opts.tls.clone(),
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("coordinator.log"),
            child: None,
            dir: Some(dir),
        };
        c.launch().await?;
        Ok(c)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let bin = bin_path(COORDINATOR_BIN)?;
        // Through `sh`, which ignores SIGXFSZ and then becomes the
        // coordinator (same PID): a file-size limit set on it
        // ([`CoordinatorProc::limit_file_size`]) then fails its writes with
        // EFBIG, as a full disk fails them with ENOSPC, instead of killing it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("trap '' XFSZ; exec \"$0\" \"$@\"")
            .arg(bin)
            .arg("--id")
            .arg(self.id.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--peers")
            .arg(&self.peers)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(match &self.tls {
                Some(pki) => pki.args(&format!("coordinator-{}", self.id))?,
                None => Vec::new(),
            })
            .args(&self.args)
            .env("LOCKSTEP_LOG", log_filter())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child =
            ChildProcess::spawn(format!("coordinator {}", self.id), cmd, &self.log_path)?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_exit()? {
                bail!(
                    "start coordinator {} on port {}: it exited early ({status})\nlog tail ({}):\n{}",
                    self.id,
                    self.port,
                    self.log_path.display(),
                    child.log_tail(LOG_TAIL_LINES)
                );
            }
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, self.node_status()).await {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "start coordinator {} on port {}: NodeStatus not answering after {READY_TIMEOUT:?}\nlog tail ({}):\n{}",
                    self.id,
                    self.port,
                    self.log_path.display(),
                    child.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL).await;
        }
        tracing::info!(
            id = self.id,
            port = self.port,
            pid = child.pid(),
            "coordinator ready"
        );
        self.child = Some(child);
        Ok(())
    }

    /// This member's raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory of its raft store.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::process::file_tail(&self.log_path, n)
    }

    /// Its raft state as `NodeStatus` reports it.
    pub async fn status(&self) -> anyhow::Result<Member> {
        tokio::time::timeout(PROBE_TIMEOUT, self.node_status())
            .await
            .with_context(|| format!("coordinator {} NodeStatus timed out", self.id))?
    }

    /// Limits the size of any file the running process writes to `bytes`
    /// (RLIMIT_FSIZE, set with util-linux `prlimit`): a write that would
    /// grow a file past it fails with EFBIG, like a write to a full disk.
    pub fn limit_file_size(&self, bytes: u64) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("coordinator {} is not running", self.id))?;
        let out = Command::new("prlimit")
            .arg("--pid")
            .arg(pid.to_string())
            .arg(format!("--fsize={bytes}:{bytes}"))
            .output()
            .context("run prlimit (util-linux)")?;
        anyhow::ensure!(
            out.status.success(),
            "prlimit --pid {pid} --fsize={bytes}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// exit status, or `None` if it still runs (or was not running).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Ok(None);
            };
            if let Some(status) = child.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Like [`CoordinatorProc::restart`], with `peers` from now on.
    pub async fn restart_with_peers(&mut self, peers: &str) -> anyhow::Result<()> {
        self.peers = peers.to_string();
        self.restart().await
    }

    /// Stops it if it runs and starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.launch()
            .await
            .with_context(|| format!("restart coordinator {}", self.id))
    }
}

impl Supervised for CoordinatorProc {
    fn child(&self) -> Option<&ChildProcess> {
        self.child.as_ref()
    }

    fn child_slot(&mut self) -> &mut Option<ChildProcess> {
        &mut self.child
    }

    fn label(&self) -> String {
        format!("coordinator {}", self.id)
    }

    fn kind(&self) -> &'static str {
        "coordinator"
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        let dir = self.dir.take();
        self.release(dir);
    }
}

impl CoordinatorProc {
    /// The TLS setup it runs with, if any.
    pub fn tls(&self) -> Option<&Arc<Pki>> {
        self.tls.as_ref()
    }

    async fn node_status(&self) -> anyhow::Result<Member> {
        let url = self.url();
        let transport = crate::tls::transport_as(self.tls.as_ref(), "operator")?;
        let channel = crate::tls::channel(&transport, &url).await?;
        node_status(CoordinatorClient::new(channel), &url).await
    }
}

async fn node_status(
    mut client: CoordinatorClient<tonic::transport::Channel>,
    url: &str,
) -> anyhow::Result<Member> {
    Ok(client
        .node_status(NodeStatusRequest {})
        .await
        .with_context(|| format!("NodeStatus of coordinator {url}"))?
        .into_inner())
}

/// A raft group of coordinators on 127.0.0.1.
#[derive(Debug)]
pub struct CoordinatorGroup {
    /// The members, by position (member i has raft id i + 1).
    pub members: Vec<CoordinatorProc>,
}

impl CoordinatorGroup {
    /// Starts `n` members on free ports and waits until they agree on a
    /// leader.
    pub async fn start(n: usize) -> anyhow::Result<CoordinatorGroup> {
        CoordinatorGroup::start_with_env(n, &[]).await
    }

    /// Like [`CoordinatorGroup::start`], with extra environment variables
    /// for every member (e.g. `FAILPOINTS`, which needs binaries built with
    /// `--features lockstep-coordinator/failpoints`, as scripts/test.sh does).
    pub async fn start_with_env(
        n: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<CoordinatorGroup> {
        CoordinatorGroup::start_with_options(n, &CoordinatorOptions::with_env(env)).await
    }

    /// Like [`CoordinatorGroup::start`], with `opts` for every member.
    pub async fn start_with_options(
        n: usize,
        opts: &CoordinatorOptions,
    ) -> anyhow::Result<CoordinatorGroup> {
        let ports = (0..n)
            .map(|_| ports::free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=http://127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        CoordinatorGroup::start_on(&ports, &peers, opts).await
    }

    /// Starts member i (raft id i + 1) on `ports[i]`, every member with
    /// `peers` as its `--peers` (which may name proxies in front of the
    /// members rather than the members themselves), and waits until they
    /// agree on a leader.
    pub async fn start_on(
        ports: &[u16],
        peers: &str,
        opts: &CoordinatorOptions,
    ) -> anyhow::Result<CoordinatorGroup> {
        let starts = ports
            .iter()
            .enumerate()
            .map(|(i, p)| CoordinatorProc::start_with_options(i as u64 + 1, *p, peers, opts));
        let members = futures::future::try_join_all(starts).await?;
        if opts.env.iter().any(|(k, _)| *k == "FAILPOINTS") {
            for m in &members {
                anyhow::ensure!(
                    m.log_tail(LOG_TAIL_LINES).contains("fail point configured"),
                    "coordinator {} has no fail points: build the binaries with --features lockstep-coordinator/failpoints (scripts/test.sh does)",
                    m.id()
                );
            }
        }
        let group = CoordinatorGroup { members };
        group.wait_leader(Duration::from_secs(30)).await?;
        Ok(group)
    }

    /// Every member's URL, comma-separated (for `--coordinators`).
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(CoordinatorProc::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a running member reports itself leader and every other
    /// running member names it; returns its index in `members`.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            let mut seen = Vec::new();
            for m in &self.members {
                if let Ok(st) = m.status().await {
                    seen.push(st);
                }
            }
            if let Some(leader) = seen.iter().find(|s| s.role == "leader")
                && seen.iter().all(|s| s.leader_id == leader.id)
                && let Some(i) = self.members.iter().position(|m| m.id() == leader.id)
            {
                return Ok(i);
            }
            if started.elapsed() > timeout {
                bail!(
                    "no agreed leader among the coordinators after {timeout:?}; last statuses: {seen:?}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Runs `lockstep --coordinators COORDS ARGS...` to completion.
pub async fn run_lockstep(coordinators: &str, args: &[&str]) -> anyhow::Result<CliOutput> {
    run_lockstep_with(coordinators, &[], args).await
}

/// [`run_lockstep`] with `env` (e.g. [`Pki::env`] of an identity).
pub async fn run_lockstep_with(
    coordinators: &str,
    env: &[(String, String)],
    args: &[&str],
) -> anyhow::Result<CliOutput> {
    let mut all = vec!["--coordinators", coordinators];
    all.extend_from_slice(args);
    crate::agent::run_cli_env(&bin_path(CLI_BIN)?, &all, env, LOCKSTEP_CLI_TIMEOUT).await
}

/// The log filter for the coordinators: `$LOCKSTEP_COORDINATOR_LOG` or `info`.
fn log_filter() -> String {
    std::env::var("LOCKSTEP_COORDINATOR_LOG").unwrap_or_else(|_| "info".into())
}
