//! The checks every call passes and the audit trail: [`CoordinatorService::gate`]
//! (the leader check, then the caller's role; a refusal is logged, recorded
//! and answered `PERMISSION_DENIED`), [`CoordinatorService::finish`] (a
//! mutating call's outcome recorded), and each request's arguments as the
//! audit records them ([`AuditArgs`]), passwords redacted.

use std::collections::BTreeMap;

use lockstep_proto::coordinator as pb;
use lockstep_proto::tls::{Caller, PeerInfo};
use tonic::{Code, Request, Response, Status};

use super::{CoordinatorService, to_status};
use crate::access::{Call, authorize};
use crate::catalog::{AuditOutcome, AuditRecord, Command};
use crate::core::now_unix_ms;

/// A call that passed [`CoordinatorService::gate`]: who made it, with what.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub caller: Caller,
    pub address: String,
    pub call: Call,
    pub args: BTreeMap<String, String>,
}

impl CoordinatorService {
    /// Admits `request` as `call`: on the leader (for leader-only calls: the
    /// redirect comes first, so refusals happen where they are recorded),
    /// from a caller whose role allows it. A refusal is logged at warn,
    /// recorded in the audit trail and answered `PERMISSION_DENIED`.
    pub(crate) async fn gate<T: AuditArgs>(
        &self,
        request: &Request<T>,
        call: Call,
    ) -> Result<Admitted, Status> {
        if call.leader_only() {
            self.core.require_leader().await.map_err(to_status)?;
        }
        let caller = Caller::of(request);
        let address = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.remote)
            .or_else(|| request.remote_addr())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admitted = Admitted {
            caller,
            address,
            call,
            args: request.get_ref().audit_args(),
        };
        if admitted.caller.identity().is_none() {
            return Ok(admitted);
        }
        let (config, who) = (self.roles.clone(), admitted.caller.clone());
        let verdict = self
            .core
            .raft
            .read_local(move |cat| authorize(&who, call, &config, &cat.roles))
            .await
            .map_err(|e| to_status(e.into()))?;
        match verdict {
            Ok(_) => Ok(admitted),
            Err(denied) => {
                let why = denied.to_string();
                tracing::warn!(caller = %admitted.caller, address = %admitted.address, call = %call, "refused: {why}");
                // Status calls are any member's: on a follower, the
                // record cannot be proposed (and says so in the log).
                self.record(&admitted, AuditOutcome::Refused, why.clone())
                    .await;
                Err(Status::permission_denied(why))
            }
        }
    }

    /// Records the outcome of an admitted mutating call (`ok` says what it
    /// started) and returns it.
    pub(crate) async fn finish<T>(
        &self,
        admitted: Admitted,
        result: Result<Response<T>, Status>,
        ok: impl FnOnce(&T) -> String,
    ) -> Result<Response<T>, Status> {
        let (outcome, detail) = match &result {
            Ok(reply) => (AuditOutcome::Ok, ok(reply.get_ref())),
            Err(s) => (refused_or_failed(s), s.message().to_string()),
        };
        self.record(&admitted, outcome, detail).await;
        result
    }

    /// Records a refusal of an admitted call (a forged re-registration, the
    /// catalog refusing it) and returns the result.
    pub(crate) async fn finish_if_refused<T>(
        &self,
        admitted: Admitted,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        if let Err(s) = &result
            && s.code() == Code::PermissionDenied
        {
            tracing::warn!(caller = %admitted.caller, address = %admitted.address, call = %admitted.call, "refused: {}", s.message());
            self.record(&admitted, AuditOutcome::Refused, s.message().to_string())
                .await;
        }
        result
    }

    /// Proposes one audit record. A record that cannot be kept (the cluster
    /// is not at catalog version 3 yet, or raft fails) is logged, never an
    /// error of the call it describes.
    async fn record(&self, a: &Admitted, outcome: AuditOutcome, detail: String) {
        let record = AuditRecord {
            at_unix_ms: now_unix_ms(),
            identity: a.caller.identity().map(String::from),
            address: a.address.clone(),
            call: a.call.name().to_string(),
            args: a.args.clone(),
            outcome,
            detail: redact(&detail),
            recorded_by: format!("coordinator {}", self.core.id),
        };
        self.propose_audit(record).await;
    }

    /// Proposes `record` (see [`Self::record`]). Below catalog version 3
    /// the proposal raises the cluster version first if every voter
    /// supports it; otherwise the record is not kept (a rolling upgrade).
    pub(crate) async fn propose_audit(&self, record: AuditRecord) {
        let (call, outcome) = (record.call.clone(), record.outcome.name());
        match self.core.propose(&Command::Audit { record }).await {
            Ok(()) => {}
            Err(e @ crate::error::Error::VersionTooLow { .. }) => {
                tracing::warn!(%call, outcome, "audit record not kept: {e}");
            }
            Err(e) => tracing::error!(%call, outcome, error = %e, "audit record not kept"),
        }
    }
}

/// An error answer as the audit calls it: refused (by role or by the
/// catalog's identity binding) or failed.
fn refused_or_failed(s: &Status) -> AuditOutcome {
    if s.code() == Code::PermissionDenied {
        AuditOutcome::Refused
    } else {
        AuditOutcome::Failed
    }
}

/// `text` with the password of every `scheme://user:password@host` URL in
/// it replaced with `***`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"',;)]}".contains(c)
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A request's arguments as an audit record keeps them: non-empty fields
/// only, every value redacted.
pub trait AuditArgs {
    fn audit_args(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// Builds an argument map, leaving out empty strings and false flags.
#[derive(Default)]
struct Args(BTreeMap<String, String>);

impl Args {
    fn s(mut self, k: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(k.to_string(), redact(v));
        }
        self
    }

    fn b(mut self, k: &str, v: bool) -> Self {
        if v {
            self.0.insert(k.to_string(), "true".into());
        }
        self
    }

    fn map(mut self, prefix: &str, m: &std::collections::HashMap<String, String>) -> Self {
        for (k, v) in m {
            self.0.insert(format!("{prefix}.{k}"), redact(v));
        }
        self
    }
}

macro_rules! no_args {
    ($($t:ty),*) => { $(impl AuditArgs for $t {})* };
}

no_args!(
    pb::HeartbeatRequest,
    pb::ListServersRequest,
    pb::GetBackupRequest,
    pb::ListBackupsRequest,
    pb::ListRestoresRequest,
    pb::CoordinatorStatusRequest,
    pb::NodeStatusRequest,
    pb::ListSinksRequest,
    pb::ListAuditRequest,
    pb::ListRolesRequest,
    pb::ReportRefusalRequest,
    pb::ArchiveStateRequest,
    pb::ReportArchiveRequest,
    pb::ArchiveStatusRequest,
    pb::SearchBinlogRequest
);

impl AuditArgs for pb::PitrRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        use pb::pitr_request::To;
        let to = match &self.to {
            Some(To::ToUnixMs(t)) => format!("time {t}"),
            Some(To::RestorePoint(p)) => format!("restore point {p}"),
            Some(To::BeforeEvent(e)) => format!("before {e}"),
            Some(To::ExactUnixMs(t)) => format!("exact {t}"),
            None => String::new(),
        };
        Args::default()
            .s("cluster", &self.cluster)
            .s("to", &to)
            .map("target", &self.targets)
            .b("force", self.force)
            .b("plan", self.plan)
            .b("replay_only", self.replay_only)
            .0
    }
}

impl AuditArgs for pb::RegisterServerRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("cluster", &self.cluster)
            .s("name", &self.name)
            .s("agent_addr", &self.agent_addr)
            .b("media", self.media)
            .0
    }
}

impl AuditArgs for pb::RemoveServerRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("cluster", &self.cluster)
            .s("name", &self.name)
            .0
    }
}

impl AuditArgs for pb::StartBackupRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("cluster", &self.cluster)
            .s("sink", &self.sink)
            .0
    }
}

impl AuditArgs for pb::RestoreBackupRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("backup", &self.backup_id)
            .map("target", &self.targets)
            .map("agent", &self.agents)
            .b("force", self.force)
            .b("in_place", self.in_place)
            .b("allow_reset_master", self.allow_reset_master)
            .s("from", &self.from)
            .0
    }
}

impl AuditArgs for pb::AddSinkRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("cluster", &self.cluster)
            .s("name", &self.name)
            .s("kind", &self.kind)
            .s("agent", &self.agent)
            .s("path", &self.path)
            .s("url", &self.url)
            .s("endpoint", &self.endpoint)
            .s("region", &self.region)
            .s(
                "encrypt",
                &self.encrypt.map(|e| e.to_string()).unwrap_or_default(),
            )
            .b("no_check", self.no_check)
            .0
    }
}

impl AuditArgs for pb::RemoveSinkRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("cluster", &self.cluster)
            .s("name", &self.name)
            .0
    }
}

impl AuditArgs for pb::SetSinkPolicyRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("cluster", &self.cluster)
            .s("primary", &self.primary)
            .s("copies", &self.copies.join(","))
            .0
    }
}

impl AuditArgs for pb::CopyBackupRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("backup", &self.backup_id)
            .s("to", &self.to)
            .0
    }
}

impl AuditArgs for pb::VerifyBackupRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("backup", &self.backup_id)
            .s("sink", &self.sink)
            .0
    }
}

impl AuditArgs for pb::ScanSinkRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("cluster", &self.cluster)
            .s("sink", &self.sink)
            .b("import", self.import)
            .0
    }
}

impl AuditArgs for pb::SetRoleRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default()
            .s("pattern", &self.pattern)
            .s("role", &self.role)
            .0
    }
}

impl AuditArgs for pb::RemoveRoleRequest {
    fn audit_args(&self) -> BTreeMap<String, String> {
        Args::default().s("pattern", &self.pattern).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords in URLs become ***, wherever the URL sits in the text;
    /// URLs without one are left as they are.
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://root:s3cret@db1:3306/x"),
            "mysql://root:***@db1:3306/x"
        );
        assert_eq!(redact("mysql://root:p=w@h:2"), "mysql://root:***@h:2");
        assert_eq!(redact("mysql://root@h:2"), "mysql://root@h:2");
        assert_eq!(redact("http://127.0.0.1:7400"), "http://127.0.0.1:7400");
        assert_eq!(
            redact("load into mysql://u:a@b@h:1 failed; also mysql://v:zz@g:2."),
            "load into mysql://u:***@h:1 failed; also mysql://v:***@g:2."
        );
        assert_eq!(redact("no url here"), "no url here");
        let req = pb::RestoreBackupRequest {
            backup_id: "b1".into(),
            targets: [("s1".to_string(), "mysql://root:hunter2@h:1".to_string())].into(),
            force: true,
            ..Default::default()
        };
        let args = req.audit_args();
        assert_eq!(args["target.s1"], "mysql://root:***@h:1");
        assert_eq!(args["force"], "true");
        assert!(!args.contains_key("in_place"));
        assert!(!format!("{args:?}").contains("hunter2"));
    }
}
