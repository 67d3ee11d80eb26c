//! Application file sets: directories (configuration, uploads) cut at the
//! same moment as the databases.
//!
//! [`plan`] runs before the lock: it sizes the copied sets against the
//! budget and checks the snapshotted ones' providers. [`capture`] runs on
//! CaptureFiles, which the coordinator sends once every server of the cut
//! holds its lock and before any Commit: every server is locked then, so an
//! application that writes a row and then a file has its file cut exactly
//! where its rows are. A set whose directory lies on a snapshotting
//! filesystem is snapshotted there; any other is copied into the agent's
//! staging directory (bounded by the budget, since the freeze lasts the
//! copy).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::physical::config::{FileSet, FileSetOptions};
use crate::snapshot::{self, Snapshot};

/// A file set checked before the lock.
#[derive(Debug, Clone)]
pub struct Planned {
    pub set: FileSet,
    /// Bytes of its files when planned.
    pub bytes: u64,
}

/// A captured file set: its files are readable, frozen, at `root`.
#[derive(Debug, Clone)]
pub struct Captured {
    pub name: String,
    /// The live directory it was captured from.
    pub path: PathBuf,
    /// "snapshot" or "copy".
    pub how: &'static str,
    pub root: PathBuf,
    pub took: Duration,
    /// What to release once it is stored: its snapshot or its staged copy.
    pub snapshot: Option<Snapshot>,
    pub staged: Option<PathBuf>,
}

impl Captured {
    /// One line for logs and replies.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}) by {} in {} ms",
            self.name,
            self.path.display(),
            self.how,
            self.took.as_millis()
        )
    }
}

/// Checks every set before the lock: each directory exists, the copied
/// ones hold no more than the budget together, the snapshotted ones'
/// providers can snapshot them. The error names the set and the sizes.
pub async fn plan(opts: &FileSetOptions) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    let mut copied = 0u64;
    for set in &opts.sets {
        let meta = tokio::fs::metadata(&set.path)
            .await
            .on_file(&set.path, "read a file set's directory")?;
        if !meta.is_dir() {
            return Err(Error::Config(format!(
                "file set {}: {} is not a directory",
                set.name,
                set.path.display()
            )));
        }
        let bytes = tree_bytes(set.path.clone()).await?;
        match &set.snapshot {
            Some(cfg) => {
                snapshot::provider(cfg)
                    .check(std::slice::from_ref(&set.path))
                    .await?;
            }
            None => copied += bytes,
        }
        out.push(Planned {
            set: set.clone(),
            bytes,
        });
    }
    if copied > opts.budget_bytes {
        let sizes: Vec<String> = out
            .iter()
            .filter(|p| p.set.snapshot.is_none())
            .map(|p| {
                format!(
                    "{} ({}) {} bytes",
                    p.set.name,
                    p.set.path.display(),
                    p.bytes
                )
            })
            .collect();
        return Err(Error::Config(format!(
            "the file sets copied during the lock hold {copied} bytes, over the budget of {} bytes (files.budget_bytes): {}; raise the budget or put them on a snapshotting filesystem ([files.sets.snapshot])",
            opts.budget_bytes,
            sizes.join(", ")
        )));
    }
    Ok(out)
}

/// Captures every planned set (the lock is held on every server). `id`
/// names the snapshots; copies go to `stage/<set name>`. A failure
/// releases what was captured already.
pub async fn capture(planned: &[Planned], id: &str, stage: &Path) -> Result<Vec<Captured>> {
    let mut done: Vec<Captured> = Vec::new();
    for p in planned {
        match capture_one(p, id, stage).await {
            Ok(c) => done.push(c),
            Err(e) => {
                release(&done).await;
                return Err(e);
            }
        }
    }
    Ok(done)
}

async fn capture_one(p: &Planned, id: &str, stage: &Path) -> Result<Captured> {
    let started = Instant::now();
    let set = &p.set;
    if let Some(cfg) = &set.snapshot {
        let provider = snapshot::provider(cfg);
        let snap = provider.take(&snapshot_id(id, &set.name), &[]).await?;
        let root = snap.path_of(&set.path).ok_or_else(|| {
            Error::Config(format!(
                "file set {}: {} is not inside the snapshot's volume {}",
                set.name,
                set.path.display(),
                snap.volume.display()
            ))
        })?;
        return Ok(Captured {
            name: set.name.clone(),
            path: set.path.clone(),
            how: "snapshot",
            root,
            took: started.elapsed(),
            snapshot: Some(snap),
            staged: None,
        });
    }
    let dest = stage.join(&set.name);
    if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(&dest)
            .await
            .on_file(&dest, "remove an old staged copy")?;
    }
    tokio::fs::create_dir_all(&dest)
        .await
        .on_file(&dest, "create the staging directory")?;
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", set.path.display()))
        .arg(&dest)
        .output()
        .await
        .on_file(&set.path, "run cp")?;
    if !out.status.success() {
        let _ = tokio::fs::remove_dir_all(&dest).await;
        return Err(Error::Config(format!(
            "file set {}: copying {} failed: {}",
            set.name,
            set.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Captured {
        name: set.name.clone(),
        path: set.path.clone(),
        how: "copy",
        root: dest.clone(),
        took: started.elapsed(),
        snapshot: None,
        staged: Some(dest),
    })
}

/// The snapshot id of file set `name` of the backup whose snapshots are
/// named `id`.
pub fn snapshot_id(id: &str, name: &str) -> String {
    format!("{id}-files-{name}")
}

/// Releases captured sets: deletes their snapshots and staged copies.
/// Failures are logged (a restarted agent cleans up what is left).
pub async fn release(captured: &[Captured]) {
    for c in captured {
        if let Some(s) = &c.snapshot
            && let Err(e) = snapshot::release(s).await
        {
            tracing::warn!(set = %c.name, error = %e, "file set snapshot not released");
        }
    }
    release_copies(captured).await;
}

/// Deletes the staged copies of captured sets (their snapshots are the
/// caller's).
pub async fn release_copies(captured: &[Captured]) {
    for c in captured {
        if let Some(dir) = &c.staged
            && let Err(e) = tokio::fs::remove_dir_all(dir).await
        {
            tracing::warn!(set = %c.name, dir = %dir.display(), error = %e, "staged file set copy not removed");
        }
    }
}

/// Bytes of the regular files under `dir` (symlinks not followed).
pub async fn tree_bytes(dir: PathBuf) -> Result<u64> {
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).on_file(&d, "list")? {
                let entry = entry.on_file(&d, "list")?;
                let meta = entry
                    .path()
                    .symlink_metadata()
                    .on_file(&entry.path(), "stat")?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    total += meta.len();
                }
            }
        }
        Ok(total)
    })
    .await
    .map_err(|e| Error::Config(format!("sizing a file set: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_within_budget_and_refuses_over() {
        let src = tempfile::tempdir().expect("ok");
        std::fs::create_dir(src.path().join("sub")).expect("ok");
        std::fs::write(src.path().join("a.txt"), b"hello\n").expect("ok");
        std::fs::write(src.path().join("sub/b.bin"), vec![7u8; 1000]).expect("ok");
        let mut opts = FileSetOptions {
            budget_bytes: 2000,
            sets: vec![FileSet {
                name: "app".into(),
                path: src.path().into(),
                snapshot: None,
            }],
        };
        let planned = plan(&opts).await.expect("ok");
        assert_eq!(planned[0].bytes, 1006);
        let stage = tempfile::tempdir().expect("ok");
        let got = capture(&planned, "b1", stage.path()).await.expect("ok");
        // Written after the capture: not in it.
        std::fs::write(src.path().join("a.txt"), b"changed\n").expect("ok");
        assert_eq!(
            std::fs::read(got[0].root.join("a.txt")).expect("ok"),
            b"hello\n"
        );
        assert_eq!(
            std::fs::read(got[0].root.join("sub/b.bin"))
                .expect("ok")
                .len(),
            1000
        );
        release(&got).await;
        assert!(!got[0].root.exists());

        opts.budget_bytes = 100;
        let e = plan(&opts).await.expect_err("an error").to_string();
        assert!(e.contains("over the budget") && e.contains("app"), "{e}");
        opts.sets[0].path = src.path().join("missing");
        let e = plan(&opts).await.expect_err("an error").to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
