//! Conversions between catalog/raft types and the `lockstep.coordinator.v1`
//! wire types.

use lockstep_proto::coordinator as pb;

use crate::catalog::{Backup, Server, Status};
use crate::raft::{NodeStatus, Role};
use crate::restore::{RestoreRequest, ServerRestore};

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
pub fn member(st: &NodeStatus, url: &str) -> pb::Member {
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
    }
}

/// A restore request from the wire.
pub fn restore_request(r: pb::RestoreBackupRequest) -> RestoreRequest {
    RestoreRequest {
        backup_id: r.backup_id,
        targets: r.targets.into_iter().collect(),
        force: r.force,
    }
}

/// One server's restore outcome as the wire shows it.
pub fn server_restore(s: &ServerRestore) -> pb::ServerRestore {
    let mut out = pb::ServerRestore {
        server: s.server.clone(),
        target: s.target.clone(),
        location: s.location.clone(),
        ..pb::ServerRestore::default()
    };
    match &s.outcome {
        Ok(l) => {
            out.ok = true;
            out.tables = l.tables;
            out.rows = l.rows;
            out.duration_ms = l.duration_ms;
            out.gtid_slave_pos = l.gtid_slave_pos.clone();
        }
        Err(e) => out.error = e.clone(),
    }
    out
}
