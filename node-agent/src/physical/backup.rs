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
use crate::physical::mariabackup::{self, Base};
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
            base: None,
            binlogs: Vec::new(),
        };
        seal_physical(&out, origin, files, physical, file_sets).await
    }
    .await;
    if result.is_err() {
        out.discard().await;
    }
    result
}

/// Stores a `mariadb-backup` base (staged before the cut) as
/// [`mariabackup::BASE_ARCHIVE`], the server's binlog from the base's
/// position to the cut's under [`mariabackup::BINLOG_DIR`], the captured
/// file sets of `origin`, then the manifest, into `out` (which must hold
/// nothing yet).
pub async fn store_base(
    origin: Origin,
    base: &Base,
    settings: &ServerSettings,
    mut out: Artifact,
    opts: &DumpOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<DumpResult> {
    out.claim().await?;
    let result = async {
        let cut = &origin.position;
        let range = mariabackup::binlog_range(
            settings,
            &origin.address,
            &base.position,
            &cut.binlog_file,
            cut.binlog_pos,
        )?;
        let mut files = vec![
            put_file(
                &out,
                mariabackup::BASE_ARCHIVE,
                &base.staged,
                None,
                &progress,
                cancel,
            )
            .await?,
        ];
        let mut binlogs = Vec::new();
        for (path, len) in range {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rel = format!("{}/{name}", mariabackup::BINLOG_DIR);
            files.push(put_file(&out, &rel, &path, Some(len), &progress, cancel).await?);
            binlogs.push(rel);
        }
        let (sets, file_sets) =
            store_file_sets(&out, &origin.file_sets, opts.zstd_level, progress, cancel).await?;
        files.extend(sets);
        let physical = Physical {
            provider: mariabackup::NAME.into(),
            snapshot_us: 0,
            snapshot_bytes: base.bytes,
            free_bytes: 0,
            archive: mariabackup::BASE_ARCHIVE.into(),
            files: Vec::new(),
            settings: settings.clone(),
            warnings: settings.warnings(),
            base: Some(base.position.clone()),
            binlogs,
        };
        seal_physical(&out, origin, files, physical, file_sets).await
    }
    .await;
    if result.is_err() {
        out.discard().await;
    }
    result
}

/// Writes the manifest of a physical backup holding `files`.
async fn seal_physical(
    out: &Artifact,
    origin: Origin,
    files: Vec<FileEntry>,
    physical: Physical,
    file_sets: Vec<FileSetRecord>,
) -> Result<DumpResult> {
    let warnings = physical.warnings.clone();
    seal(
        out,
        origin,
        Sealed {
            version: PHYSICAL_VERSION,
            databases: Vec::new(),
            files,
            rows: 0,
            warnings,
            physical: Some(physical),
            file_sets,
        },
    )
    .await
}

/// Copies the first `len` bytes (all, if None) of the local file `path`
/// into `out` as `rel`; returns its entry.
async fn put_file(
    out: &Artifact,
    rel: &str,
    path: &std::path::Path,
    len: Option<u64>,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<FileEntry> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let failed = |e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        action: "read",
        source: e,
    };
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let mut input = file.take(len.unwrap_or(u64::MAX));
    let mut object = out.create(rel).await?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    loop {
        if cancel.is_cancelled() {
            object.abort().await;
            return Err(Error::Cancelled(format!("storing {rel}")));
        }
        let mut buf = vec![0u8; 1 << 20];
        let n = match input.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                object.abort().await;
                return Err(failed(e));
            }
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        hasher.update(&buf);
        size += n as u64;
        progress.add_bytes(n as u64);
        object.write(bytes::Bytes::from(buf)).await?;
    }
    if let Some(want) = len.filter(|want| *want != size) {
        object.abort().await;
        return Err(failed(std::io::Error::other(format!(
            "holds {size} bytes, {want} expected"
        ))));
    }
    object.finish().await?;
    Ok(FileEntry {
        path: rel.to_string(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
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
