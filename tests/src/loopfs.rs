//! Loop-mounted filesystems for the physical-backup tests: a btrfs or XFS
//! (reflink) image in a temp dir, attached to a free loop device and mounted,
//! for servers' datadirs and application files. Dropping a [`LoopFs`]
//! unmounts it, detaches the loop device and removes the image.
//!
//! Loop mounts need root, so these tests are opt-in: a test starts with
//! `if !loopfs::enabled() { return Ok(()) }`. [`enabled`] is true only with
//! `LOCKSTEP_LOOPFS_TESTS=1` and an effective uid of 0 (`scripts/test.sh`
//! sets the variable when it runs as root, as CI does), and logs why it
//! skipped otherwise. The tools come from `btrfs-progs` and `xfsprogs`
//! (`scripts/setup-debian.sh` installs them).
//!
//! Everything runs the real tools (`losetup`, `mkfs.btrfs`, `mkfs.xfs`,
//! `mount`, `btrfs`); a failure is an error naming the command and quoting
//! its stderr. Stop every server whose files are on the filesystem before
//! dropping it: a busy mount is retried, then detached lazily (`umount -l`)
//! as a last resort, which is logged.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::process::{remove_temp_dir, short_temp_dir};

/// The environment variable that turns the loop-mount tests on.
pub const ENV_VAR: &str = "LOCKSTEP_LOOPFS_TESTS";
/// How long `Drop` retries a busy unmount before detaching it lazily.
const UMOUNT_PATIENCE: Duration = Duration::from_secs(5);
/// Pause between unmount attempts (a retry, not a wait for state).
const UMOUNT_RETRY: Duration = Duration::from_millis(100);

/// Which filesystem a [`LoopFs`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// btrfs: subvolumes and snapshots.
    Btrfs,
    /// XFS made with `-m reflink=1`: `cp --reflink=always` works.
    Xfs,
}

impl FsKind {
    /// `btrfs` or `xfs`.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Btrfs => "btrfs",
            FsKind::Xfs => "xfs",
        }
    }
}

/// True when the loop-mount tests may run: `LOCKSTEP_LOOPFS_TESTS=1` and
/// an effective uid of 0. Otherwise prints one line saying why the test is
/// skipped and returns false.
pub fn enabled() -> bool {
    crate::init_tracing();
    let var = std::env::var(ENV_VAR).unwrap_or_default();
    if var != "1" {
        println!(
            "--- skipped: loop-mount test needs {ENV_VAR}=1 (it is {:?}) and root",
            var
        );
        return false;
    }
    match effective_uid() {
        Ok(0) => true,
        Ok(uid) => {
            println!("--- skipped: loop-mount test needs root (effective uid is {uid})");
            false
        }
        Err(e) => {
            println!("--- skipped: loop-mount test cannot read its effective uid: {e:#}");
            false
        }
    }
}

/// The effective uid, from `/proc/self/status` (no unsafe code).
fn effective_uid() -> anyhow::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("no Uid: line in /proc/self/status")?;
    // Uid: real effective saved filesystem
    let euid = line
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("no effective uid in {line:?}"))?;
    euid.parse()
        .with_context(|| format!("parse effective uid {euid:?} in {line:?}"))
}

/// Runs a command to completion; an error names it and quotes its stderr.
/// Returns its stdout.
pub fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// A filesystem image on a loop device, mounted under a temp dir. See the
/// module doc.
#[derive(Debug)]
pub struct LoopFs {
    kind: FsKind,
    image: PathBuf,
    mount: PathBuf,
    /// The loop device (`/dev/loopN`) once attached.
    device: Option<String>,
    mounted: bool,
    /// Holds the image and the mount point; removed last.
    dir: Option<tempfile::TempDir>,
}

impl LoopFs {
    /// A fresh btrfs of `size_mb` MB (the image file is sparse). btrfs wants
    /// at least 114 MB.
    pub fn btrfs(size_mb: u64) -> anyhow::Result<LoopFs> {
        LoopFs::create(FsKind::Btrfs, size_mb)
    }

    /// A fresh XFS with reflinks (`mkfs.xfs -m reflink=1`) of `size_mb` MB
    /// (the image file is sparse). XFS wants at least 300 MB.
    pub fn xfs(size_mb: u64) -> anyhow::Result<LoopFs> {
        LoopFs::create(FsKind::Xfs, size_mb)
    }

    fn create(kind: FsKind, size_mb: u64) -> anyhow::Result<LoopFs> {
        crate::init_tracing();
        let started = Instant::now();
        let dir = short_temp_dir("lsfs-").context("create a temp dir for a loop filesystem")?;
        let image = dir.path().join(format!("{}.img", kind.name()));
        let mount = dir.path().join("mnt");
        // Built step by step: if a step fails, Drop undoes the ones before.
        let mut fs = LoopFs {
            kind,
            image,
            mount,
            device: None,
            mounted: false,
            dir: Some(dir),
        };
        let bytes = size_mb
            .checked_mul(1024 * 1024)
            .with_context(|| format!("{size_mb} MB overflows"))?;
        File::create(&fs.image)
            .and_then(|f| f.set_len(bytes))
            .with_context(|| format!("create image {} of {size_mb} MB", fs.image.display()))?;
        std::fs::create_dir(&fs.mount)
            .with_context(|| format!("create mount point {}", fs.mount.display()))?;

        let image = path_str(&fs.image)?.to_string();
        let device = run_cmd("losetup", &["-f", "--show", &image])?
            .trim()
            .to_string();
        if !device.starts_with("/dev/loop") {
            bail!("`losetup -f --show {image}` printed {device:?}, not a loop device");
        }
        fs.device = Some(device.clone());
        match kind {
            FsKind::Btrfs => run_cmd("mkfs.btrfs", &["-q", &device])?,
            FsKind::Xfs => run_cmd("mkfs.xfs", &["-q", "-m", "reflink=1", &device])?,
        };
        let mount = path_str(&fs.mount)?.to_string();
        run_cmd("mount", &[&device, &mount])?;
        fs.mounted = true;
        tracing::info!(
            fs = kind.name(),
            size_mb,
            device,
            mount,
            elapsed = ?started.elapsed(),
            "loop filesystem mounted"
        );
        Ok(fs)
    }

    /// btrfs or XFS.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// Where the filesystem is mounted.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The image file behind the loop device.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The loop device (`/dev/loopN`).
    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("")
    }

    /// A new btrfs subvolume `name` at the root of the mount (`btrfs
    /// subvolume create`), empty; btrfs only.
    pub fn subvolume(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.need_btrfs("subvolume")?;
        let path = self.child_path(name)?;
        run_cmd("btrfs", &["subvolume", "create", path_str(&path)?])?;
        Ok(path)
    }

    /// A btrfs snapshot of the subvolume `source` as `name` at the root of
    /// the mount (`btrfs subvolume snapshot [-r]`); writable unless
    /// `read_only`. btrfs only.
    pub fn snapshot(&self, source: &Path, name: &str, read_only: bool) -> anyhow::Result<PathBuf> {
        self.need_btrfs("snapshot")?;
        let path = self.child_path(name)?;
        let (src, dst) = (path_str(source)?, path_str(&path)?);
        let mut args = vec!["subvolume", "snapshot"];
        if read_only {
            args.push("-r");
        }
        args.extend([src, dst]);
        run_cmd("btrfs", &args)?;
        Ok(path)
    }

    /// A new plain directory `name` at the root of the mount (any
    /// filesystem); it may already exist.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.child_path(name)?;
        std::fs::create_dir_all(&path).with_context(|| {
            format!(
                "create {} on the {} at {}",
                path.display(),
                self.kind.name(),
                self.mount.display()
            )
        })?;
        Ok(path)
    }

    /// Flushes the filesystem's dirty data (`sync -f` on the mount).
    pub fn sync(&self) -> anyhow::Result<()> {
        run_cmd("sync", &["-f", path_str(&self.mount)?])?;
        Ok(())
    }

    fn need_btrfs(&self, what: &str) -> anyhow::Result<()> {
        if self.kind != FsKind::Btrfs {
            bail!(
                "{what} needs btrfs; the filesystem at {} is {}",
                self.mount.display(),
                self.kind.name()
            );
        }
        Ok(())
    }

    fn child_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            bail!(
                "{name:?} is not a plain name for an entry of {}",
                self.mount.display()
            );
        }
        Ok(self.mount.join(name))
    }

    /// Unmounts: retries while busy for [`UMOUNT_PATIENCE`], then detaches
    /// lazily (`umount -l`). Logs what it had to do.
    fn unmount(&mut self) {
        let Ok(mount) = path_str(&self.mount).map(str::to_string) else {
            return;
        };
        let deadline = Instant::now() + UMOUNT_PATIENCE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match run_cmd("umount", &[&mount]) {
                Ok(_) => {
                    if attempts > 1 {
                        tracing::info!(mount, attempts, "loop filesystem unmounted after retries");
                    }
                    self.mounted = false;
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    // A server killed just before can hold the mount for
                    // a moment after it is reaped.
                    if attempts == 1 {
                        tracing::info!(mount, error = %format!("{e:#}"), "unmount failed; retrying");
                    }
                    std::thread::sleep(UMOUNT_RETRY);
                }
                Err(e) => {
                    tracing::warn!(
                        mount,
                        attempts,
                        error = %format!("{e:#}"),
                        "unmount still failing; detaching lazily (umount -l)"
                    );
                    match run_cmd("umount", &["-l", &mount]) {
                        Ok(_) => self.mounted = false,
                        Err(e) => {
                            tracing::error!(mount, error = %format!("{e:#}"), "lazy unmount failed")
                        }
                    }
                    return;
                }
            }
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            self.unmount();
        }
        if let Some(device) = self.device.take()
            && let Err(e) = run_cmd("losetup", &["-d", &device])
        {
            tracing::error!(device, error = %format!("{e:#}"), "detach loop device");
        }
        if self.mounted {
            // Still mounted: never recurse into the filesystem to delete it.
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                tracing::error!(
                    dir = %kept.display(),
                    "loop filesystem still mounted; leaving its temp dir"
                );
            }
            return;
        }
        if let Some(dir) = self.dir.take() {
            remove_temp_dir(dir, &format!("{} loop filesystem", self.kind.name()));
        }
        tracing::info!(fs = self.kind.name(), image = %self.image.display(), "loop filesystem removed");
    }
}

/// True if a loop device is attached to `image` (per `losetup -a`). For
/// checking that nothing is left behind.
pub fn is_attached(image: &Path) -> anyhow::Result<bool> {
    let listing = run_cmd("losetup", &["-a"])?;
    let image = path_str(image)?;
    // Lines look like `/dev/loop0: [2049]:123 (/tmp/lsfs-x/btrfs.img)`.
    Ok(listing
        .lines()
        .any(|l| l.contains(&format!("({image})")) || l.contains(&format!("({image} (deleted))"))))
}

/// True if something is mounted at `path` (per `/proc/self/mounts`).
pub fn is_mounted(path: &Path) -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    let path = path_str(path)?;
    Ok(mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path)))
}
