//! btrfs: a read-only snapshot of the subvolume holding the datadir,
//! `btrfs subvolume snapshot -r VOLUME SNAPSHOT_DIR/<id>`, deleted with
//! `btrfs subvolume delete`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::cmd::{self, Runner, argv};
use super::{Provider, Snapshot, Space};
use crate::error::{IoContext, Result};

#[derive(Debug)]
pub struct Btrfs {
    volume: PathBuf,
    snapshot_dir: PathBuf,
    runner: Arc<dyn Runner>,
}

impl Btrfs {
    pub fn new(volume: PathBuf, snapshot_dir: PathBuf, runner: Arc<dyn Runner>) -> Self {
        Btrfs {
            volume,
            snapshot_dir,
            runner,
        }
    }
}

/// `btrfs subvolume snapshot -r VOLUME DEST`.
pub fn snapshot_argv(volume: &Path, dest: &Path) -> Vec<String> {
    argv([
        "btrfs".as_ref(),
        "subvolume".as_ref(),
        "snapshot".as_ref(),
        "-r".as_ref(),
        volume.as_os_str(),
        dest.as_os_str(),
    ])
}

/// `btrfs subvolume delete DEST`.
pub fn delete_argv(dest: &Path) -> Vec<String> {
    argv([
        "btrfs".as_ref(),
        "subvolume".as_ref(),
        "delete".as_ref(),
        dest.as_os_str(),
    ])
}

#[async_trait::async_trait]
impl Provider for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn volume(&self) -> &Path {
        &self.volume
    }

    async fn check(&self, paths: &[PathBuf]) -> Result<Space> {
        let r = &*self.runner;
        let show = argv([
            "btrfs".as_ref(),
            "subvolume".as_ref(),
            "show".as_ref(),
            self.volume.as_os_str(),
        ]);
        cmd::run_ok(
            r,
            &show,
            &self.volume,
            "check that the volume is a btrfs subvolume",
        )
        .await?;
        if !self.snapshot_dir.is_dir() {
            return Err(cmd::fail(
                &self.volume,
                "find the snapshot directory",
                format!("{} is not a directory", self.snapshot_dir.display()),
            ));
        }
        cmd::check_apart(&self.volume, &self.snapshot_dir)?;
        cmd::check_same_fs(r, &self.volume, &self.snapshot_dir).await?;
        cmd::check_inside(&self.volume, paths)?;
        check_no_nested(&self.volume, paths)?;
        cmd::fs_room(&self.volume, "a btrfs snapshot")
    }

    async fn flush(&self) -> Result<()> {
        cmd::sync_volume(&*self.runner, &self.volume).await
    }

    fn planned(&self, id: &str) -> Result<Snapshot> {
        cmd::planned_in(self.name(), &self.volume, &self.snapshot_dir, id)
    }

    async fn take(&self, id: &str, _first: &[PathBuf]) -> Result<Snapshot> {
        let mut snap = self.planned(id)?;
        let started = Instant::now();
        cmd::run_ok(
            &*self.runner,
            &snapshot_argv(&self.volume, &snap.root),
            &self.volume,
            "take a btrfs snapshot",
        )
        .await?;
        snap.took = started.elapsed();
        Ok(snap)
    }
}

/// An error if a path lies in a subvolume nested inside the volume: a
/// snapshot holds nested subvolumes as empty directories. (btrfs gives
/// every subvolume its own `st_dev`.)
fn check_no_nested(volume: &Path, paths: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(volume)
        .on_file(volume, "stat the volume")?
        .dev();
    for p in paths {
        let Ok(meta) = std::fs::metadata(p) else {
            continue;
        };
        if meta.dev() != dev {
            return Err(cmd::fail(
                volume,
                "cover the server's files with a snapshot",
                format!(
                    "{} is in another subvolume (or filesystem) than the volume: a snapshot of the volume would hold it empty",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Deletes the snapshot subvolume `snap.root`; one that is gone is fine.
pub async fn release(runner: &dyn Runner, snap: &Snapshot) -> Result<()> {
    super::check_record(snap)?;
    match std::fs::symlink_metadata(&snap.root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    cmd::run_ok(
        runner,
        &delete_argv(&snap.root),
        &snap.volume,
        "delete a btrfs snapshot",
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            snapshot_argv(Path::new("/srv/db"), Path::new("/srv/snaps/b1")).join(" "),
            "btrfs subvolume snapshot -r /srv/db /srv/snaps/b1"
        );
        assert_eq!(
            delete_argv(Path::new("/srv/snaps/b1")).join(" "),
            "btrfs subvolume delete /srv/snaps/b1"
        );
    }
}
