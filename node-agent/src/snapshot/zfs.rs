//! ZFS: `zfs snapshot DATASET@<id>`, read through the dataset's
//! `.zfs/snapshot/<id>`; released with `zfs destroy DATASET@<id>`.
//! Untested on real pools (no ZFS where the tests run): the command lines
//! and the cleanup are unit-tested with a fake runner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cmd::{self, Runner, argv};
use super::{Provider, Snapshot, Space};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Zfs {
    dataset: String,
    mounted_at: PathBuf,
    runner: Arc<dyn Runner>,
}

impl Zfs {
    pub fn new(dataset: String, mounted_at: PathBuf, runner: Arc<dyn Runner>) -> Self {
        Zfs {
            dataset,
            mounted_at,
            runner,
        }
    }
}

pub fn space_argv(dataset: &str) -> Vec<String> {
    argv([
        "zfs",
        "get",
        "-Hp",
        "-o",
        "value",
        "used,available",
        dataset,
    ])
}

pub fn snapshot_argv(handle: &str) -> Vec<String> {
    argv(["zfs", "snapshot", handle])
}

pub fn list_argv(handle: &str) -> Vec<String> {
    argv(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", handle])
}

pub fn destroy_argv(handle: &str) -> Vec<String> {
    argv(["zfs", "destroy", handle])
}

/// `used` and `available` from `zfs get -Hp -o value used,available`.
pub fn parse_space(out: &str) -> Option<(u64, u64)> {
    let mut lines = out.lines().map(str::trim);
    let used = lines.next()?.parse().ok()?;
    let avail = lines.next()?.parse().ok()?;
    Some((used, avail))
}

#[async_trait::async_trait]
impl Provider for Zfs {
    fn name(&self) -> &'static str {
        "zfs"
    }

    fn volume(&self) -> &Path {
        &self.mounted_at
    }

    async fn check(&self, paths: &[PathBuf]) -> Result<Space> {
        let out = cmd::run_ok(
            &*self.runner,
            &space_argv(&self.dataset),
            &self.mounted_at,
            "read the dataset's space",
        )
        .await?;
        let (used, free) = parse_space(&out).ok_or_else(|| {
            cmd::fail(
                &self.mounted_at,
                "read the dataset's space",
                format!(
                    "zfs get said {:?} for dataset {}, not two numbers",
                    out.trim(),
                    self.dataset
                ),
            )
        })?;
        cmd::check_inside(&self.mounted_at, paths)?;
        let space = Space {
            used_bytes: used,
            free_bytes: free,
            needed_bytes: cmd::needed_for(used),
        };
        cmd::check_room(
            &self.mounted_at,
            &format!("a ZFS snapshot of {}", self.dataset),
            &space,
        )?;
        Ok(space)
    }

    async fn flush(&self) -> Result<()> {
        cmd::sync_volume(&*self.runner, &self.mounted_at).await
    }

    fn planned(&self, id: &str) -> Result<Snapshot> {
        cmd::check_id(id)?;
        Ok(Snapshot {
            id: id.to_string(),
            provider: self.name().to_string(),
            volume: self.mounted_at.clone(),
            root: self.mounted_at.join(".zfs/snapshot").join(id),
            handle: format!("{}@{id}", self.dataset),
            mount: None,
            took: Duration::ZERO,
        })
    }

    async fn take(&self, id: &str, _first: &[PathBuf]) -> Result<Snapshot> {
        let mut snap = self.planned(id)?;
        let started = Instant::now();
        cmd::run_ok(
            &*self.runner,
            &snapshot_argv(&snap.handle),
            &self.mounted_at,
            "take a ZFS snapshot",
        )
        .await?;
        snap.took = started.elapsed();
        Ok(snap)
    }
}

/// Destroys `DATASET@id` if it exists. The handle must name a snapshot
/// (`@id`): `zfs destroy` of a bare dataset would delete the data.
pub async fn release(runner: &dyn Runner, snap: &Snapshot) -> Result<()> {
    super::check_record(snap)?;
    let ok = match snap.handle.split_once('@') {
        Some((ds, id)) => {
            id == snap.id && !ds.is_empty() && !ds.starts_with('-') && !ds.contains('@')
        }
        None => false,
    };
    if !ok {
        return Err(Error::Config(format!(
            "snapshot {}: ZFS handle {:?} is not DATASET@{}; not destroying anything",
            snap.id, snap.handle, snap.id
        )));
    }
    let list = list_argv(&snap.handle);
    let out = cmd::run(runner, &list, &snap.volume, "find the ZFS snapshot").await?;
    if !out.ok() {
        if out.stderr.contains("does not exist") {
            return Ok(());
        }
        return Err(cmd::failed(
            &list,
            &out,
            &snap.volume,
            "find the ZFS snapshot",
        ));
    }
    cmd::run_ok(
        runner,
        &destroy_argv(&snap.handle),
        &snap.volume,
        "destroy a ZFS snapshot",
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::cmd::fake::{Fake, out};
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn commands_and_parsing() {
        assert_eq!(
            space_argv("tank/mysql").join(" "),
            "zfs get -Hp -o value used,available tank/mysql"
        );
        assert_eq!(
            snapshot_argv("tank/mysql@b1").join(" "),
            "zfs snapshot tank/mysql@b1"
        );
        assert_eq!(
            destroy_argv("tank/mysql@b1").join(" "),
            "zfs destroy tank/mysql@b1"
        );
        assert_eq!(parse_space("1024\n2048\n"), Some((1024, 2048)));
        assert_eq!(parse_space("1024\n"), None);
        assert_eq!(parse_space("-\n2048\n"), None);
    }

    #[tokio::test]
    async fn check_take_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data")).expect("create_dir_all");
        let exists = Arc::new(AtomicBool::new(false));
        let e2 = exists.clone();
        let free = Arc::new(std::sync::atomic::AtomicU64::new(10 << 30));
        let f2 = free.clone();
        let fake = Arc::new(Fake::new(move |a| match (a[0].as_str(), a[1].as_str()) {
            ("zfs", "get") => out(
                0,
                &format!("{}\n{}\n", 50u64 << 30, f2.load(Ordering::SeqCst)),
                "",
            ),
            ("zfs", "snapshot") => {
                e2.store(true, Ordering::SeqCst);
                out(0, "", "")
            }
            ("zfs", "list") if e2.load(Ordering::SeqCst) => out(0, "tank/mysql@b1\n", ""),
            ("zfs", "list") => out(
                1,
                "",
                "cannot open 'tank/mysql@b1': dataset does not exist\n",
            ),
            ("zfs", "destroy") => {
                e2.store(false, Ordering::SeqCst);
                out(0, "", "")
            }
            _ => None,
        }));
        let p = Zfs::new("tank/mysql".into(), dir.path().to_path_buf(), fake.clone());
        let space = p.check(&[dir.path().join("data")]).await.expect("check");
        assert_eq!(space.needed_bytes, (50u64 << 30) / 100);
        free.store(1 << 20, Ordering::SeqCst);
        let e = p
            .check(&[dir.path().join("data")])
            .await
            .expect_err("check should fail");
        assert!(e.to_string().contains("tank/mysql"), "{e}");
        let snap = p.take("b1", &[]).await.expect("take");
        assert_eq!(snap.root, dir.path().join(".zfs/snapshot/b1"));
        assert_eq!(
            snap.path_of(&dir.path().join("data/x")),
            Some(dir.path().join(".zfs/snapshot/b1/data/x"))
        );
        release(&*fake, &snap).await.expect("release");
        release(&*fake, &snap).await.expect("release");
        let destroys = fake
            .commands()
            .iter()
            .filter(|c| c.starts_with("zfs destroy"))
            .count();
        assert_eq!(destroys, 1);
        assert!(!exists.load(Ordering::SeqCst));
        let mut bare = snap.clone();
        bare.handle = "tank/mysql".into();
        let e = release(&*fake, &bare)
            .await
            .expect_err("release should fail");
        assert!(e.to_string().contains("not destroying"), "{e}");
        assert_eq!(
            fake.commands()
                .iter()
                .filter(|c| c.starts_with("zfs destroy"))
                .count(),
            1
        );
    }
}
