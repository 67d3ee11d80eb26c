//! Child processes the harness owns: spawning with output to a log file,
//! signals by PID, waiting with a deadline, and killing on drop.
//!
//! Every process is signalled through the [`std::process::Child`] handle we
//! hold, by its PID, never by name, and only while it has not been reaped (so a
//! recycled PID can never be hit). Dropping a [`ChildProcess`] kills and reaps
//! it: no orphans, no zombies.
//!
//! The harness's long-lived processes ([`crate::MariaDb`], [`crate::AgentProc`],
//! [`crate::CoordinatorProc`]) implement [`Supervised`], which gives them the
//! same signal/pause/resume/kill/stop methods.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How often [`ChildProcess::wait_exit`] looks at the child.
const EXIT_POLL: Duration = Duration::from_millis(5);
/// How long [`Supervised::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The signals tests send to processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGTERM`: ask for a clean shutdown.
    Term,
    /// `SIGKILL`: die now (a crash, as far as the process is concerned).
    Kill,
    /// `SIGSTOP`: freeze (the process keeps its sockets but answers nothing).
    Stop,
    /// `SIGCONT`: thaw a stopped process.
    Cont,
    /// `SIGHUP`: reload (certificates).
    Hup,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Hup => libc::SIGHUP,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
            Signal::Stop => "SIGSTOP",
            Signal::Cont => "SIGCONT",
            Signal::Hup => "SIGHUP",
        })
    }
}

/// Sends `sig` to the process `pid`.
///
/// Callers must own `pid` (a child they have not reaped yet); this is what
/// keeps the call from hitting an unrelated process.
pub fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let raw =
        libc::pid_t::try_from(pid).with_context(|| format!("pid {pid} does not fit in pid_t"))?;
    if raw <= 0 {
        bail!("refusing to send {sig} to pid {pid} (0 or negative would hit a process group)");
    }
    if raw_kill(raw, sig.number()) != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("send {sig} to pid {pid}"));
    }
    Ok(())
}

/// True if a process with this PID exists (a zombie counts as existing).
pub fn pid_exists(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // Signal 0 only checks that the process exists and may be signalled.
    raw_kill(raw, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

// The only unsafe code in the harness. `kill(2)` with a positive pid has no
// memory-safety preconditions; `signal` and `pid_exists` restrict pid > 0.
#[allow(unsafe_code)]
fn raw_kill(pid: libc::pid_t, sig: libc::c_int) -> libc::c_int {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) }
}

/// Where the project's binaries are: `$LOCKSTEP_BIN_DIR`, or the cargo
/// target directory the running test binary was built into
/// (`target/debug/deps/<test>` → `target/debug/<name>`).
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("LOCKSTEP_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("find the running test binary")?;
            exe.parent()
                .and_then(Path::parent)
                .with_context(|| format!("find the target directory above {}", exe.display()))?
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "binary {name} not found at {}: run `cargo build --workspace --bins` first \
             (or point LOCKSTEP_BIN_DIR at the directory holding it)",
            path.display()
        );
    }
    Ok(path)
}

/// Returns the last `n` lines of the file at `path`, or a note saying why it
/// could not be read. Reads at most the last 64 KiB.
pub fn file_tail(path: &Path, n: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// A child process with its output in a log file. Killed and reaped on drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to
    /// `log_path`. `name` appears in every error about this process.
    pub fn spawn(
        name: impl Into<String>,
        mut cmd: Command,
        log_path: impl Into<PathBuf>,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let log_path = log_path.into();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open log file {} for {name}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .with_context(|| format!("duplicate log file handle {}", log_path.display()))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        tracing::debug!(name, pid = child.id(), log = %log_path.display(), "spawned");
        Ok(Self {
            name,
            child,
            log_path,
            exit: None,
        })
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file receiving the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the process's stdout/stderr log.
    pub fn log_tail(&self, n: usize) -> String {
        file_tail(&self.log_path, n)
    }

    /// Sends `sig` to the process. Fails if it has already exited and been
    /// reaped (its PID may belong to someone else by now).
    pub fn signal(&mut self, sig: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.try_exit()? {
            bail!(
                "cannot send {sig} to {} (pid {}): it already exited ({status})",
                self.name,
                self.pid()
            );
        }
        signal(self.pid(), sig).with_context(|| format!("signal {}", self.name))
    }

    /// The exit status if the process has exited (reaping it), without
    /// blocking.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().with_context(|| {
                format!(
                    "check whether {} (pid {}) exited",
                    self.name,
                    self.child.id()
                )
            })?;
        }
        Ok(self.exit)
    }

    /// True while the process has not exited (a stopped process is running).
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_exit(), Ok(None))
    }

    /// Waits until the process exits or `timeout` passes; `None` on timeout.
    ///
    /// Blocks the calling thread (polling every few milliseconds).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// SIGKILL and reap. A no-op if the process already exited.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        self.signal(Signal::Kill)?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reap {} (pid {}) after SIGKILL", self.name, self.pid()))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Clean shutdown: SIGTERM (and SIGCONT, in case it is stopped), wait up
    /// to `grace`, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        self.signal(Signal::Term)?;
        // A stopped process keeps SIGTERM pending until it runs again.
        let _ = self.signal(Signal::Cont);
        if let Some(status) = self.wait_exit(grace)? {
            return Ok(status);
        }
        tracing::warn!(
            name = self.name,
            pid = self.pid(),
            ?grace,
            "did not exit after SIGTERM; sending SIGKILL"
        );
        self.kill()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(name = self.name, pid = self.child.id(), error = %format!("{e:#}"), "kill on drop");
        }
    }
}

/// A harness process that owns at most one [`ChildProcess`] at a time (none
/// while it is stopped or killed) and can be started again by its owner.
///
/// Implementors supply the child slot and names; the signal, pause, resume,
/// kill and stop methods are shared. Bring the trait into scope to call them
/// (`use lockstep_tests::Supervised;`).
pub trait Supervised {
    /// The running process, if any.
    fn child(&self) -> Option<&ChildProcess>;

    /// The slot holding the running process; `kill` and `stop` empty it.
    fn child_slot(&mut self) -> &mut Option<ChildProcess>;

    /// How errors name it (e.g. `agent a1`, `coordinator 2`).
    fn label(&self) -> String;

    /// What kind of process it is, for log lines (e.g. `mariadbd`, `agent`).
    fn kind(&self) -> &'static str;

    /// The PID, or `None` if it is not running (stopped or killed).
    fn pid(&self) -> Option<u32> {
        self.child().map(ChildProcess::pid)
    }

    /// True if the process is alive (a SIGSTOPped process counts).
    fn is_running(&mut self) -> bool {
        self.child_slot()
            .as_mut()
            .is_some_and(ChildProcess::is_running)
    }

    /// Sends a signal to the process.
    fn signal(&mut self, sig: Signal) -> anyhow::Result<()> {
        let label = self.label();
        self.child_slot()
            .as_mut()
            .with_context(|| format!("cannot send {sig} to {label}: it is not running"))?
            .signal(sig)
    }

    /// SIGSTOP: the process freezes (its sockets and connections stay open,
    /// nothing answers).
    fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::Stop)
    }

    /// SIGCONT after [`Supervised::pause`].
    fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::Cont)
    }

    /// Crash: SIGKILL and reap. Its files stay (a restart recovers from
    /// them). A no-op if it is not running.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child_slot().take() {
            let status = child
                .kill()
                .with_context(|| format!("kill {}", self.label()))?;
            tracing::info!(name = %self.label(), %status, "{} killed", self.kind());
        }
        Ok(())
    }

    /// Clean shutdown: SIGTERM, wait up to [`STOP_GRACE`] (10 s), then
    /// SIGKILL. Its files stay. Returns the exit status (`None` if it was
    /// not running). Blocks the thread.
    fn stop(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child_slot().take() else {
            return Ok(None);
        };
        let status = child
            .terminate(STOP_GRACE)
            .with_context(|| format!("stop {}", self.label()))?;
        tracing::info!(name = %self.label(), %status, "{} stopped", self.kind());
        Ok(Some(status))
    }

    /// For `Drop`: SIGKILL the process (no clean shutdown: its files are
    /// deleted next), then remove `dir`, its temp dir (or keep it under
    /// `LOCKSTEP_KEEP_TMP`). Errors are logged, not returned.
    fn release(&mut self, dir: Option<tempfile::TempDir>) {
        if let Some(mut child) = self.child_slot().take()
            && let Err(e) = child.kill()
        {
            tracing::warn!(name = %self.label(), error = %format!("{e:#}"), "kill {} on drop", self.kind());
        }
        if let Some(dir) = dir {
            remove_temp_dir(dir, &self.label());
        }
    }
}

/// A new short-named temp dir under /tmp (`/tmp/<prefix>XXXXXX`); short
/// because MariaDB socket paths must stay under 107 bytes.
pub fn short_temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .with_context(|| format!("create temp dir /tmp/{prefix}*"))
}

/// True if `LOCKSTEP_KEEP_TMP` is set: temp dirs survive the test, for
/// reading logs and datadirs after a failure (processes are still killed).
pub fn keep_temp_dirs() -> bool {
    std::env::var_os("LOCKSTEP_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Removes a temp dir (or keeps it and says where, under
/// `LOCKSTEP_KEEP_TMP`). `what` names its owner in the message.
pub fn remove_temp_dir(dir: tempfile::TempDir, what: &str) {
    if keep_temp_dirs() {
        let path = dir.keep();
        eprintln!("LOCKSTEP_KEEP_TMP: kept {} of {what}", path.display());
        return;
    }
    let path = dir.path().to_path_buf();
    if let Err(e) = dir.close() {
        tracing::warn!(dir = %path.display(), error = %e, "remove temp dir of {what}");
    }
}
