//! File snapshots of a server's datadir, taken inside the cut's lock, and
//! the providers that take them, behind one trait:
//!
//! - `btrfs.rs`: a read-only subvolume snapshot (`btrfs subvolume snapshot -r`).
//! - `reflink.rs`: `cp --reflink=always` of the volume's files on XFS or
//!   btrfs, the InnoDB redo log first.
//! - `lvm.rs`: `lvcreate -s` of the logical volume, mounted read-only.
//! - `zfs.rs`: `zfs snapshot`, read through `.zfs/snapshot/`.
//! - `registry.rs`: every snapshot is recorded on disk before it is taken
//!   and forgotten after it is released, so an agent that crashed releases
//!   its leftovers when it starts again.
//! - `cmd.rs`: what they share: the command runner (a trait, faked in unit
//!   tests), the id rule, the path-inside check and the space rule.
//! - `loopfs_tests.rs`: btrfs and XFS on loop devices (root, gated by
//!   `LOCKSTEP_LOOPFS_TESTS=1`).
//!
//! See `docs/snapshots.md`.
//!
//! LVM and ZFS cannot run on the machines the tests run on (no
//! device-mapper, no ZFS): their commands and cleanup are unit-tested, and
//! documented as untested on real volumes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod btrfs;
pub mod cmd;
pub mod lvm;
pub mod reflink;
pub mod registry;
pub mod zfs;

pub use registry::Registry;

/// `[snapshot]` provider settings, chosen per server in the agent's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderConfig {
    /// `volume` is a btrfs subvolume holding the datadir (with its redo
    /// log and binlog); snapshots go to `snapshot_dir` (same filesystem).
    Btrfs {
        volume: PathBuf,
        snapshot_dir: PathBuf,
    },
    /// `volume` is a directory on XFS (`mkfs.xfs -m reflink=1`) or btrfs;
    /// copies go to `snapshot_dir` (same filesystem).
    Reflink {
        volume: PathBuf,
        snapshot_dir: PathBuf,
    },
    /// The logical volume `volume_group/logical_volume`, mounted at
    /// `mounted_at`; a snapshot of `size` (lvcreate's `-L`, e.g. "10G") is
    /// mounted read-only under `snapshot_dir`.
    Lvm {
        volume_group: String,
        logical_volume: String,
        mounted_at: PathBuf,
        size: String,
        snapshot_dir: PathBuf,
    },
    /// The ZFS dataset `dataset`, mounted at `mounted_at`.
    Zfs {
        dataset: String,
        mounted_at: PathBuf,
    },
}

/// How much room a volume has, and what a snapshot is estimated to need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// Bytes used by the files a snapshot covers.
    pub used_bytes: u64,
    /// Bytes free where the snapshot grows (filesystem, volume group, pool).
    pub free_bytes: u64,
    /// Bytes the provider needs free to take and hold the snapshot.
    pub needed_bytes: u64,
}

/// A snapshot that exists (until released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unique per agent; also the name of its registry record.
    pub id: String,
    /// "btrfs", "reflink", "lvm", "zfs".
    pub provider: String,
    /// The directory the snapshot covers (the live files)...
    pub volume: PathBuf,
    /// ...and where the same files are readable, frozen: `volume/x` is
    /// `root/x` until the snapshot is released.
    pub root: PathBuf,
    /// What names the snapshot to its tool (a subvolume path, `vg/lv`,
    /// `pool/ds@snap`): what release deletes.
    pub handle: String,
    /// Extra cleanup (an LVM snapshot's mount point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<PathBuf>,
    /// How long taking it took (inside the lock).
    #[serde(with = "humantime_serde")]
    pub took: Duration,
}

impl Snapshot {
    /// Where the live path `path` (inside the volume) is in the snapshot.
    pub fn path_of(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(&self.volume)
            .ok()
            .map(|rel| self.root.join(rel))
    }
}

/// One kind of snapshot. The agent calls, in order: [`Provider::check`]
/// and [`Provider::flush`] before the lock; [`Provider::planned`] and
/// [`Registry::record`] of what it returns; [`Provider::take`] inside the
/// lock; and [`release`] then [`Registry::forget`] once the files are
/// streamed (or the backup is dropped, or `take` failed: a half-taken
/// snapshot is released the same way).
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// "btrfs", "reflink", "lvm" or "zfs".
    fn name(&self) -> &'static str;
    /// The live directory a snapshot covers.
    fn volume(&self) -> &Path;
    /// Before the lock: the tool is there, every path of `paths` (the
    /// datadir, binlog and redo log directories) lies inside the volume,
    /// and there is room (else an error naming the volume, what is needed
    /// and what is free).
    async fn check(&self, paths: &[PathBuf]) -> Result<Space>;
    /// Before the lock: `sync -f` on the volume, so taking the snapshot
    /// inside the lock does not have to write out a backlog.
    async fn flush(&self) -> Result<()>;
    /// The snapshot `take(id)` will make, with `took` zero: what the
    /// registry records before taking it, so a crash mid-take is cleaned
    /// up. An error if `id` is not a safe name (see [`cmd::check_id`]).
    fn planned(&self, id: &str) -> Result<Snapshot>;
    /// Inside the lock: takes the snapshot `id`. `first` lists files to
    /// capture before the rest where the provider copies file by file
    /// (reflink: the redo log).
    async fn take(&self, id: &str, first: &[PathBuf]) -> Result<Snapshot>;
}

/// Deletes a snapshot (idempotent: one already gone is not an error).
/// Works from the record alone, so leftovers of a crashed agent are
/// released without their provider's configuration.
pub async fn release(snap: &Snapshot) -> Result<()> {
    release_with(&cmd::System, snap).await
}

pub(crate) async fn release_with(runner: &dyn cmd::Runner, snap: &Snapshot) -> Result<()> {
    match snap.provider.as_str() {
        "btrfs" => btrfs::release(runner, snap).await,
        "reflink" => reflink::release(snap).await,
        "lvm" => lvm::release(runner, snap).await,
        "zfs" => zfs::release(runner, snap).await,
        other => Err(Error::Config(format!(
            "snapshot {}: unknown provider {other:?}; release it by hand ({})",
            snap.id, snap.handle
        ))),
    }
}

/// What every release checks before it deletes anything, as a record may
/// have been edited or damaged: a safe id, a plain absolute root named
/// after it (`.../<id>`) below a non-root directory, and a volume that is
/// not inside the root.
fn check_record(snap: &Snapshot) -> Result<()> {
    cmd::check_id(&snap.id)?;
    let root = &snap.root;
    let named = root.file_name().is_some_and(|n| n == snap.id.as_str());
    let deep = root.parent().is_some_and(|p| p != Path::new("/"));
    if !cmd::plain_absolute(root) || !named || !deep || snap.volume.starts_with(root) {
        return Err(Error::Config(format!(
            "snapshot {}: record's root {} is not <snapshot dir>/{} apart from the volume {}; not deleting anything",
            snap.id,
            root.display(),
            snap.id,
            snap.volume.display()
        )));
    }
    Ok(())
}

/// The provider of `cfg`.
pub fn provider(cfg: &ProviderConfig) -> Box<dyn Provider> {
    provider_with(cfg, cmd::system())
}

/// The provider of `cfg`, running its tools through `runner`.
pub fn provider_with(
    cfg: &ProviderConfig,
    runner: std::sync::Arc<dyn cmd::Runner>,
) -> Box<dyn Provider> {
    match cfg.clone() {
        ProviderConfig::Btrfs {
            volume,
            snapshot_dir,
        } => Box::new(btrfs::Btrfs::new(volume, snapshot_dir, runner)),
        ProviderConfig::Reflink {
            volume,
            snapshot_dir,
        } => Box::new(reflink::Reflink::new(volume, snapshot_dir, runner)),
        ProviderConfig::Lvm {
            volume_group,
            logical_volume,
            mounted_at,
            size,
            snapshot_dir,
        } => Box::new(lvm::Lvm::new(
            volume_group,
            logical_volume,
            mounted_at,
            size,
            snapshot_dir,
            runner,
        )),
        ProviderConfig::Zfs {
            dataset,
            mounted_at,
        } => Box::new(zfs::Zfs::new(dataset, mounted_at, runner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(root: &str, volume: &str) -> Snapshot {
        Snapshot {
            id: "b1".into(),
            provider: "reflink".into(),
            volume: volume.into(),
            root: root.into(),
            handle: root.into(),
            mount: None,
            took: Duration::ZERO,
        }
    }

    #[test]
    fn records_that_would_delete_the_wrong_thing_are_refused() {
        check_record(&snap("/srv/snaps/b1", "/srv/live")).expect("check_record");
        for (root, volume) in [
            ("/srv/snaps/b2", "/srv/live"),
            ("/srv/snaps/../b1", "/srv/live"),
            ("/b1", "/srv/live"),
            ("srv/b1", "/srv/live"),
            ("/srv/b1", "/srv/b1/data"),
        ] {
            assert!(
                check_record(&snap(root, volume)).is_err(),
                "{root} accepted"
            );
        }
    }

    #[test]
    fn paths_map_into_the_snapshot() {
        let s = snap("/srv/snaps/b1", "/srv/live");
        assert_eq!(
            s.path_of(Path::new("/srv/live/data/ib_logfile0")),
            Some(PathBuf::from("/srv/snaps/b1/data/ib_logfile0"))
        );
        assert_eq!(s.path_of(Path::new("/etc/mysql")), None);
    }

    #[tokio::test]
    async fn unknown_providers_are_not_released() {
        let mut s = snap("/srv/snaps/b1", "/srv/live");
        s.provider = "tape".into();
        assert!(
            release(&s)
                .await
                .expect_err("release should fail")
                .to_string()
                .contains("tape")
        );
    }
}

#[cfg(test)]
mod loopfs_tests;
