//! LVM: `lvcreate -s` of the logical volume holding the datadir, mounted
//! read-only under `SNAPSHOT_DIR/<id>`; released by unmounting and
//! `lvremove -f`. Untested on real volumes (no device-mapper where the
//! tests run): the command lines and the cleanup sequence are unit-tested
//! with a fake runner.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cmd::{self, Runner, argv};
use super::{Provider, Snapshot, Space};
use crate::error::{Error, IoContext, Result};

#[derive(Debug)]
pub struct Lvm {
    volume_group: String,
    logical_volume: String,
    mounted_at: PathBuf,
    size: String,
    snapshot_dir: PathBuf,
    runner: Arc<dyn Runner>,
    /// The origin's filesystem type, learnt by `check` (mount options).
    fstype: Mutex<Option<String>>,
}

impl Lvm {
    pub fn new(
        volume_group: String,
        logical_volume: String,
        mounted_at: PathBuf,
        size: String,
        snapshot_dir: PathBuf,
        runner: Arc<dyn Runner>,
    ) -> Self {
        Lvm {
            volume_group,
            logical_volume,
            mounted_at,
            size,
            snapshot_dir,
            runner,
            fstype: Mutex::new(None),
        }
    }

    async fn fstype(&self) -> Result<String> {
        if let Some(t) = self.fstype.lock().expect("fstype lock").clone() {
            return Ok(t);
        }
        let out = cmd::run_ok(
            &*self.runner,
            &findmnt_fstype_argv(&self.mounted_at),
            &self.mounted_at,
            "find the filesystem type of the LVM volume's mount",
        )
        .await?;
        let t = out.trim().to_string();
        *self.fstype.lock().expect("fstype lock") = Some(t.clone());
        Ok(t)
    }
}

/// Bytes in lvcreate's `-L` size: a number (decimals allowed) and an
/// optional unit of `b s k m g t p e` (either case, powers of 1024, `s` =
/// 512-byte sectors); without a unit, MiB (as lvcreate).
pub fn parse_size(size: &str) -> Result<u64> {
    let bad = || {
        Error::Config(format!(
            "LVM snapshot size {size:?} is not a size like 10G, 512M or 1.5T"
        ))
    };
    let s = size.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "s" => 512,
        "k" => 1 << 10,
        "" | "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        "e" => 1 << 60,
        _ => return Err(bad()),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The bytes of `vgs --units b` output ("  10737418240B").
pub fn parse_vgs_bytes(out: &str) -> Option<u64> {
    out.trim().trim_end_matches(['B', 'b']).trim().parse().ok()
}

/// The snapshot LV's name for `id`.
pub fn lv_name(id: &str) -> String {
    format!("lockstep-{id}")
}

pub fn vgs_free_argv(vg: &str) -> Vec<String> {
    argv([
        "vgs",
        "--noheadings",
        "--nosuffix",
        "--units",
        "b",
        "-o",
        "vg_free",
        vg,
    ])
}

pub fn findmnt_fstype_argv(mounted_at: &Path) -> Vec<String> {
    argv([
        "findmnt".as_ref(),
        "-n".as_ref(),
        "-o".as_ref(),
        "FSTYPE".as_ref(),
        "--mountpoint".as_ref(),
        mounted_at.as_os_str(),
    ])
}

pub fn lvcreate_argv(vg: &str, lv: &str, name: &str, size: &str) -> Vec<String> {
    argv([
        "lvcreate",
        "-s",
        "-n",
        name,
        "-L",
        size,
        &format!("{vg}/{lv}"),
    ])
}

/// Read-only; XFS also needs `nouuid` (the snapshot has the origin's UUID,
/// which is mounted).
pub fn mount_argv(fstype: &str, handle: &str, dir: &Path) -> Vec<String> {
    let opts = if fstype == "xfs" { "ro,nouuid" } else { "ro" };
    argv([
        "mount".as_ref(),
        "-o".as_ref(),
        opts.as_ref(),
        format!("/dev/{handle}").as_ref(),
        dir.as_os_str(),
    ])
}

pub fn is_mounted_argv(dir: &Path) -> Vec<String> {
    argv([
        "findmnt".as_ref(),
        "-n".as_ref(),
        "--mountpoint".as_ref(),
        dir.as_os_str(),
    ])
}

pub fn umount_argv(dir: &Path) -> Vec<String> {
    argv(["umount".as_ref(), dir.as_os_str()])
}

pub fn lvs_argv(handle: &str) -> Vec<String> {
    argv(["lvs", "--noheadings", "-o", "lv_name", handle])
}

pub fn lvremove_argv(handle: &str) -> Vec<String> {
    argv(["lvremove", "-f", handle])
}

#[async_trait::async_trait]
impl Provider for Lvm {
    fn name(&self) -> &'static str {
        "lvm"
    }

    fn volume(&self) -> &Path {
        &self.mounted_at
    }

    async fn check(&self, paths: &[PathBuf]) -> Result<Space> {
        let needed = parse_size(&self.size)?;
        let vg = &self.volume_group;
        let out = cmd::run_ok(
            &*self.runner,
            &vgs_free_argv(vg),
            &self.mounted_at,
            "read the volume group's free space",
        )
        .await?;
        let free = parse_vgs_bytes(&out).ok_or_else(|| {
            cmd::fail(
                &self.mounted_at,
                "read the volume group's free space",
                format!(
                    "vgs said {:?} for volume group {vg}, not a number of bytes",
                    out.trim()
                ),
            )
        })?;
        if !self.snapshot_dir.is_dir() {
            return Err(cmd::fail(
                &self.mounted_at,
                "find the snapshot directory",
                format!("{} is not a directory", self.snapshot_dir.display()),
            ));
        }
        cmd::check_apart(&self.mounted_at, &self.snapshot_dir)?;
        cmd::check_inside(&self.mounted_at, paths)?;
        self.fstype().await?;
        let (used, _) = cmd::fs_space(&self.mounted_at)?;
        let space = Space {
            used_bytes: used,
            free_bytes: free,
            needed_bytes: needed,
        };
        cmd::check_room(
            &self.mounted_at,
            &format!(
                "an LVM snapshot of {vg}/{} (size {})",
                self.logical_volume, self.size
            ),
            &space,
        )?;
        Ok(space)
    }

    async fn flush(&self) -> Result<()> {
        cmd::sync_volume(&*self.runner, &self.mounted_at).await
    }

    fn planned(&self, id: &str) -> Result<Snapshot> {
        cmd::check_id(id)?;
        let root = self.snapshot_dir.join(id);
        Ok(Snapshot {
            id: id.to_string(),
            provider: self.name().to_string(),
            volume: self.mounted_at.clone(),
            handle: format!("{}/{}", self.volume_group, lv_name(id)),
            mount: Some(root.clone()),
            root,
            took: Duration::ZERO,
        })
    }

    async fn take(&self, id: &str, _first: &[PathBuf]) -> Result<Snapshot> {
        let mut snap = self.planned(id)?;
        let fstype = self.fstype().await?;
        let started = Instant::now();
        cmd::run_ok(
            &*self.runner,
            &lvcreate_argv(
                &self.volume_group,
                &self.logical_volume,
                &lv_name(id),
                &self.size,
            ),
            &self.mounted_at,
            "create an LVM snapshot",
        )
        .await?;
        std::fs::create_dir_all(&snap.root).on_file(&snap.root, "create the mount point")?;
        cmd::run_ok(
            &*self.runner,
            &mount_argv(&fstype, &snap.handle, &snap.root),
            &self.mounted_at,
            "mount an LVM snapshot",
        )
        .await?;
        snap.took = started.elapsed();
        Ok(snap)
    }
}

/// `vg/lv` with LVM's name characters only (never an option or a path).
fn check_handle(snap: &Snapshot) -> Result<()> {
    let ok_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
    };
    match snap.handle.split_once('/') {
        Some((vg, lv)) if ok_name(vg) && lv == lv_name(&snap.id) => Ok(()),
        _ => Err(Error::Config(format!(
            "snapshot {}: LVM handle {:?} is not VG/{}; not removing anything",
            snap.id,
            snap.handle,
            lv_name(&snap.id)
        ))),
    }
}

/// Unmounts the snapshot (if mounted), removes its mount point, then
/// removes the LV (if it exists). Stops at the first failure, so the LV
/// is never removed under a mount.
pub async fn release(runner: &dyn Runner, snap: &Snapshot) -> Result<()> {
    super::check_record(snap)?;
    check_handle(snap)?;
    if let Some(dir) = &snap.mount {
        let probe = is_mounted_argv(dir);
        let out = cmd::run(
            runner,
            &probe,
            &snap.volume,
            "check the LVM snapshot's mount",
        )
        .await?;
        match out.code {
            Some(0) => {
                cmd::run_ok(
                    runner,
                    &umount_argv(dir),
                    &snap.volume,
                    "unmount an LVM snapshot",
                )
                .await?;
            }
            Some(1) => {}
            _ => {
                return Err(cmd::failed(
                    &probe,
                    &out,
                    &snap.volume,
                    "check the LVM snapshot's mount",
                ));
            }
        }
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(dir, "remove the LVM snapshot's mount point", e));
            }
            _ => {}
        }
    }
    let lvs = lvs_argv(&snap.handle);
    let out = cmd::run(runner, &lvs, &snap.volume, "find the LVM snapshot").await?;
    if !out.ok() {
        let err = out.stderr.to_ascii_lowercase();
        if err.contains("not found") || err.contains("failed to find") {
            return Ok(());
        }
        return Err(cmd::failed(
            &lvs,
            &out,
            &snap.volume,
            "find the LVM snapshot",
        ));
    }
    cmd::run_ok(
        runner,
        &lvremove_argv(&snap.handle),
        &snap.volume,
        "remove an LVM snapshot",
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
    fn sizes() {
        assert_eq!(parse_size("10G").expect("parse_size"), 10 << 30);
        assert_eq!(parse_size("512m").expect("parse_size"), 512 << 20);
        assert_eq!(parse_size("100").expect("parse_size"), 100 << 20);
        assert_eq!(parse_size("1.5T").expect("parse_size"), 3 << 39);
        assert_eq!(parse_size("8s").expect("parse_size"), 4096);
        for bad in ["", "G", "10X", "-1G", "10%FREE", "1..2G", "0"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_vgs_bytes("  10737418240B\n"), Some(10 << 30));
        assert_eq!(parse_vgs_bytes("  4096\n"), Some(4096));
        assert_eq!(parse_vgs_bytes(""), None);
    }

    #[test]
    fn commands() {
        assert_eq!(
            lvcreate_argv("vg0", "mysql", "lockstep-b1", "10G").join(" "),
            "lvcreate -s -n lockstep-b1 -L 10G vg0/mysql"
        );
        assert_eq!(
            mount_argv("xfs", "vg0/lockstep-b1", Path::new("/snap/b1")).join(" "),
            "mount -o ro,nouuid /dev/vg0/lockstep-b1 /snap/b1"
        );
        assert_eq!(
            mount_argv("ext4", "vg0/lockstep-b1", Path::new("/snap/b1")).join(" "),
            "mount -o ro /dev/vg0/lockstep-b1 /snap/b1"
        );
        assert_eq!(
            vgs_free_argv("vg0").join(" "),
            "vgs --noheadings --nosuffix --units b -o vg_free vg0"
        );
        assert_eq!(
            lvremove_argv("vg0/lockstep-b1").join(" "),
            "lvremove -f vg0/lockstep-b1"
        );
    }

    fn lvm(dir: &Path, runner: Arc<dyn Runner>, size: &str) -> Lvm {
        Lvm::new(
            "vg0".into(),
            "mysql".into(),
            dir.join("live"),
            size.into(),
            dir.join("snaps"),
            runner,
        )
    }

    #[tokio::test]
    async fn check_refuses_a_volume_group_without_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("live/data")).expect("create_dir_all");
        std::fs::create_dir_all(dir.path().join("snaps")).expect("create_dir_all");
        let fake = Arc::new(Fake::new(|a| match a[0].as_str() {
            "vgs" => out(0, "  5368709120B\n", ""),
            "findmnt" => out(0, "xfs\n", ""),
            _ => None,
        }));
        let data = vec![dir.path().join("live/data")];
        let space = lvm(dir.path(), fake.clone(), "4G")
            .check(&data)
            .await
            .expect("value");
        assert_eq!((space.free_bytes, space.needed_bytes), (5 << 30, 4 << 30));
        let e = lvm(dir.path(), fake.clone(), "6G")
            .check(&data)
            .await
            .expect_err("value should fail");
        assert!(e.to_string().contains("needs 6.0 GiB free"), "{e}");
        assert!(e.to_string().contains("vg0/mysql"), "{e}");
        let e = lvm(dir.path(), fake, "4G")
            .check(&[dir.path().to_path_buf()])
            .await
            .expect_err("value should fail");
        assert!(e.to_string().contains("outside the volume"), "{e}");
    }

    /// take creates, mounts; release unmounts before it removes; a second
    /// release finds nothing and runs nothing destructive.
    #[tokio::test]
    async fn take_then_release_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("snaps")).expect("create_dir_all");
        let exists = Arc::new(AtomicBool::new(false));
        let mounted = Arc::new(AtomicBool::new(false));
        let (e2, m2) = (exists.clone(), mounted.clone());
        let fake = Arc::new(Fake::new(move |a| match a[0].as_str() {
            "findmnt" if a[2] == "-o" => out(0, "xfs\n", ""),
            "findmnt" => out(if m2.load(Ordering::SeqCst) { 0 } else { 1 }, "", ""),
            "lvcreate" => {
                e2.store(true, Ordering::SeqCst);
                out(0, "", "")
            }
            "mount" => {
                m2.store(true, Ordering::SeqCst);
                out(0, "", "")
            }
            "umount" => {
                m2.store(false, Ordering::SeqCst);
                out(0, "", "")
            }
            "lvs" if e2.load(Ordering::SeqCst) => out(0, "  lockstep-b1\n", ""),
            "lvs" => out(
                5,
                "",
                "  Failed to find logical volume \"vg0/lockstep-b1\"\n",
            ),
            "lvremove" => {
                e2.store(false, Ordering::SeqCst);
                out(0, "", "")
            }
            _ => None,
        }));
        let p = lvm(dir.path(), fake.clone(), "1G");
        let snap = p.take("b1", &[]).await.expect("take");
        assert_eq!(snap.handle, "vg0/lockstep-b1");
        assert!(snap.root.is_dir());
        release(&*fake, &snap).await.expect("release");
        assert!(!snap.root.exists());
        release(&*fake, &snap).await.expect("release");
        let snaps = dir.path().join("snaps/b1").display().to_string();
        assert_eq!(
            fake.commands(),
            vec![
                format!(
                    "findmnt -n -o FSTYPE --mountpoint {}",
                    dir.path().join("live").display()
                ),
                "lvcreate -s -n lockstep-b1 -L 1G vg0/mysql".to_string(),
                format!("mount -o ro,nouuid /dev/vg0/lockstep-b1 {snaps}"),
                format!("findmnt -n --mountpoint {snaps}"),
                format!("umount {snaps}"),
                "lvs --noheadings -o lv_name vg0/lockstep-b1".to_string(),
                "lvremove -f vg0/lockstep-b1".to_string(),
                format!("findmnt -n --mountpoint {snaps}"),
                "lvs --noheadings -o lv_name vg0/lockstep-b1".to_string(),
            ]
        );
    }

    /// An unmount that fails stops the release before lvremove, and says
    /// which snapshot and why.
    #[tokio::test]
    async fn a_busy_mount_keeps_the_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Fake::new(|a| match a[0].as_str() {
            "findmnt" => out(0, "", ""),
            "umount" => out(32, "", "umount: /x: target is busy.\n"),
            _ => out(0, "", ""),
        });
        let root = dir.path().join("b1");
        let snap = Snapshot {
            id: "b1".into(),
            provider: "lvm".into(),
            volume: dir.path().join("live"),
            root: root.clone(),
            handle: "vg0/lockstep-b1".into(),
            mount: Some(root),
            took: Duration::ZERO,
        };
        let e = release(&fake, &snap)
            .await
            .expect_err("release should fail");
        assert!(e.to_string().contains("target is busy"), "{e}");
        assert!(!fake.commands().iter().any(|c| c.starts_with("lvremove")));
        let mut bad = snap.clone();
        bad.handle = "vg0/mysql".into();
        assert!(release(&fake, &bad).await.is_err());
    }
}
