//! `mariadb-backup` as the data mover of a physical backup, for servers
//! whose datadir is on no snapshotting filesystem.
//!
//! Its consistent moment is its own: `BACKUP STAGE BLOCK_COMMIT` at the end
//! of its copy, which only one session may hold, so that moment cannot be
//! the cluster's cut. It runs *before* the cut instead ([`take_base`], on
//! the coordinator's `TakeBase`, ahead of PREPARE): the base is consistent
//! at its own binlog position, and the backup adds the server's binlog
//! from there up to the cut's position ([`binlog_range`]). A restore
//! prepares the base and replays that binlog up to the cut, so the server
//! still lands exactly on the cluster's cut (invariant I3).
//!
//! The base (`mariadb-backup --stream=mbstream`, compressed as zstd frames)
//! is staged under the agent's state dir until the transfer after COMMIT
//! streams it to the sinks; the staged file is deleted then, or when the
//! backup fails, or by the next start of the agent.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mysql::Server;
use crate::physical::settings::ServerSettings;
use crate::sink::frames::{self, FrameReader, FrameWriter};

/// The base's object in the artifact.
pub const BASE_ARCHIVE: &str = "base.mbstream.zst";
/// Where the binlog from the base to the cut sits in the artifact.
pub const BINLOG_DIR: &str = "binlog";
/// The provider name in manifests and the catalog.
pub const NAME: &str = "mariabackup";
/// Staged bases, under the agent's state dir.
const STAGE_DIR: &str = "bases";

/// Where `mariadb-backup` saw the server's binlog when its copy was
/// consistent (read from its output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasePosition {
    pub binlog_file: String,
    pub binlog_pos: u64,
    /// `@@gtid_current_pos` then, as reported; informative only (the file
    /// and offset are exact).
    #[serde(default)]
    pub gtid: String,
}

/// A base taken and staged for one backup.
#[derive(Debug, Clone)]
pub struct Base {
    pub position: BasePosition,
    /// The compressed stream on local disk.
    pub staged: PathBuf,
    pub bytes: u64,
    pub took: Duration,
}

/// How `mariadb-backup` is run (`[physical.snapshot] provider =
/// "mariabackup"`).
#[derive(Debug, Clone)]
pub struct Mover {
    pub binary: PathBuf,
    /// The longest a base may take.
    pub timeout: Duration,
    /// The longest it waits for its own lock before giving up.
    pub lock_wait: Duration,
}

/// The staged base of `backup_id` under `state_dir`.
pub fn staged_path(state_dir: &Path, backup_id: &str) -> PathBuf {
    state_dir.join(STAGE_DIR).join(format!(
        "{}.mbstream.zst",
        crate::format::fs_name(backup_id)
    ))
}

/// Deletes every staged base (what a crashed agent left); returns how many.
pub fn clean_staged(state_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(state_dir.join(STAGE_DIR)) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Runs `mariadb-backup --backup --stream=mbstream` against `server` (on
/// this host: it reads the datadir), compressing its stream into
/// [`staged_path`]. Fails naming the server, with the tail of the tool's
/// output, unless it ends with `completed OK!` and reports its binlog
/// position.
pub async fn take_base(
    server: &Server,
    mover: &Mover,
    state_dir: &Path,
    backup_id: &str,
    level: i32,
) -> Result<Base> {
    let addr = server.address().to_string();
    let staged = staged_path(state_dir, backup_id);
    let dir = staged.parent().unwrap_or(state_dir).to_path_buf();
    std::fs::create_dir_all(&dir)
        .map_err(|e| failed(&addr, format!("cannot create {}: {e}", dir.display())))?;
    let partial = staged.with_extension("partial");
    let log = staged.with_extension("log");
    let (host, port, user, password) = server.login();
    let mut cmd = std::process::Command::new(&mover.binary);
    cmd.arg("--no-defaults")
        .arg("--backup")
        .arg("--stream=mbstream")
        // Never written while streaming; it must only be given.
        .arg(format!("--target-dir={}", dir.join("mb-target").display()))
        .arg(format!("--host={host}"))
        .arg(format!("--port={port}"))
        .arg(format!("--user={user}"))
        // Its log copy otherwise wakes once a second: commits would
        // stall up to a second in its BLOCK_COMMIT.
        .arg("--log-copy-interval=10")
        .arg(format!(
            "--ftwrl-wait-timeout={}",
            mover.lock_wait.as_secs().max(1)
        ))
        .env_remove("MYSQL_PWD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some(pw) = password.filter(|p| !p.is_empty()) {
        cmd.env("MYSQL_PWD", pw);
    }
    let log_file = std::fs::File::create(&log)
        .map_err(|e| failed(&addr, format!("cannot create {}: {e}", log.display())))?;
    cmd.stderr(log_file);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        failed(
            &addr,
            format!("cannot start {}: {e}", mover.binary.display()),
        )
    })?;
    // Stopped with SIGKILL if this call is dropped or times out (SIGTERM
    // does not stop it while it waits for its lock); its partial output
    // is removed.
    let mut guard = Running {
        // A pidfd, taken before anything reaps the child: signalling it
        // never reaches another process that reused the pid.
        pidfd: i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
            }),
        partial: partial.clone(),
        log: log.clone(),
        armed: true,
    };
    let stdout = child.stdout.take();
    let out_path = partial.clone();
    let copy = tokio::task::spawn_blocking(
        move || -> std::io::Result<(u64, std::process::ExitStatus)> {
            let copied = (|| -> std::io::Result<u64> {
                let file = std::fs::File::create(&out_path)?;
                let mut w =
                    FrameWriter::new(std::io::BufWriter::new(file), level, frames::workers())?;
                let mut stream = stdout.ok_or_else(|| std::io::Error::other("no stdout"))?;
                let bytes = std::io::copy(&mut stream, &mut w)?;
                let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(bytes)
            })();
            if copied.is_err() {
                let _ = child.kill();
            }
            // Always reaped, whatever happened to its output.
            let status = child.wait()?;
            Ok((copied?, status))
        },
    );
    let outcome = tokio::time::timeout(mover.timeout, copy).await;
    let log_tail = || tail(&log);
    let result = match outcome {
        Err(_) => {
            guard.kill();
            Err(failed(
                &addr,
                format!(
                    "mariadb-backup did not finish within {}; killed. Its output ends: {}",
                    humantime::format_duration(mover.timeout),
                    log_tail()
                ),
            ))
        }
        Ok(Err(e)) => Err(failed(&addr, format!("the base copy stopped: {e}"))),
        Ok(Ok(Err(e))) => Err(failed(
            &addr,
            format!(
                "writing the base to {}: {e}; mariadb-backup's output ends: {}",
                partial.display(),
                log_tail()
            ),
        )),
        Ok(Ok(Ok((bytes, status)))) => {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !status.success() || !completed_ok(&text) {
                Err(failed(
                    &addr,
                    format!("mariadb-backup failed ({status}): {}", log_tail()),
                ))
            } else {
                match parse_position(&text) {
                    Some(position) => Ok((bytes, position)),
                    None => Err(failed(
                        &addr,
                        "mariadb-backup reported no binlog position (is the binlog on?)".into(),
                    )),
                }
            }
        }
    };
    match result {
        Ok((bytes, position)) => {
            std::fs::rename(&partial, &staged)
                .map_err(|e| failed(&addr, format!("cannot rename {}: {e}", partial.display())))?;
            guard.armed = false;
            let _ = std::fs::remove_file(&log);
            let took = started.elapsed();
            tracing::info!(server = %addr, file = %position.binlog_file, pos = position.binlog_pos, bytes, took_ms = took.as_millis() as u64, "mariadb-backup base taken before the cut");
            Ok(Base {
                position,
                staged,
                bytes,
                took,
            })
        }
        Err(e) => Err(e),
    }
}

/// A running `mariadb-backup` and its output files: killed and removed
/// when dropped armed.
struct Running {
    pidfd: Option<std::os::fd::OwnedFd>,
    partial: PathBuf,
    log: PathBuf,
    armed: bool,
}

impl Running {
    fn kill(&self) {
        if let Some(fd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed {
            // The copying thread reaps the process once its output ends.
            self.kill();
            let _ = std::fs::remove_file(&self.partial);
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn failed(addr: &str, reason: String) -> Error {
    Error::Config(format!(
        "server {addr}: base copy with mariadb-backup: {reason}"
    ))
}

/// The last lines of `path`, on one line.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// Whether the last line of mariadb-backup's output says it completed.
fn completed_ok(text: &str) -> bool {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_end().ends_with("completed OK!"))
}

/// The position in `MySQL binlog position: filename 'F', position 'P',
/// GTID of the last change 'G'`.
fn parse_position(text: &str) -> Option<BasePosition> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("MySQL binlog position: filename '"))?;
    let quoted = |after: &str| -> Option<String> {
        let rest = &line[line.find(after)? + after.len()..];
        Some(rest[..rest.find('\'')?].to_string())
    };
    Some(BasePosition {
        binlog_file: quoted("filename '")?,
        binlog_pos: quoted("position '")?.parse().ok()?,
        gtid: quoted("GTID of the last change '").unwrap_or_default(),
    })
}

/// The server's binlog files from the base's file to the cut's, by name,
/// each with the bytes to keep: the whole file, the cut's file up to the
/// cut's offset. Reads the binlog index beside `log_bin_basename`.
pub fn binlog_range(
    settings: &ServerSettings,
    addr: &str,
    base: &BasePosition,
    cut_file: &str,
    cut_offset: u64,
) -> Result<Vec<(PathBuf, u64)>> {
    let fail = |reason: String| Error::Config(format!("server {addr}: {reason}"));
    let datadir = settings.datadir();
    let basename = settings.log_bin_basename.as_deref().ok_or_else(|| {
        fail("the binlog is off: a mariadb-backup base cannot be rolled to the cut".into())
    })?;
    let basename = if Path::new(basename).is_absolute() {
        PathBuf::from(basename)
    } else {
        datadir.join(basename)
    };
    let dir = basename.parent().unwrap_or(&datadir).to_path_buf();
    let index = settings
        .log_bin_index
        .as_deref()
        .map(|i| {
            if Path::new(i).is_absolute() {
                PathBuf::from(i)
            } else {
                datadir.join(i)
            }
        })
        .unwrap_or_else(|| basename.with_extension("index"));
    let listed = std::fs::File::open(&index).map_err(|e| {
        fail(format!(
            "cannot read the binlog index {}: {e}",
            index.display()
        ))
    })?;
    let names: Vec<String> = std::io::BufReader::new(listed)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| {
            Path::new(l.trim())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .collect();
    let from = names
        .iter()
        .position(|n| *n == base.binlog_file)
        .ok_or_else(|| {
            fail(format!(
                "binlog {} of the base is no longer on the server (purged?)",
                base.binlog_file
            ))
        })?;
    let to = names
        .iter()
        .position(|n| n == cut_file)
        .filter(|to| *to >= from)
        .ok_or_else(|| {
            fail(format!(
                "binlog {cut_file} of the cut is not at or after the base's {}",
                base.binlog_file
            ))
        })?;
    names[from..=to]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let len = if name == cut_file {
                cut_offset
            } else {
                std::fs::metadata(&path)
                    .map_err(|e| fail(format!("cannot stat {}: {e}", path.display())))?
                    .len()
            };
            Ok((path, len))
        })
        .collect()
}

/// Extracts the base stream `input` (zstd frames of mbstream; `base`
/// names it in errors) into the empty directory `datadir` with `mbstream
/// -x`, then `mariadb-backup --prepare`s it. Blocking.
pub fn extract_and_prepare(
    input: impl Read + Send + 'static,
    base: &str,
    datadir: &Path,
    binary: &Path,
) -> Result<()> {
    let fail = |reason: String| Error::Recover {
        datadir: datadir.to_path_buf(),
        reason,
        log_tail: String::new(),
    };
    let mut reader = FrameReader::start(input, frames::workers())
        .map_err(|e| fail(format!("cannot start decompressing the base {base}: {e}")))?;
    let mut mbstream = std::process::Command::new("mbstream")
        .arg("-x")
        .arg("-C")
        .arg(datadir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start mbstream: {e}")))?;
    let mut stdin = mbstream
        .stdin
        .take()
        .ok_or_else(|| fail("mbstream has no stdin".into()))?;
    let copied = std::io::copy(&mut reader, &mut stdin).and_then(|_| stdin.flush());
    drop(stdin);
    let out = mbstream
        .wait_with_output()
        .map_err(|e| fail(format!("mbstream: {e}")))?;
    let errors = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Err(e) = copied {
        return Err(fail(format!(
            "cannot read the base {base}: {e}; mbstream says: {errors}"
        )));
    }
    // mbstream exits 0 on some failures (an existing file): its output is
    // the error.
    if !out.status.success() || !errors.is_empty() {
        return Err(fail(format!(
            "mbstream -x failed ({}): {errors}",
            out.status
        )));
    }
    let out = std::process::Command::new(binary)
        .arg("--no-defaults")
        .arg("--prepare")
        .arg("--use-memory=256M")
        .arg(format!("--target-dir={}", datadir.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot start {}: {e}", binary.display())))?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !completed_ok(&text) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(fail(format!(
            "mariadb-backup --prepare failed ({}): {}",
            out.status,
            lines[lines.len().saturating_sub(4)..].join(" | ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "[00] 2026-11-29 14:39:25 Backup created in directory '/tmp/x/'\n\
        [00] 2026-11-29 14:39:25 MySQL binlog position: filename 'mysql-bin.000001', position '156429', GTID of the last change '0-1-721'\n\
        [00] 2026-11-29 14:39:25 Streaming backup-my.cnf\n\
        [00] 2026-11-29 14:39:25 completed OK!\n";

    #[test]
    fn the_position_and_the_outcome_come_from_the_output() {
        assert_eq!(
            parse_position(OUTPUT),
            Some(BasePosition {
                binlog_file: "mysql-bin.000001".into(),
                binlog_pos: 156_429,
                gtid: "0-1-721".into(),
            })
        );
        assert!(completed_ok(OUTPUT));
        let failed = OUTPUT.replace("completed OK!", "Error: failed to read");
        assert!(!completed_ok(&failed));
        assert_eq!(parse_position("[00] completed OK!\n"), None);
        // A multi-domain GTID and an empty one.
        let two = OUTPUT.replace("'0-1-721'", "'0-1-721,5-2-9'");
        assert_eq!(
            parse_position(&two).map(|p| p.gtid),
            Some("0-1-721,5-2-9".into())
        );
        let none = OUTPUT.replace("'0-1-721'", "''");
        assert_eq!(parse_position(&none).map(|p| p.gtid), Some(String::new()));
    }
}
