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
//!
//! LVM and ZFS cannot run on the machines the tests run on (no
//! device-mapper, no ZFS): their commands and cleanup are unit-tested, and
//! documented as untested on real volumes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;

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
/// and [`Provider::flush`] before the lock, [`Provider::take`] inside it,
/// and [`Provider::release`] once the files are streamed (or the backup is
/// dropped).
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
    /// Inside the lock: takes the snapshot `id`. `first` lists files to
    /// capture before the rest where the provider copies file by file
    /// (reflink: the redo log).
    async fn take(&self, id: &str, first: &[PathBuf]) -> Result<Snapshot>;
}

/// Deletes a snapshot (idempotent: one already gone is not an error).
/// Works from the record alone, so leftovers of a crashed agent are
/// released without their provider's configuration.
pub async fn release(snap: &Snapshot) -> Result<()> {
    let _ = snap;
    todo!("filled in by the providers")
}

/// The provider of `cfg`.
pub fn provider(cfg: &ProviderConfig) -> Box<dyn Provider> {
    let _ = cfg;
    todo!("filled in by the providers")
}
