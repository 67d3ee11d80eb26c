//! The transfer of a physical backup: the snapshot's datadir streamed into
//! the sink as one pax tar with zstd (nothing staged), the file sets beside
//! it, and the manifest with every file's checksum and the server's
//! settings. Also the file sets of a logical backup.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::dump::{DumpOptions, DumpResult, Origin, Sealed, seal};
use crate::error::{Error, Result};
use crate::format::manifest::{FileEntry, PHYSICAL_VERSION};
use crate::format::physical::{FileSetRecord, Physical, skip_for_datadir};
use crate::physical::files::Captured;
use crate::physical::settings::ServerSettings;
use crate::physical::stream::store_tree;
use crate::progress::Progress;
use crate::sink::artifact::Artifact;
use crate::snapshot::{Snapshot, Space};

/// The datadir's archive in a physical artifact.
pub const DATADIR_ARCHIVE: &str = "datadir.tar.zst";

/// A physical backup's snapshot and what was known when it was taken.
#[derive(Debug, Clone, Copy)]
pub struct Taken<'a> {
    pub snap: &'a Snapshot,
    pub settings: &'a ServerSettings,
    pub space: Space,
}

/// Streams the snapshot of the server's datadir (and the captured file
/// sets of `origin`) into `out`, which must hold nothing yet.
pub async fn store(
    origin: Origin,
    taken: Taken<'_>,
    mut out: Artifact,
    opts: &DumpOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<DumpResult> {
    out.claim().await?;
    let Taken {
        snap,
        settings,
        space,
    } = taken;
    let result = async {
        let datadir = settings.datadir();
        let root = snap.path_of(&datadir).ok_or_else(|| {
            Error::Config(format!(
                "server {}: datadir {} is not inside snapshot {} of {}",
                origin.address,
                datadir.display(),
                snap.handle,
                snap.volume.display()
            ))
        })?;
        let (entry, tree) = store_tree(
            &out,
            DATADIR_ARCHIVE,
            root,
            skip_for_datadir,
            opts.zstd_level,
            progress.clone(),
            cancel,
        )
        .await?;
        let (mut files, file_sets) =
            store_file_sets(&out, &origin.file_sets, opts.zstd_level, progress, cancel).await?;
        files.push(entry);
        let physical = Physical {
            provider: snap.provider.clone(),
            snapshot_us: snap.took.as_micros() as u64,
            snapshot_bytes: tree.iter().map(|f| f.size).sum(),
            free_bytes: space.free_bytes,
            archive: DATADIR_ARCHIVE.into(),
            files: tree,
            settings: settings.clone(),
            warnings: settings.warnings(),
        };
        seal(
            &out,
            origin,
            Sealed {
                version: PHYSICAL_VERSION,
                databases: Vec::new(),
                files,
                rows: 0,
                warnings: settings.warnings(),
                physical: Some(physical),
                file_sets,
            },
        )
        .await
    }
    .await;
    if result.is_err() {
        out.discard().await;
    }
    result
}

/// Stores each captured file set as `files/<name>.tar.zst`.
pub async fn store_file_sets(
    out: &Artifact,
    sets: &[Captured],
    zstd_level: i32,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<(Vec<FileEntry>, Vec<FileSetRecord>)> {
    let mut entries = Vec::new();
    let mut records = Vec::new();
    for set in sets {
        let rel = format!("files/{}.tar.zst", set.name);
        let (entry, tree) = store_tree(
            out,
            &rel,
            set.root.clone(),
            |_| false,
            zstd_level,
            progress.clone(),
            cancel,
        )
        .await?;
        records.push(FileSetRecord {
            name: set.name.clone(),
            path: set.path.display().to_string(),
            how: set.how.to_string(),
            archive: rel,
            bytes: tree.iter().map(|f| f.size).sum(),
            files: tree,
        });
        entries.push(entry);
    }
    Ok((entries, records))
}
