//! The coordinated restore, a leader job: every server of a COMPLETE backup
//! is loaded at once, each from the best copy any reachable agent can read.
//!
//! The request is checked against the catalog (the backup exists and is
//! COMPLETE, every server has a target or the request says in-place, every
//! target names one of its servers, no other restore of it runs). Then,
//! before anything is recorded or loaded, every server gets a source: a
//! copy and an agent that reaches it ([`choose`]). The copies are ranked:
//! one on the server's own agent, then a media agent's pool, then another
//! agent's disk, then object storage; each is read by the agent holding it,
//! or (object storage) the server's own agent, a media agent, any agent.
//! The agent checks the copy's manifest against the catalog. A server
//! without a usable source fails the whole request: a fleet restore starts
//! on every server or none. The restore is recorded (`StartRestore`,
//! [`record`]); [`run`] then loads every server, moving on to the next
//! source when a copy fails its checksums (before the target is touched),
//! recording each outcome as it finishes and the end (`FinishRestore`).
//! [`crate::job::Jobs::restore`] runs it as a task of its own, so a caller
//! that goes away does not cut it short; a leader fails the restores no job
//! of its own drives (see [`crate::job::Jobs::watch_leadership`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lockstep_proto::agent as agent_pb;
use tracing::{Instrument as _, info, info_span, warn};

use crate::catalog::{Command, Rejected, RestoredServer};
use crate::core::{Core, fail_pause, now_unix_ms};
use crate::error::{Error, Result};
use crate::job::status_text;
use crate::sinks::shown;

mod plan;
#[cfg(test)]
mod tests;

pub use plan::Planned;
use plan::{Plan, Source, measured_rate, plan};

/// How long a source check (manifest only) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What to restore. Its `Debug` shows targets as the catalog does (never
/// a password).
#[derive(Clone, Default)]
pub struct RestoreRequest {
    /// The backup's id.
    pub backup_id: String,
    /// Server name → `mysql://` URL of the server to load it into.
    pub targets: BTreeMap<String, String>,
    /// Load into non-empty targets.
    pub force: bool,
    /// Servers not in `targets` go into their agent's own database server
    /// (without it, every server needs a target).
    pub in_place: bool,
    /// Let agents run RESET MASTER on MySQL 5.7 targets with GTIDs.
    pub allow_reset_master: bool,
    /// Load only from copies in this sink.
    pub from: Option<String>,
    /// Server name → the agent that loads it.
    pub agents: BTreeMap<String, String>,
    /// Physical backups: server name → the datadir to write it into.
    pub datadirs: BTreeMap<String, String>,
    /// Where the application file sets go (`<files_to>/<server>/<set>`).
    pub files_to: Option<String>,
}

impl std::fmt::Debug for RestoreRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: BTreeMap<&String, String> = self
            .targets
            .iter()
            .map(|(server, url)| (server, plan::redact(url)))
            .collect();
        f.debug_struct("RestoreRequest")
            .field("backup_id", &self.backup_id)
            .field("targets", &targets)
            .field("force", &self.force)
            .field("in_place", &self.in_place)
            .field("allow_reset_master", &self.allow_reset_master)
            .field("from", &self.from)
            .field("agents", &self.agents)
            .field("datadirs", &self.datadirs)
            .field("files_to", &self.files_to)
            .finish()
    }
}

/// The rate a physical restore's estimate assumes (bytes of the datadir
/// per second).
const PHYSICAL_BYTES_PER_SEC: u64 = 200 << 20;

/// A finished restore: its catalog id and every server's outcome, in the
/// backup's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub restore_id: String,
    pub servers: Vec<(String, RestoredServer)>,
}

/// A restore checked and recorded, ready to [`run`].
#[derive(Debug, Clone)]
pub struct Recorded {
    restore_id: String,
    backup_id: String,
    force: bool,
    allow_reset_master: bool,
    plans: Vec<Plan>,
}

/// Checks `req` against the catalog and picks every server's source; fails
/// naming each server that has none.
async fn prepare(core: &Core, req: &RestoreRequest) -> Result<(Vec<Plan>, u64)> {
    core.require_leader().await?;
    let id = req.backup_id.clone();
    let r = req.clone();
    let (plans, rate) = core
        .read(move |cat| -> Result<(Vec<Plan>, u64)> {
            let b = cat
                .backups
                .get(&r.backup_id)
                .ok_or_else(|| Rejected::UnknownBackup(r.backup_id.clone()))?;
            Ok((plan(cat, b, &r)?, measured_rate(cat, &b.cluster)))
        })
        .await??;
    let plans = futures::future::join_all(plans.into_iter().map(|p| choose(core, &id, p))).await;
    let failed: Vec<String> = plans
        .iter()
        .filter(|p| p.sources.is_empty())
        .map(|p| {
            format!(
                "server {}: no reachable copy ({}){}",
                p.server,
                if p.skipped.is_empty() {
                    "the backup has no copy of it".to_string()
                } else {
                    p.skipped.join("; ")
                },
                if p.target_datadir.is_empty() {
                    ""
                } else {
                    "; a datadir is written by the server's own agent unless --agent SERVER=AGENT names one on another host"
                }
            )
        })
        .collect();
    if !failed.is_empty() {
        return Err(Error::CannotLoad {
            id,
            reasons: failed.join("; "),
        });
    }
    Ok((plans, rate))
}

/// Checks `req` against the catalog and records it as restore
/// `restore_id`. Fails before anything is recorded if the backup is unknown
/// or not COMPLETE, a server has no target (without in-place), a target
/// names a server not in it, another restore of it runs, or a server has no
/// copy an agent can reach.
pub async fn record(core: &Core, restore_id: &str, req: RestoreRequest) -> Result<Recorded> {
    let (plans, _) = prepare(core, &req).await?;
    core.propose(&Command::StartRestore {
        id: restore_id.to_string(),
        backup_id: req.backup_id.clone(),
        targets: plans
            .iter()
            .map(|p| (p.server.clone(), p.shown_target()))
            .collect(),
        force: req.force,
        at_unix_ms: now_unix_ms(),
    })
    .await?;
    Ok(Recorded {
        restore_id: restore_id.to_string(),
        backup_id: req.backup_id,
        force: req.force,
        allow_reset_master: req.allow_reset_master,
        plans,
    })
}

/// What a restore would do: every server's copy and agent, the bytes and
/// an estimated time (at the cluster's last measured restore rate). Loads
/// nothing and records nothing.
pub async fn plan_only(core: &Core, req: RestoreRequest) -> Result<Vec<Planned>> {
    let (plans, rate) = prepare(core, &req).await?;
    Ok(plans
        .into_iter()
        .map(|p| {
            let s = &p.sources[0];
            Planned {
                target: p.shown_target(),
                server: p.server,
                sink: s.sink.clone(),
                location: s.copy.location.clone(),
                agent: s.agent.name.clone(),
                bytes: s.copy.bytes,
                estimated_ms: if s.copy.is_physical() {
                    // Written and checked at about this rate on the test
                    // machine's loop-mounted btrfs (BENCHMARKS.md).
                    s.copy.snapshot_bytes.max(s.copy.bytes).saturating_mul(1000)
                        / PHYSICAL_BYTES_PER_SEC
                } else {
                    s.copy.rows.saturating_mul(1000) / rate.max(1)
                },
                skipped: p.skipped,
            }
        })
        .collect())
}

/// Keeps the first source whose agent confirms the copy (its manifest is
/// there and is the catalog's); the others stay as fallbacks. Sources that
/// fail are moved to `skipped` with why; a copy found bad (missing, not
/// the catalog's) is recorded as such.
async fn choose(core: &Core, id: &str, mut p: Plan) -> Plan {
    let mut kept = Vec::new();
    let mut found = false;
    for s in std::mem::take(&mut p.sources) {
        if found {
            kept.push(s);
            continue;
        }
        match check(core, id, &s).await {
            Ok(()) => {
                found = true;
                kept.push(s);
            }
            Err((bad, e)) => {
                if bad {
                    record_bad_copy(core, id, &p.server, &s.sink, &e).await;
                }
                p.skipped.push(format!("{}: {e}", s.describe()));
            }
        }
    }
    p.sources = kept;
    p
}

/// Records that a copy failed a check (the next `catalog show` says so).
async fn record_bad_copy(core: &Core, id: &str, server: &str, sink: &str, error: &str) {
    let record = Command::CopyVerified {
        id: id.to_string(),
        server: server.to_string(),
        sink: sink.to_string(),
        at_unix_ms: now_unix_ms(),
        error: Some(error.to_string()),
    };
    if let Err(e) = core.propose(&record).await {
        warn!(backup = id, server, error = %e, "could not record the bad copy");
    }
}

/// Asks a source's agent whether it can read the copy; `Err((true, _))`
/// when the copy itself is bad.
async fn check(core: &Core, id: &str, s: &Source) -> std::result::Result<(), (bool, String)> {
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        crate::sinks::verify_one(core, id, &s.copy, s.spec.clone(), &s.agent, true),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err((false, format!("no answer within {CHECK_TIMEOUT:?}"))),
    }
}

/// Restores every server of a recorded restore in parallel; returns one
/// outcome per server in the backup's order.
pub async fn run(core: &Core, rec: Recorded) -> Restored {
    let Recorded {
        restore_id,
        backup_id: id,
        force,
        allow_reset_master,
        plans,
    } = rec;
    fail_pause("before-restore-agents").await;

    let span = info_span!("restore", backup = %id, restore = %restore_id);
    async {
        info!(servers = plans.len(), force, "restoring every server");
        let timeout = core.config.transfer_timeout;
        let rid = &restore_id;
        let bid = &id;
        let runs = plans.into_iter().map(|p| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(
                timeout,
                restore_server(core, &p, bid, force, allow_reset_master),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "server {}: restore not finished within {timeout:?}",
                    p.server
                )),
            };
            match &outcome {
                Ok(l) => info!(server = %p.server, rows = l.rows, sink = %shown(&l.sink), agent = %l.agent, elapsed = ?started.elapsed(), "server restored"),
                Err(e) => warn!(server = %p.server, error = %e, "server restore failed"),
            }
            let mut done = match outcome {
                Ok(loaded) => loaded,
                Err(e) => RestoredServer {
                    error: Some(e),
                    ..RestoredServer::default()
                },
            };
            if done.target.is_empty() {
                done.target = p.shown_target();
            }
            if done.kind.is_empty() && !p.target_datadir.is_empty() {
                done.kind = "physical".into();
                done.datadir = p.target_datadir.clone();
            }
            let record = Command::RestoreServerDone {
                id: rid.clone(),
                server: p.server.clone(),
                result: done.clone(),
            };
            if let Err(e) = core.propose(&record).await {
                warn!(server = %p.server, error = %e, "could not record the server's outcome");
            }
            (p.server, done)
        });
        let servers = futures::future::join_all(runs).await;
        let finish = Command::FinishRestore {
            id: restore_id.clone(),
            reason: None,
            at_unix_ms: now_unix_ms(),
        };
        if let Err(e) = core.propose(&finish).await {
            warn!(error = %e, "could not record the end of the restore; the next leader fails it");
        }
        Restored {
            restore_id: restore_id.clone(),
            servers,
        }
    }
    .instrument(span)
    .await
}

/// Loads one server from its sources in order: a copy that fails its
/// checksums (found before the target is touched) is recorded as bad and
/// the next source is tried.
async fn restore_server(
    core: &Core,
    p: &Plan,
    backup_id: &str,
    force: bool,
    allow_reset_master: bool,
) -> std::result::Result<RestoredServer, String> {
    let mut errors = Vec::new();
    for (i, s) in p.sources.iter().enumerate() {
        if i > 0
            && let Err((bad, e)) = check(core, backup_id, s).await
        {
            if bad {
                record_bad_copy(core, backup_id, &p.server, &s.sink, &e).await;
            }
            errors.push(format!("{}: {e}", s.describe()));
            continue;
        }
        match restore_one(core, p, s, backup_id, force, allow_reset_master).await {
            Ok((target, loaded)) => {
                return Ok(RestoredServer {
                    target,
                    location: s.copy.location.clone(),
                    sink: shown(&s.sink).to_string(),
                    agent: s.agent.name.clone(),
                    ..loaded
                });
            }
            Err((true, e)) => {
                warn!(server = %p.server, source = %s.describe(), error = %e, "copy failed its checksums; trying the next copy");
                record_bad_copy(core, backup_id, &p.server, &s.sink, &e).await;
                errors.push(format!("{}: {e}", s.describe()));
            }
            Err((false, e)) => {
                errors.push(e);
                break;
            }
        }
    }
    Err(errors.join("; "))
}

/// One agent's `Restore` from one source, to the end of its stream;
/// returns the target the agent reported and its report. `Err((true, _))`
/// when the copy failed its checksums (nothing was touched).
async fn restore_one(
    core: &Core,
    p: &Plan,
    s: &Source,
    backup_id: &str,
    force: bool,
    allow_reset_master: bool,
) -> std::result::Result<(String, RestoredServer), (bool, String)> {
    let name = &p.server;
    // Fencing: the agent refuses a Restore from a term older than the
    // newest leader it has heard from.
    let term = core
        .require_leader()
        .await
        .map_err(|e| (false, format!("server {name}: {e}")))?;
    let mut client = core
        .agent_client(&s.agent.addr)
        .await
        .map_err(|e| (false, format!("server {name}: {e}")))?;
    let failed = |st: tonic::Status| (st.code() == tonic::Code::DataLoss, restore_error(name, &st));
    let mut stream = client
        .restore(agent_pb::RestoreRequest {
            location: s.copy.location.clone(),
            target_mysql: p.target_mysql.clone(),
            target_datadir: p.target_datadir.clone(),
            files_to: p.files_to.clone(),
            force,
            threads: 0,
            binlog: false,
            backup_id: backup_id.to_string(),
            manifest_sha256: s.copy.manifest_sha256.clone(),
            allow_reset_master,
            sink: s.spec.clone(),
            term,
        })
        .await
        .map_err(failed)?
        .into_inner();
    loop {
        let msg = stream.message().await.map_err(failed)?.ok_or_else(|| {
            (
                false,
                format!("server {name}: the restore ended without a report"),
            )
        })?;
        if !msg.done {
            continue;
        }
        let r = msg.report.ok_or_else(|| {
            (
                false,
                format!("server {name}: the restore finished without a report"),
            )
        })?;
        return Ok((
            r.server,
            RestoredServer {
                tables: r.tables,
                rows: r.rows,
                duration_ms: r.duration_ms,
                gtid_slave_pos: r.gtid_slave_pos,
                kind: crate::catalog::stored_kind(&r.kind),
                datadir: r.datadir,
                gtid_binlog_pos: r.gtid_binlog_pos,
                recovery_ms: r.recovery_ms,
                file_sets: r.file_sets,
                ..RestoredServer::default()
            },
        ));
    }
}

/// An agent's refusal or failure, naming the server; a non-empty target
/// says how to override.
fn restore_error(name: &str, s: &tonic::Status) -> String {
    if s.code() == tonic::Code::AlreadyExists {
        return format!(
            "server {name}: restore refused, the target is not empty (pass --force to load into it anyway): {}",
            s.message()
        );
    }
    format!("server {name}: restore failed: {}", status_text(s))
}
