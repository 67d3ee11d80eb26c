//! The service's checks, called directly on a one-voter coordinator with
//! requests carrying the caller a mutual-TLS server would put into them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_proto::coordinator as pb;
use lockstep_proto::coordinator::coordinator_server::Coordinator as _;
use lockstep_proto::tls::PeerInfo;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};

use super::CoordinatorService;
use crate::config::Config;
use crate::core::Core;
use crate::job::Jobs;
use crate::raft::RaftNode;

/// A one-voter coordinator's service, its leader elected.
struct One {
    service: CoordinatorService,
    shutdown: CancellationToken,
    node: Option<RaftNode<crate::catalog::Catalog>>,
    _dir: tempfile::TempDir,
}

impl One {
    async fn start(roles: &[(&str, crate::catalog::Role)]) -> One {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:1".parse().expect("addr"),
            roles: roles.iter().map(|(p, r)| (p.to_string(), *r)).collect(),
            ..Config::default()
        };
        let mut raft = config.validate().expect("valid config");
        raft.tick_interval = Duration::from_millis(20);
        let peers = raft.peers.clone();
        let shutdown = CancellationToken::new();
        let node = RaftNode::start(raft, crate::catalog::Catalog::default(), &shutdown)
            .expect("start raft");
        let core = Arc::new(Core::new(node.handle(), peers, config, Default::default()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while core.require_leader().await.is_err() {
            assert!(Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let jobs = Jobs::new(core.clone(), shutdown.child_token());
        One {
            service: CoordinatorService::new(core, jobs),
            shutdown,
            node: Some(node),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(node) = self.node.take() {
            let _ = node.wait().await;
        }
    }

    /// The audit trail, as a plaintext caller lists it.
    async fn audit(&self) -> Vec<pb::AuditRecord> {
        self.service
            .list_audit(plain(pb::ListAuditRequest::default()))
            .await
            .expect("list the audit")
            .into_inner()
            .records
    }
}

/// `msg` as sent by a mutual-TLS caller named `identity`.
fn as_id<T>(msg: T, identity: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(PeerInfo {
        remote: Some("10.0.0.9:5555".parse().expect("addr")),
        identity: Some(identity.into()),
    });
    r
}

/// `msg` as sent by a plaintext caller.
fn plain<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(PeerInfo {
        remote: Some("127.0.0.1:4444".parse().expect("addr")),
        identity: None,
    });
    r
}

fn register(name: &str, addr: &str) -> pb::RegisterServerRequest {
    pb::RegisterServerRequest {
        cluster: "c1".into(),
        name: name.into(),
        agent_addr: addr.into(),
        flavour: "mariadb".into(),
        ..Default::default()
    }
}

/// A viewer reads but is refused StartBackup, with PERMISSION_DENIED
/// naming the identity, its role and the call; the refusal is in the audit
/// trail. An unknown identity is refused even reads. An operator's failed
/// call is recorded as failed. A plaintext caller may do anything and is
/// recorded with its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_checked_and_refusals_audited() {
    let one = One::start(&[]).await;
    let s = &one.service;
    s.list_backups(as_id(pb::ListBackupsRequest::default(), "viewer"))
        .await
        .expect("a viewer reads");
    let start = pb::StartBackupRequest {
        kind: String::new(),
        cluster: "c1".into(),
        sink: String::new(),
    };
    let refused = s
        .start_backup(as_id(start.clone(), "viewer"))
        .await
        .expect_err("a viewer cannot back up");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "identity 'viewer' (role viewer) may not call StartBackup: it needs the operator role"
    );
    let nobody = s
        .list_backups(as_id(pb::ListBackupsRequest::default(), "mallory"))
        .await
        .expect_err("no role");
    assert_eq!(nobody.code(), Code::PermissionDenied);
    let failed = s
        .start_backup(as_id(start.clone(), "operator"))
        .await
        .expect_err("no such cluster");
    assert_eq!(failed.code(), Code::NotFound);
    s.remove_sink(plain(pb::RemoveSinkRequest {
        cluster: "c1".into(),
        name: "nope".into(),
    }))
    .await
    .expect_err("no such sink");

    let audit = one.audit().await;
    let calls: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|a| (a.identity.as_str(), a.call.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("viewer", "StartBackup", "refused"),
            ("mallory", "ListBackups", "refused"),
            ("operator", "StartBackup", "failed"),
            ("", "RemoveSink", "failed"),
        ]
    );
    assert_eq!(audit[0].detail, refused.message());
    assert_eq!(audit[0].address, "10.0.0.9:5555");
    assert_eq!(audit[0].args["cluster"], "c1");
    assert_eq!(audit[0].recorded_by, "coordinator 1");
    assert_eq!(audit[3].address, "127.0.0.1:4444", "plaintext: the address");
    assert!(audit.windows(2).all(|w| w[0].seq < w[1].seq));
    one.stop().await;
}

/// Roles set in the catalog replace the configured role of the same
/// pattern and lose to a more specific one; an operator sets them, a viewer
/// cannot; removing one restores the configured role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_roles_change_who_may_call() {
    use crate::catalog::Role;
    let one = One::start(&[("ops-*", Role::Operator), ("agent-*", Role::Agent)]).await;
    let s = &one.service;
    let set = |pattern: &str, role: &str| pb::SetRoleRequest {
        pattern: pattern.into(),
        role: role.into(),
    };
    assert_eq!(
        s.set_role(as_id(set("bob", "viewer"), "ops-1"))
            .await
            .expect("an operator sets roles")
            .into_inner()
            .source,
        "catalog"
    );
    let refused = s
        .set_role(as_id(set("bob", "operator"), "bob"))
        .await
        .expect_err("a viewer cannot raise itself");
    assert_eq!(refused.code(), Code::PermissionDenied);
    s.list_servers(as_id(pb::ListServersRequest::default(), "bob"))
        .await
        .expect("bob reads now");
    assert!(
        s.list_servers(as_id(pb::ListServersRequest::default(), "viewer"))
            .await
            .is_err(),
        "configured roles replace the defaults"
    );
    s.set_role(as_id(set("agent-*", "none"), "ops-1"))
        .await
        .expect("take agents' rights away");
    let agent = s
        .register_server(as_id(register("db1", "http://db1:1"), "agent-db1"))
        .await
        .expect_err("the catalog wins for the same pattern");
    assert_eq!(agent.code(), Code::PermissionDenied);
    s.set_role(as_id(set("agent-db1", "agent"), "ops-1"))
        .await
        .expect("one agent back");
    s.register_server(as_id(register("db1", "http://db1:1"), "agent-db1"))
        .await
        .expect("an exact name beats the pattern");
    s.remove_role(as_id(
        pb::RemoveRoleRequest {
            pattern: "agent-*".into(),
        },
        "ops-1",
    ))
    .await
    .expect("remove");
    s.register_server(as_id(register("db2", "http://db2:1"), "agent-db2"))
        .await
        .expect("the configured role applies again");
    let roles = s
        .list_roles(as_id(pb::ListRolesRequest {}, "bob"))
        .await
        .expect("list")
        .into_inner()
        .roles;
    let listed: Vec<(&str, &str, &str)> = roles
        .iter()
        .map(|r| (r.pattern.as_str(), r.role.as_str(), r.source.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("agent-*", "agent", "config"),
            ("ops-*", "operator", "config"),
            ("agent-db1", "agent", "catalog"),
            ("bob", "viewer", "catalog"),
        ]
    );
    let audit = one.audit().await;
    let role_calls = audit
        .iter()
        .filter(|a| a.call == "SetRole" || a.call == "RemoveRole")
        .count();
    assert_eq!(role_calls, 5, "4 changes and bob's refusal: {audit:?}");
    one.stop().await;
}

/// A server is bound to the identity that registered it: another agent
/// identity cannot repoint it (PERMISSION_DENIED, audited, the address
/// kept); after an operator removes it, another identity may register it.
/// Plaintext registrations behave as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_registration_is_refused() {
    let one = One::start(&[]).await;
    let s = &one.service;
    s.register_server(as_id(register("db1", "http://db1:7400"), "agent-db1"))
        .await
        .expect("first registration");
    let forged = s
        .register_server(as_id(register("db1", "http://evil:7400"), "agent-db2"))
        .await
        .expect_err("forged");
    assert_eq!(forged.code(), Code::PermissionDenied);
    assert!(
        forged.message().contains("identity 'agent-db1'")
            && forged.message().contains("identity 'agent-db2'"),
        "{}",
        forged.message()
    );
    let addr = |s: &CoordinatorService| {
        let s = s.clone();
        async move {
            s.list_servers(plain(pb::ListServersRequest::default()))
                .await
                .expect("list")
                .into_inner()
                .servers
                .iter()
                .find(|x| x.name == "db1")
                .map(|x| x.agent_addr.clone())
        }
    };
    assert_eq!(addr(s).await.as_deref(), Some("http://db1:7400"));
    let audit = one.audit().await;
    let last = audit.last().expect("a record");
    assert_eq!(
        (
            last.call.as_str(),
            last.outcome.as_str(),
            last.identity.as_str()
        ),
        ("RegisterServer", "refused", "agent-db2")
    );
    assert_eq!(last.args["agent_addr"], "http://evil:7400");
    s.register_server(as_id(register("db1", "http://db1:7401"), "agent-db1"))
        .await
        .expect("its own agent moves it");
    s.remove_server(as_id(
        pb::RemoveServerRequest {
            cluster: "c1".into(),
            name: "db1".into(),
        },
        "operator",
    ))
    .await
    .expect("an operator removes it");
    s.register_server(as_id(register("db1", "http://new:7400"), "agent-db2"))
        .await
        .expect("unbound: another identity registers it");
    s.register_server(plain(register("db1", "http://plain:7400")))
        .await
        .expect("plaintext as before");
    assert_eq!(addr(s).await.as_deref(), Some("http://plain:7400"));
    one.stop().await;
}

/// An agent reports its own refusal; it lands in the audit trail with the
/// refused identity, the call, the reporting agent and the reason, the
/// password in its arguments redacted. Only the agent role may report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_refusals() {
    let one = One::start(&[]).await;
    let s = &one.service;
    let report = pb::ReportRefusalRequest {
        cluster: "c1".into(),
        server: "db1".into(),
        identity: "agent-db2".into(),
        address: "10.0.0.2:3333".into(),
        call: "Restore".into(),
        reason: "identity 'agent-db2' is not a coordinator".into(),
        args: [("target".to_string(), "mysql://root:pw@h:1".to_string())].into(),
        at_unix_ms: 42,
    };
    let refused = s
        .report_refusal(as_id(report.clone(), "viewer"))
        .await
        .expect_err("a viewer cannot report");
    assert_eq!(refused.code(), Code::PermissionDenied);
    s.report_refusal(as_id(report, "agent-db1"))
        .await
        .expect("reported");
    let audit = one.audit().await;
    let r = audit.last().expect("the report");
    assert_eq!(r.call, "Restore");
    assert_eq!(r.identity, "agent-db2");
    assert_eq!(r.outcome, "refused");
    assert_eq!(r.at_unix_ms, 42);
    assert_eq!(r.recorded_by, "agent c1/db1 (identity 'agent-db1')");
    assert_eq!(r.args["target"], "mysql://root:***@h:1");
    let since = s
        .list_audit(as_id(
            pb::ListAuditRequest {
                since_unix_ms: 43,
                limit: 0,
            },
            "viewer",
        ))
        .await
        .expect("since")
        .into_inner()
        .records;
    assert!(since.iter().all(|a| a.at_unix_ms >= 43) && since.len() == 1);
    one.stop().await;
}
