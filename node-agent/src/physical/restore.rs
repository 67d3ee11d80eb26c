//! Restoring a physical backup: the datadir archive is pulled from the
//! sink into an empty datadir (every file checked against the manifest as
//! it is written), a private `mariadbd` recovers it (InnoDB crash recovery,
//! the binlog's GTID state), and its `gtid_binlog_pos` is checked against
//! the cut. A `mariadb-backup` backup instead has its base extracted and
//! prepared, and the private server replays the backup's binlog from the
//! base to the cut before the check. Also the application file sets of
//! either kind of backup.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::binlog::replay::{Method, ReplayPlan, replay};
use crate::error::{Error, IoContext, Result};
use crate::format::files::HashingReader;
use crate::format::manifest::FileEntry;
use crate::format::manifest::Manifest;
use crate::mysql::Server;
use crate::physical::PhysicalOptions;
use crate::physical::mariabackup;
use crate::physical::recover::{RecoverOptions, Recovered, recover, recover_with};
use crate::physical::stream::load_tree;
use crate::progress::Progress;
use crate::restore::LoadReport;
use crate::sink::artifact::Artifact;

/// Where a physical backup goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub datadir: &'a Path,
    /// The file sets go to `<files_to>/<set>`; `None`: not restored.
    pub files_to: Option<&'a Path>,
    /// Empty non-empty targets first.
    pub force: bool,
}

/// Writes physical backup `from` (its manifest `manifest`) into the
/// target's datadir, recovers it and checks its position; restores the
/// file sets if asked.
pub async fn restore(
    from: &Artifact,
    manifest: &Manifest,
    target: Target<'_>,
    opts: &PhysicalOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<LoadReport> {
    let started = Instant::now();
    let Target {
        datadir,
        files_to,
        force,
    } = target;
    let physical = manifest.physical.as_ref().ok_or_else(|| Error::BadBackup {
        path: from.describe().into(),
        reason: "it is a logical backup: load it into a server (--target), not a datadir".into(),
    })?;
    if !datadir.is_absolute() {
        return Err(Error::Config(format!(
            "datadir {}: must be an absolute path",
            datadir.display()
        )));
    }
    make_empty(datadir, force, "datadir").await?;
    if let Some(to) = files_to {
        for set in &manifest.file_sets {
            make_empty(&to.join(&set.name), force, "file set target").await?;
        }
    }
    let entry = manifest
        .files
        .iter()
        .find(|f| f.path == physical.archive)
        .ok_or_else(|| Error::BadBackup {
            path: from.describe().into(),
            reason: format!(
                "its manifest does not list the archive {}",
                physical.archive
            ),
        })?;
    let recover_opts = RecoverOptions {
        mariadbd: opts.mariadbd.clone(),
        timeout: opts.recover_timeout,
        ..RecoverOptions::default()
    };
    let (bytes, recovered) = if physical.provider == mariabackup::NAME {
        restore_base(
            from,
            manifest,
            entry,
            datadir,
            opts,
            recover_opts,
            progress.clone(),
            cancel,
        )
        .await?
    } else {
        let bytes = load_tree(
            from,
            &entry.path,
            datadir.to_path_buf(),
            physical.files.clone(),
            progress.clone(),
            cancel,
        )
        .await?;
        match_owner(datadir).await?;
        tracing::info!(datadir = %datadir.display(), bytes, "datadir written; recovering it");
        (
            bytes,
            recover(datadir, &physical.settings, &recover_opts).await?,
        )
    };
    if !same_gtid_set(&recovered.gtid_binlog_pos, &manifest.position.gtid_set) {
        return Err(Error::Recover {
            datadir: datadir.to_path_buf(),
            reason: format!(
                "it recovered to gtid_binlog_pos {:?}, but backup {} of server {} was cut at {:?}: the copy is not the cut",
                recovered.gtid_binlog_pos,
                manifest.backup_id,
                manifest.server.name,
                manifest.position.gtid_set
            ),
            log_tail: String::new(),
        });
    }
    let file_sets = match files_to {
        Some(to) => restore_file_sets(from, manifest, to, force, progress, cancel).await?,
        None => Vec::new(),
    };
    Ok(LoadReport {
        server: format!("datadir {}", datadir.display()),
        backup_id: manifest.backup_id.clone(),
        source_server: format!("{} ({})", manifest.server.name, manifest.server.address),
        bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        warnings: manifest.warnings.clone(),
        kind: "physical",
        datadir: datadir.display().to_string(),
        recovery_ms: recovered.recovery_ms,
        gtid_binlog_pos: recovered.gtid_binlog_pos,
        file_sets,
        ..LoadReport::default()
    })
}

/// The server id of the private server that replays a `mariadb-backup`
/// base's binlog: not the source's own, whose events its SQL thread would
/// skip. It lives only as long as the private server.
const REPLAY_SERVER_ID: u32 = 4_294_967_000;

/// A `mariadb-backup` backup (`entry` is its base): the base extracted
/// into `datadir` and prepared, then a private server on it replays the
/// backup's binlog from the base's position to the cut. Returns the base's
/// bytes and the recovered state, its `gtid_binlog_pos` the one after the
/// replay.
#[allow(clippy::too_many_arguments)]
async fn restore_base(
    from: &Artifact,
    manifest: &Manifest,
    entry: &FileEntry,
    datadir: &Path,
    opts: &PhysicalOptions,
    mut recover_opts: RecoverOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<(u64, Recovered)> {
    let bad = |reason: String| Error::BadBackup {
        path: from.describe().into(),
        reason,
    };
    let physical = manifest
        .physical
        .as_ref()
        .ok_or_else(|| bad("it is not a physical backup".into()))?;
    let base = physical
        .base
        .as_ref()
        .ok_or_else(|| bad("its manifest has no base position".into()))?;
    let binary = opts
        .mariabackup
        .as_ref()
        .map_or_else(|| PathBuf::from("mariadb-backup"), |m| m.binary.clone());
    // The base, checked against its sha256 as it is read.
    let stream = from.read(&entry.path).await?;
    let (reader, digest) = HashingReader::new(crate::sink::blocking_reader(stream));
    let target = datadir.to_path_buf();
    let named = format!("{} in {}", entry.path, from.describe());
    tokio::task::spawn_blocking(move || {
        mariabackup::extract_and_prepare(reader, &named, &target, &binary)
    })
    .await
    .map_err(|e| Error::Cancelled(format!("extracting the base stopped: {e}")))??;
    let (size, sha256) = digest.finish();
    from.verify_read(entry, sha256, size)?;
    // The binlog from the base to the cut, beside the datadir for the
    // replay's time.
    let parent = datadir.parent().unwrap_or(datadir);
    let binlog_dir = tempfile::Builder::new()
        .prefix(".lockstep-binlog-")
        .tempdir_in(parent)
        .on_file(parent, "create a temp dir in")?;
    let mut files = Vec::new();
    for rel in &physical.binlogs {
        let want = manifest
            .files
            .iter()
            .find(|f| f.path == *rel)
            .ok_or_else(|| bad(format!("its manifest does not list {rel}")))?;
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let path = binlog_dir.path().join(name);
        tokio::select! {
            fetched = from.fetch_to(want, &path) => fetched?,
            () = cancel.cancelled() => {
                return Err(Error::Cancelled(format!("fetching {}", want.path)));
            }
        }
        files.push(path);
    }
    match_owner(datadir).await?;
    tracing::info!(datadir = %datadir.display(), binlogs = files.len(), "base prepared; replaying the binlog to the cut");
    recover_opts
        .extra_args
        .push(format!("--server-id={REPLAY_SERVER_ID}"));
    let plan = ReplayPlan {
        files,
        start_pos: base.binlog_pos,
        stop_pos: manifest.position.binlog_pos,
        method: Some(Method::Relay),
    };
    let (mut recovered, report) = recover_with(
        datadir,
        &physical.settings,
        &recover_opts,
        move |_, socket| {
            Box::pin(async move {
                let url = format!("mysql://root@localhost/?socket={}", socket.display());
                let server = Server::parse(&url)?;
                replay(&server, &plan, &progress).await
            })
        },
    )
    .await?;
    drop(binlog_dir);
    tracing::info!(datadir = %datadir.display(), transactions = report.transactions, gtid_binlog_pos = %report.gtid_binlog_pos, "binlog replayed to the cut");
    recovered.gtid_binlog_pos = report.gtid_binlog_pos;
    Ok((size, recovered))
}

/// Restores every file set of `manifest` under `to/<set name>`; returns
/// `name -> path` lines.
pub async fn restore_file_sets(
    from: &Artifact,
    manifest: &Manifest,
    to: &Path,
    force: bool,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for set in &manifest.file_sets {
        let dest = to.join(&set.name);
        make_empty(&dest, force, "file set target").await?;
        load_tree(
            from,
            &set.archive,
            dest.clone(),
            set.files.clone(),
            progress.clone(),
            cancel,
        )
        .await?;
        out.push(format!("{} -> {}", set.name, dest.display()));
    }
    Ok(out)
}

/// Makes `dir` an existing empty directory: created if missing; a
/// non-empty one is refused unless `force`, and then emptied, but never
/// while a server runs on it (a live pid file).
async fn make_empty(dir: &Path, force: bool, what: &str) -> Result<()> {
    let dir_buf = dir.to_path_buf();
    let what = what.to_string();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let dir = dir_buf.as_path();
        std::fs::create_dir_all(dir).on_file(dir, "create the restore target")?;
        let entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .on_file(dir, "list the restore target")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(pid) = live_pid(&entries) {
            return Err(Error::Config(format!(
                "{what} {}: a server (pid {pid}) is running on it; stop it first",
                dir.display()
            )));
        }
        if !force {
            return Err(Error::TargetNotEmpty {
                server: format!("{what} {}", dir.display()),
                holds: match entries.len() {
                    1 => "1 entry".to_string(),
                    n => format!("{n} entries"),
                },
            });
        }
        for e in entries {
            let meta = e.symlink_metadata().on_file(&e, "stat")?;
            if meta.is_dir() {
                std::fs::remove_dir_all(&e).on_file(&e, "empty the restore target")?;
            } else {
                std::fs::remove_file(&e).on_file(&e, "empty the restore target")?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Cancelled(format!("emptying a restore target: {e}")))?
}

/// The pid of a `*.pid` file among `entries` whose process is alive.
fn live_pid(entries: &[PathBuf]) -> Option<i32> {
    entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pid"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| t.trim().parse::<i32>().ok())
        .find(|pid| {
            rustix::process::Pid::from_raw(*pid)
                .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
        })
}

/// Gives the restored files the owner of the datadir directory itself
/// (the server's account, when the operator made the directory for it).
async fn match_owner(datadir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(datadir).on_file(datadir, "stat the datadir")?;
    let (uid, gid) = (meta.uid(), meta.gid());
    if uid == rustix::process::geteuid().as_raw() {
        return Ok(());
    }
    let dir = datadir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).on_file(&d, "list")? {
                let p = e.on_file(&d, "list")?.path();
                std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                    .on_file(&p, "give the restored file the datadir's owner")?;
                if p.symlink_metadata().on_file(&p, "stat")?.is_dir() {
                    stack.push(p);
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Cancelled(format!("chown of the restored datadir: {e}")))?
}

/// Whether two GTID sets name the same positions, whatever their order.
pub fn same_gtid_set(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let mut v: Vec<String> = s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        v.sort();
        v
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_sets_compare_unordered() {
        assert!(same_gtid_set("1-1-5,2-2-7", "2-2-7, 1-1-5"));
        assert!(same_gtid_set("", " "));
        assert!(!same_gtid_set("1-1-5", "1-1-6"));
    }

    #[tokio::test]
    async fn targets_must_be_empty_unless_forced() {
        let d = tempfile::tempdir().expect("ok");
        let t = d.path().join("data");
        make_empty(&t, false, "datadir").await.expect("ok");
        std::fs::write(t.join("ibdata1"), b"x").expect("ok");
        let e = make_empty(&t, false, "datadir")
            .await
            .expect_err("an error")
            .to_string();
        assert!(
            e.contains("datadir") && e.contains("it holds 1 entry;"),
            "{e}"
        );
        std::fs::write(t.join("srv.pid"), std::process::id().to_string()).expect("ok");
        let e = make_empty(&t, true, "datadir")
            .await
            .expect_err("an error")
            .to_string();
        assert!(e.contains("is running on it"), "{e}");
        std::fs::write(t.join("srv.pid"), "999999999").expect("ok");
        make_empty(&t, true, "datadir").await.expect("ok");
        assert_eq!(std::fs::read_dir(&t).expect("ok").count(), 0);
    }
}
