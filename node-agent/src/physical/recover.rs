//! A private `mariadbd` on a restored datadir: it runs InnoDB's crash
//! recovery (and the binlog's, for transactions prepared but not
//! committed), reports the position it recovered to, and shuts down
//! cleanly, leaving a datadir any server of the same version starts on at
//! once.
//!
//! The server listens on a Unix socket in a private temp dir (0700, a short
//! path: socket paths are limited to about 107 bytes), never on TCP; it
//! runs without grant checks, replication or events. Its error log, with
//! the recovery's messages, stays in the datadir as
//! `lockstep-recover.err` for the operator.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, OptsBuilder};

use super::settings::ServerSettings;
use crate::error::{Error, Result};

/// The error log of the recovery, in the datadir.
pub const LOG_NAME: &str = "lockstep-recover.err";
/// Lines of the error log returned and quoted in errors.
const TAIL_LINES: usize = 20;
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);
/// How long one readiness probe may take.
const PROBE: Duration = Duration::from_secs(5);

/// How to run the private server.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    /// The `mariadbd` binary; `None`: the first on `PATH`, else
    /// `/usr/sbin/mariadbd`.
    pub mariadbd: Option<PathBuf>,
    /// How long recovery may take until the server accepts connections,
    /// and again how long its shutdown may take.
    pub timeout: Duration,
    /// Further `mariadbd` arguments, after the ones the settings give
    /// (such as a buffer pool size for the restoring host).
    pub extra_args: Vec<String>,
}

impl Default for RecoverOptions {
    fn default() -> Self {
        RecoverOptions {
            mariadbd: None,
            timeout: Duration::from_secs(600),
            extra_args: Vec::new(),
        }
    }
}

/// What the private server recovered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// `@@gtid_binlog_pos` after recovery: the copy's position.
    pub gtid_binlog_pos: String,
    /// `SHOW MASTER STATUS`: the binlog file the private server opened at
    /// its start (one past the copy's last) and its position there.
    pub binlog_file: String,
    pub binlog_pos: u64,
    /// The copy's last binlog file (the one the source was writing) and
    /// its size before the private server started: the binlog position of
    /// the copy in the source's coordinates.
    pub copied_binlog_end: Option<(String, u64)>,
    /// `@@version` of the private server.
    pub version: String,
    /// From start until the server accepted connections.
    pub recovery_ms: u64,
    /// The last lines of its error log.
    pub log_tail: String,
}

/// The `mariadbd` to run.
fn mariadbd(opts: &RecoverOptions) -> PathBuf {
    if let Some(p) = &opts.mariadbd {
        return p.clone();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("mariadbd"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mariadbd"))
}

/// The last `n` lines of a text file (empty if unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The copy's last binlog (from its index) and its size.
fn copied_binlog_end(datadir: &Path, settings: &ServerSettings) -> Option<(String, u64)> {
    let index = settings.log_bin_index.as_deref()?;
    let index = settings
        .datadir()
        .join(index)
        .strip_prefix(settings.datadir())
        .ok()
        .map(|rel| datadir.join(rel))?;
    let listed = std::fs::read_to_string(index).ok()?;
    let last = listed.lines().rev().find(|l| !l.trim().is_empty())?;
    let name = Path::new(last.trim()).file_name()?.to_str()?.to_string();
    let basename = settings.log_bin_basename.as_deref()?;
    let dir = settings
        .datadir()
        .join(basename)
        .parent()?
        .strip_prefix(settings.datadir())
        .ok()
        .map(|rel| datadir.join(rel))?;
    let size = std::fs::metadata(dir.join(&name)).ok()?.len();
    Some((name, size))
}

/// Recovers the datadir at `datadir` (a restored copy of a server with
/// `settings`) and shuts the server down again. See [`recover_with`].
pub async fn recover(
    datadir: &Path,
    settings: &ServerSettings,
    opts: &RecoverOptions,
) -> Result<Recovered> {
    let (recovered, ()) =
        recover_with(datadir, settings, opts, |_, _| Box::pin(async { Ok(()) })).await?;
    Ok(recovered)
}

/// Starts a private `mariadbd` on `datadir`, waits (up to
/// `opts.timeout`) until it accepts connections or exits (an error with
/// the tail of its error log, naming the datadir), reads its position,
/// runs `inspect` on a connection to it and the path of its socket
/// (checks of the restored data, a replay),
/// shuts it down with `SHUTDOWN` and waits for it to exit (killed after
/// `opts.timeout`). The process never outlives this call, also when the
/// call is dropped.
pub async fn recover_with<T>(
    datadir: &Path,
    settings: &ServerSettings,
    opts: &RecoverOptions,
    inspect: impl for<'c> FnOnce(&'c mut Conn, &'c Path) -> BoxFuture<'c, Result<T>> + Send,
) -> Result<(Recovered, T)> {
    let failed = |reason: String, log_tail: String| Error::Recover {
        datadir: datadir.to_path_buf(),
        reason,
        log_tail,
    };
    let datadir_meta = std::fs::metadata(datadir)
        .map_err(|e| failed(format!("cannot stat it: {e}"), String::new()))?;
    if !datadir_meta.is_dir() {
        return Err(failed("is not a directory".into(), String::new()));
    }
    let private = tempfile::Builder::new()
        .prefix("lsr-")
        .tempdir_in("/tmp")
        .map_err(|e| {
            failed(
                format!("cannot create a private temp dir in /tmp: {e}"),
                String::new(),
            )
        })?;
    let socket = private.path().join("s");
    let pid = private.path().join("pid");
    let tmp = private.path().join("tmp");
    std::fs::create_dir(&tmp).map_err(|e| {
        failed(
            format!("cannot create {}: {e}", tmp.display()),
            String::new(),
        )
    })?;
    let log = datadir.join(LOG_NAME);
    let copied_binlog_end = copied_binlog_end(datadir, settings);
    let mut args = settings.mariadbd_args(datadir, &socket, &pid);
    args.push(format!("--log-error={}", log.display()));
    args.push(format!("--tmpdir={}", tmp.display()));
    args.extend(opts.extra_args.iter().cloned());
    let binary = mariadbd(opts);
    let out_path = private.path().join("out");
    let out = std::fs::File::create(&out_path).map_err(|e| {
        failed(
            format!("cannot create {}: {e}", out_path.display()),
            String::new(),
        )
    })?;
    let err_out = out.try_clone().map_err(|e| {
        failed(
            format!("cannot duplicate a file handle: {e}"),
            String::new(),
        )
    })?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            failed(
                format!("cannot start {}: {e}", binary.display()),
                String::new(),
            )
        })?;
    tracing::info!(datadir = %datadir.display(), pid = child.id(), binary = %binary.display(), "recovering a restored datadir with a private server");
    let log_tail = || {
        let mut t = tail(&log, TAIL_LINES);
        let o = tail(&out_path, 5);
        if !o.trim().is_empty() {
            t.push_str("\n(stdout/stderr) ");
            t.push_str(&o);
        }
        t
    };
    let conn_opts = OptsBuilder::default()
        .socket(Some(socket.to_string_lossy().into_owned()))
        .user(Some("root"));
    let deadline = started + opts.timeout;
    let mut conn = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| failed(format!("cannot wait for mariadbd: {e}"), log_tail()))?
        {
            return Err(failed(
                format!("mariadbd exited during recovery ({status})"),
                log_tail(),
            ));
        }
        if socket.exists()
            && let Ok(Ok(conn)) = tokio::time::timeout(PROBE, Conn::new(conn_opts.clone())).await
        {
            break conn;
        }
        if Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(failed(
                format!(
                    "mariadbd did not accept connections within {:?}; it was killed",
                    opts.timeout
                ),
                log_tail(),
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    let recovery_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let queried = async {
        let row: Option<(String, String)> = conn
            .query_first("SELECT @@gtid_binlog_pos, @@version")
            .await
            .map_err(|e| failed(format!("cannot read @@gtid_binlog_pos: {e}"), log_tail()))?;
        let (gtid_binlog_pos, version) = row.unwrap_or_default();
        let status: Option<mysql_async::Row> = conn
            .query_first("SHOW MASTER STATUS")
            .await
            .map_err(|e| failed(format!("cannot run SHOW MASTER STATUS: {e}"), log_tail()))?;
        let (binlog_file, binlog_pos) = status
            .map(|row| {
                (
                    row.get::<Option<String>, _>(0)
                        .flatten()
                        .unwrap_or_default(),
                    row.get::<Option<u64>, _>(1).flatten().unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        let checked = inspect(&mut conn, &socket).await?;
        Ok::<_, Error>((gtid_binlog_pos, version, binlog_file, binlog_pos, checked))
    }
    .await;
    // Shut down whatever the queries said.
    let _ = conn.query_drop("SHUTDOWN").await;
    drop(conn);
    let exited = tokio::time::timeout(opts.timeout, child.wait()).await;
    let status = match exited {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            let _ = child.kill().await;
            return Err(failed(format!("cannot wait for mariadbd: {e}"), log_tail()));
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(failed(
                format!(
                    "mariadbd did not shut down within {:?}; it was killed, the datadir is not clean",
                    opts.timeout
                ),
                log_tail(),
            ));
        }
    };
    let (gtid_binlog_pos, version, binlog_file, binlog_pos, checked) = queried?;
    if !status.success() {
        return Err(failed(
            format!("mariadbd exited with {status} after SHUTDOWN"),
            log_tail(),
        ));
    }
    let recovered = Recovered {
        gtid_binlog_pos,
        binlog_file,
        binlog_pos,
        copied_binlog_end,
        version,
        recovery_ms,
        log_tail: log_tail(),
    };
    tracing::info!(datadir = %datadir.display(), gtid_binlog_pos = recovered.gtid_binlog_pos, recovery_ms, "restored datadir recovered and shut down");
    Ok((recovered, checked))
}
