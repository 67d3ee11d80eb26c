//! Conversions between catalog/raft types and the `lockstep.coordinator.v1`
//! wire types.

use lockstep_proto::coordinator as pb;

use crate::catalog::{
    Backup, CATALOG_VERSION, Restore, RestoreStatus, RestoredServer, Server, Status,
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
            })
            .collect(),
        artifacts: b
            .artifacts
            .iter()
            .map(|(server, a)| pb::Artifact {
                server: server.clone(),
                location: a.location.clone(),
                manifest_sha256: a.manifest_sha256.clone(),
                bytes: a.bytes,
                files: a.files,
                rows: a.rows,
            })
            .collect(),
        reason: b.reason.clone().unwrap_or_default(),
        freeze_us: b.freeze_us(),
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
