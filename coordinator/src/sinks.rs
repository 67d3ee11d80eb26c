//! Sinks as the leader uses them: turning a catalog sink into the
//! description agents open ([`spec`]), choosing which agent reads or writes
//! a copy, and the sink jobs: copies after COMPLETE ([`copy_backup`]),
//! verification ([`verify_backup`]), usage and scans of a sink ([`scan`],
//! [`backups_from_scan`]).
//!
//! The agents do the reading and writing (`Copy`, `Verify`, `Scan` on
//! `lockstep.agent.v1`); the leader records each outcome in the catalog.

use std::collections::BTreeMap;

use lockstep_proto::agent as agent_pb;
use serde::Deserialize;
use tracing::{info, warn};

use crate::catalog::{
    Artifact, Backup, Catalog, Command, CutEntry, HOST_LOCAL, Sink, SinkKind, Status,
};
use crate::core::{Core, now_unix_ms};
use crate::error::{Error, Result};
use crate::job::status_text;

/// An agent of a cluster: a database server's or a media agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub name: String,
    pub addr: String,
    pub media: bool,
}

/// Every agent of a cluster: servers' agents first, then media agents.
pub fn agents(cat: &Catalog, cluster: &str) -> Vec<AgentRef> {
    let servers = cat.clusters.get(cluster).into_iter().flat_map(|s| {
        s.values().map(|s| AgentRef {
            name: s.name.clone(),
            addr: s.agent_addr.clone(),
            media: false,
        })
    });
    let media = cat.media.get(cluster).into_iter().flat_map(|m| {
        m.values().map(|m| AgentRef {
            name: m.name.clone(),
            addr: m.agent_addr.clone(),
            media: true,
        })
    });
    servers.chain(media).collect()
}

/// The agent called `name` in `cluster`.
pub fn agent(cat: &Catalog, cluster: &str, name: &str) -> Option<AgentRef> {
    agents(cat, cluster).into_iter().find(|a| a.name == name)
}

/// Shows a sink name: empty is the host-local directory.
pub fn shown(sink: &str) -> &str {
    if sink.is_empty() { HOST_LOCAL } else { sink }
}

/// What agents open for sink `name` of `cluster` (`None`: host-local).
pub fn spec(
    cat: &Catalog,
    cluster: &str,
    name: &str,
) -> std::result::Result<Option<agent_pb::SinkSpec>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    let sink = cat
        .sink(cluster, name)
        .ok_or_else(|| format!("cluster {cluster} has no sink {name}"))?;
    Ok(Some(spec_of(cat, cluster, sink)?))
}

fn spec_of(
    cat: &Catalog,
    cluster: &str,
    sink: &Sink,
) -> std::result::Result<agent_pb::SinkSpec, String> {
    use agent_pb::sink_spec::Kind;
    let kind = match &sink.kind {
        SinkKind::Disk { agent: owner, path } => {
            let a = agent(cat, cluster, owner).ok_or_else(|| {
                format!(
                    "sink {}: its agent {owner} is not registered in cluster {cluster}",
                    sink.name
                )
            })?;
            Kind::Disk(agent_pb::DiskSink {
                agent: a.name,
                agent_addr: a.addr,
                path: path.clone(),
            })
        }
        SinkKind::S3 {
            bucket,
            prefix,
            endpoint,
            region,
        } => Kind::S3(agent_pb::S3Sink {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            endpoint: endpoint.clone(),
            region: region.clone(),
        }),
    };
    Ok(agent_pb::SinkSpec {
        name: sink.name.clone(),
        kind: Some(kind),
        encrypt: sink.encrypt,
    })
}

/// The agent whose own disk holds copies in `sink` of `server`: the
/// server's agent for host-local copies, the pool's agent for disk sinks;
/// `None` for object storage (any agent reads it).
pub fn holder(cat: &Catalog, cluster: &str, sink: &str, server: &str) -> Option<AgentRef> {
    if sink.is_empty() {
        return agent(cat, cluster, server);
    }
    match cat.sink(cluster, sink).map(|s| &s.kind) {
        Some(SinkKind::Disk { agent: owner, .. }) => agent(cat, cluster, owner),
        _ => None,
    }
}

/// The agents to ask to read a copy in `sink` of `server`, best first:
/// the copy's holder (it reads its own disk), the server's own agent,
/// media agents, then any other agent.
pub fn readers(cat: &Catalog, cluster: &str, sink: &str, server: &str) -> Vec<AgentRef> {
    let mut out: Vec<AgentRef> = Vec::new();
    let mut push = |a: AgentRef| {
        if !out.iter().any(|o| o.name == a.name) {
            out.push(a);
        }
    };
    if let Some(h) = holder(cat, cluster, sink, server) {
        push(h);
        if sink.is_empty() {
            // A host-local copy is only on its own agent's disk.
            return out;
        }
    }
    let all = agents(cat, cluster);
    for a in all.iter().filter(|a| a.name == server) {
        push(a.clone());
    }
    for a in all.iter().filter(|a| a.media) {
        push(a.clone());
    }
    for a in all {
        push(a);
    }
    out
}

/// The sink a new backup writes to: `requested`, else the policy's primary,
/// else host-local (`""`).
pub fn primary_for(cat: &Catalog, cluster: &str, requested: Option<&str>) -> Result<String> {
    match requested.filter(|s| !s.is_empty()) {
        Some(s) if s == HOST_LOCAL => Ok(String::new()),
        Some(s) => {
            if cat.sink(cluster, s).is_none() {
                return Err(Error::Config(format!(
                    "cluster {cluster} has no sink {s} (lockstep sink list)"
                )));
            }
            Ok(s.to_string())
        }
        None => Ok(cat
            .sinks
            .get(cluster)
            .and_then(|c| c.primary.clone())
            .unwrap_or_default()),
    }
}

/// One server's outcome of a copy or verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub server: String,
    pub sink: String,
    /// The agent that did it.
    pub agent: String,
    pub bytes: u64,
    pub error: Option<String>,
}

/// Copies every server's snapshot of COMPLETE backup `id` that `to` does
/// not hold yet, from the best copy elsewhere, recording each new copy.
pub async fn copy_backup(core: &Core, id: &str, to: &str) -> Result<Vec<Outcome>> {
    core.require_leader().await?;
    let (wanted, target) = (id.to_string(), to.to_string());
    let plan = core
        .read(move |cat| -> std::result::Result<_, Error> {
            let b = cat
                .backups
                .get(&wanted)
                .ok_or_else(|| crate::catalog::Rejected::UnknownBackup(wanted.clone()))?;
            if b.status != Status::Complete {
                return Err(Error::NotRestorable {
                    id: wanted.clone(),
                    status: crate::convert::status_name(b.status).to_uppercase(),
                });
            }
            let to_spec = spec(cat, &b.cluster, &target).map_err(Error::Config)?;
            if to_spec.is_none() {
                return Err(Error::Config(
                    "copies go to a named sink; the host-local directory is not one".into(),
                ));
            }
            let mut jobs = Vec::new();
            for server in &b.servers {
                let copies = b.copies_of(server);
                if copies.iter().any(|(s, _)| *s == target) {
                    continue;
                }
                let sources: Vec<_> = copies
                    .iter()
                    .filter(|(_, a)| a.verify_error.is_none())
                    .map(|(sink, a)| {
                        (
                            sink.to_string(),
                            spec(cat, &b.cluster, sink),
                            (*a).clone(),
                            readers(cat, &b.cluster, sink, server),
                        )
                    })
                    .collect();
                jobs.push((server.clone(), sources));
            }
            Ok((jobs, to_spec))
        })
        .await??;
    let (jobs, to_spec) = plan;
    let runs = jobs.into_iter().map(|(server, sources)| {
        let to_spec = to_spec.clone();
        async move {
            let mut errors = Vec::new();
            for (sink, from_spec, artifact, readers) in sources {
                let from_spec = match from_spec {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                for reader in readers {
                    match copy_one(
                        core,
                        id,
                        &artifact,
                        from_spec.clone(),
                        to_spec.clone(),
                        &reader,
                    )
                    .await
                    {
                        Ok(a) => {
                            let bytes = a.bytes;
                            let record = Command::CopyStored {
                                id: id.to_string(),
                                server: server.clone(),
                                sink: to.to_string(),
                                artifact: a,
                            };
                            let error = core.propose(&record).await.err().map(|e| e.to_string());
                            return Outcome {
                                server,
                                sink: to.to_string(),
                                agent: reader.name,
                                bytes,
                                error,
                            };
                        }
                        Err(e) => errors.push(format!(
                            "from sink {} by agent {}: {e}",
                            shown(&sink),
                            reader.name
                        )),
                    }
                }
            }
            Outcome {
                server: server.clone(),
                sink: to.to_string(),
                agent: String::new(),
                bytes: 0,
                error: Some(if errors.is_empty() {
                    format!("server {server}: no copy to copy from")
                } else {
                    format!("server {server}: {}", errors.join("; "))
                }),
            }
        }
    });
    let outcomes = futures::future::join_all(runs).await;
    for o in &outcomes {
        match &o.error {
            None => {
                info!(backup = id, server = %o.server, sink = to, agent = %o.agent, bytes = o.bytes, "copy stored")
            }
            Some(e) => warn!(backup = id, server = %o.server, sink = to, error = %e, "copy failed"),
        }
    }
    Ok(outcomes)
}

async fn copy_one(
    core: &Core,
    id: &str,
    from: &Artifact,
    from_spec: Option<agent_pb::SinkSpec>,
    to_spec: Option<agent_pb::SinkSpec>,
    reader: &AgentRef,
) -> std::result::Result<Artifact, String> {
    let mut client = core.agent_client(&reader.addr).await?;
    let mut stream = client
        .copy(agent_pb::CopyRequest {
            from: from_spec,
            location: from.location.clone(),
            to: to_spec,
            backup_id: id.to_string(),
            manifest_sha256: from.manifest_sha256.clone(),
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    loop {
        let msg = stream
            .message()
            .await
            .map_err(|s| status_text(&s))?
            .ok_or("the copy ended without a result")?;
        if !msg.done {
            continue;
        }
        let a = msg.artifact.ok_or("the copy finished without a result")?;
        if a.manifest_sha256 != from.manifest_sha256 {
            return Err(format!(
                "the copy's manifest sha256 is {}, not the catalog's {}",
                a.manifest_sha256, from.manifest_sha256
            ));
        }
        return Ok(crate::convert::stored_artifact(a));
    }
}

/// The copies a policy asks for after COMPLETE; failures are logged (the
/// backup stays COMPLETE; `lockstep copy` retries).
pub async fn copy_by_policy(core: &Core, id: &str) {
    let wanted = id.to_string();
    let targets = core
        .read(move |cat| {
            cat.backups
                .get(&wanted)
                .and_then(|b| cat.sinks.get(&b.cluster))
                .map(|c| c.copies.clone())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
    for to in targets {
        if let Err(e) = copy_backup(core, id, &to).await {
            warn!(backup = id, sink = %to, error = %e, "policy copy failed");
        }
    }
}

/// Re-reads copies of backup `id` (those in `only`, or all) through an
/// agent each and records the result.
pub async fn verify_backup(core: &Core, id: &str, only: Option<&str>) -> Result<Vec<Outcome>> {
    core.require_leader().await?;
    let wanted = id.to_string();
    let only_sink = only.map(|s| if s == HOST_LOCAL { "" } else { s }.to_string());
    let jobs = core
        .read(move |cat| -> std::result::Result<_, Error> {
            let b = cat
                .backups
                .get(&wanted)
                .ok_or_else(|| crate::catalog::Rejected::UnknownBackup(wanted.clone()))?;
            if let Some(s) = &only_sink
                && !b.all_copies().iter().any(|(sink, _, _)| sink == s)
            {
                return Err(Error::Config(format!(
                    "backup {wanted} has no copy in sink {}",
                    shown(s)
                )));
            }
            Ok(b.all_copies()
                .into_iter()
                .filter(|(sink, _, _)| only_sink.as_deref().is_none_or(|s| s == *sink))
                .map(|(sink, server, a)| {
                    (
                        sink.to_string(),
                        server.to_string(),
                        a.clone(),
                        spec(cat, &b.cluster, sink),
                        readers(cat, &b.cluster, sink, server),
                    )
                })
                .collect::<Vec<_>>())
        })
        .await??;
    let runs = jobs.into_iter().map(|(sink, server, a, spec, readers)| async move {
        let mut last = String::from("no agent can read it");
        let mut by = String::new();
        let mut bytes = 0;
        let result = match spec {
            Err(e) => Some(e),
            Ok(spec) => {
                let mut outcome = None;
                for r in readers {
                    match verify_one(core, id, &a, spec.clone(), &r, false).await {
                        Ok(b) => {
                            by = r.name;
                            bytes = b;
                            outcome = Some(None);
                            break;
                        }
                        Err((true, e)) => {
                            // The copy itself is bad: no other agent reads it better.
                            by = r.name;
                            outcome = Some(Some(e));
                            break;
                        }
                        Err((false, e)) => last = format!("agent {}: {e}", r.name),
                    }
                }
                match outcome {
                    Some(r) => r,
                    None => {
                        // Unreachable: not a verdict on the copy.
                        return Outcome {
                            server,
                            sink,
                            agent: by,
                            bytes,
                            error: Some(last),
                        };
                    }
                }
            }
        };
        let record = Command::CopyVerified {
            id: id.to_string(),
            server: server.clone(),
            sink: sink.clone(),
            at_unix_ms: now_unix_ms(),
            error: result.clone(),
        };
        if let Err(e) = core.propose(&record).await {
            warn!(backup = id, server = %server, error = %e, "could not record the verification");
        }
        Outcome {
            server,
            sink,
            agent: by,
            bytes,
            error: result,
        }
    });
    Ok(futures::future::join_all(runs).await)
}

/// Asks `reader` to check a copy; `Err((true, _))` when the copy is bad
/// (missing, other manifest, checksum), `Err((false, _))` when the agent
/// or the sink could not be reached.
pub async fn verify_one(
    core: &Core,
    id: &str,
    a: &Artifact,
    spec: Option<agent_pb::SinkSpec>,
    reader: &AgentRef,
    manifest_only: bool,
) -> std::result::Result<u64, (bool, String)> {
    let mut client = core
        .agent_client(&reader.addr)
        .await
        .map_err(|e| (false, e))?;
    let reply = client
        .verify(agent_pb::VerifyRequest {
            sink: spec,
            location: a.location.clone(),
            backup_id: id.to_string(),
            manifest_sha256: a.manifest_sha256.clone(),
            manifest_only,
        })
        .await
        .map_err(|s| {
            let bad = matches!(s.code(), tonic::Code::DataLoss | tonic::Code::Internal);
            (bad, status_text(&s))
        })?
        .into_inner();
    Ok(reply.bytes)
}

/// A sink's contents as an agent read them.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The agent that read it.
    pub agent: String,
    pub objects: u64,
    pub bytes: u64,
    /// Backups rebuilt from the manifests (COMPLETE only if every server of
    /// the cut has an artifact), by id.
    pub backups: Vec<Backup>,
    /// Artifacts of backups missing servers: (backup id, servers present).
    pub partial: Vec<(String, Vec<String>)>,
    /// Locations with objects but no manifest.
    pub incomplete: Vec<String>,
    /// Manifests that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// Lists what sink `name` of `cluster` holds (through its holder, or any
/// agent for object storage). With `usage_only`, only the totals.
pub async fn scan(core: &Core, cluster: &str, name: &str, usage_only: bool) -> Result<Scan> {
    let (c, n) = (cluster.to_string(), name.to_string());
    let sink = core
        .read(move |cat| cat.sink(&c, &n).cloned())
        .await?
        .ok_or_else(|| Error::Config(format!("cluster {cluster} has no sink {name}")))?;
    scan_sink(core, cluster, &sink, usage_only).await
}

/// Whether an agent can reach `sink` (not yet in the catalog): the pool's
/// agent for a disk pool, else the first agent that can (media agents
/// first). Returns that agent's name.
pub async fn probe(core: &Core, cluster: &str, sink: &Sink) -> Result<String> {
    Ok(scan_sink(core, cluster, sink, true).await?.agent)
}

async fn scan_sink(core: &Core, cluster: &str, sink: &Sink, usage_only: bool) -> Result<Scan> {
    let (c, owned) = (cluster.to_string(), sink.clone());
    let (spec, readers) = core
        .read(move |cat| {
            let spec = spec_of(cat, &c, &owned);
            let readers = match &owned.kind {
                SinkKind::Disk { agent: owner, .. } => agent(cat, &c, owner).into_iter().collect(),
                SinkKind::S3 { .. } => {
                    let mut all = agents(cat, &c);
                    all.sort_by_key(|a| !a.media);
                    all
                }
            };
            (spec, readers)
        })
        .await?;
    let name = &sink.name;
    let spec = Some(spec.map_err(Error::Config)?);
    let mut errors = Vec::new();
    for r in readers {
        let reply = async {
            let mut client = core.agent_client(&r.addr).await?;
            client
                .scan(agent_pb::ScanRequest {
                    sink: spec.clone(),
                    usage_only,
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| status_text(&s))
        }
        .await;
        match reply {
            Ok(reply) => {
                let mut scan = backups_from_scan(cluster, name, &reply);
                scan.agent = r.name;
                return Ok(scan);
            }
            Err(e) => errors.push(format!("agent {}: {e}", r.name)),
        }
    }
    Err(Error::Config(format!(
        "sink {name}: no agent could read it: {}",
        if errors.is_empty() {
            "no agent is registered".to_string()
        } else {
            errors.join("; ")
        }
    )))
}

/// The fields of a manifest a catalog record needs (docs/format.md).
#[derive(Debug, Deserialize)]
struct ManifestHead {
    backup_id: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    cut_servers: Vec<String>,
    completed_at: String,
    started_at: String,
    server: ManifestServer,
    position: ManifestPosition,
    lock: ManifestLock,
    totals: ManifestTotals,
    /// Present in a physical backup's manifest.
    #[serde(default)]
    physical: Option<ManifestPhysical>,
}

#[derive(Debug, Deserialize)]
struct ManifestPhysical {
    #[serde(default)]
    provider: String,
    #[serde(default)]
    snapshot_us: u64,
    #[serde(default)]
    snapshot_bytes: u64,
}

fn kind(m: &ManifestHead) -> &'static str {
    if m.physical.is_some() {
        "physical"
    } else {
        "logical"
    }
}

#[derive(Debug, Deserialize)]
struct ManifestServer {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ManifestPosition {
    binlog_file: String,
    binlog_pos: u64,
    gtid_set: String,
}

#[derive(Debug, Deserialize)]
struct ManifestLock {
    method: String,
    lock_wait_us: u64,
    capture_us: u64,
    held_us: u64,
    locked_at_unix_us: i64,
}

#[derive(Debug, Deserialize)]
struct ManifestTotals {
    rows: u64,
    bytes: u64,
    files: u64,
}

fn unix_ms(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_default()
}

/// Groups a scan's manifests by backup into catalog records of `cluster`,
/// their primary copy in sink `sink`.
pub fn backups_from_scan(cluster: &str, sink: &str, reply: &agent_pb::ScanReply) -> Scan {
    let mut scan = Scan {
        objects: reply.objects,
        bytes: reply.bytes,
        incomplete: reply.incomplete.clone(),
        ..Scan::default()
    };
    let mut by_id: BTreeMap<String, Vec<(ManifestHead, &agent_pb::ScannedArtifact)>> =
        BTreeMap::new();
    for a in &reply.artifacts {
        match serde_json::from_slice::<ManifestHead>(&a.manifest) {
            Ok(m) if m.cluster.is_empty() || m.cluster == cluster => {
                by_id.entry(m.backup_id.clone()).or_default().push((m, a));
            }
            Ok(m) => scan.unreadable.push(format!(
                "{}: backup {} of cluster {}, not {cluster}",
                a.location, m.backup_id, m.cluster
            )),
            Err(e) => scan.unreadable.push(format!("{}: {e}", a.location)),
        }
    }
    for (id, parts) in by_id {
        let mut servers: Vec<String> = parts
            .iter()
            .flat_map(|(m, _)| m.cut_servers.iter().cloned())
            .collect();
        servers.sort();
        servers.dedup();
        let present: Vec<String> = parts.iter().map(|(m, _)| m.server.name.clone()).collect();
        if servers.is_empty() || servers.iter().any(|s| !present.contains(s)) {
            scan.partial.push((id, present));
            continue;
        }
        let mut cut = BTreeMap::new();
        let mut artifacts = BTreeMap::new();
        for (m, a) in &parts {
            let released = m.lock.locked_at_unix_us + m.lock.held_us as i64;
            cut.insert(
                m.server.name.clone(),
                CutEntry {
                    binlog_file: m.position.binlog_file.clone(),
                    binlog_pos: m.position.binlog_pos,
                    gtid: m.position.gtid_set.clone(),
                    lock_method: m.lock.method.clone(),
                    lock_wait_us: m.lock.lock_wait_us,
                    capture_us: m.lock.capture_us,
                    locked_at_unix_us: m.lock.locked_at_unix_us,
                    held_us: Some(m.lock.held_us),
                    released_at_unix_us: Some(released),
                    kind: kind(m).into(),
                    provider: m
                        .physical
                        .as_ref()
                        .map(|p| p.provider.clone())
                        .unwrap_or_default(),
                    snapshot_us: m.physical.as_ref().map_or(0, |p| p.snapshot_us),
                },
            );
            artifacts.insert(
                m.server.name.clone(),
                Artifact {
                    location: a.location.clone(),
                    manifest_sha256: a.manifest_sha256.clone(),
                    bytes: m.totals.bytes,
                    files: m.totals.files,
                    rows: m.totals.rows,
                    verified_at_unix_ms: None,
                    verify_error: None,
                    kind: kind(m).into(),
                    snapshot_bytes: m.physical.as_ref().map_or(0, |p| p.snapshot_bytes),
                    free_bytes: 0,
                    file_sets: Vec::new(),
                },
            );
        }
        let started = parts.iter().map(|(m, _)| unix_ms(&m.started_at)).min();
        let finished = parts.iter().map(|(m, _)| unix_ms(&m.completed_at)).max();
        scan.backups.push(Backup {
            id,
            cluster: cluster.to_string(),
            status: Status::Complete,
            servers,
            started_at_unix_ms: started.unwrap_or_default(),
            finished_at_unix_ms: finished,
            cut,
            cut_committed_at_unix_ms: started,
            artifacts,
            reason: None,
            sink: sink.to_string(),
            copies: BTreeMap::new(),
        });
    }
    scan
}
