//! reflink: a copy-on-write copy of the volume's files, `cp -a
//! --reflink=always`, into `SNAPSHOT_DIR/<id>` on the same XFS (`mkfs.xfs
//! -m reflink=1`) or btrfs filesystem. It copies file by file, so the
//! files in `first` (the redo log) go first and the rest after; released
//! by deleting that directory.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::cmd::{self, Runner, argv};
use super::{Provider, Snapshot, Space};
use crate::error::{Error, IoContext, Result};

/// At most this many sources per `cp` (the argument list stays short).
const BATCH: usize = 512;

#[derive(Debug)]
pub struct Reflink {
    volume: PathBuf,
    snapshot_dir: PathBuf,
    runner: Arc<dyn Runner>,
}

impl Reflink {
    pub fn new(volume: PathBuf, snapshot_dir: PathBuf, runner: Arc<dyn Runner>) -> Self {
        Reflink {
            volume,
            snapshot_dir,
            runner,
        }
    }
}

/// `cp -a --reflink=always --target-directory=DEST SRC...`.
pub fn copy_argv(dest_dir: &Path, sources: &[PathBuf]) -> Vec<String> {
    let mut v = argv(["cp", "-a", "--reflink=always"]);
    v.push(format!("--target-directory={}", dest_dir.display()));
    v.extend(sources.iter().map(|s| s.display().to_string()));
    v
}

/// The directories (relative to the volume) that hold a `first` file,
/// parents before children.
fn spine(firsts: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for f in firsts {
        let mut p = f.parent();
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    dirs
}

/// What is left to copy once the `first` files are: per destination
/// directory (relative), the entries (relative) to copy whole. Directories
/// on the spine are walked into, `first` files skipped, everything else
/// copied whole by one `cp` per directory.
pub fn rest(volume: &Path, firsts: &[PathBuf]) -> Result<BTreeMap<PathBuf, Vec<PathBuf>>> {
    let firsts_set: BTreeSet<&Path> = firsts.iter().map(PathBuf::as_path).collect();
    let spine = spine(firsts);
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = volume.join(&rel);
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&dir).on_file(&dir, "list")? {
            let name = e.on_file(&dir, "list")?.file_name();
            let child = rel.join(&name);
            if firsts_set.contains(child.as_path()) {
                continue;
            }
            if spine.contains(&child) {
                todo.push(child);
            } else {
                entries.push(child);
            }
        }
        entries.sort();
        out.insert(rel, entries);
    }
    Ok(out)
}

/// `path` relative to `volume`, or an error naming both.
fn relative(volume: &Path, path: &Path) -> Result<PathBuf> {
    let vol = cmd::canonical(volume)?;
    let p = cmd::canonical(path)?;
    match p.strip_prefix(&vol) {
        Ok(rel) if !rel.as_os_str().is_empty() => Ok(rel.to_path_buf()),
        _ => Err(cmd::fail(
            volume,
            "copy the redo log first",
            format!("{} is not a file inside the volume", path.display()),
        )),
    }
}

/// Creates `dest` with `src`'s owner and mode.
fn mkdir_like(src: &Path, dest: &Path) -> Result<()> {
    let meta = std::fs::metadata(src).on_file(src, "stat")?;
    std::fs::create_dir(dest).on_file(dest, "create the snapshot directory")?;
    std::os::unix::fs::chown(dest, Some(meta.uid()), Some(meta.gid()))
        .on_file(dest, "set the owner of")?;
    std::fs::set_permissions(dest, meta.permissions()).on_file(dest, "set the mode of")?;
    Ok(())
}

impl Reflink {
    async fn copy(&self, dest_dir: &Path, sources: &[PathBuf]) -> Result<()> {
        for chunk in sources.chunks(BATCH) {
            cmd::run_ok(
                &*self.runner,
                &copy_argv(dest_dir, chunk),
                &self.volume,
                "reflink-copy the volume's files",
            )
            .await?;
        }
        Ok(())
    }

    /// A non-empty regular file in the volume, to probe reflink with.
    fn probe_source(&self) -> Option<PathBuf> {
        let mut todo = vec![self.volume.clone()];
        let mut seen = 0;
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).ok()?.flatten() {
                seen += 1;
                if seen > 10_000 {
                    return None;
                }
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    todo.push(e.path());
                } else if ft.is_file() && e.metadata().is_ok_and(|m| m.len() > 0) {
                    return Some(e.path());
                }
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl Provider for Reflink {
    fn name(&self) -> &'static str {
        "reflink"
    }

    fn volume(&self) -> &Path {
        &self.volume
    }

    async fn check(&self, paths: &[PathBuf]) -> Result<Space> {
        let r = &*self.runner;
        for (what, dir) in [
            ("volume", &self.volume),
            ("snapshot directory", &self.snapshot_dir),
        ] {
            if !dir.is_dir() {
                return Err(cmd::fail(
                    &self.volume,
                    "check the reflink volume",
                    format!("the {what} {} is not a directory", dir.display()),
                ));
            }
        }
        cmd::check_apart(&self.volume, &self.snapshot_dir)?;
        cmd::check_same_fs(r, &self.volume, &self.snapshot_dir).await?;
        cmd::check_inside(&self.volume, paths)?;
        // Probe: reflink a file of the volume (or, in an empty volume, a
        // scratch file) into the snapshot directory.
        let probe = self
            .snapshot_dir
            .join(format!(".lockstep-reflink-probe-{}", std::process::id()));
        let scratch = probe.with_extension("src");
        let source = match self.probe_source() {
            Some(s) => s,
            None => {
                std::fs::write(&scratch, [0u8; 4096]).on_file(&scratch, "write")?;
                scratch.clone()
            }
        };
        let cp = argv([
            "cp".as_ref(),
            "--reflink=always".as_ref(),
            source.as_os_str(),
            probe.as_os_str(),
        ]);
        let out = cmd::run(r, &cp, &self.volume, "probe reflink copies").await;
        let _ = std::fs::remove_file(&probe);
        let _ = std::fs::remove_file(&scratch);
        let out = out?;
        if !out.ok() {
            return Err(cmd::failed(
                &cp,
                &out,
                &self.volume,
                "probe reflink copies (the filesystem must be XFS with reflink=1 or btrfs)",
            ));
        }
        cmd::fs_room(&self.volume, "a reflink copy")
    }

    async fn flush(&self) -> Result<()> {
        cmd::sync_volume(&*self.runner, &self.volume).await
    }

    fn planned(&self, id: &str) -> Result<Snapshot> {
        cmd::planned_in(self.name(), &self.volume, &self.snapshot_dir, id)
    }

    async fn take(&self, id: &str, first: &[PathBuf]) -> Result<Snapshot> {
        let mut snap = self.planned(id)?;
        let started = Instant::now();
        let firsts = first
            .iter()
            .map(|f| relative(&self.volume, f))
            .collect::<Result<Vec<_>>>()?;
        mkdir_like(&self.volume, &snap.root)?;
        for d in spine(&firsts) {
            mkdir_like(&self.volume.join(&d), &snap.root.join(&d))?;
        }
        let mut by_dir: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
        for f in &firsts {
            let parent = f.parent().unwrap_or(Path::new("")).to_path_buf();
            by_dir.entry(parent).or_default().push(self.volume.join(f));
        }
        for (dir, sources) in &by_dir {
            self.copy(&snap.root.join(dir), sources).await?;
        }
        let volume = self.volume.clone();
        let plan = tokio::task::spawn_blocking(move || rest(&volume, &firsts))
            .await
            .map_err(|e| cmd::fail(&self.volume, "list the volume", e.to_string()))??;
        for (dir, entries) in &plan {
            let sources: Vec<PathBuf> = entries.iter().map(|e| self.volume.join(e)).collect();
            if !sources.is_empty() {
                self.copy(&snap.root.join(dir), &sources).await?;
            }
        }
        snap.took = started.elapsed();
        Ok(snap)
    }
}

/// Deletes the copy `snap.root` (a directory named by the record, never
/// the volume nor anything holding it); one that is gone is fine.
pub async fn release(snap: &Snapshot) -> Result<()> {
    super::check_record(snap)?;
    if snap.handle != snap.root.display().to_string() {
        return Err(Error::Config(format!(
            "snapshot {}: reflink record's handle {:?} is not its root {}; not deleting anything",
            snap.id,
            snap.handle,
            snap.root.display()
        )));
    }
    let root = snap.root.clone();
    let gone = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
    .map_err(|e| cmd::fail(&snap.root, "delete a reflink copy", e.to_string()))?;
    gone.on_file(&snap.root, "delete a reflink copy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_command() {
        assert_eq!(
            copy_argv(
                Path::new("/s/b1/data"),
                &[PathBuf::from("/v/data/a"), PathBuf::from("/v/data/b")]
            )
            .join(" "),
            "cp -a --reflink=always --target-directory=/s/b1/data /v/data/a /v/data/b"
        );
    }

    #[test]
    fn the_rest_skips_first_files_and_walks_their_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path();
        for f in [
            "data/ib_logfile0",
            "data/ibdata1",
            "data/db1/t.ibd",
            "binlog/b.000001",
            "x",
        ] {
            std::fs::create_dir_all(v.join(f).parent().expect("parent")).expect("create_dir_all");
            std::fs::write(v.join(f), f).expect("write");
        }
        let plan = rest(v, &[PathBuf::from("data/ib_logfile0")]).expect("rest");
        let flat: Vec<(String, Vec<String>)> = plan
            .iter()
            .map(|(d, es)| {
                (
                    d.display().to_string(),
                    es.iter().map(|e| e.display().to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            flat,
            vec![
                ("".to_string(), vec!["binlog".to_string(), "x".to_string()]),
                (
                    "data".to_string(),
                    vec!["data/db1".to_string(), "data/ibdata1".to_string()]
                ),
            ]
        );
        let everything = rest(v, &[]).expect("rest");
        assert_eq!(everything.len(), 1);
        assert_eq!(everything[&PathBuf::new()].len(), 3);
    }
}
