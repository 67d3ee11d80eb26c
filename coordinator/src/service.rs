//! The `lockstep.coordinator.v1` gRPC handlers: admit the call (leader,
//! then the caller's role: `guard.rs`), convert the request, call [`Core`]
//! or [`Jobs`], map the error (with the leader redirect), and record a
//! mutating call's outcome in the audit trail. `servers.rs` holds the
//! handlers of registration and removal; `roles.rs` those of roles, the
//! audit trail and agents' refusal reports; `restore_points.rs` those of
//! restore points.

use std::collections::BTreeMap;
use std::sync::Arc;

use lockstep_proto::coordinator as pb;
use lockstep_proto::coordinator::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};

use crate::access::Call;
use crate::catalog::{Rejected, Role};
use crate::convert;
use crate::core::{Core, fail_pause, now_unix_ms};
use crate::error::Error;
use crate::job::Jobs;
use crate::raft;

#[cfg(test)]
mod access_tests;
mod archive;
mod guard;
mod restore_points;
mod roles;
mod servers;

pub use guard::{AuditArgs, redact};

/// Metadata key carrying the leader's URL on a not-leader error.
pub const LEADER_METADATA: &str = "lockstep-leader";

/// The coordinator service of one node.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    core: Arc<Core>,
    jobs: Arc<Jobs>,
    /// The configured roles in force (`[roles]`, `--role`, or the defaults).
    roles: Arc<BTreeMap<String, Role>>,
    /// The archive heads agents reported to this node (as leader).
    heads: Arc<crate::archive::Heads>,
}

impl CoordinatorService {
    /// A service over `core` and `jobs`.
    pub fn new(core: Arc<Core>, jobs: Arc<Jobs>) -> Self {
        let roles = Arc::new(core.config.roles());
        Self {
            core,
            jobs,
            roles,
            heads: Arc::default(),
        }
    }
}

/// Maps an error to a gRPC status; not-leader errors carry the redirect.
pub fn to_status(e: Error) -> Status {
    match e {
        Error::Raft(raft::Error::NotLeader {
            leader_id,
            leader_addr: Some(url),
        }) => {
            let mut s = Status::failed_precondition(format!(
                "not the leader; the leader is coordinator {} at {url}",
                leader_id.unwrap_or(0)
            ));
            if let Ok(v) = url.parse() {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
            s
        }
        Error::Raft(raft::Error::NotLeader {
            leader_addr: None, ..
        }) => Status::unavailable("no raft leader is known yet (election in progress); retry"),
        Error::Raft(e @ raft::Error::EntryTooLarge { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        // This member cannot serve, but another one may: worth retrying.
        Error::Raft(e @ raft::Error::Stopped { .. }) => Status::unavailable(e.to_string()),
        Error::Raft(e) if e.is_retryable() => Status::unavailable(e.to_string()),
        Error::Raft(e) => Status::internal(e.to_string()),
        Error::Rejected(r) => match r {
            Rejected::UnknownCluster(_)
            | Rejected::UnknownBackup(_)
            | Rejected::UnknownServer { .. }
            | Rejected::UnknownRestore(_) => Status::not_found(r.to_string()),
            Rejected::BackupRunning { .. }
            | Rejected::DuplicateBackup(_)
            | Rejected::RestoreRunning { .. } => Status::already_exists(r.to_string()),
            Rejected::BadTransition { .. }
            | Rejected::VersionNotRaised { .. }
            | Rejected::BadSink { .. }
            | Rejected::BadArchive { .. } => Status::failed_precondition(r.to_string()),
            Rejected::UnknownRole(_) => Status::not_found(r.to_string()),
            Rejected::BadRole { .. } => Status::invalid_argument(r.to_string()),
            Rejected::RegisteredByOther { .. } => Status::permission_denied(r.to_string()),
            Rejected::BadRestorePoint { .. } => Status::invalid_argument(r.to_string()),
        },
        Error::UnknownServer { .. } => Status::not_found(e.to_string()),
        Error::CutFailed { .. } => Status::aborted(e.to_string()),
        Error::ProposalTimeout { .. } => Status::unavailable(e.to_string()),
        Error::Config(_)
        | Error::UnknownTarget { .. }
        | Error::MissingTarget { .. }
        | Error::BadTarget { .. } => Status::invalid_argument(e.to_string()),
        Error::NotRestorable { .. }
        | Error::VersionTooLow { .. }
        | Error::CannotLoad { .. }
        | Error::PitrRefused { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn require(what: &str, v: &str) -> Result<(), Status> {
    if v.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{what} is empty")));
    }
    Ok(())
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl CoordinatorService {
    async fn do_start_backup(
        &self,
        request: Request<pb::StartBackupRequest>,
    ) -> Result<Response<pb::StartBackupReply>, Status> {
        let r = request.into_inner();
        require("cluster", &r.cluster)?;
        let backup_id = self
            .jobs
            .start_backup(&r.cluster, opt(r.sink).as_deref(), &r.kind)
            .await
            .map_err(to_status)?;
        // Fault injection: the backup is recorded and running, its caller
        // not told yet (a reply lost with its leader).
        fail_pause("before-start-backup-reply").await;
        Ok(Response::new(pb::StartBackupReply { backup_id }))
    }

    async fn do_restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupReply>, Status> {
        let r = request.into_inner();
        require("backup id", &r.backup_id)?;
        let req = convert::restore_request(r);
        let backup_id = req.backup_id.clone();
        let done = self.jobs.restore(req).await.map_err(to_status)?;
        Ok(Response::new(pb::RestoreBackupReply {
            backup_id,
            servers: done
                .servers
                .iter()
                .map(|(name, s)| convert::server_restore(name, s))
                .collect(),
            restore_id: done.restore_id,
        }))
    }

    async fn do_add_sink(
        &self,
        request: Request<pb::AddSinkRequest>,
    ) -> Result<Response<pb::SinkInfo>, Status> {
        let r = request.into_inner();
        require("cluster", &r.cluster)?;
        let sink = convert::new_sink(&r, now_unix_ms()).map_err(Status::invalid_argument)?;
        if let crate::catalog::SinkKind::Disk { agent, .. } = &sink.kind {
            let (c, a) = (r.cluster.clone(), agent.clone());
            let known = self
                .core
                .read(move |cat| crate::sinks::agent(cat, &c, &a).is_some())
                .await
                .map_err(to_status)?;
            if !known {
                return Err(Status::not_found(format!(
                    "no agent {agent} is registered in cluster {}; start it (a media agent: lockstep-agent serve --name {agent} --pool DIR, without --mysql) first",
                    r.cluster
                )));
            }
        }
        if !r.no_check {
            match crate::sinks::probe(&self.core, &r.cluster, &sink).await {
                Ok(_) => {}
                Err(Error::Config(e)) => {
                    return Err(Status::failed_precondition(format!(
                        "{e}; nothing was added (fix it, or add the sink anyway with --no-check)"
                    )));
                }
                Err(e) => return Err(to_status(e)),
            }
        }
        let info = convert::sink_info(&sink, false, false, 0);
        self.core
            .propose(&crate::catalog::Command::AddSink {
                cluster: r.cluster,
                sink,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(info))
    }

    async fn do_remove_sink(
        &self,
        request: Request<pb::RemoveSinkRequest>,
    ) -> Result<Response<pb::RemoveSinkReply>, Status> {
        let r = request.into_inner();
        require("cluster", &r.cluster)?;
        require("sink name", &r.name)?;
        self.core
            .propose(&crate::catalog::Command::RemoveSink {
                cluster: r.cluster,
                name: r.name,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RemoveSinkReply {}))
    }

    async fn do_set_sink_policy(
        &self,
        request: Request<pb::SetSinkPolicyRequest>,
    ) -> Result<Response<pb::SetSinkPolicyReply>, Status> {
        let r = request.into_inner();
        require("cluster", &r.cluster)?;
        let primary = opt(r.primary).filter(|p| p != crate::catalog::HOST_LOCAL);
        self.core
            .propose(&crate::catalog::Command::SetSinkPolicy {
                cluster: r.cluster,
                primary,
                copies: r.copies,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SetSinkPolicyReply {}))
    }

    async fn do_copy_backup(
        &self,
        request: Request<pb::CopyBackupRequest>,
    ) -> Result<Response<pb::SinkJobReply>, Status> {
        let r = request.into_inner();
        require("backup id", &r.backup_id)?;
        require("sink", &r.to)?;
        let outcomes = crate::sinks::copy_backup(&self.core, &r.backup_id, &r.to)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SinkJobReply {
            backup_id: r.backup_id,
            outcomes: outcomes.iter().map(convert::sink_outcome).collect(),
        }))
    }

    async fn do_verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::SinkJobReply>, Status> {
        let r = request.into_inner();
        require("backup id", &r.backup_id)?;
        let only = opt(r.sink);
        let outcomes = crate::sinks::verify_backup(&self.core, &r.backup_id, only.as_deref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SinkJobReply {
            backup_id: r.backup_id,
            outcomes: outcomes.iter().map(convert::sink_outcome).collect(),
        }))
    }

    async fn do_scan_sink(
        &self,
        request: Request<pb::ScanSinkRequest>,
    ) -> Result<Response<pb::ScanSinkReply>, Status> {
        let r = request.into_inner();
        require("cluster", &r.cluster)?;
        require("sink", &r.sink)?;
        self.core.require_leader().await.map_err(to_status)?;
        let scan = crate::sinks::scan(&self.core, &r.cluster, &r.sink, false)
            .await
            .map_err(to_status)?;
        // The scanned backups the catalog has with a copy in this sink.
        let (ids, sink) = (
            scan.backups
                .iter()
                .map(|b| b.id.clone())
                .collect::<Vec<_>>(),
            r.sink.clone(),
        );
        let known_here: std::collections::HashSet<String> = self
            .core
            .read(move |cat| {
                ids.into_iter()
                    .filter(|id| {
                        cat.backups.get(id).is_some_and(|have| {
                            have.all_copies().iter().any(|(s, _, _)| *s == sink)
                        })
                    })
                    .collect()
            })
            .await
            .map_err(to_status)?;
        let mut backups = Vec::new();
        for b in &scan.backups {
            let known = known_here.contains(&b.id);
            let mut imported = false;
            if r.import && !known {
                self.core
                    .propose(&crate::catalog::Command::ImportBackup {
                        backup: Box::new(b.clone()),
                    })
                    .await
                    .map_err(to_status)?;
                imported = true;
                tracing::info!(backup = %b.id, sink = %r.sink, "backup imported from a sink scan");
            }
            backups.push(pb::ScannedBackup {
                id: b.id.clone(),
                servers: b.servers.clone(),
                known: known || imported,
                imported,
            });
        }
        Ok(Response::new(pb::ScanSinkReply {
            agent: scan.agent,
            objects: scan.objects,
            bytes: scan.bytes,
            backups,
            partial: scan
                .partial
                .iter()
                .map(|(id, present)| format!("{id}: only {}", present.join(", ")))
                .collect(),
            incomplete: scan.incomplete,
            unreadable: scan.unreadable,
        }))
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_server(
        &self,
        request: Request<pb::RegisterServerRequest>,
    ) -> Result<Response<pb::RegisterServerReply>, Status> {
        let admitted = self.gate(&request, Call::RegisterServer).await?;
        let by = admitted.caller.identity().map(String::from);
        let result = self.do_register_server(request.into_inner(), by).await;
        self.finish_if_refused(admitted, result).await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.gate(&request, Call::Heartbeat).await?;
        let r = request.into_inner();
        self.core
            .heartbeat(&r.cluster, &r.name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::HeartbeatReply {}))
    }

    async fn remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerReply>, Status> {
        let admitted = self.gate(&request, Call::RemoveServer).await?;
        let result = self.do_remove_server(request.into_inner()).await;
        self.finish(admitted, result, |_| "removed".into()).await
    }
    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersReply>, Status> {
        self.gate(&request, Call::ListServers).await?;
        let cluster = opt(request.into_inner().cluster);
        let servers = self.core.list_servers(cluster).await.map_err(to_status)?;
        Ok(Response::new(pb::ListServersReply { servers }))
    }

    async fn start_backup(
        &self,
        request: Request<pb::StartBackupRequest>,
    ) -> Result<Response<pb::StartBackupReply>, Status> {
        let admitted = self.gate(&request, Call::StartBackup).await?;
        let result = self.do_start_backup(request).await;
        self.finish(admitted, result, |r| {
            format!("started backup {}", r.backup_id)
        })
        .await
    }

    async fn get_backup(
        &self,
        request: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        self.gate(&request, Call::GetBackup).await?;
        let id = request.into_inner().id;
        require("backup id", &id)?;
        let wanted = id.clone();
        let backup = self
            .core
            .read(move |cat| cat.backups.get(&wanted).map(convert::backup))
            .await
            .map_err(to_status)?
            .ok_or_else(|| to_status(Rejected::UnknownBackup(id).into()))?;
        Ok(Response::new(backup))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsReply>, Status> {
        self.gate(&request, Call::ListBackups).await?;
        let cluster = opt(request.into_inner().cluster);
        let mut backups = self
            .core
            .read(move |cat| {
                cat.backups
                    .values()
                    .filter(|b| cluster.as_ref().is_none_or(|c| *c == b.cluster))
                    .map(convert::backup)
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(to_status)?;
        backups.sort_by(|a, b| (a.started_at_unix_ms, &a.id).cmp(&(b.started_at_unix_ms, &b.id)));
        Ok(Response::new(pb::ListBackupsReply { backups }))
    }

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupReply>, Status> {
        let admitted = self.gate(&request, Call::RestoreBackup).await?;
        let result = self.do_restore_backup(request).await;
        self.finish(admitted, result, restored).await
    }

    async fn list_restores(
        &self,
        request: Request<pb::ListRestoresRequest>,
    ) -> Result<Response<pb::ListRestoresReply>, Status> {
        self.gate(&request, Call::ListRestores).await?;
        let backup = opt(request.into_inner().backup_id);
        let mut restores = self
            .core
            .read(move |cat| {
                cat.restores
                    .values()
                    .filter(|r| backup.as_ref().is_none_or(|b| *b == r.backup_id))
                    .map(convert::restore)
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(to_status)?;
        restores.sort_by_key(|r| r.started_at_unix_ms);
        Ok(Response::new(pb::ListRestoresReply { restores }))
    }

    async fn add_sink(
        &self,
        request: Request<pb::AddSinkRequest>,
    ) -> Result<Response<pb::SinkInfo>, Status> {
        let admitted = self.gate(&request, Call::AddSink).await?;
        let result = self.do_add_sink(request).await;
        self.finish(admitted, result, |r| format!("added sink {}", r.name))
            .await
    }

    async fn remove_sink(
        &self,
        request: Request<pb::RemoveSinkRequest>,
    ) -> Result<Response<pb::RemoveSinkReply>, Status> {
        let admitted = self.gate(&request, Call::RemoveSink).await?;
        let result = self.do_remove_sink(request).await;
        self.finish(admitted, result, |_| "removed".into()).await
    }

    async fn list_sinks(
        &self,
        request: Request<pb::ListSinksRequest>,
    ) -> Result<Response<pb::ListSinksReply>, Status> {
        self.gate(&request, Call::ListSinks).await?;
        let r = request.into_inner();
        require("cluster", &r.cluster)?;
        self.core.require_leader().await.map_err(to_status)?;
        let c = r.cluster.clone();
        let mut sinks = self
            .core
            .read(move |cat| convert::sink_infos(cat, &c))
            .await
            .map_err(to_status)?;
        if r.usage {
            let core = &self.core;
            let cluster = &r.cluster;
            let usages = futures::future::join_all(sinks.iter().map(|s| async move {
                if s.kind == "host-local" {
                    return None;
                }
                Some(crate::sinks::scan(core, cluster, &s.name, true).await)
            }))
            .await;
            for (info, usage) in sinks.iter_mut().zip(usages) {
                match usage {
                    Some(Ok(scan)) => {
                        info.objects = Some(scan.objects);
                        info.bytes = Some(scan.bytes);
                    }
                    Some(Err(e)) => info.usage_error = e.to_string(),
                    None => info.usage_error = "on each agent's own host".into(),
                }
            }
        }
        Ok(Response::new(pb::ListSinksReply { sinks }))
    }

    async fn set_sink_policy(
        &self,
        request: Request<pb::SetSinkPolicyRequest>,
    ) -> Result<Response<pb::SetSinkPolicyReply>, Status> {
        let admitted = self.gate(&request, Call::SetSinkPolicy).await?;
        let result = self.do_set_sink_policy(request).await;
        self.finish(admitted, result, |_| "set".into()).await
    }

    async fn copy_backup(
        &self,
        request: Request<pb::CopyBackupRequest>,
    ) -> Result<Response<pb::SinkJobReply>, Status> {
        let admitted = self.gate(&request, Call::CopyBackup).await?;
        let result = self.do_copy_backup(request).await;
        self.finish(admitted, result, sink_job).await
    }

    async fn verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::SinkJobReply>, Status> {
        let admitted = self.gate(&request, Call::VerifyBackup).await?;
        let result = self.do_verify_backup(request).await;
        self.finish(admitted, result, sink_job).await
    }

    async fn plan_restore(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestorePlanReply>, Status> {
        self.gate(&request, Call::PlanRestore).await?;
        let r = request.into_inner();
        require("backup id", &r.backup_id)?;
        let req = convert::restore_request(r);
        let backup_id = req.backup_id.clone();
        let planned = crate::restore::plan_only(&self.core, req)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RestorePlanReply {
            backup_id,
            servers: planned.iter().map(convert::planned_server).collect(),
        }))
    }

    async fn scan_sink(
        &self,
        request: Request<pb::ScanSinkRequest>,
    ) -> Result<Response<pb::ScanSinkReply>, Status> {
        let admitted = self.gate(&request, Call::ScanSink).await?;
        let import = request.get_ref().import;
        let result = self.do_scan_sink(request).await;
        if !import {
            // Only a scan that imports changes the catalog.
            return result;
        }
        self.finish(admitted, result, scanned).await
    }

    async fn coordinator_status(
        &self,
        request: Request<pb::CoordinatorStatusRequest>,
    ) -> Result<Response<pb::CoordinatorStatusReply>, Status> {
        self.gate(&request, Call::CoordinatorStatus).await?;
        let reply = self.core.group_status().await.map_err(to_status)?;
        Ok(Response::new(reply))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        self.gate(&request, Call::NodeStatus).await?;
        let st = self
            .core
            .raft
            .status()
            .await
            .map_err(|e| to_status(e.into()))?;
        let cluster_version = self.core.cluster_version().await.map_err(to_status)?;
        let url = self.core.peers.get(&st.id).cloned().unwrap_or_default();
        Ok(Response::new(self.core.own_member(
            &st,
            &url,
            cluster_version,
        )))
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::RoleEntry>, Status> {
        let admitted = self.gate(&request, Call::SetRole).await?;
        let result = self
            .do_set_role(request.into_inner())
            .await
            .map(Response::new);
        self.finish(admitted, result, |r| format!("{} is {}", r.pattern, r.role))
            .await
    }

    async fn remove_role(
        &self,
        request: Request<pb::RemoveRoleRequest>,
    ) -> Result<Response<pb::RemoveRoleReply>, Status> {
        let admitted = self.gate(&request, Call::RemoveRole).await?;
        let result = self
            .do_remove_role(request.into_inner())
            .await
            .map(Response::new);
        self.finish(admitted, result, |_| "removed".into()).await
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesReply>, Status> {
        self.gate(&request, Call::ListRoles).await?;
        self.do_list_roles().await.map(Response::new)
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditReply>, Status> {
        self.gate(&request, Call::ListAudit).await?;
        self.do_list_audit(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn archive_state(
        &self,
        request: Request<pb::ArchiveStateRequest>,
    ) -> Result<Response<pb::ArchiveStateReply>, Status> {
        self.gate(&request, Call::ArchiveState).await?;
        self.do_archive_state(request.into_inner()).await
    }

    async fn report_archive(
        &self,
        request: Request<pb::ReportArchiveRequest>,
    ) -> Result<Response<pb::ArchiveStateReply>, Status> {
        self.gate(&request, Call::ReportArchive).await?;
        self.do_report_archive(request.into_inner()).await
    }

    async fn archive_status(
        &self,
        request: Request<pb::ArchiveStatusRequest>,
    ) -> Result<Response<pb::ArchiveStatusReply>, Status> {
        self.gate(&request, Call::ArchiveStatus).await?;
        self.do_archive_status(request.into_inner()).await
    }

    async fn search_binlog(
        &self,
        request: Request<pb::SearchBinlogRequest>,
    ) -> Result<Response<pb::SearchBinlogReply>, Status> {
        self.gate(&request, Call::SearchBinlog).await?;
        self.do_search_binlog(request.into_inner()).await
    }

    async fn pitr(
        &self,
        request: Request<pb::PitrRequest>,
    ) -> Result<Response<pb::PitrReply>, Status> {
        let admitted = self.gate(&request, Call::Pitr).await?;
        let plan_only = request.get_ref().plan;
        let result = self.do_pitr(request.into_inner()).await;
        if plan_only {
            return result;
        }
        self.finish(admitted, result, |r| {
            format!(
                "{} ({}), {}",
                r.point,
                if r.done { "done" } else { "not done" },
                r.servers
                    .iter()
                    .map(|s| format!(
                        "{}: {}",
                        s.server,
                        if s.error.is_empty() { "ok" } else { &s.error }
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })
        .await
    }

    async fn create_restore_point(
        &self,
        request: Request<pb::CreateRestorePointRequest>,
    ) -> Result<Response<pb::RestorePoint>, Status> {
        let admitted = self.gate(&request, Call::CreateRestorePoint).await?;
        let result = self
            .do_create_restore_point(request.into_inner())
            .await
            .map(Response::new);
        self.finish(admitted, result, |p| format!("restore point {}", p.id))
            .await
    }

    async fn list_restore_points(
        &self,
        request: Request<pb::ListRestorePointsRequest>,
    ) -> Result<Response<pb::ListRestorePointsReply>, Status> {
        self.gate(&request, Call::ListRestorePoints).await?;
        self.do_list_restore_points(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_restore_point_schedule(
        &self,
        request: Request<pb::SetRestorePointScheduleRequest>,
    ) -> Result<Response<pb::RestorePointSchedule>, Status> {
        let admitted = self.gate(&request, Call::SetRestorePointSchedule).await?;
        let result = self
            .do_set_restore_point_schedule(request.into_inner())
            .await
            .map(Response::new);
        self.finish(admitted, result, |s| match s.every_ms {
            0 => format!("schedule off, keep {}", s.keep),
            ms => format!("every {ms} ms, keep {}", s.keep),
        })
        .await
    }

    async fn report_refusal(
        &self,
        request: Request<pb::ReportRefusalRequest>,
    ) -> Result<Response<pb::ReportRefusalReply>, Status> {
        let admitted = self.gate(&request, Call::ReportRefusal).await?;
        self.do_report_refusal(&admitted.caller, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// What a restore did, for its audit record.
fn restored(r: &pb::RestoreBackupReply) -> String {
    let failed: Vec<&str> = r
        .servers
        .iter()
        .filter(|s| !s.error.is_empty())
        .map(|s| s.server.as_str())
        .collect();
    if failed.is_empty() {
        format!(
            "restore {}: {} server(s) loaded",
            r.restore_id,
            r.servers.len()
        )
    } else {
        format!("restore {}: failed on {}", r.restore_id, failed.join(", "))
    }
}

/// What a copy or check did, for its audit record.
fn sink_job(r: &pb::SinkJobReply) -> String {
    let failed = r.outcomes.iter().filter(|o| !o.error.is_empty()).count();
    format!("{} server copies, {failed} with errors", r.outcomes.len())
}

/// What a scan imported, for its audit record.
fn scanned(r: &pb::ScanSinkReply) -> String {
    let imported: Vec<&str> = r
        .backups
        .iter()
        .filter(|b| b.imported)
        .map(|b| b.id.as_str())
        .collect();
    if imported.is_empty() {
        "nothing imported".into()
    } else {
        format!("imported {}", imported.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_the_redirect() {
        let s = to_status(Error::Raft(raft::Error::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("http://127.0.0.1:7301".into()),
        }));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(
            s.message().contains("http://127.0.0.1:7301"),
            "{}",
            s.message()
        );
        assert_eq!(
            s.metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("http://127.0.0.1:7301")
        );
        let none = to_status(Error::Raft(raft::Error::NotLeader {
            leader_id: None,
            leader_addr: None,
        }));
        assert_eq!(none.code(), tonic::Code::Unavailable);
        assert!(none.metadata().get(LEADER_METADATA).is_none());
    }

    #[test]
    fn rejections_map_to_clear_codes() {
        let running = to_status(
            Rejected::BackupRunning {
                cluster: "c1".into(),
                running: "b1".into(),
            }
            .into(),
        );
        assert_eq!(running.code(), tonic::Code::AlreadyExists);
        assert!(running.message().contains("b1"));
        let unknown = to_status(Rejected::UnknownCluster("x".into()).into());
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}
