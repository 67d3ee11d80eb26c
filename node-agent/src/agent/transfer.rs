//! Phase two on this agent: a committed backup's transfer into a sink (a
//! logical dump of its snapshot connections, or a physical backup's file
//! snapshot streamed), and `dump_once`, a whole local cut without a
//! coordinator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cut::{self, PrepareOptions};
use crate::dump::{self, DumpOptions, DumpResult, Origin};
use crate::error::{Error, Result};
use crate::format::manifest::LockRecord;
use crate::mysql::Server;
use crate::progress::Progress;
use crate::sink::artifact::Artifact;

use super::{Agent, Stage};

impl Agent {
    /// Dumps a committed backup into the sink. Progress goes to `progress`.
    ///
    /// Calling it again for the same backup (a new coordinator leader
    /// picking up the job) waits for a running dump and returns its result;
    /// for a finished one it returns the artifact from the manifest on disk.
    pub async fn transfer(
        &self,
        backup_id: &str,
        zstd_level: Option<i32>,
        sink: Option<&lockstep_proto::agent::SinkSpec>,
        cut_servers: Vec<String>,
        progress: Arc<Progress>,
    ) -> Result<DumpResult> {
        let store = crate::sink::open(sink, &self.local()).await?;
        let out = self.sealed_if(
            Artifact::new(store, self.artifact_prefix(backup_id)),
            sink,
            backup_id,
        )?;
        let started = {
            let mut slot = self.session.lock().await;
            match slot.as_mut().filter(|s| s.backup_id == backup_id) {
                None => None,
                Some(session) => match std::mem::replace(&mut session.stage, Stage::Transferring) {
                    Stage::Committed(c) => {
                        // The transfer owns what the backup holds now, and
                        // releases it when done.
                        let extra = std::mem::take(&mut session.extra);
                        let origin = Origin {
                            backup_id: backup_id.into(),
                            server_name: self.cfg.name.clone(),
                            address: self.own_server()?.address().into(),
                            info: c.info.clone(),
                            position: c.position.clone(),
                            lock: session.lock_record.clone(),
                            started_at: session.started_at.clone(),
                            cluster: self.cfg.cluster.clone(),
                            cut_servers: cut_servers.clone(),
                            file_sets: extra.files.clone(),
                        };
                        Some((c, origin, extra))
                    }
                    Stage::Transferring => {
                        // Someone else's dump of this backup is running:
                        // attach, re-checking every second in case a wake-up
                        // is missed.
                        drop(slot);
                        loop {
                            let done = self.transfer_done.notified();
                            let running = matches!(
                                self.session.lock().await.as_ref(),
                                Some(s) if s.backup_id == backup_id && matches!(s.stage, Stage::Transferring)
                            );
                            if !running {
                                break;
                            }
                            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
                        }
                        None
                    }
                    prepared @ Stage::Prepared(_) => {
                        session.stage = prepared;
                        return Err(Error::BadState {
                            backup_id: backup_id.into(),
                            reason: "it is not committed yet".into(),
                        });
                    }
                },
            }
        };
        let Some((committed, origin, mut extra)) = started else {
            // Finished earlier (or by the dump we attached to).
            let mut out = out;
            out.unlock(self.cfg.key.as_deref()).await?;
            return match out.manifest().await {
                Ok((manifest, manifest_sha256)) if manifest.backup_id == backup_id => {
                    Ok(DumpResult {
                        location: out.prefix().to_string(),
                        sink: out.store().describe(),
                        manifest,
                        manifest_sha256,
                    })
                }
                _ => Err(self.gone(backup_id)),
            };
        };
        if extra.files.len() < extra.planned_files.len() {
            // An older coordinator sends no CaptureFiles: a backup without
            // the file sets it was configured to hold is not one.
            let result = Err(Error::BadState {
                backup_id: backup_id.into(),
                reason: format!(
                    "its {} application file set(s) were never captured (the coordinator sent no CaptureFiles while every server was locked; is it older than this agent?)",
                    extra.planned_files.len()
                ),
            });
            drop(extra);
            let mut slot = self.session.lock().await;
            if matches!(slot.as_ref(), Some(s) if s.backup_id == backup_id) {
                *slot = None;
            }
            self.transfer_done.notify_waiters();
            return result;
        }
        let mut opts = self.cfg.dump.clone();
        if let Some(level) = zstd_level {
            opts.zstd_level = level;
        }
        let result = match extra.kind {
            crate::physical::Kind::Logical => {
                dump::dump(
                    origin,
                    committed.snapshots,
                    self.own_server()?,
                    out,
                    &opts,
                    progress,
                    self.shutdown.child_token(),
                )
                .await
            }
            crate::physical::Kind::Physical => {
                opts.zstd_level = zstd_level.unwrap_or(self.cfg.physical.zstd_level);
                extra
                    .store(origin, out, &opts, progress, &self.shutdown.child_token())
                    .await
            }
        };
        extra.release().await;
        let mut slot = self.session.lock().await;
        if matches!(slot.as_ref(), Some(s) if s.backup_id == backup_id) {
            *slot = None;
        }
        self.transfer_done.notify_waiters();
        result
    }
}

/// Runs a whole local cut without a coordinator: prepare, commit at once,
/// dump. Used by `lockstep-agent dump`.
pub async fn dump_once(
    server: &Server,
    name: &str,
    out: Artifact,
    prepare: PrepareOptions,
    opts: &DumpOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<DumpResult> {
    let backup_id = uuid::Uuid::new_v4().to_string();
    let started_at = crate::now_rfc3339();
    let t = Instant::now();
    let prepared = cut::prepare(server, prepare).await?;
    let method = prepared.lock.method();
    let committed = prepared.commit(server.address()).await?;
    tracing::info!(
        position = %committed.position,
        lock_wait_us = committed.timings.lock_wait_us,
        held_us = committed.held.as_micros() as u64,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "snapshot taken; lock released"
    );
    let origin = Origin {
        backup_id,
        server_name: name.into(),
        address: server.address().into(),
        info: committed.info.clone(),
        position: committed.position.clone(),
        lock: LockRecord {
            method: method.as_str().into(),
            lock_wait_us: committed.timings.lock_wait_us,
            capture_us: committed.timings.capture_us,
            held_us: committed.held.as_micros() as u64,
            locked_at_unix_us: committed.timings.locked_at_unix_us,
        },
        started_at,
        cluster: String::new(),
        cut_servers: Vec::new(),
        file_sets: Vec::new(),
    };
    dump::dump(
        origin,
        committed.snapshots,
        server,
        out,
        opts,
        progress,
        cancel,
    )
    .await
}
