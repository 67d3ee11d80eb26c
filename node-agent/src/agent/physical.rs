//! What a backup holds beyond its lock and snapshot connections: a
//! physical backup's file snapshot, and the application file sets of
//! either kind. Planned before the lock ([`Extra::plan`]), taken inside it
//! ([`Extra::snapshot_in_lock`], [`Agent::capture_files`]), streamed by
//! the transfer, and released whatever happens: dropping an [`Extra`]
//! that still holds something releases it in the background.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cut::PreparedCut;
use crate::error::{Error, Result};
use crate::physical::Kind;
use crate::physical::files::{self, Captured, Planned};
use crate::physical::mariabackup::{self, Base};
use crate::physical::settings::ServerSettings;
use crate::snapshot::registry::Registry;
use crate::snapshot::{self, Provider, Snapshot, Space};

use super::{Agent, Stage};

/// A physical backup's snapshot and what was known when it was taken.
#[derive(Debug)]
pub(crate) struct Physical {
    pub provider: Box<dyn Provider>,
    pub settings: ServerSettings,
    pub space: Space,
    pub snapshot: Option<Snapshot>,
}

/// A physical backup whose data mover is `mariadb-backup`: the base taken
/// before the cut, and the server's settings.
#[derive(Debug)]
pub(crate) struct Based {
    pub base: Base,
    pub settings: ServerSettings,
}

/// Everything a backup holds beside its lock and snapshot connections.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    pub kind: Kind,
    /// Names this backup's snapshots (see [`snapshot_id`]).
    id: String,
    pub physical: Option<Physical>,
    /// Instead of `physical`: a `mariadb-backup` base.
    pub based: Option<Based>,
    pub planned_files: Vec<Planned>,
    pub files: Vec<Captured>,
    /// The snapshots recorded in the registry before the lock (whether
    /// taken yet or not): released and forgotten by [`Extra::release`].
    recorded: Vec<Snapshot>,
    registry: Option<Registry>,
}

impl Extra {
    /// Before the lock: sizes the file sets against their budget; for a
    /// physical backup reads the server's settings, checks the snapshot
    /// covers its datadir, redo log and binlog and that the volume has
    /// room, and records the snapshot in the registry. (The volume is
    /// flushed later, as the last step before the lock.)
    pub async fn plan(agent: &Agent, kind: Kind, backup_id: &str) -> Result<Extra> {
        let cfg = &agent.cfg;
        let planned_files = files::plan(&cfg.files).await?;
        let id = snapshot_id(&cfg.name, backup_id);
        let mut based = None;
        let physical = match kind {
            Kind::Logical => None,
            Kind::Physical if cfg.physical.mariabackup.is_some() => {
                let server = agent.own_server()?;
                let base = agent.bases.lock().map_err(|_| Error::Cancelled("poisoned".into()))?.remove(backup_id).ok_or_else(|| {
                    Error::Config(format!(
                        "server {}: backup {backup_id} has no mariadb-backup base: the coordinator takes one before the cut (TakeBase); a coordinator older than the agent does not",
                        server.address()
                    ))
                })?;
                let mut conn = server
                    .connect("read settings for a physical backup")
                    .await?;
                let settings = crate::physical::settings::read(&mut conn, server.address()).await?;
                based = Some(Based { base, settings });
                None
            }
            Kind::Physical => {
                let server = agent.own_server()?;
                let provider_cfg = cfg.physical.snapshot.as_ref().ok_or_else(|| {
                    Error::Config(format!(
                        "server {}: a physical backup needs a snapshot provider ([physical.snapshot] or --snapshot-provider in agent {}'s configuration)",
                        server.address(),
                        cfg.name
                    ))
                })?;
                let provider = snapshot::provider(provider_cfg);
                let mut conn = server
                    .connect("read settings for a physical backup")
                    .await?;
                let settings = crate::physical::settings::read(&mut conn, server.address()).await?;
                drop(conn);
                settings.require_inside_datadir(server.address())?;
                let space = provider.check(&settings.live_paths()).await?;
                Some(Physical {
                    provider,
                    settings,
                    space,
                    snapshot: None,
                })
            }
        };
        let mut extra = Extra {
            kind,
            id: id.clone(),
            physical,
            based,
            planned_files,
            files: Vec::new(),
            recorded: Vec::new(),
            registry: None,
        };
        // Every snapshot this backup may take is recorded before the lock
        // (fsyncs stay out of the freeze): a crashed agent's successor
        // finds and deletes them.
        let mut planned = Vec::new();
        if let Some(p) = &extra.physical {
            planned.push(p.provider.planned(&id)?);
        }
        for set in &extra.planned_files {
            if let Some(cfg) = &set.set.snapshot {
                planned.push(
                    snapshot::provider(cfg).planned(&files::snapshot_id(&id, &set.set.name))?,
                );
            }
        }
        if !planned.is_empty() {
            let registry = Registry::open(&cfg.state_dir)?;
            for snap in planned {
                registry.record(&snap)?;
                extra.recorded.push(snap);
            }
            extra.registry = Some(registry);
        }
        Ok(extra)
    }

    /// Inside the lock (held by `cut`): flushes InnoDB's log buffer when
    /// commits may still sit in it, then takes the snapshot. Returns how
    /// long the snapshot took.
    pub async fn snapshot_in_lock(&mut self, cut: &mut PreparedCut) -> Result<Duration> {
        let Some(p) = self.physical.as_mut() else {
            return Ok(Duration::ZERO);
        };
        if p.settings.needs_engine_log_flush() {
            cut.lock
                .execute("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS")
                .await?;
        }
        let started = Instant::now();
        let snap = p
            .provider
            .take(&self.id, &p.settings.redo_log_files())
            .await?;
        let took = started.elapsed();
        tracing::info!(provider = p.provider.name(), snapshot = %snap.handle, took_us = took.as_micros() as u64, "snapshot taken inside the lock");
        p.snapshot = Some(snap);
        Ok(took)
    }

    /// Streams a physical backup's snapshot (and the file sets) into `out`.
    pub async fn store(
        &self,
        origin: crate::dump::Origin,
        out: crate::sink::artifact::Artifact,
        opts: &crate::dump::DumpOptions,
        progress: std::sync::Arc<crate::progress::Progress>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<crate::dump::DumpResult> {
        if let Some(b) = &self.based {
            return crate::physical::backup::store_base(
                origin,
                &b.base,
                &b.settings,
                out,
                opts,
                progress,
                cancel,
            )
            .await;
        }
        let (Some(p), Some(snap)) = (
            self.physical.as_ref(),
            self.physical.as_ref().and_then(|p| p.snapshot.as_ref()),
        ) else {
            return Err(Error::BadState {
                backup_id: origin.backup_id,
                reason: "it is physical but holds no snapshot".into(),
            });
        };
        let taken = crate::physical::backup::Taken {
            snap,
            settings: &p.settings,
            space: p.space,
        };
        crate::physical::backup::store(origin, taken, out, opts, progress, cancel).await
    }

    /// A physical backup's provider.
    pub fn provider(&self) -> Option<&dyn Provider> {
        self.physical.as_ref().map(|p| p.provider.as_ref())
    }

    /// The provider's name, for a physical backup.
    pub fn provider_name(&self) -> &'static str {
        if self.based.is_some() {
            return mariabackup::NAME;
        }
        self.physical.as_ref().map_or("", |p| p.provider.name())
    }

    /// Releases everything still held. Failures are logged; a restarted
    /// agent deletes the snapshots it finds recorded.
    pub async fn release(&mut self) {
        if let Some(p) = self.physical.as_mut() {
            p.snapshot = None;
        }
        if let Some(b) = self.based.take() {
            remove_staged(&b.base);
        }
        // Staged copies; the file sets' snapshots are among the recorded.
        let sets = std::mem::take(&mut self.files);
        files::release_copies(&sets).await;
        for snap in std::mem::take(&mut self.recorded) {
            match snapshot::release(&snap).await {
                Ok(()) => {
                    if let Some(r) = &self.registry
                        && let Err(e) = r.forget(&snap.id)
                    {
                        tracing::warn!(snapshot = %snap.id, error = %e, "snapshot released but its record stays");
                    }
                }
                Err(e) => {
                    tracing::warn!(snapshot = %snap.handle, error = %e, "snapshot not released; the agent deletes it when it starts again")
                }
            }
        }
    }

    fn holds_anything(&self) -> bool {
        !self.files.is_empty() || !self.recorded.is_empty()
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        if let Some(b) = self.based.take() {
            remove_staged(&b.base);
        }
        if !self.holds_anything() {
            return;
        }
        let mut rest = Extra {
            kind: self.kind,
            id: std::mem::take(&mut self.id),
            physical: None,
            based: None,
            planned_files: Vec::new(),
            files: std::mem::take(&mut self.files),
            recorded: std::mem::take(&mut self.recorded),
            registry: self.registry.take(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { rest.release().await });
            }
            Err(_) => tracing::warn!(
                "a backup's snapshot is left behind (no runtime to release it); the agent deletes it when it starts again"
            ),
        }
    }
}

impl Agent {
    /// Captures the application file sets of prepared backup `backup_id`
    /// while its lock is held (the coordinator calls it once every server
    /// of the cut is locked). Repeating it answers with the sets captured.
    pub async fn capture_files(&self, backup_id: &str) -> Result<(Vec<String>, Duration)> {
        let mut slot = self.session.lock().await;
        let Some(session) = slot.as_mut().filter(|s| s.backup_id == backup_id) else {
            return Err(self.gone(backup_id));
        };
        if !matches!(session.stage, Stage::Prepared(_)) {
            return Err(Error::BadState {
                backup_id: backup_id.into(),
                reason: "its lock is no longer held: file sets are captured only while every server is locked".into(),
            });
        }
        if !session.extra.files.is_empty() {
            return Ok((
                session.extra.files.iter().map(Captured::describe).collect(),
                Duration::ZERO,
            ));
        }
        let started = Instant::now();
        let stage = self.file_stage(backup_id);
        let captured =
            files::capture(&session.extra.planned_files, &session.extra.id, &stage).await?;
        let took = started.elapsed();
        tracing::info!(
            backup = backup_id,
            sets = captured.len(),
            took_us = took.as_micros() as u64,
            "file sets captured inside the lock"
        );
        let described = captured.iter().map(Captured::describe).collect();
        session.extra.files = captured;
        Ok((described, took))
    }

    /// Deletes what a crashed agent left: the snapshots its registry
    /// records and its staged file set copies. Run once at start.
    pub async fn clean_leftovers(&self) {
        let state = &self.cfg.state_dir;
        if state.join("snapshots").exists() {
            match Registry::open(state) {
                Ok(r) => match r.cleanup().await {
                    Ok(done) if !done.is_empty() => {
                        tracing::warn!(snapshots = ?done, "deleted snapshots a previous run of the agent left behind")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "leftover snapshots not all deleted"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot open the snapshot registry"),
            }
        }
        let bases = mariabackup::clean_staged(state);
        if bases > 0 {
            tracing::warn!(
                bases,
                "deleted mariadb-backup bases a previous run of the agent left behind"
            );
        }
        let staged = state.join("files");
        if staged.exists()
            && let Err(e) = tokio::fs::remove_dir_all(&staged).await
        {
            tracing::warn!(dir = %staged.display(), error = %e, "staged file set copies not removed");
        }
    }

    /// Before the cut of backup `backup_id` (the coordinator's TakeBase):
    /// when this server's backup is physical with `mariadb-backup` as its
    /// data mover, copies the base and keeps it for the backup's PREPARE.
    /// None when the server takes no base.
    pub async fn take_base(&self, backup_id: &str, kind: &str) -> Result<Option<Base>> {
        let kind = Kind::parse_or(kind, self.cfg.physical.kind)?;
        let Some(mover) = self
            .cfg
            .physical
            .mariabackup
            .as_ref()
            .filter(|_| kind == Kind::Physical)
        else {
            return Ok(None);
        };
        if backup_id.is_empty() {
            return Err(Error::Config("backup id is empty".into()));
        }
        let server = self.own_server()?.clone();
        self.refuse_while_restoring(&server, backup_id)?;
        // The coordinator runs one backup of a cluster at a time: bases of
        // other backups still here were abandoned (their coordinator died
        // before PREPARE or ABORT reached this agent).
        let abandoned: Vec<Base> = {
            let mut bases = self
                .bases
                .lock()
                .map_err(|_| Error::Cancelled("poisoned".into()))?;
            if let Some(base) = bases.get(backup_id) {
                return Ok(Some(base.clone()));
            }
            bases.drain().map(|(_, b)| b).collect()
        };
        for b in &abandoned {
            tracing::warn!(file = %b.staged.display(), "deleting the base of an abandoned backup");
            remove_staged(b);
        }
        let base = mariabackup::take_base(
            &server,
            &mover.mover(),
            &self.cfg.state_dir,
            backup_id,
            self.cfg.physical.zstd_level,
        )
        .await?;
        self.bases
            .lock()
            .map_err(|_| Error::Cancelled("poisoned".into()))?
            .insert(backup_id.to_string(), base.clone());
        Ok(Some(base))
    }

    /// Forgets and deletes the base of `backup_id`, if any (its backup was
    /// aborted before a PREPARE took it over).
    pub(super) fn drop_base(&self, backup_id: &str) {
        let base = self.bases.lock().ok().and_then(|mut b| b.remove(backup_id));
        if let Some(base) = base {
            remove_staged(&base);
        }
    }

    /// Where copied file sets of a backup are staged.
    fn file_stage(&self, backup_id: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("files")
            .join(crate::format::fs_name(backup_id))
    }
}

fn remove_staged(base: &Base) {
    if let Err(e) = std::fs::remove_file(&base.staged)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %base.staged.display(), error = %e, "staged base not removed; the agent deletes it when it starts again");
    }
}

/// The snapshot id of agent `agent`'s share of backup `backup_id`: a safe
/// file and subvolume name (letters, digits, `.`, `_`, `-`), unique even
/// when several agents share a snapshot directory.
pub(crate) fn snapshot_id(agent: &str, backup_id: &str) -> String {
    let safe = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    format!("lockstep-{}-{}", safe(agent, 32), safe(backup_id, 48))
}

#[cfg(test)]
mod tests {
    use super::snapshot_id;

    #[test]
    fn snapshot_ids_are_safe_and_per_agent() {
        let id = snapshot_id("db/1 ü", "6f1c2a9e-0000-4000-8000-000000000001");
        assert_eq!(id, "lockstep-db_1__-6f1c2a9e-0000-4000-8000-000000000001");
        assert_ne!(snapshot_id("db1", "b"), snapshot_id("db2", "b"));
        assert!(snapshot_id(&"x".repeat(500), &"y".repeat(500)).len() <= 100);
    }
}
