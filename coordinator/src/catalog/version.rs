//! Catalog versions: which commands every coordinator of the group can
//! decode, so that a rolling upgrade never commits an entry some replica
//! cannot apply.
//!
//! Each build supports catalog version [`CATALOG_VERSION`]: the commands it
//! decodes and applies. Each command needs a version ([`Command::min_version`]).
//! The catalog records the group's `cluster_version` (replicated, stored, in
//! snapshots, starting at [`FIRST_VERSION`]): the version every voter was
//! last seen to support. The leader proposes a command only when its
//! `min_version` is at most the cluster version, and raises the cluster
//! version (`SetClusterVersion`, never lowered) once every voter advertises
//! a higher one. So every committed command decodes on every voter.
//!
//! The rule for developers: a new command variant, or a new field that an
//! older build would reject or whose absence would change what an apply
//! does, raises [`CATALOG_VERSION`] and makes `min_version` of the commands
//! that use it return the new version. Commands refuse unknown fields
//! (`deny_unknown_fields`), so an older build never drops a field silently:
//! it stops (see `store.rs`).

use super::{Catalog, Command, Rejected};

/// The catalog version this build supports.
pub const CATALOG_VERSION: u32 = 5;

/// Version 2: sinks, media agents, copies and imports.
pub const SINKS_VERSION: u32 = 2;

/// Version 3: roles, the audit trail, the identity a server or media agent
/// was registered by, and removing media agents.
pub const ACCESS_VERSION: u32 = 3;

/// Version 4: restore points and their schedules.
pub const RESTORE_POINTS_VERSION: u32 = 4;

/// Version 4 also holds the binlog archive.
pub const ARCHIVE_VERSION: u32 = RESTORE_POINTS_VERSION;

/// Version 5: physical backups and application file sets: the kind,
/// provider and snapshot fields of cut entries, artifacts and restored
/// servers. A logical backup without file sets writes none of them, so
/// its commands stay at their older versions.
pub const PHYSICAL_VERSION: u32 = 5;

/// The version of a new catalog and of builds that advertise none (they
/// report 0 on the wire): the commands of the first release.
pub const FIRST_VERSION: u32 = 1;

/// Ops that no build writes any more: an entry of one (from a log written
/// before its removal) is refused as every later build refuses it, never a
/// reason to stop.
const RETIRED_OPS: &[&str] = &["prepared"];

impl Command {
    /// The lowest catalog version whose builds decode and apply this command
    /// as this build does. Raise it for a command that uses a new variant
    /// or a new field (see the module doc).
    pub fn min_version(&self) -> u32 {
        match self {
            Command::CommitCut { cut, .. } if cut.values().any(|c| c.is_physical_era()) => {
                PHYSICAL_VERSION
            }
            Command::ArtifactStored { artifact, .. } | Command::CopyStored { artifact, .. }
                if artifact.is_physical_era() =>
            {
                PHYSICAL_VERSION
            }
            Command::RestoreServerDone { result, .. } if result.is_physical_era() => {
                PHYSICAL_VERSION
            }
            Command::ImportBackup { backup }
                if backup.cut.values().any(|c| c.is_physical_era())
                    || backup.artifacts.values().any(|a| a.is_physical_era()) =>
            {
                PHYSICAL_VERSION
            }
            Command::AddRestorePoint { .. } | Command::SetRestorePointSchedule { .. } => {
                RESTORE_POINTS_VERSION
            }
            Command::RegisterServer(s) if s.registered_by.is_some() => ACCESS_VERSION,
            Command::RegisterMedia(m) if m.registered_by.is_some() => ACCESS_VERSION,
            Command::SetRole { .. }
            | Command::RemoveRole { .. }
            | Command::RemoveMedia { .. }
            | Command::Audit { .. } => ACCESS_VERSION,
            Command::ArchiveSegments { .. } => ARCHIVE_VERSION,
            Command::StartBackup { sink, .. } if !sink.is_empty() => SINKS_VERSION,
            Command::RegisterMedia(_)
            | Command::AddSink { .. }
            | Command::RemoveSink { .. }
            | Command::SetSinkPolicy { .. }
            | Command::CopyStored { .. }
            | Command::CopyVerified { .. }
            | Command::ImportBackup { .. } => SINKS_VERSION,
            Command::RegisterServer(_)
            | Command::RemoveServer { .. }
            | Command::StartBackup { .. }
            | Command::CommitCut { .. }
            | Command::Released { .. }
            | Command::ArtifactStored { .. }
            | Command::Complete { .. }
            | Command::Fail { .. }
            | Command::StartRestore { .. }
            | Command::RestoreServerDone { .. }
            | Command::FinishRestore { .. } => FIRST_VERSION,
            // Older builds cannot decode it, but it is proposed only with a
            // version every voter advertises (so at least 2, which no build
            // without it advertises): its gate is the voters' versions, not
            // the cluster version it raises.
            Command::SetClusterVersion { .. } => FIRST_VERSION,
        }
    }
}

impl Catalog {
    /// The version every voter supported when it was last raised.
    pub fn cluster_version(&self) -> u32 {
        self.cluster_version
    }

    /// `Ok` if a command needing catalog version `needs` may be proposed;
    /// otherwise the cluster version that is too low.
    pub fn admits(&self, needs: u32) -> Result<(), u32> {
        if needs <= self.cluster_version {
            Ok(())
        } else {
            Err(self.cluster_version)
        }
    }

    pub(super) fn set_cluster_version(&mut self, version: u32) -> Result<(), Rejected> {
        if version <= self.cluster_version {
            return Err(Rejected::VersionNotRaised {
                current: self.cluster_version,
                proposed: version,
            });
        }
        self.cluster_version = version;
        Ok(())
    }
}

/// The version to raise the cluster to, given what every voter advertises
/// (`None`: not heard from, counted as [`FIRST_VERSION`]); `None` when the
/// lowest is not above `cluster`.
pub fn raise_to(cluster: u32, voters: impl IntoIterator<Item = Option<u32>>) -> Option<u32> {
    let lowest = voters
        .into_iter()
        .map(|v| v.unwrap_or(FIRST_VERSION).max(FIRST_VERSION))
        .min()?;
    (lowest > cluster).then_some(lowest)
}

/// What a committed entry is to this build: a command, an ordinary
/// rejection (a retired command), or an error that must stop this node (it
/// was written by a newer build).
pub(super) fn decode(index: u64, data: &[u8]) -> Result<Result<Command, Rejected>, String> {
    let e = match serde_json::from_slice::<Command>(data) {
        Ok(Command::SetClusterVersion { version }) if version > CATALOG_VERSION => {
            return Err(format!(
                "catalog command at raft index {index} raises the cluster version to {version}, \
                 but this coordinator supports only catalog version {CATALOG_VERSION}: \
                 upgrade this coordinator"
            ));
        }
        Ok(cmd) => return Ok(Ok(cmd)),
        Err(e) => e,
    };
    let op = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("op")?.as_str().map(String::from));
    if let Some(op) = op.as_deref().filter(|op| RETIRED_OPS.contains(op)) {
        return Ok(Err(Rejected::BadTransition {
            id: String::new(),
            reason: format!("retired catalog command {op}"),
        }));
    }
    Err(format!(
        "catalog command {} at raft index {index} does not decode with this coordinator \
         (catalog version {CATALOG_VERSION}): {e}; a newer coordinator wrote it: \
         upgrade this coordinator",
        op.as_deref().unwrap_or("(no op)")
    ))
}

/// Refuses a stored cluster version this build does not support.
pub(super) fn check_loaded(version: u32) -> Result<(), String> {
    if version > CATALOG_VERSION {
        return Err(format!(
            "the catalog's cluster version is {version}, but this coordinator supports only \
             catalog version {CATALOG_VERSION}: a coordinator cannot be downgraded below its \
             group's cluster version; run a build that supports version {version}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster rises to the lowest version any voter advertises, only
    /// above the current one; a voter not heard from holds it at 1.
    #[test]
    fn the_cluster_rises_to_the_lowest_voter() {
        assert_eq!(raise_to(1, [Some(1), Some(1), Some(1)]), None);
        assert_eq!(raise_to(1, [Some(2), Some(3), Some(2)]), Some(2));
        assert_eq!(raise_to(1, [Some(2), None, Some(2)]), None, "unheard");
        assert_eq!(
            raise_to(1, [Some(2), Some(0), Some(2)]),
            None,
            "older build"
        );
        assert_eq!(raise_to(2, [Some(2), Some(2)]), None, "already there");
        assert_eq!(raise_to(3, [Some(2), Some(2)]), None, "never lowered");
        assert_eq!(raise_to(1, []), None);
    }
}
