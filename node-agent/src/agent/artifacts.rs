//! The agent's work on artifacts in sinks, apart from the dump: restore,
//! copy and verify a copy, each after checking it is the copy the catalog
//! names and opening it (an encrypted copy with the operator's key).

use std::sync::Arc;

use tracing::Instrument;

use super::Agent;
use crate::dump::DumpResult;
use crate::error::{Error, Result};
use crate::mysql::Server;
use crate::progress::Progress;
use crate::sink::artifact::Artifact;

/// Where a restore goes: a server (its `mysql://` URL or `cred:NAME`;
/// `None`: the agent's own), or for a physical backup a datadir on this
/// host; and the file sets, if asked.
#[derive(Debug, Clone, Default)]
pub struct RestoreTarget {
    pub mysql: Option<String>,
    /// A physical backup's datadir on this host.
    pub datadir: Option<std::path::PathBuf>,
    /// Where the application file sets go (`<files_to>/<set>`).
    pub files_to: Option<std::path::PathBuf>,
}

/// What the catalog says a restore location holds (empty fields are not
/// checked).
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub backup_id: String,
    pub manifest_sha256: String,
}

/// One running restore into a server (by `host:port`); dropping it ends
/// the claim.
pub(super) struct RestoreClaim<'a> {
    running: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    address: String,
}

impl<'a> RestoreClaim<'a> {
    pub(super) fn take(
        running: &'a std::sync::Mutex<std::collections::HashSet<String>>,
        address: &str,
    ) -> Result<Self> {
        let fresh = running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.to_string());
        if !fresh {
            return Err(Error::Busy {
                current: format!("a restore into {address}"),
                requested: format!("another restore into {address}"),
            });
        }
        Ok(RestoreClaim {
            running,
            address: address.to_string(),
        })
    }
}

impl Drop for RestoreClaim<'_> {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.address);
    }
}

impl Agent {
    /// Loads the snapshot at `location` of `sink` into `target` (a
    /// mysql:// URL), or into this agent's own server. Refused before the
    /// target is touched when `location` is outside the sink, its manifest
    /// is not the one `expect` names, the own server has a backup in
    /// progress, or another restore into the same server runs.
    pub async fn restore(
        &self,
        location: &str,
        sink: Option<&lockstep_proto::agent::SinkSpec>,
        target: &RestoreTarget,
        expect: &Expected,
        opts: &crate::restore::LoadOptions,
        progress: Arc<Progress>,
    ) -> Result<crate::restore::LoadReport> {
        let from = self.open_artifact(location, sink).await?;
        check_expected(&from, expect).await?;
        if let Some(datadir) = &target.datadir {
            let (manifest, _) = from.manifest().await?;
            let _exclusive = RestoreClaim::take(&self.restoring, &datadir.display().to_string())?;
            let span = tracing::info_span!("restore", from = %from.describe(), datadir = %datadir.display());
            let to = crate::physical::restore::Target {
                datadir,
                files_to: target.files_to.as_deref(),
                force: opts.force,
            };
            return crate::physical::restore::restore(
                &from,
                &manifest,
                to,
                &self.cfg.physical,
                progress,
                &self.shutdown.child_token(),
            )
            .instrument(span)
            .await;
        }
        let server = match &target.mysql {
            Some(url) => self.target_server(url)?,
            None => self.own_server()?.clone(),
        };
        // Claimed before the backup check: a Prepare checks the claims while
        // it holds the session, so one of the two always sees the other.
        let _exclusive = RestoreClaim::take(&self.restoring, server.address())?;
        if self
            .cfg
            .server
            .as_ref()
            .is_some_and(|own| own.address() == server.address())
            && let Some(s) = self.session.lock().await.as_ref()
        {
            return Err(Error::Busy {
                current: s.backup_id.clone(),
                requested: format!("restore of {}", from.describe()),
            });
        }
        let span =
            tracing::info_span!("restore", from = %from.describe(), target = %server.address());
        let mut report = crate::restore::load(&server, &from, opts, progress.clone())
            .instrument(span)
            .await?;
        if let Some(to) = &target.files_to {
            let (manifest, _) = from.manifest().await?;
            report.file_sets = crate::physical::restore::restore_file_sets(
                &from,
                &manifest,
                to,
                opts.force,
                progress,
                &self.shutdown.child_token(),
            )
            .await?;
        }
        Ok(report)
    }

    /// A restore target: a `mysql://` URL, or `cred:NAME`, an entry of
    /// this agent's credentials file (read now, so entries added since
    /// the start count).
    pub(super) fn target_server(&self, target: &str) -> Result<Server> {
        let Some(name) = target.strip_prefix(crate::secrets::REFERENCE_PREFIX) else {
            return Server::parse(target);
        };
        let path = self.cfg.credentials_file.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "restore target {target}: agent {} has no credentials file (start it with --credentials-file FILE)",
                self.cfg.name
            ))
        })?;
        crate::secrets::Credentials::load(path)?.resolve(name)
    }

    /// Copies the artifact at `location` of `from` into `to` (at the same
    /// location), after checking it is the one the catalog names.
    pub async fn copy(
        &self,
        location: &str,
        from: Option<&lockstep_proto::agent::SinkSpec>,
        to: Option<&lockstep_proto::agent::SinkSpec>,
        expect: &Expected,
        progress: &Progress,
    ) -> Result<DumpResult> {
        let src = self.open_artifact(location, from).await?;
        check_expected(&src, expect).await?;
        let store = crate::sink::open(to, &self.local()).await?;
        let prefix = if src.prefix().is_empty() {
            self.artifact_prefix(&expect.backup_id)
        } else {
            src.prefix().to_string()
        };
        let dst = self.sealed_if(Artifact::new(store, prefix), to, &expect.backup_id)?;
        let (location, sink) = (dst.prefix().to_string(), dst.store().describe());
        let span = tracing::info_span!("copy", from = %src.describe(), to = %dst.describe());
        let (manifest, manifest_sha256) = src.copy_to(dst, progress).instrument(span).await?;
        Ok(DumpResult {
            location,
            sink,
            manifest,
            manifest_sha256,
        })
    }

    /// `out`, to be sealed when `sink` encrypts (refused without a key file).
    pub(super) fn sealed_if(
        &self,
        out: Artifact,
        sink: Option<&lockstep_proto::agent::SinkSpec>,
        backup_id: &str,
    ) -> Result<Artifact> {
        let Some(spec) = sink.filter(|s| s.encrypt) else {
            return Ok(out);
        };
        let key = self.cfg.key.clone().ok_or_else(|| {
            Error::Config(format!(
                "sink {} encrypts at rest, but agent {} has no --key-file (the operator key; lockstep-agent keygen FILE makes one)",
                spec.name, self.cfg.name
            ))
        })?;
        Ok(out.sealed_with(key, backup_id))
    }

    /// Checks the artifact at `location` of `sink`: its manifest is the
    /// catalog's and (unless `manifest_only`) every file matches it.
    /// Returns the files and bytes checked.
    pub async fn verify(
        &self,
        location: &str,
        sink: Option<&lockstep_proto::agent::SinkSpec>,
        expect: &Expected,
        manifest_only: bool,
    ) -> Result<(u64, u64)> {
        let from = self.open_artifact(location, sink).await?;
        check_expected(&from, expect).await?;
        if manifest_only {
            return Ok((1, 0));
        }
        let threads = self.cfg.snapshot_connections.max(1);
        let (m, _) = crate::restore::verify(&from, threads, Arc::new(Progress::default())).await?;
        Ok((m.files.len() as u64, m.totals.bytes))
    }

    /// The artifact at `location` in `sink`. Without a sink, `location` is
    /// a key prefix in the host-local directory, or (as older catalogs
    /// recorded it) an absolute directory inside it.
    async fn open_artifact(
        &self,
        location: &str,
        sink: Option<&lockstep_proto::agent::SinkSpec>,
    ) -> Result<Artifact> {
        let mut out = if sink.is_none() && location.starts_with('/') {
            let dir = std::path::Path::new(location);
            let resolved = std::fs::canonicalize(dir).map_err(|e| Error::BadBackup {
                path: dir.into(),
                reason: format!("cannot open the backup location: {e}"),
            })?;
            let root = std::fs::canonicalize(&self.cfg.sink_dir).map_err(|e| Error::BadBackup {
                path: self.cfg.sink_dir.clone(),
                reason: format!("cannot open the sink directory: {e}"),
            })?;
            if !resolved.starts_with(&root) {
                return Err(Error::BadBackup {
                    path: dir.into(),
                    reason: format!(
                        "outside this agent's sink directory {}; refusing to restore from it",
                        root.display()
                    ),
                });
            }
            Artifact::in_directory(&resolved)
        } else {
            let store = crate::sink::open(sink, &self.local()).await?;
            let out = Artifact::new(store, location);
            out.key("manifest.json")?;
            out
        };
        out.unlock(self.cfg.key.as_deref()).await?;
        Ok(out)
    }
}

/// Checks that an artifact holds the manifest the catalog names.
async fn check_expected(from: &Artifact, expect: &Expected) -> Result<()> {
    if expect.backup_id.is_empty() && expect.manifest_sha256.is_empty() {
        return Ok(());
    }
    let (manifest, stored) = from.manifest().await?;
    let bad = |reason: String| Error::BadBackup {
        path: from.describe().into(),
        reason,
    };
    if !expect.backup_id.is_empty() && manifest.backup_id != expect.backup_id {
        return Err(bad(format!(
            "holds backup {}, but the catalog says backup {}",
            manifest.backup_id, expect.backup_id
        )));
    }
    if !expect.manifest_sha256.is_empty() && stored != expect.manifest_sha256 {
        return Err(bad(format!(
            "manifest sha256 is {stored}, but the catalog recorded {}",
            expect.manifest_sha256
        )));
    }
    Ok(())
}
