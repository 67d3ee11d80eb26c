//! The handlers of restore points (`CreateRestorePoint`,
//! `ListRestorePoints`, `SetRestorePointSchedule`) after
//! [`CoordinatorService::gate`] admitted them, their audit arguments, and
//! the conversion of points to the wire.

use std::collections::BTreeMap;

use lockstep_proto::coordinator as pb;
use tonic::Status;

use super::guard::AuditArgs;
use super::{CoordinatorService, require, to_status};
use crate::catalog::{Command, RestorePoint, RestorePointSchedule, check_schedule};

/// How many points a list returns when the request says 0.
const DEFAULT_LIMIT: usize = 100;

impl CoordinatorService {
    pub(super) async fn do_create_restore_point(
        &self,
        r: pb::CreateRestorePointRequest,
    ) -> Result<pb::RestorePoint, Status> {
        require("cluster", &r.cluster)?;
        if r.label.len() > 1024 {
            return Err(Status::invalid_argument(format!(
                "the label is {} bytes; at most 1024",
                r.label.len()
            )));
        }
        let point = self
            .jobs
            .create_restore_point(&r.cluster, &r.label)
            .await
            .map_err(to_status)?;
        self.core
            .read(move |cat| restore_point(cat, &point))
            .await
            .map_err(to_status)
    }

    pub(super) async fn do_set_restore_point_schedule(
        &self,
        r: pb::SetRestorePointScheduleRequest,
    ) -> Result<pb::RestorePointSchedule, Status> {
        require("cluster", &r.cluster)?;
        // The catalog checks it too; refusing here names the flag.
        let s = check_schedule(r.every_ms, r.keep).map_err(|e| {
            Status::invalid_argument(format!(
                "restore point schedule of cluster {}: {e}",
                r.cluster
            ))
        })?;
        self.core
            .propose(&Command::SetRestorePointSchedule {
                cluster: r.cluster.clone(),
                every_ms: s.every_ms,
                keep: s.keep,
            })
            .await
            .map_err(to_status)?;
        tracing::info!(cluster = %r.cluster, every_ms = s.every_ms, keep = s.keep, "restore point schedule set");
        Ok(schedule(&r.cluster, s))
    }

    pub(super) async fn do_list_restore_points(
        &self,
        r: pb::ListRestorePointsRequest,
    ) -> Result<pb::ListRestorePointsReply, Status> {
        require("cluster", &r.cluster)?;
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n => n as usize,
        };
        let c = r.cluster.clone();
        let since = r.since_unix_ms;
        let (points, total, sched, known) = self
            .core
            .read(move |cat| {
                let all = cat.restore_points.get(&c);
                let mut points: Vec<pb::RestorePoint> = all
                    .into_iter()
                    .flat_map(|m| m.values().rev())
                    .filter(|p| p.created_at_unix_ms >= since)
                    .take(limit)
                    .map(|p| restore_point(cat, p))
                    .collect();
                points.reverse();
                let total = all.map_or(0, |m| m.len() as u64);
                (
                    points,
                    total,
                    cat.restore_point_schedule(&c),
                    cat.clusters.contains_key(&c),
                )
            })
            .await
            .map_err(to_status)?;
        if !known && total == 0 {
            return Err(to_status(
                crate::catalog::Rejected::UnknownCluster(r.cluster).into(),
            ));
        }
        let stats = self.jobs.point_stats(&r.cluster);
        Ok(pb::ListRestorePointsReply {
            points,
            schedule: Some(schedule(&r.cluster, sched)),
            failed: stats.failed,
            skipped: stats.skipped,
            total,
            last_failure: stats.last_failure,
        })
    }
}

fn schedule(cluster: &str, s: RestorePointSchedule) -> pb::RestorePointSchedule {
    pb::RestorePointSchedule {
        cluster: cluster.to_string(),
        every_ms: s.every_ms,
        keep: s.keep,
    }
}

/// A point on the wire, with whether the catalog has it sealed.
fn restore_point(cat: &crate::catalog::Catalog, p: &RestorePoint) -> pb::RestorePoint {
    let (from, until) = p.freeze_window().unwrap_or_default();
    pb::RestorePoint {
        id: p.id.clone(),
        cluster: p.cluster.clone(),
        label: p.label.clone(),
        created_at_unix_ms: p.created_at_unix_ms,
        servers: p
            .servers
            .iter()
            .map(|(name, c)| pb::RestorePointServer {
                server: name.clone(),
                binlog_file: c.binlog_file.clone(),
                binlog_pos: c.binlog_pos,
                gtid: c.gtid.clone(),
                lock_method: c.lock_method.clone(),
                locked_at_unix_us: c.locked_at_unix_us,
                released_at_unix_us: c.released_at_unix_us.unwrap_or_default(),
                held_us: c.held_us.unwrap_or_default(),
            })
            .collect(),
        frozen_from_unix_us: from,
        frozen_until_unix_us: until,
        sealed: cat.restore_point_sealed(p),
        seq: p.seq,
    }
}

impl AuditArgs for pb::CreateRestorePointRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([("cluster".to_string(), self.cluster.clone())]);
        if !self.label.is_empty() {
            a.insert("label".into(), self.label.clone());
        }
        a
    }
}

impl AuditArgs for pb::SetRestorePointScheduleRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cluster".to_string(), self.cluster.clone()),
            ("every_ms".to_string(), self.every_ms.to_string()),
            ("keep".to_string(), self.keep.to_string()),
        ])
    }
}

impl AuditArgs for pb::ListRestorePointsRequest {}
