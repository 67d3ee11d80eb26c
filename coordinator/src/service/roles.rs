//! The handlers of roles, the audit trail and agents' refusal reports
//! (`SetRole`, `RemoveRole`, `ListRoles`, `ListAudit`, `ReportRefusal`),
//! after [`CoordinatorService::gate`] admitted them, and their wire types.

use std::collections::BTreeMap;

use lockstep_proto::coordinator as pb;
use lockstep_proto::tls::Caller;
use tonic::Status;

use super::guard::redact;
use super::{CoordinatorService, require, to_status};
use crate::catalog::{AUDIT_LIMIT, AuditOutcome, AuditRecord, Command, Role, check_pattern};
use crate::core::now_unix_ms;

/// Records `ListAudit` returns when asked for no particular number.
const DEFAULT_AUDIT_LIMIT: usize = 1000;
/// About how many bytes of records one `ListAudit` reply carries (well
/// below the 4 MiB a gRPC client accepts by default); measured as the
/// records' JSON, which is longer than their protobuf.
const AUDIT_REPLY_BYTES: usize = 3 << 20;

impl CoordinatorService {
    pub(super) async fn do_set_role(&self, r: pb::SetRoleRequest) -> Result<pb::RoleEntry, Status> {
        let pattern = r.pattern.trim().to_string();
        check_pattern(&pattern).map_err(Status::invalid_argument)?;
        let role: Role = r.role.parse().map_err(Status::invalid_argument)?;
        let at = now_unix_ms();
        self.core
            .propose(&Command::SetRole {
                pattern: pattern.clone(),
                role,
                at_unix_ms: at,
            })
            .await
            .map_err(to_status)?;
        tracing::info!(%pattern, %role, "role set");
        Ok(pb::RoleEntry {
            pattern,
            role: role.to_string(),
            source: "catalog".into(),
            overridden: false,
            set_at_unix_ms: at,
        })
    }

    pub(super) async fn do_remove_role(
        &self,
        r: pb::RemoveRoleRequest,
    ) -> Result<pb::RemoveRoleReply, Status> {
        require("pattern", &r.pattern)?;
        let pattern = r.pattern.trim().to_string();
        self.core
            .propose(&Command::RemoveRole {
                pattern: pattern.clone(),
            })
            .await
            .map_err(to_status)?;
        tracing::info!(%pattern, "role removed");
        Ok(pb::RemoveRoleReply {})
    }

    /// The configured roles (a pattern the catalog also sets is marked
    /// overridden), then the catalog's.
    pub(super) async fn do_list_roles(&self) -> Result<pb::ListRolesReply, Status> {
        let set = self
            .core
            .read(|cat| cat.roles.clone())
            .await
            .map_err(to_status)?;
        let configured = self.roles.iter().map(|(pattern, role)| pb::RoleEntry {
            pattern: pattern.clone(),
            role: role.to_string(),
            source: "config".into(),
            overridden: set.contains_key(pattern),
            set_at_unix_ms: 0,
        });
        let catalog = set.iter().map(|(pattern, g)| pb::RoleEntry {
            pattern: pattern.clone(),
            role: g.role.to_string(),
            source: "catalog".into(),
            overridden: false,
            set_at_unix_ms: g.set_at_unix_ms,
        });
        Ok(pb::ListRolesReply {
            roles: configured.chain(catalog).collect(),
        })
    }

    /// The newest `limit` records at or after `since`, oldest first.
    pub(super) async fn do_list_audit(
        &self,
        r: pb::ListAuditRequest,
    ) -> Result<pb::ListAuditReply, Status> {
        let limit = match r.limit as usize {
            0 => DEFAULT_AUDIT_LIMIT,
            n => n.min(AUDIT_LIMIT),
        };
        let since = r.since_unix_ms;
        let (records, truncated) = self
            .core
            .read(move |cat| newest(&cat.audit, since, limit, AUDIT_REPLY_BYTES))
            .await
            .map_err(to_status)?;
        Ok(pb::ListAuditReply { records, truncated })
    }

    /// Puts an agent's refusal into the audit trail, as the agent saw it.
    pub(super) async fn do_report_refusal(
        &self,
        reporter: &Caller,
        r: pb::ReportRefusalRequest,
    ) -> Result<pb::ReportRefusalReply, Status> {
        require("cluster", &r.cluster)?;
        require("server name", &r.server)?;
        require("call", &r.call)?;
        let mut recorded_by = format!("agent {}/{}", r.cluster, r.server);
        if let Some(id) = reporter.identity() {
            recorded_by.push_str(&format!(" (identity '{id}')"));
        }
        tracing::warn!(
            server = %r.server,
            identity = %r.identity,
            address = %r.address,
            call = %r.call,
            reason = %r.reason,
            "an agent refused a call"
        );
        let record = AuditRecord {
            at_unix_ms: if r.at_unix_ms > 0 {
                r.at_unix_ms
            } else {
                now_unix_ms()
            },
            identity: (!r.identity.is_empty()).then(|| r.identity.clone()),
            address: r.address,
            call: r.call,
            args: r.args.into_iter().map(|(k, v)| (k, redact(&v))).collect(),
            outcome: AuditOutcome::Refused,
            detail: redact(&r.reason),
            recorded_by,
        };
        self.core
            .propose(&Command::Audit { record })
            .await
            .map_err(to_status)?;
        Ok(pb::ReportRefusalReply {})
    }
}

/// The newest `limit` records at or after `since`, oldest first, as many
/// as fit in about `max_bytes` (at least one); and whether some were left
/// out for size.
fn newest(
    audit: &BTreeMap<u64, AuditRecord>,
    since: i64,
    limit: usize,
    max_bytes: usize,
) -> (Vec<pb::AuditRecord>, bool) {
    let (mut records, mut bytes, mut truncated) = (Vec::new(), 0, false);
    let matching = audit.iter().rev().filter(|(_, a)| a.at_unix_ms >= since);
    for (seq, a) in matching.take(limit) {
        bytes += serde_json::to_vec(a).map_or(0, |v| v.len());
        if bytes > max_bytes && !records.is_empty() {
            truncated = true;
            break;
        }
        records.push(audit_record(*seq, a));
    }
    records.reverse();
    (records, truncated)
}

/// One audit record on the wire.
fn audit_record(seq: u64, a: &AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        seq,
        at_unix_ms: a.at_unix_ms,
        identity: a.identity.clone().unwrap_or_default(),
        address: a.address.clone(),
        call: a.call.clone(),
        args: a.args.clone().into_iter().collect(),
        outcome: a.outcome.name().to_string(),
        detail: a.detail.clone(),
        recorded_by: a.recorded_by.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest records at or after `since`, oldest first, at most
    /// `limit`, and no more than fit in the byte budget (saying so).
    #[test]
    fn the_newest_records_that_fit() {
        let audit: BTreeMap<u64, AuditRecord> = (1..=10)
            .map(|i| {
                let r = AuditRecord {
                    at_unix_ms: i * 100,
                    identity: None,
                    address: String::new(),
                    call: "StartBackup".into(),
                    args: BTreeMap::new(),
                    outcome: AuditOutcome::Ok,
                    detail: "x".repeat(100),
                    recorded_by: "coordinator 1".into(),
                };
                (i as u64, r)
            })
            .collect();
        let one = serde_json::to_vec(&audit[&1]).expect("encode").len();
        let seqs = |(rs, t): (Vec<pb::AuditRecord>, bool)| {
            (rs.iter().map(|r| r.seq).collect::<Vec<_>>(), t)
        };
        assert_eq!(
            seqs(newest(&audit, 0, 3, usize::MAX)),
            (vec![8, 9, 10], false)
        );
        assert_eq!(
            seqs(newest(&audit, 900, 100, usize::MAX)),
            (vec![9, 10], false)
        );
        assert_eq!(
            seqs(newest(&audit, 0, 100, 3 * one + 1)),
            (vec![8, 9, 10], true)
        );
        assert_eq!(
            seqs(newest(&audit, 0, 100, 1)),
            (vec![10], true),
            "at least one"
        );
    }
}
