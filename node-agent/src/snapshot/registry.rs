//! The on-disk record of snapshots that may exist: `<state>/snapshots/<id>.json`,
//! written (durably) before a snapshot is taken and removed after it is
//! released. Whatever records an agent finds when it starts are leftovers
//! of a crash, released by [`Registry::cleanup`].

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Snapshot;
use super::cmd::{self, Runner};
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry in `state_dir/snapshots/` (created if missing).
    pub fn open(state_dir: &Path) -> Result<Registry> {
        let dir = state_dir.join("snapshots");
        std::fs::create_dir_all(&dir).on_file(&dir, "create the snapshot registry")?;
        Ok(Registry { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        cmd::check_id(id)?;
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn sync_dir(&self) -> Result<()> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .on_file(&self.dir, "fsync")
    }

    /// Records `snap` (a provider's `planned` snapshot, before `take`):
    /// temp file, fsync, rename, fsync the directory.
    pub fn record(&self, snap: &Snapshot) -> Result<()> {
        let path = self.path(&snap.id)?;
        let tmp = self.dir.join(format!(".{}.json.tmp", snap.id));
        let json = serde_json::to_vec_pretty(snap)
            .map_err(|e| cmd::fail(&path, "encode the snapshot record", e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).on_file(&tmp, "create")?;
        f.write_all(&json).on_file(&tmp, "write")?;
        f.sync_all().on_file(&tmp, "fsync")?;
        drop(f);
        std::fs::rename(&tmp, &path).on_file(&path, "rename into place")?;
        self.sync_dir()
    }

    /// Drops the record of `id` (after its snapshot was released).
    pub fn forget(&self, id: &str) -> Result<()> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => r.on_file(&path, "remove the snapshot record")?,
        }
        self.sync_dir()
    }

    /// Every recorded snapshot, by id. A record that cannot be read is an
    /// error naming its file (and is left where it is).
    pub fn leftovers(&self) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).on_file(&self.dir, "list")? {
            let e = e.on_file(&self.dir, "list")?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let path = e.path();
            let bytes = std::fs::read(&path).on_file(&path, "read the snapshot record")?;
            let snap: Snapshot = serde_json::from_slice(&bytes)
                .map_err(|err| cmd::fail(&path, "read the snapshot record", err.to_string()))?;
            if snap.id != id {
                return Err(cmd::fail(
                    &path,
                    "read the snapshot record",
                    format!("it records snapshot {:?}, not {id:?}", snap.id),
                ));
            }
            out.push(snap);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Releases and forgets every leftover; returns the ids released. One
    /// that cannot be released keeps its record (for the next start) and
    /// is logged; the others are still tried, and the first failure is
    /// returned, naming its snapshot.
    pub async fn cleanup(&self) -> Result<Vec<String>> {
        self.cleanup_with(&cmd::System).await
    }

    pub(crate) async fn cleanup_with(&self, runner: &dyn Runner) -> Result<Vec<String>> {
        let mut released = Vec::new();
        let mut first_error: Option<Error> = None;
        for snap in self.leftovers()? {
            let done = match super::release_with(runner, &snap).await {
                Ok(()) => self.forget(&snap.id),
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => {
                    tracing::info!(snapshot = %snap.id, provider = %snap.provider, handle = %snap.handle, "released a leftover snapshot");
                    released.push(snap.id);
                }
                Err(e) => {
                    let e = cmd::fail(
                        &snap.root,
                        "release a leftover snapshot",
                        format!(
                            "snapshot {} ({} {}): {}; its record stays in {} for the next start",
                            snap.id,
                            snap.provider,
                            snap.handle,
                            crate::error::error_text(&e),
                            self.dir.display()
                        ),
                    );
                    tracing::warn!(snapshot = %snap.id, "{e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cmd::fake::{Fake, out};
    use super::*;
    use std::time::Duration;

    fn snap(id: &str, provider: &str, root: &Path, handle: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            provider: provider.into(),
            volume: PathBuf::from("/srv/live"),
            root: root.to_path_buf(),
            handle: handle.into(),
            mount: None,
            took: Duration::from_millis(12),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(dir.path()).expect("open");
        assert!(reg.leftovers().expect("leftovers").is_empty());
        let a = snap(
            "b2",
            "zfs",
            Path::new("/srv/live/.zfs/snapshot/b2"),
            "tank/db@b2",
        );
        let b = snap("b1", "btrfs", Path::new("/srv/snaps/b1"), "/srv/snaps/b1");
        reg.record(&a).expect("record");
        reg.record(&b).expect("record");
        assert_eq!(
            reg.leftovers().expect("leftovers"),
            vec![b.clone(), a.clone()]
        );
        reg.forget("b1").expect("forget");
        reg.forget("b1").expect("forget");
        assert_eq!(reg.leftovers().expect("leftovers"), vec![a]);
        let mut bad = b.clone();
        bad.id = "../b1".into();
        assert!(reg.record(&bad).is_err());
        std::fs::write(reg.dir().join(".b3.json.tmp"), "{").expect("write");
        assert_eq!(reg.leftovers().expect("leftovers").len(), 1);
        std::fs::write(reg.dir().join("b4.json"), "{").expect("write");
        let e = reg.leftovers().expect_err("leftovers should fail");
        assert!(e.to_string().contains("b4.json"), "{e}");
    }

    /// Cleanup releases what it can and forgets it; a failure keeps its
    /// record and is returned naming the snapshot; the next cleanup,
    /// once the tool works, finishes.
    #[tokio::test]
    async fn cleanup_keeps_what_it_could_not_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(dir.path()).expect("open");
        let copy = dir.path().join("snaps/r1");
        std::fs::create_dir_all(copy.join("data")).expect("create_dir_all");
        std::fs::write(copy.join("data/f"), "x").expect("write");
        reg.record(&snap("r1", "reflink", &copy, &copy.display().to_string()))
            .expect("value");
        reg.record(&snap(
            "z1",
            "zfs",
            Path::new("/srv/live/.zfs/snapshot/z1"),
            "tank/db@z1",
        ))
        .expect("value");
        let broken = Fake::new(|_| out(1, "", "zfs: pool is busy"));
        let e = reg
            .cleanup_with(&broken)
            .await
            .expect_err("cleanup_with should fail");
        assert!(e.to_string().contains("snapshot z1"), "{e}");
        assert!(e.to_string().contains("pool is busy"), "{e}");
        assert!(!copy.exists());
        let left: Vec<String> = reg
            .leftovers()
            .expect("leftovers")
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(left, vec!["z1"]);
        let gone = Fake::new(|_| out(1, "", "cannot open 'tank/db@z1': dataset does not exist"));
        assert_eq!(
            reg.cleanup_with(&gone).await.expect("cleanup_with"),
            vec!["z1"]
        );
        assert!(reg.leftovers().expect("leftovers").is_empty());
    }
}
