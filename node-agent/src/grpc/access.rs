//! Who may call what on an agent, checked before any handler runs (a
//! [`lockstep_proto::tls::Guard`] around every service of the agent):
//!
//! - the cut, transfers, restores, copies, checks and scans
//!   (`lockstep.agent.v1.NodeAgent/*`): coordinator identities only;
//! - `NodeAgent/Status`: any identity our CA signed;
//! - the disk pools (`lockstep.media.v1.MediaStore/*`): agent identities
//!   only (agents streaming to and reading from a media agent).
//!
//! Without TLS nobody is authenticated and everything is allowed (the
//! agent then listens on loopback only, or was told `--insecure-plaintext`).
//! Every refusal is logged and queued for the coordinators' audit trail.

use lockstep_proto::tls::{PeerInfo, Policy, matches};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const AGENT_SERVICE: &str = "/lockstep.agent.v1.NodeAgent/";
const MEDIA_SERVICE: &str = "/lockstep.media.v1.MediaStore/";
/// Refusals waiting to be reported; more are logged but not reported.
const REPORT_QUEUE: usize = 256;

/// The identities (exact names or `prefix*` patterns) an agent accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Access {
    /// Coordinators: may drive cuts, transfers, restores, copies.
    pub coordinators: Vec<String>,
    /// Agents: may use this agent's disk pools.
    pub agents: Vec<String>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            coordinators: vec!["coordinator-*".into()],
            agents: vec!["agent-*".into()],
        }
    }
}

/// A refused call, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub identity: String,
    /// The caller's address.
    pub address: String,
    /// When it was refused.
    pub at_unix_ms: i64,
    /// The gRPC method, e.g. `NodeAgent/Restore`.
    pub call: String,
    pub reason: String,
}

/// [`Access`] as the agent's guard: checks calls and queues refusals.
#[derive(Debug)]
pub struct AccessPolicy {
    access: Access,
    /// This agent's name, for messages.
    agent: String,
    refusals: mpsc::Sender<Refusal>,
}

impl AccessPolicy {
    /// The policy and the queue of its refusals.
    pub fn new(access: Access, agent: String) -> (AccessPolicy, mpsc::Receiver<Refusal>) {
        let (refusals, rx) = mpsc::channel(REPORT_QUEUE);
        (
            AccessPolicy {
                access,
                agent,
                refusals,
            },
            rx,
        )
    }

    /// Where refusals are queued, for the connections the server refuses
    /// before any call.
    pub fn reporter(&self) -> mpsc::Sender<Refusal> {
        self.refusals.clone()
    }

    /// Why `identity` may not call `path`, if it may not.
    fn refuse(&self, identity: &str, path: &str) -> Option<String> {
        let any = |patterns: &[String]| patterns.iter().any(|p| matches(p, identity));
        if let Some(method) = path.strip_prefix(AGENT_SERVICE) {
            if method == "Status" || any(&self.access.coordinators) {
                return None;
            }
            return Some(format!(
                "only coordinator identities ({}) may call it",
                self.access.coordinators.join(", ")
            ));
        }
        if path.starts_with(MEDIA_SERVICE) {
            if any(&self.access.agents) {
                return None;
            }
            return Some(format!(
                "only agent identities ({}) may use this agent's disk pools",
                self.access.agents.join(", ")
            ));
        }
        Some("no such service on an agent".into())
    }
}

impl Policy for AccessPolicy {
    fn check(&self, peer: &PeerInfo, path: &str) -> Result<(), tonic::Status> {
        let Some(identity) = peer.identity.as_deref() else {
            return Ok(());
        };
        let address = peer.remote;
        let Some(reason) = self.refuse(identity, path) else {
            return Ok(());
        };
        let call = path.trim_start_matches('/');
        let call = call.rsplit_once('.').map_or(call, |(_, c)| c).to_string();
        let message = format!(
            "identity '{identity}' may not call {call} on agent {}: {reason}",
            self.agent
        );
        tracing::warn!(identity, call, "refused: {message}");
        let _ = self.refusals.try_send(Refusal {
            identity: identity.to_string(),
            address: address.map(|a| a.to_string()).unwrap_or_default(),
            at_unix_ms: now_unix_ms(),
            call,
            reason,
        });
        Err(tonic::Status::permission_denied(message))
    }
}

/// Now, in milliseconds since the epoch.
pub fn now_unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinators_drive_agents_use_pools_nobody_else() {
        let (policy, mut refused) = AccessPolicy::new(Access::default(), "db1".into());
        let id = |s: &str| PeerInfo {
            remote: None,
            identity: Some(s.into()),
        };
        let restore = "/lockstep.agent.v1.NodeAgent/Restore";
        let put = "/lockstep.media.v1.MediaStore/Put";
        assert!(policy.check(&id("coordinator-2"), restore).is_ok());
        assert!(policy.check(&PeerInfo::default(), restore).is_ok());
        assert!(
            policy
                .check(&id("viewer"), "/lockstep.agent.v1.NodeAgent/Status")
                .is_ok()
        );
        assert!(policy.check(&id("agent-db2"), put).is_ok());

        let err = policy
            .check(&id("agent-db2"), restore)
            .expect_err("agent restores");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message()
                .starts_with("identity 'agent-db2' may not call NodeAgent/Restore on agent db1"),
            "{}",
            err.message()
        );
        assert!(policy.check(&id("operator"), put).is_err());
        assert!(policy.check(&id("coordinator-1"), put).is_err());
        assert!(
            policy
                .check(&id("coordinator-1"), "/grpc.health.v1.Health/Check")
                .is_err()
        );
        let r = refused.try_recv().expect("reported");
        assert_eq!(
            (r.identity.as_str(), r.call.as_str()),
            ("agent-db2", "NodeAgent/Restore")
        );
    }
}
