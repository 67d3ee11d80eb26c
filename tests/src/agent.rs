//! The real `lockstep-agent` binary as a test process: `serve` on a free
//! port with a gRPC client for it, and one-shot CLI runs.

use std::sync::Arc;

use lockstep_proto::tls::Transport;

use crate::tls::Pki;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lockstep_proto::agent::node_agent_client::NodeAgentClient;
use lockstep_proto::agent::{StatusReply, StatusRequest};
use tonic::transport::Channel;

use crate::ports;
use crate::process::{ChildProcess, Supervised, bin_path, short_temp_dir};

/// The agent binary's name in the target directory.
pub const AGENT_BIN: &str = "lockstep-agent";
/// How long an agent may take to answer `Status` after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(10);
/// How often [`AgentProc::wait_status`] asks again.
const STATUS_POLL: Duration = Duration::from_millis(10);
/// How long one readiness probe (connect + `Status`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many ports to try when another process takes the one we picked.
const PORT_ATTEMPTS: usize = 10;
/// Lines of the agent's log quoted in errors.
const LOG_TAIL_LINES: usize = 30;
/// How long [`run_agent_cli`] lets the binary run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(600);

/// How to start an agent (`lockstep-agent serve`).
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--name`: the agent's name for its server.
    pub name: String,
    /// `--mysql`: the URL of the server it manages.
    pub mysql_url: String,
    /// `--sink-dir`: where its disk sink writes backups. Empty means
    /// `sink/` inside the agent's temp dir (gone when the agent is dropped).
    pub sink_dir: PathBuf,
    /// Extra arguments, appended after ours.
    pub extra_args: Vec<String>,
    /// Listen on 0.0.0.0 and advertise `http://127.0.0.1:PORT`, as agents in
    /// containers do.
    pub all_interfaces: bool,
    /// `--advertise`: the URL the coordinators reach it at, when that is not
    /// its own address (e.g. a [`crate::proxy::Proxy`] in front of it).
    pub advertise: Option<String>,
    /// `--pool` directories it holds for other agents. A media agent (no
    /// `mysql_url`) started without any gets `pool/` in its temp dir.
    pub pools: Vec<PathBuf>,
    /// Environment variables for the process (e.g. `AWS_*` for S3 sinks).
    pub env: Vec<(String, String)>,
    /// Mutual TLS: the agent serves as `agent-NAME` of this PKI, and the
    /// harness's own calls to it go as `coordinator-1`.
    pub tls: Option<Arc<Pki>>,
}

impl AgentOptions {
    /// Options for a media agent named `name`: no database server, one disk
    /// pool in its temp dir (see [`AgentProc::pool`]).
    pub fn media(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Options for an agent named `name` managing the server at `mysql_url`,
    /// with its sink in its own temp dir.
    pub fn new(name: impl Into<String>, mysql_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mysql_url: mysql_url.into(),
            ..Self::default()
        }
    }
}

/// A running `lockstep-agent serve`. Dropping it kills the process (by PID)
/// and removes its temp dir (which holds its log).
#[derive(Debug)]
pub struct AgentProc {
    opts: AgentOptions,
    port: u16,
    /// Declared before `dir`: the process dies before its log goes.
    child: Option<ChildProcess>,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

impl AgentProc {
    /// Starts the agent on a free port and waits until its `Status` RPC
    /// answers.
    pub async fn start(opts: AgentOptions) -> anyhow::Result<AgentProc> {
        crate::init_tracing();
        let dir = short_temp_dir("ls-agent-")
            .with_context(|| format!("create temp dir for agent {}", opts.name))?;
        let log_path = dir.path().join("agent.log");
        let mut opts = opts;
        if opts.sink_dir.as_os_str().is_empty() {
            opts.sink_dir = dir.path().join("sink");
            std::fs::create_dir(&opts.sink_dir)
                .with_context(|| format!("create sink dir {}", opts.sink_dir.display()))?;
        }
        if opts.mysql_url.is_empty() && opts.pools.is_empty() {
            let pool = dir.path().join("pool");
            std::fs::create_dir(&pool)
                .with_context(|| format!("create pool dir {}", pool.display()))?;
            opts.pools.push(pool);
        }
        let mut agent = AgentProc {
            opts,
            port: 0,
            child: None,
            dir: Some(dir),
            log_path,
        };
        agent.launch(None).await?;
        Ok(agent)
    }

    async fn launch(&mut self, fixed_port: Option<u16>) -> anyhow::Result<()> {
        let bin = bin_path(AGENT_BIN)?;
        let started = Instant::now();
        for attempt in 1..=PORT_ATTEMPTS {
            let port = match fixed_port {
                Some(port) => port,
                None => ports::free_port()?,
            };
            if let Some(child) = self.launch_on(&bin, port).await? {
                self.port = port;
                self.child = Some(child);
                tracing::info!(agent = self.opts.name, port, pid = self.pid(), elapsed = ?started.elapsed(), "agent ready");
                return Ok(());
            }
            tracing::info!(
                agent = self.opts.name,
                port,
                attempt,
                "port taken by another process; retrying"
            );
        }
        bail!(
            "start agent {}: no port could be bound after {PORT_ATTEMPTS} attempts\nlog tail ({}):\n{}",
            self.opts.name,
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// One attempt: `Ok(None)` if the port was taken.
    async fn launch_on(&mut self, bin: &Path, port: u16) -> anyhow::Result<Option<ChildProcess>> {
        let log_offset = std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut cmd = Command::new(bin);
        cmd.arg("serve");
        if self.opts.all_interfaces {
            cmd.arg("--listen").arg(format!("0.0.0.0:{port}"));
            if self.opts.tls.is_none() {
                // Plaintext off loopback is refused without it.
                cmd.arg("--insecure-plaintext");
            }
        } else {
            cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
        if let Some(url) = &self.opts.advertise {
            cmd.arg("--advertise").arg(url);
        } else if self.opts.all_interfaces {
            cmd.arg("--advertise")
                .arg(format!("http://127.0.0.1:{port}"));
        }
        cmd.arg("--name").arg(&self.opts.name);
        if !self.opts.mysql_url.is_empty() {
            cmd.arg("--mysql").arg(&self.opts.mysql_url);
        }
        for pool in &self.opts.pools {
            cmd.arg("--pool").arg(pool);
        }
        if let Some(pki) = &self.opts.tls {
            cmd.args(pki.args(&format!("agent-{}", self.opts.name))?);
        }
        cmd.arg("--sink-dir")
            .arg(&self.opts.sink_dir)
            .args(&self.opts.extra_args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", agent_log_filter())
            .env("LOCKSTEP_LOG", agent_log_filter());
        let mut child =
            ChildProcess::spawn(format!("agent {}", self.opts.name), cmd, &self.log_path)?;
        let addr = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_exit()? {
                let new_log = std::fs::read(&self.log_path)
                    .map(|b| {
                        String::from_utf8_lossy(
                            &b[usize::try_from(log_offset).unwrap_or(0).min(b.len())..],
                        )
                        .into_owned()
                    })
                    .unwrap_or_default();
                if ports::says_address_in_use(&new_log) {
                    return Ok(None);
                }
                bail!(
                    "start agent {} on port {port}: it exited early ({status})\nlog tail ({}):\n{}",
                    self.opts.name,
                    self.log_path.display(),
                    child.log_tail(LOG_TAIL_LINES)
                );
            }
            let transport = crate::tls::transport_as(self.opts.tls.as_ref(), "coordinator-1")?;
            let probe = probe_status(&transport, &addr);
            let last_error = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(())) => return Ok(Some(child)),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("Status did not answer within {PROBE_TIMEOUT:?}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "start agent {} on port {port}: Status not answering after {READY_TIMEOUT:?} (last: {last_error})\nlog tail ({}):\n{}",
                    self.opts.name,
                    self.log_path.display(),
                    child.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The options it was started with.
    pub fn options(&self) -> &AgentOptions {
        &self.opts
    }

    /// The disk sink's root directory (`--sink-dir`).
    pub fn sink_dir(&self) -> &Path {
        &self.opts.sink_dir
    }

    /// Its first `--pool` directory (a media agent's pool).
    pub fn pool(&self) -> Option<&Path> {
        self.opts.pools.first().map(PathBuf::as_path)
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The gRPC port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, for gRPC clients.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new gRPC client.
    /// With TLS the harness calls as `coordinator-1`.
    pub async fn client(&self) -> anyhow::Result<NodeAgentClient<Channel>> {
        self.client_as("coordinator-1").await
    }

    /// A new gRPC client calling as `identity` (with TLS; plaintext
    /// otherwise).
    pub async fn client_as(&self, identity: &str) -> anyhow::Result<NodeAgentClient<Channel>> {
        let transport = crate::tls::transport_as(self.opts.tls.as_ref(), identity)?;
        let channel = crate::tls::channel(&transport, &self.addr())
            .await
            .with_context(|| format!("connect to agent {} at {}", self.opts.name, self.addr()))?;
        Ok(NodeAgentClient::new(channel))
    }

    /// Polls the agent's `Status` until `done` holds, for at most `timeout`,
    /// and returns that status; the error names the agent, `what` was
    /// awaited and the last status seen.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&StatusReply) -> bool,
    ) -> anyhow::Result<StatusReply> {
        let mut client = self.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let st = client
                .status(StatusRequest {})
                .await
                .with_context(|| format!("Status of agent {}", self.opts.name))?
                .into_inner();
            if done(&st) {
                return Ok(st);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "agent {} not {what} after {timeout:?}: {st:?}",
                self.opts.name
            );
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// The file holding the agent's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::process::file_tail(&self.log_path, n)
    }

    /// Like [`AgentProc::restart`], with `extra_args` in place of the
    /// options' own.
    pub async fn restart_with(&mut self, extra_args: Vec<String>) -> anyhow::Result<()> {
        self.opts.extra_args = extra_args;
        self.restart().await
    }

    /// Stops the agent if it runs, then starts it again with the same
    /// options on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        let port = self.port;
        self.launch(Some(port))
            .await
            .with_context(|| format!("restart agent {} on port {port}", self.opts.name))
    }
}

impl Supervised for AgentProc {
    fn child(&self) -> Option<&ChildProcess> {
        self.child.as_ref()
    }

    fn child_slot(&mut self) -> &mut Option<ChildProcess> {
        &mut self.child
    }

    fn label(&self) -> String {
        format!("agent {}", self.opts.name)
    }

    fn kind(&self) -> &'static str {
        "agent"
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let dir = self.dir.take();
        self.release(dir);
    }
}

/// One readiness probe: connect and call `Status`. Any answer from the
/// service counts, except `Unavailable` (the transport's "not there yet").
async fn probe_status(transport: &Transport, addr: &str) -> anyhow::Result<()> {
    let mut client = NodeAgentClient::new(crate::tls::channel(transport, addr).await?);
    match client.status(StatusRequest {}).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::Unavailable => Err(status).context("Status"),
        Err(status) => {
            tracing::debug!(addr, %status, "agent answers Status with an error; it is serving");
            Ok(())
        }
    }
}

/// The log filter given to the project's binaries: `$LOCKSTEP_AGENT_LOG`, or
/// `info`. Passed as both `RUST_LOG` and `LOCKSTEP_LOG` (the agent's `--log`).
fn agent_log_filter() -> String {
    std::env::var("LOCKSTEP_AGENT_LOG").unwrap_or_else(|_| "info".into())
}

/// What a finished CLI run printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl CliOutput {
    /// Fails (quoting stdout and stderr) unless the exit status is 0.
    pub fn success(&self) -> anyhow::Result<&Self> {
        if !self.status.success() {
            bail!(
                "command failed ({})\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs `lockstep-agent ARGS...` to completion (killed after 10 min) and
/// captures its output.
pub async fn run_agent_cli(args: &[&str]) -> anyhow::Result<CliOutput> {
    run_cli(&bin_path(AGENT_BIN)?, args, CLI_TIMEOUT).await
}

/// Runs `bin ARGS...` to completion with the log filter of
/// `LOCKSTEP_AGENT_LOG` (default `info`), killed after `timeout`, and captures
/// its output.
pub async fn run_cli(bin: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<CliOutput> {
    run_cli_env(bin, args, &[], timeout).await
}

/// [`run_cli`] with extra environment variables.
pub async fn run_cli_env(
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<CliOutput> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", agent_log_filter())
        .env("LOCKSTEP_LOG", agent_log_filter())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let what = format!("{} {}", bin.display(), args.join(" "));
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("`{what}` still running after {timeout:?}; killed it"))?
        .with_context(|| format!("run `{what}`"))?;
    Ok(CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
