//! Conversions between catalog/raft types and the `lockstep.coordinator.v1`
//! wire types.

use lockstep_proto::coordinator as pb;

use crate::catalog::{
    Backup, CATALOG_VERSION, Restore, RestoreStatus, RestoredServer, Server, Sink, SinkKind, Status,
};
use crate::raft::{NodeStatus, Role};
use crate::restore::RestoreRequest;

/// The wire name of a backup status.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Preparing => "preparing",
        Status::Transferring => "transferring",
        Status::Complete => "complete",
        Status::Failed => "failed",
    }
}

/// The wire name of a raft role.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

/// A backup as the wire shows it.
pub fn backup(b: &Backup) -> pb::Backup {
    pb::Backup {
        id: b.id.clone(),
        cluster: b.cluster.clone(),
        status: status_name(b.status).into(),
        servers: b.servers.clone(),
        started_at_unix_ms: b.started_at_unix_ms,
        finished_at_unix_ms: b.finished_at_unix_ms,
        cut_committed_at_unix_ms: b.cut_committed_at_unix_ms,
        cut: b
            .cut
            .iter()
            .map(|(server, c)| pb::CutEntry {
                server: server.clone(),
                binlog_file: c.binlog_file.clone(),
                binlog_pos: c.binlog_pos,
                gtid: c.gtid.clone(),
                lock_method: c.lock_method.clone(),
                lock_wait_us: c.lock_wait_us,
                capture_us: c.capture_us,
                locked_at_unix_us: c.locked_at_unix_us,
                held_us: c.held_us,
                released_at_unix_us: c.released_at_unix_us,
                kind: c.kind.clone(),
                provider: c.provider.clone(),
                snapshot_us: c.snapshot_us,
            })
            .collect(),
        artifacts: b
            .artifacts
            .iter()
            .map(|(server, a)| artifact(server, &b.sink, a))
            .collect(),
        reason: b.reason.clone().unwrap_or_default(),
        freeze_us: b.freeze_us(),
        sink: crate::sinks::shown(&b.sink).to_string(),
        copies: b
            .copies
            .iter()
            .flat_map(|(sink, servers)| servers.iter().map(move |(s, a)| artifact(s, sink, a)))
            .collect(),
    }
}

/// An artifact an agent reports stored (Transfer, Copy), as the catalog
/// records it: not verified yet.
pub fn stored_artifact(a: lockstep_proto::agent::Artifact) -> crate::catalog::Artifact {
    crate::catalog::Artifact {
        location: a.location,
        manifest_sha256: a.manifest_sha256,
        bytes: a.total_bytes,
        files: a.files,
        rows: a.rows,
        verified_at_unix_ms: None,
        verify_error: None,
        kind: crate::catalog::stored_kind(&a.kind),
        snapshot_bytes: a.snapshot_bytes,
        free_bytes: a.free_bytes,
        file_sets: a.file_sets,
    }
}

/// One copy of one server's snapshot.
pub fn artifact(server: &str, sink: &str, a: &crate::catalog::Artifact) -> pb::Artifact {
    pb::Artifact {
        server: server.to_string(),
        location: a.location.clone(),
        manifest_sha256: a.manifest_sha256.clone(),
        bytes: a.bytes,
        files: a.files,
        rows: a.rows,
        sink: crate::sinks::shown(sink).to_string(),
        verified_at_unix_ms: a.verified_at_unix_ms,
        verify_error: a.verify_error.clone().unwrap_or_default(),
        kind: a.kind.clone(),
        snapshot_bytes: a.snapshot_bytes,
        free_bytes: a.free_bytes,
        file_sets: a.file_sets.clone(),
    }
}

/// The outcome of a copy or verification of one server's snapshot.
pub fn sink_outcome(o: &crate::sinks::Outcome) -> pb::SinkOutcome {
    pb::SinkOutcome {
        server: o.server.clone(),
        sink: crate::sinks::shown(&o.sink).to_string(),
        agent: o.agent.clone(),
        bytes: o.bytes,
        ok: o.error.is_none(),
        error: o.error.clone().unwrap_or_default(),
    }
}

/// A registered server with its health as seen by this leader.
pub fn server(s: &Server, heartbeat_age_ms: Option<u64>, healthy: bool) -> pb::Server {
    pb::Server {
        cluster: s.cluster.clone(),
        name: s.name.clone(),
        agent_addr: s.agent_addr.clone(),
        flavour: s.flavour.clone(),
        version: s.version.clone(),
        server_id: s.server_id,
        server_uuid: s.server_uuid.clone(),
        registered_at_unix_ms: s.registered_at_unix_ms,
        last_heartbeat_age_ms: heartbeat_age_ms,
        healthy,
        media: false,
    }
}

/// A reachable member's raft state.
/// This member's raft state, the catalog version its build supports and
/// the cluster version it has applied.
pub fn member(st: &NodeStatus, url: &str, cluster_version: u32) -> pb::Member {
    pb::Member {
        id: st.id,
        url: url.to_string(),
        role: role_name(st.role).into(),
        leader_id: st.leader_id.unwrap_or(0),
        term: st.term,
        commit: st.commit,
        applied: st.applied,
        voters: st.voters.clone(),
        healthy: true,
        error: String::new(),
        catalog_version: CATALOG_VERSION,
        cluster_version,
        transport: String::new(),
    }
}

/// A restore request from the wire.
pub fn restore_request(r: pb::RestoreBackupRequest) -> RestoreRequest {
    RestoreRequest {
        backup_id: r.backup_id,
        targets: r.targets.into_iter().collect(),
        force: r.force,
        in_place: r.in_place,
        allow_reset_master: r.allow_reset_master,
        from: (!r.from.is_empty()).then_some(r.from),
        agents: r.agents.into_iter().collect(),
        datadirs: r.datadirs.into_iter().collect(),
        files_to: (!r.files_to.is_empty()).then_some(r.files_to),
    }
}

/// One server's restore outcome as the wire shows it.
pub fn server_restore(server: &str, s: &RestoredServer) -> pb::ServerRestore {
    pb::ServerRestore {
        server: server.to_string(),
        target: s.target.clone(),
        ok: s.error.is_none(),
        error: s.error.clone().unwrap_or_default(),
        tables: s.tables,
        rows: s.rows,
        duration_ms: s.duration_ms,
        gtid_slave_pos: s.gtid_slave_pos.clone(),
        location: s.location.clone(),
        sink: s.sink.clone(),
        agent: s.agent.clone(),
        kind: s.kind.clone(),
        datadir: s.datadir.clone(),
        gtid_binlog_pos: s.gtid_binlog_pos.clone(),
        recovery_ms: s.recovery_ms,
        file_sets: s.file_sets.clone(),
    }
}

/// A catalog restore on the wire; a server still running shows its target
/// with `ok` false and no error.
pub fn restore(r: &Restore) -> pb::RestoreRecord {
    pb::RestoreRecord {
        id: r.id.clone(),
        backup_id: r.backup_id.clone(),
        status: match r.status {
            RestoreStatus::Running => "running",
            RestoreStatus::Complete => "complete",
            RestoreStatus::Failed => "failed",
        }
        .into(),
        force: r.force,
        started_at_unix_ms: r.started_at_unix_ms,
        finished_at_unix_ms: r.finished_at_unix_ms,
        reason: r.reason.clone().unwrap_or_default(),
        servers: r
            .targets
            .iter()
            .map(|(name, target)| match r.servers.get(name) {
                Some(done) => server_restore(name, done),
                None => pb::ServerRestore {
                    server: name.clone(),
                    target: target.clone(),
                    ..pb::ServerRestore::default()
                },
            })
            .collect(),
    }
}

/// A new sink from an `AddSink` request, or why it is malformed.
pub fn new_sink(r: &pb::AddSinkRequest, at_unix_ms: i64) -> Result<Sink, String> {
    crate::catalog::check_sink_name(&r.name)?;
    let kind = match r.kind.as_str() {
        "disk" => {
            if r.agent.is_empty() {
                return Err("a disk sink needs --agent (the agent holding the pool)".into());
            }
            if !r.path.starts_with('/') {
                return Err(format!(
                    "a disk sink needs --path, an absolute directory on the agent's host (got {:?})",
                    r.path
                ));
            }
            SinkKind::Disk {
                agent: r.agent.clone(),
                path: r.path.trim_end_matches('/').to_string(),
            }
        }
        "s3" => {
            let rest = r.url.strip_prefix("s3://").ok_or_else(|| {
                format!(
                    "an s3 sink needs --url s3://BUCKET[/PREFIX] (got {:?})",
                    r.url
                )
            })?;
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{:?} names no bucket", r.url));
            }
            if !(r.endpoint.is_empty()
                || r.endpoint.starts_with("http://")
                || r.endpoint.starts_with("https://"))
            {
                return Err(format!(
                    "--endpoint must be an http:// or https:// URL (got {:?})",
                    r.endpoint
                ));
            }
            SinkKind::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                endpoint: r.endpoint.clone(),
                region: r.region.clone(),
            }
        }
        other => return Err(format!("sink kind {other:?} is not disk or s3")),
    };
    let encrypt = r.encrypt.unwrap_or(matches!(kind, SinkKind::S3 { .. }));
    Ok(Sink {
        name: r.name.clone(),
        kind,
        encrypt,
        added_at_unix_ms: at_unix_ms,
    })
}

/// A sink as `sink list` shows it.
pub fn sink_info(s: &Sink, primary: bool, copy: bool, copies: u64) -> pb::SinkInfo {
    pb::SinkInfo {
        name: s.name.clone(),
        kind: s.kind.name().into(),
        place: s.kind.place(),
        encrypt: s.encrypt,
        primary,
        copy,
        copies,
        ..pb::SinkInfo::default()
    }
}

/// A cluster's sinks, the implicit host-local one first.
pub fn sink_infos(cat: &crate::catalog::Catalog, cluster: &str) -> Vec<pb::SinkInfo> {
    let sinks = cat.sinks.get(cluster).cloned().unwrap_or_default();
    let count = |name: &str| -> u64 {
        cat.backups
            .values()
            .filter(|b| b.cluster == cluster)
            .map(|b| b.all_copies().iter().filter(|(s, _, _)| *s == name).count() as u64)
            .sum()
    };
    let mut out = vec![pb::SinkInfo {
        name: crate::catalog::HOST_LOCAL.into(),
        kind: "host-local".into(),
        place: "each agent's --sink-dir, on the host of the server it protects".into(),
        primary: sinks.primary.is_none(),
        copies: count(""),
        ..pb::SinkInfo::default()
    }];
    for s in sinks.sinks.values() {
        out.push(sink_info(
            s,
            sinks.primary.as_deref() == Some(&s.name),
            sinks.copies.contains(&s.name),
            count(&s.name),
        ));
    }
    out
}

/// One server of a restore plan.
pub fn planned_server(p: &crate::restore::Planned) -> pb::PlannedServer {
    pb::PlannedServer {
        server: p.server.clone(),
        target: p.target.clone(),
        sink: crate::sinks::shown(&p.sink).to_string(),
        location: p.location.clone(),
        agent: p.agent.clone(),
        bytes: p.bytes,
        estimated_ms: p.estimated_ms,
        skipped: p.skipped.clone(),
    }
}
