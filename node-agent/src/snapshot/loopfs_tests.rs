//! Real btrfs and XFS filesystems on loop devices (root only): set
//! `LOCKSTEP_LOOPFS_TESTS=1` to run these; without it they log a skip and
//! pass. Each builds a 300 MB image, mounts it under a temp dir, and
//! unmounts and detaches it in `Drop`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn enabled(test: &str) -> bool {
    if std::env::var("LOCKSTEP_LOOPFS_TESTS").as_deref() == Ok("1") {
        true
    } else {
        eprintln!(
            "--- skip {test}: set LOCKSTEP_LOOPFS_TESTS=1 (needs root, losetup, mkfs.btrfs, mkfs.xfs)"
        );
        false
    }
}

fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A filesystem on a loop device, mounted at `mnt`.
struct LoopFs {
    dev: String,
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new(mkfs: &[&str]) -> LoopFs {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        sh(&[
            "truncate",
            "-s",
            "300M",
            image.to_str().expect("utf-8 path"),
        ]);
        let dev = sh(&[
            "losetup",
            "-f",
            "--show",
            image.to_str().expect("utf-8 path"),
        ]);
        // From here on Drop detaches the device.
        let fs = LoopFs {
            dev,
            mnt,
            _dir: dir,
        };
        let mut cmd = mkfs.to_vec();
        cmd.push(&fs.dev);
        sh(&cmd);
        sh(&["mount", &fs.dev, fs.mnt.to_str().expect("utf-8 path")]);
        fs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mounted = Command::new("mountpoint").arg("-q").arg(&self.mnt).status();
        if mounted.is_ok_and(|s| s.success()) {
            let ok = Command::new("umount").arg(&self.mnt).status();
            if !ok.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Every file and directory under `dir`: "<dir>", or the file's size and
/// sha256.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("dir entry").path();
            let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
            if p.is_dir() {
                out.insert(rel, "<dir>".to_string());
                todo.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read file");
                let digest = hex::encode(sha2::Sha256::digest(&bytes));
                out.insert(rel, format!("{} bytes, sha256 {digest}", bytes.len()));
            }
        }
    }
    out
}

/// A small datadir: redo log, system tablespace, one table, a binlog.
fn fill(vol: &Path) {
    for (f, size) in [
        ("data/ib_logfile0", 3 << 20),
        ("data/ibdata1", 1 << 20),
        ("data/db1/t.ibd", 2 << 20),
        ("data/db1/db.opt", 10),
        ("binlog/mariadb-bin.000001", 100_000),
    ] {
        let p = vol.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + f.len()) as u8).collect();
        std::fs::write(&p, bytes).expect("write");
    }
    std::os::unix::fs::chown(vol.join("data"), Some(4242), Some(4243)).expect("chown");
    std::fs::set_permissions(vol.join("data"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
}

/// check, planned + record, take, then the snapshot holds the files as
/// at take time and nothing written after; release deletes it (twice is
/// fine); a leftover record is released by a fresh registry's cleanup.
async fn take_and_release(p: &dyn Provider, vol: &Path, state: &Path) {
    eprintln!("--- step: check");
    let data = vol.join("data");
    let space = p
        .check(&[data.clone(), vol.join("binlog")])
        .await
        .expect("check");
    assert!(space.free_bytes > space.needed_bytes, "{space:?}");
    assert!(space.used_bytes > 0, "{space:?}");
    let e = p
        .check(&[state.to_path_buf()])
        .await
        .expect_err("check should fail");
    assert!(e.to_string().contains("outside the volume"), "{e}");
    p.flush().await.expect("flush");

    eprintln!("--- step: take b1, then write after it");
    let reg = Registry::open(state).expect("open");
    let planned = p.planned("b1").expect("planned");
    reg.record(&planned).expect("record");
    let before = tree(vol);
    let snap = p
        .take("b1", &[data.join("ib_logfile0")])
        .await
        .expect("take");
    assert_eq!((&snap.root, &snap.handle), (&planned.root, &planned.handle));
    eprintln!("    took {:?}", snap.took);
    std::fs::write(data.join("db1/after.ibd"), "late").expect("write");
    std::fs::write(data.join("ib_logfile0"), "rewritten").expect("write");
    assert_eq!(tree(&snap.root), before);
    let snap_data = snap.path_of(&data).expect("path_of");
    let meta = std::fs::metadata(&snap_data).expect("metadata");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (4242, 4243, 0o750)
    );

    eprintln!("--- step: release b1");
    release(&snap).await.expect("release");
    assert!(!snap.root.exists());
    release(&snap).await.expect("release");
    reg.forget("b1").expect("forget");
    assert!(vol.join("data/db1/after.ibd").exists());

    eprintln!("--- step: a leftover (b2) is cleaned by the next start");
    reg.record(&p.planned("b2").expect("planned"))
        .expect("record");
    let b2 = p.take("b2", &[]).await.expect("take");
    assert!(b2.root.join("data/db1/after.ibd").exists());
    drop(reg);
    let reg = Registry::open(state).expect("open");
    assert_eq!(
        reg.leftovers().expect("leftovers"),
        vec![p.planned("b2").expect("planned")]
    );
    assert_eq!(
        reg.cleanup().await.expect("cleanup"),
        vec!["b2".to_string()]
    );
    assert!(!b2.root.exists());
    assert!(reg.leftovers().expect("leftovers").is_empty());
    assert!(vol.join("data/ibdata1").exists());
}

/// btrfs: a read-only subvolume snapshot, taken, checked and released.
#[tokio::test]
async fn btrfs_on_a_loop_device() {
    if !enabled("btrfs_on_a_loop_device") {
        return;
    }
    eprintln!("--- step: make a btrfs filesystem with a subvolume");
    let fs = LoopFs::new(&["mkfs.btrfs", "-q"]);
    let vol = fs.mnt.join("vol");
    sh(&[
        "btrfs",
        "subvolume",
        "create",
        vol.to_str().expect("to_str"),
    ]);
    let snaps = fs.mnt.join("snaps");
    std::fs::create_dir(&snaps).expect("create_dir");
    fill(&vol);
    let state = tempfile::tempdir().expect("tempdir");
    let cfg = ProviderConfig::Btrfs {
        volume: vol.clone(),
        snapshot_dir: snaps.clone(),
    };
    let p = provider(&cfg);

    eprintln!("--- step: a plain directory is not a subvolume; another filesystem is refused");
    let plain = provider(&ProviderConfig::Btrfs {
        volume: snaps.clone(),
        snapshot_dir: fs.mnt.clone(),
    });
    let e = plain.check(&[]).await.expect_err("check should fail");
    assert!(e.to_string().contains("subvolume"), "{e}");
    let elsewhere = provider(&ProviderConfig::Btrfs {
        volume: vol.clone(),
        snapshot_dir: state.path().to_path_buf(),
    });
    let e = elsewhere.check(&[]).await.expect_err("check should fail");
    assert!(
        e.to_string()
            .contains("must stay on the volume's filesystem"),
        "{e}"
    );

    eprintln!("--- step: a path in a nested subvolume is refused");
    let nested = vol.join("nested");
    sh(&[
        "btrfs",
        "subvolume",
        "create",
        nested.to_str().expect("utf-8 path"),
    ]);
    let e = p
        .check(std::slice::from_ref(&nested))
        .await
        .expect_err("nested subvolume refused");
    assert!(e.to_string().contains("another subvolume"), "{e}");
    sh(&[
        "btrfs",
        "subvolume",
        "delete",
        nested.to_str().expect("utf-8 path"),
    ]);

    take_and_release(&*p, &vol, state.path()).await;

    eprintln!("--- step: a btrfs snapshot is read-only");
    let snap = p.take("b3", &[]).await.expect("take");
    assert!(std::fs::write(snap.root.join("x"), "x").is_err());
    release(&snap).await.expect("release");
    assert!(!snap.root.exists());
}

/// reflink on XFS (reflink=1): the copy, checked and released; refused on
/// XFS without reflink and on a volume without room.
#[tokio::test]
async fn reflink_on_xfs_on_a_loop_device() {
    if !enabled("reflink_on_xfs_on_a_loop_device") {
        return;
    }
    eprintln!("--- step: make an XFS filesystem with reflink=1");
    let fs = LoopFs::new(&["mkfs.xfs", "-q", "-m", "reflink=1"]);
    let vol = fs.mnt.join("vol");
    let snaps = fs.mnt.join("snaps");
    std::fs::create_dir(&vol).expect("create_dir");
    std::fs::create_dir(&snaps).expect("create_dir");
    fill(&vol);
    let state = tempfile::tempdir().expect("tempdir");
    let p = provider(&ProviderConfig::Reflink {
        volume: vol.clone(),
        snapshot_dir: snaps.clone(),
    });
    take_and_release(&*p, &vol, state.path()).await;

    eprintln!("--- step: a take cut short leaves a partial copy that cleanup removes");
    let reg = Registry::open(state.path()).expect("open");
    let planned = p.planned("b4").expect("planned");
    reg.record(&planned).expect("record");
    std::fs::create_dir_all(planned.root.join("data")).expect("create_dir_all");
    std::fs::write(planned.root.join("data/ib_logfile0"), "half").expect("write");
    assert_eq!(
        reg.cleanup().await.expect("cleanup"),
        vec!["b4".to_string()]
    );
    assert!(!planned.root.exists());
    assert!(vol.join("data/ib_logfile0").exists());

    eprintln!("--- step: a full volume is refused before the lock");
    let free = p.check(&[]).await.expect("check").free_bytes;
    let fill_to = free - (32 << 20);
    sh(&[
        "fallocate",
        "-l",
        &fill_to.to_string(),
        vol.join("ballast").to_str().expect("to_str"),
    ]);
    let e = p.check(&[]).await.expect_err("check should fail");
    assert!(e.to_string().contains("needs 64.0 MiB free"), "{e}");
    drop(fs);

    eprintln!("--- step: XFS without reflink is refused");
    let fs = LoopFs::new(&["mkfs.xfs", "-q", "-m", "reflink=0"]);
    let vol = fs.mnt.join("vol");
    std::fs::create_dir(&vol).expect("create_dir");
    fill(&vol);
    let p = provider(&ProviderConfig::Reflink {
        volume: vol,
        snapshot_dir: fs.mnt.clone(),
    });
    let e = p.check(&[]).await.expect_err("check should fail");
    assert!(e.to_string().contains("probe reflink"), "{e}");
}
