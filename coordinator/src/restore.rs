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

use crate::catalog::{Backup, Catalog, Command, Rejected, RestoredServer, SinkKind, Status};
use crate::core::{Core, fail_pause, now_unix_ms};
use crate::error::{Error, Result};
use crate::job::{agent_client, status_text};
use crate::sinks::{AgentRef, readers, shown, spec};

/// How long a source check (manifest only) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Assumed load rate when no restore of the cluster has been measured.
const DEFAULT_ROWS_PER_SEC: u64 = 100_000;

/// What to restore.
#[derive(Debug, Clone, Default)]
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
}

/// A finished restore: its catalog id and every server's outcome, in the
/// backup's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub restore_id: String,
    pub servers: Vec<(String, RestoredServer)>,
}

/// One way to load a server: a copy and the agent that reads it.
#[derive(Debug, Clone)]
struct Source {
    /// Empty: host-local.
    sink: String,
    spec: Option<agent_pb::SinkSpec>,
    location: String,
    manifest_sha256: String,
    bytes: u64,
    rows: u64,
    agent: AgentRef,
}

impl Source {
    fn describe(&self) -> String {
        format!(
            "copy in sink {} read by agent {}",
            shown(&self.sink),
            self.agent.name
        )
    }
}

/// One server to restore: its target and its sources, best first.
#[derive(Debug, Clone)]
struct Plan {
    server: String,
    target_mysql: String,
    sources: Vec<Source>,
    /// Why sources were passed over (or none exist).
    skipped: Vec<String>,
}

/// One server of a restore plan, as `restore plan` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub server: String,
    pub target: String,
    pub sink: String,
    pub location: String,
    pub agent: String,
    pub bytes: u64,
    pub estimated_ms: u64,
    pub skipped: Vec<String>,
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
                "server {}: no reachable copy ({})",
                p.server,
                if p.skipped.is_empty() {
                    "the backup has no copy of it".to_string()
                } else {
                    p.skipped.join("; ")
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
                location: s.location.clone(),
                agent: s.agent.name.clone(),
                bytes: s.bytes,
                estimated_ms: s.rows.saturating_mul(1000) / rate.max(1),
                skipped: p.skipped,
            }
        })
        .collect())
}

/// Rows per second of the cluster's finished restores, or a default.
fn measured_rate(cat: &Catalog, cluster: &str) -> u64 {
    let (rows, ms) = cat
        .restores
        .values()
        .filter(|r| {
            cat.backups
                .get(&r.backup_id)
                .is_some_and(|b| b.cluster == cluster)
        })
        .flat_map(|r| r.servers.values())
        .filter(|s| s.error.is_none() && s.duration_ms > 0)
        .fold((0u64, 0u64), |(r, d), s| (r + s.rows, d + s.duration_ms));
    (rows * 1000)
        .checked_div(ms)
        .map_or(DEFAULT_ROWS_PER_SEC, |rate| rate.max(1))
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
        match check(id, &s).await {
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
async fn check(id: &str, s: &Source) -> std::result::Result<(), (bool, String)> {
    let a = crate::catalog::Artifact {
        location: s.location.clone(),
        manifest_sha256: s.manifest_sha256.clone(),
        bytes: s.bytes,
        files: 0,
        rows: s.rows,
        verified_at_unix_ms: None,
        verify_error: None,
    };
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        crate::sinks::verify_one(id, &a, s.spec.clone(), &s.agent, true),
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
            && let Err((bad, e)) = check(backup_id, s).await
        {
            if bad {
                record_bad_copy(core, backup_id, &p.server, &s.sink, &e).await;
            }
            errors.push(format!("{}: {e}", s.describe()));
            continue;
        }
        match restore_one(p, s, backup_id, force, allow_reset_master).await {
            Ok((target, loaded)) => {
                return Ok(RestoredServer {
                    target,
                    location: s.location.clone(),
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

/// Checks the request against the backup and gives each server its
/// target and sources, best first.
fn plan(cat: &Catalog, b: &Backup, req: &RestoreRequest) -> Result<Vec<Plan>> {
    let id = &b.id;
    if b.status != Status::Complete {
        return Err(Error::NotRestorable {
            id: id.to_string(),
            status: crate::convert::status_name(b.status).to_uppercase(),
        });
    }
    let names = || b.servers.join(", ");
    for unknown in req.targets.keys().chain(req.agents.keys()) {
        if !b.servers.contains(unknown) {
            return Err(Error::UnknownTarget {
                id: id.to_string(),
                server: unknown.clone(),
                servers: names(),
            });
        }
    }
    // Checked here, before anything is recorded or any agent called: a
    // typo must not leave the fleet partly restored.
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (server, url) in &req.targets {
        let bad = |reason: String| Error::BadTarget {
            id: id.to_string(),
            server: server.clone(),
            reason,
        };
        check_target_url(url).map_err(bad)?;
        let at = redact(url);
        if let Some(other) = seen.insert(at.clone(), server) {
            return Err(bad(format!(
                "{at} is also the target of server {other}; each server needs a target of its own"
            )));
        }
    }
    let untargeted: Vec<&str> = b
        .servers
        .iter()
        .map(String::as_str)
        .filter(|name| !req.targets.contains_key(*name))
        .collect();
    if !req.in_place && !untargeted.is_empty() {
        return Err(Error::MissingTarget {
            id: id.to_string(),
            servers: untargeted.join(", "),
        });
    }
    if let Some(from) = &req.from
        && from != crate::catalog::HOST_LOCAL
        && cat.sink(&b.cluster, from).is_none()
    {
        return Err(Error::Config(format!(
            "--from {from}: cluster {} has no such sink",
            b.cluster
        )));
    }
    for (server, agent) in &req.agents {
        if crate::sinks::agent(cat, &b.cluster, agent).is_none() {
            return Err(Error::BadTarget {
                id: id.to_string(),
                server: server.clone(),
                reason: format!("--agent {agent}: no such agent in cluster {}", b.cluster),
            });
        }
    }
    Ok(b.servers
        .iter()
        .map(|server| {
            let target_mysql = req.targets.get(server).cloned().unwrap_or_default();
            let (sources, skipped) = sources(cat, b, server, req, target_mysql.is_empty());
            Plan {
                server: server.clone(),
                target_mysql,
                sources,
                skipped,
            }
        })
        .collect())
}

/// A server's sources, best first, and the copies left out with why.
fn sources(
    cat: &Catalog,
    b: &Backup,
    server: &str,
    req: &RestoreRequest,
    in_place: bool,
) -> (Vec<Source>, Vec<String>) {
    let from = req.from.as_deref().map(|f| {
        if f == crate::catalog::HOST_LOCAL {
            ""
        } else {
            f
        }
    });
    let mut skipped = Vec::new();
    let mut copies: Vec<(u8, &str, &crate::catalog::Artifact)> = Vec::new();
    for (sink, a) in b.copies_of(server) {
        if from.is_some_and(|f| f != sink) {
            continue;
        }
        let rank = match (sink, cat.sink(&b.cluster, sink).map(|s| &s.kind)) {
            ("", _) => 0,
            (_, Some(SinkKind::Disk { agent, .. })) if agent == server => 0,
            (_, Some(SinkKind::Disk { agent, .. }))
                if crate::sinks::agent(cat, &b.cluster, agent).is_some_and(|a| a.media) =>
            {
                1
            }
            (_, Some(SinkKind::Disk { .. })) => 2,
            (_, Some(SinkKind::S3 { .. })) => 3,
            (_, None) => {
                skipped.push(format!(
                    "copy in sink {sink}: the sink was removed from the catalog"
                ));
                continue;
            }
        };
        // A copy known to be bad goes last.
        let rank = rank + if a.verify_error.is_some() { 10 } else { 0 };
        copies.push((rank, sink, a));
    }
    copies.sort_by_key(|(rank, _, _)| *rank);
    let mut out = Vec::new();
    for (_, sink, a) in copies {
        let spec = match spec(cat, &b.cluster, sink) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(format!("copy in sink {}: {e}", shown(sink)));
                continue;
            }
        };
        let mut agents = readers(cat, &b.cluster, sink, server);
        if let Some(forced) = req.agents.get(server) {
            agents.retain(|a| &a.name == forced);
            if agents.is_empty() {
                skipped.push(format!(
                    "copy in sink {}: agent {forced} cannot read it (it is on another agent's own disk)",
                    shown(sink)
                ));
            }
        }
        if in_place {
            // Its own server is only the server's own agent's.
            agents.retain(|a| a.name == server);
        }
        for agent in agents {
            out.push(Source {
                sink: sink.to_string(),
                spec: spec.clone(),
                location: a.location.clone(),
                manifest_sha256: a.manifest_sha256.clone(),
                bytes: a.bytes,
                rows: a.rows,
                agent,
            });
        }
    }
    (out, skipped)
}

impl Plan {
    /// The target as the catalog and the caller see it: `host:port` (never
    /// the credentials) or "own server".
    fn shown_target(&self) -> String {
        if self.target_mysql.is_empty() {
            "own server".to_string()
        } else {
            redact(&self.target_mysql)
        }
    }
}

/// One agent's `Restore` from one source, to the end of its stream;
/// returns the target the agent reported and its report. `Err((true, _))`
/// when the copy failed its checksums (nothing was touched).
async fn restore_one(
    p: &Plan,
    s: &Source,
    backup_id: &str,
    force: bool,
    allow_reset_master: bool,
) -> std::result::Result<(String, RestoredServer), (bool, String)> {
    let name = &p.server;
    let mut client = agent_client(&s.agent.addr)
        .await
        .map_err(|e| (false, format!("server {name}: {e}")))?;
    let failed = |st: tonic::Status| (st.code() == tonic::Code::DataLoss, restore_error(name, &st));
    let mut stream = client
        .restore(agent_pb::RestoreRequest {
            location: s.location.clone(),
            target_mysql: p.target_mysql.clone(),
            force,
            threads: 0,
            binlog: false,
            backup_id: backup_id.to_string(),
            manifest_sha256: s.manifest_sha256.clone(),
            allow_reset_master,
            sink: s.spec.clone(),
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

/// Whether `url` has the shape `mysql://USER[:PASS]@HOST:PORT[/...]` (the
/// agent parses it fully); the error never repeats the password.
fn check_target_url(url: &str) -> std::result::Result<(), String> {
    let expected = "expected mysql://USER[:PASSWORD]@HOST:PORT";
    let Some(rest) = url.strip_prefix("mysql://") else {
        return Err(format!(
            "{:?} is not a mysql:// URL ({expected})",
            redact(url)
        ));
    };
    let Some((user, host)) = rest.rsplit_once('@') else {
        return Err(format!("{:?} names no user ({expected})", redact(url)));
    };
    let host = host.split(['/', '?']).next().unwrap_or_default();
    let port_ok = host
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if user.split(':').next().unwrap_or_default().is_empty() || !port_ok {
        return Err(format!("{host:?} is not USER@HOST:PORT ({expected})"));
    }
    Ok(())
}

/// `host:port` of a `mysql://USER[:PASS]@HOST:PORT[/...]` URL (never the
/// credentials); anything unparsable becomes "(target)".
fn redact(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() {
        "(target)".into()
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Artifact, MediaAgent, Server, Sink};

    fn artifact(location: &str) -> Artifact {
        Artifact {
            location: location.into(),
            manifest_sha256: "sha".into(),
            bytes: 10,
            files: 1,
            rows: 5,
            verified_at_unix_ms: None,
            verify_error: None,
        }
    }

    /// Cluster c1: servers s1, s2, media agent m1 with sink `pool`, and
    /// sink `bucket` (s3). Backup b1: host-local copies, plus copies in
    /// both sinks.
    fn catalog() -> Catalog {
        let mut cat = Catalog::default();
        for n in ["s1", "s2"] {
            cat.apply(Command::RegisterServer(Server {
                cluster: "c1".into(),
                name: n.into(),
                agent_addr: format!("http://{n}"),
                flavour: "mariadb".into(),
                version: "10.11".into(),
                server_id: 1,
                server_uuid: String::new(),
                registered_at_unix_ms: 0,
            }))
            .expect("register");
        }
        cat.apply(Command::RegisterMedia(MediaAgent {
            cluster: "c1".into(),
            name: "m1".into(),
            agent_addr: "http://m1".into(),
            registered_at_unix_ms: 0,
        }))
        .expect("media");
        for (name, kind) in [
            (
                "pool",
                SinkKind::Disk {
                    agent: "m1".into(),
                    path: "/pool".into(),
                },
            ),
            (
                "bucket",
                SinkKind::S3 {
                    bucket: "b".into(),
                    prefix: String::new(),
                    endpoint: String::new(),
                    region: String::new(),
                },
            ),
        ] {
            cat.apply(Command::AddSink {
                cluster: "c1".into(),
                sink: Sink {
                    name: name.into(),
                    kind,
                    encrypt: false,
                    added_at_unix_ms: 0,
                },
            })
            .expect("sink");
        }
        let servers = vec!["s1".to_string(), "s2".to_string()];
        let mut b = Backup {
            id: "b1".into(),
            cluster: "c1".into(),
            status: Status::Complete,
            servers: servers.clone(),
            started_at_unix_ms: 0,
            finished_at_unix_ms: Some(1),
            cut: BTreeMap::new(),
            cut_committed_at_unix_ms: Some(0),
            artifacts: BTreeMap::new(),
            reason: None,
            sink: String::new(),
            copies: BTreeMap::new(),
        };
        for s in &servers {
            b.artifacts.insert(s.clone(), artifact(&format!("b1/{s}")));
            for sink in ["pool", "bucket"] {
                b.copies
                    .entry(sink.to_string())
                    .or_default()
                    .insert(s.clone(), artifact(&format!("b1/{s}")));
            }
        }
        cat.backups.insert("b1".into(), b);
        cat
    }

    fn req(targets: &[(&str, &str)], in_place: bool) -> RestoreRequest {
        RestoreRequest {
            backup_id: "b1".into(),
            targets: targets
                .iter()
                .map(|(s, t)| (s.to_string(), t.to_string()))
                .collect(),
            in_place,
            ..RestoreRequest::default()
        }
    }

    fn order(p: &Plan) -> Vec<String> {
        p.sources
            .iter()
            .map(|s| format!("{}@{}", shown(&s.sink), s.agent.name))
            .collect()
    }

    const BOTH: &[(&str, &str)] = &[("s1", "mysql://root@h:1"), ("s2", "mysql://root@h:2")];

    #[test]
    fn sources_rank_own_agent_then_media_pool_then_object_storage() {
        let cat = catalog();
        let b = &cat.backups["b1"];
        let plans = plan(&cat, b, &req(BOTH, false)).expect("plan");
        assert_eq!(
            order(&plans[0]),
            [
                "host-local@s1",
                // Other agents read the pool through its holder.
                "pool@m1",
                "pool@s1",
                "pool@s2",
                "bucket@s1",
                "bucket@m1",
                "bucket@s2"
            ]
        );
        let mut r = req(BOTH, false);
        r.from = Some("bucket".into());
        let plans = plan(&cat, b, &r).expect("plan");
        assert_eq!(order(&plans[1]), ["bucket@s2", "bucket@m1", "bucket@s1"]);
        let mut r = req(BOTH, false);
        r.agents = BTreeMap::from([("s1".to_string(), "m1".to_string())]);
        let plans = plan(&cat, b, &r).expect("plan");
        assert_eq!(order(&plans[0]), ["pool@m1", "bucket@m1"]);
        assert!(
            plans[0].skipped[0].contains("host-local") && plans[0].skipped[0].contains("m1"),
            "{:?}",
            plans[0].skipped
        );
        // In place: only the server's own agent loads its own server.
        let plans = plan(&cat, b, &req(&[], true)).expect("plan");
        assert_eq!(order(&plans[0]), ["host-local@s1", "pool@s1", "bucket@s1"]);
        // A copy known bad goes last.
        let mut cat = catalog();
        cat.backups
            .get_mut("b1")
            .expect("b1")
            .artifacts
            .get_mut("s1")
            .expect("s1")
            .verify_error = Some("checksum mismatch".into());
        let b = &cat.backups["b1"];
        let plans = plan(&cat, b, &req(BOTH, false)).expect("plan");
        assert_eq!(
            order(&plans[0]).last().map(String::as_str),
            Some("host-local@s1")
        );
    }

    #[test]
    fn plan_maps_targets_and_refuses_bad_requests() {
        let mut cat = catalog();
        let b = cat.backups["b1"].clone();
        let plans = plan(&cat, &b, &req(&[("s2", "mysql://root@h:1")], true)).expect("plan");
        assert_eq!(plans[0].target_mysql, "");
        assert_eq!(plans[1].target_mysql, "mysql://root@h:1");

        let missing = plan(&cat, &b, &req(&[("s2", "mysql://root@h:1")], false))
            .expect_err("a server without a target is refused without in-place");
        let text = missing.to_string();
        assert!(
            text.contains("s1") && !text.contains("s2") && text.contains("--in-place"),
            "{text}"
        );

        let unknown = plan(&cat, &b, &req(&[("s9", "mysql://root@h:1")], true))
            .expect_err("an unknown target is refused");
        let text = unknown.to_string();
        assert!(text.contains("s9") && text.contains("s1, s2"), "{text}");

        let mut r = req(BOTH, false);
        r.from = Some("tape".into());
        let e = plan(&cat, &b, &r).expect_err("unknown sink").to_string();
        assert!(e.contains("tape"), "{e}");
        let mut r = req(BOTH, false);
        r.agents = BTreeMap::from([("s1".to_string(), "ghost".to_string())]);
        let e = plan(&cat, &b, &r).expect_err("unknown agent").to_string();
        assert!(e.contains("ghost") && e.contains("server s1"), "{e}");

        cat.backups.get_mut("b1").expect("b1").status = Status::Failed;
        let b = cat.backups["b1"].clone();
        let failed = plan(&cat, &b, &req(BOTH, true)).expect_err("a FAILED backup is refused");
        assert!(failed.to_string().contains("FAILED"), "{failed}");
    }

    #[test]
    fn plan_refuses_bad_and_shared_targets_before_anything_runs() {
        let cat = catalog();
        let b = &cat.backups["b1"];
        let bad = |url: &str| {
            plan(
                &cat,
                b,
                &req(&[("s1", url), ("s2", "mysql://root@h:2")], false),
            )
            .expect_err("refused")
            .to_string()
        };
        for url in [
            "root@h:1",
            "mysql://h:1",
            "mysql://root@h",
            "mysql://root@h:x",
            "mysql://:pw@h:1",
        ] {
            let e = bad(url);
            assert!(
                e.contains("server s1") && e.contains("mysql://USER"),
                "{url}: {e}"
            );
        }
        let secret = bad("mysql://root:secret@h");
        assert!(!secret.contains("secret"), "{secret}");
        let shared = bad("mysql://admin@h:2");
        assert!(
            shared.contains("h:2") && shared.contains("server s1") && shared.contains("s2"),
            "{shared}"
        );
    }

    #[test]
    fn redact_drops_credentials() {
        assert_eq!(
            redact("mysql://root:secret@127.0.0.1:3306/db"),
            "127.0.0.1:3306"
        );
        assert_eq!(redact("mysql://127.0.0.1:3306"), "127.0.0.1:3306");
        assert_eq!(redact(""), "(target)");
    }

    #[test]
    fn a_non_empty_target_says_how_to_override() {
        let s = tonic::Status::already_exists("target is not empty");
        let e = restore_error("s1", &s);
        assert!(e.contains("server s1") && e.contains("--force"), "{e}");
    }
}
