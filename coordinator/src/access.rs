//! Who may call what: every coordinator RPC ([`Call`]) needs a role, an
//! identity's role comes from the catalog's roles and the coordinator's
//! configured ones, and [`authorize`] is the one place that decides.
//!
//! The rules (docs/coordinator.md says the same for operators):
//! - A plaintext caller (the daemon runs without TLS) may call anything, as
//!   before roles existed; its calls are audited with its address.
//! - An identity has one role: of the patterns that match it, an exact name
//!   wins over any `prefix*`, and a longer prefix over a shorter one. For
//!   the same pattern, the catalog's role (`lockstep role set`) wins over
//!   the configured one. No match: no role, and every call is refused.
//! - The configured roles are `[roles]` and `--role`; with neither, the
//!   defaults `coordinator-*`, `agent-*`, `operator`, `viewer` (each its
//!   namesake role).
//! - `operator` may make every `viewer` call; `coordinator` may ask
//!   `NodeStatus` (members ask each other for the group's status).

use std::collections::BTreeMap;
use std::fmt;

use lockstep_proto::tls::{Caller, matches};

use crate::catalog::{Role, RoleGrant};

/// Every call of the `lockstep.coordinator.v1` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    RegisterServer,
    Heartbeat,
    ReportRefusal,
    RemoveServer,
    StartBackup,
    RestoreBackup,
    AddSink,
    RemoveSink,
    SetSinkPolicy,
    CopyBackup,
    VerifyBackup,
    ScanSink,
    SetRole,
    RemoveRole,
    ListServers,
    GetBackup,
    ListBackups,
    ListRestores,
    ListSinks,
    PlanRestore,
    CoordinatorStatus,
    NodeStatus,
    ListAudit,
    ListRoles,
    ArchiveState,
    ReportArchive,
    ArchiveStatus,
    SearchBinlog,
    Pitr,
    CreateRestorePoint,
    SetRestorePointSchedule,
    ListRestorePoints,
}

impl Call {
    /// The gRPC method name.
    pub fn name(self) -> &'static str {
        match self {
            Call::RegisterServer => "RegisterServer",
            Call::Heartbeat => "Heartbeat",
            Call::ReportRefusal => "ReportRefusal",
            Call::RemoveServer => "RemoveServer",
            Call::StartBackup => "StartBackup",
            Call::RestoreBackup => "RestoreBackup",
            Call::AddSink => "AddSink",
            Call::RemoveSink => "RemoveSink",
            Call::SetSinkPolicy => "SetSinkPolicy",
            Call::CopyBackup => "CopyBackup",
            Call::VerifyBackup => "VerifyBackup",
            Call::ScanSink => "ScanSink",
            Call::SetRole => "SetRole",
            Call::RemoveRole => "RemoveRole",
            Call::ListServers => "ListServers",
            Call::GetBackup => "GetBackup",
            Call::ListBackups => "ListBackups",
            Call::ListRestores => "ListRestores",
            Call::ListSinks => "ListSinks",
            Call::PlanRestore => "PlanRestore",
            Call::CoordinatorStatus => "CoordinatorStatus",
            Call::NodeStatus => "NodeStatus",
            Call::ListAudit => "ListAudit",
            Call::ListRoles => "ListRoles",
            Call::ArchiveState => "ArchiveState",
            Call::ReportArchive => "ReportArchive",
            Call::ArchiveStatus => "ArchiveStatus",
            Call::SearchBinlog => "SearchBinlog",
            Call::Pitr => "Pitr",
            Call::CreateRestorePoint => "CreateRestorePoint",
            Call::SetRestorePointSchedule => "SetRestorePointSchedule",
            Call::ListRestorePoints => "ListRestorePoints",
        }
    }

    /// The role this call needs (named in refusals).
    pub fn needs(self) -> Role {
        match self {
            Call::RegisterServer
            | Call::Heartbeat
            | Call::ReportRefusal
            | Call::ArchiveState
            | Call::ReportArchive => Role::Agent,
            Call::RemoveServer
            | Call::StartBackup
            | Call::RestoreBackup
            | Call::AddSink
            | Call::RemoveSink
            | Call::SetSinkPolicy
            | Call::CopyBackup
            | Call::VerifyBackup
            | Call::ScanSink
            | Call::SetRole
            | Call::RemoveRole
            | Call::Pitr
            | Call::CreateRestorePoint
            | Call::SetRestorePointSchedule => Role::Operator,
            Call::ListServers
            | Call::GetBackup
            | Call::ListBackups
            | Call::ListRestores
            | Call::ListSinks
            | Call::PlanRestore
            | Call::CoordinatorStatus
            | Call::NodeStatus
            | Call::ListAudit
            | Call::ListRoles
            | Call::ArchiveStatus
            | Call::SearchBinlog
            | Call::ListRestorePoints => Role::Viewer,
        }
    }

    /// Whether `role` may make this call.
    pub fn allows(self, role: Role) -> bool {
        let needs = self.needs();
        role == needs
            || (needs == Role::Viewer && role == Role::Operator)
            || (self == Call::NodeStatus && role == Role::Coordinator)
    }

    /// Whether only the leader serves it: then the leader check (and its
    /// redirect) comes before the role check, so refusals happen on the
    /// leader, which records them. Status calls are any member's.
    pub fn leader_only(self) -> bool {
        !matches!(self, Call::CoordinatorStatus | Call::NodeStatus)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an identity's role came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Config,
    Catalog,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Catalog => "catalog",
        }
    }
}

/// The role an identity resolved to, and the entry that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub role: Role,
    pub pattern: String,
    pub source: Source,
}

/// The configured roles when none are configured.
pub fn default_roles() -> BTreeMap<String, Role> {
    BTreeMap::from([
        ("coordinator-*".to_string(), Role::Coordinator),
        ("agent-*".to_string(), Role::Agent),
        ("operator".to_string(), Role::Operator),
        ("viewer".to_string(), Role::Viewer),
    ])
}

/// How specific `pattern` is: an exact name above every prefix, a longer
/// prefix above a shorter one.
fn specificity(pattern: &str) -> (bool, usize) {
    match pattern.strip_suffix('*') {
        Some(prefix) => (false, prefix.len()),
        None => (true, pattern.len()),
    }
}

/// The role of `identity`: the most specific matching pattern of the
/// configured roles (`config`, defaults already applied) and the catalog's
/// (`catalog`); the catalog's wins for the same pattern.
pub fn resolve(
    config: &BTreeMap<String, Role>,
    catalog: &BTreeMap<String, RoleGrant>,
    identity: &str,
) -> Option<Resolved> {
    let configured = config.iter().map(|(p, r)| (p, *r, Source::Config));
    let set = catalog.iter().map(|(p, g)| (p, g.role, Source::Catalog));
    configured
        .chain(set)
        .filter(|(p, _, _)| matches(p, identity))
        .max_by_key(|(p, _, source)| (specificity(p), *source))
        .map(|(p, role, source)| Resolved {
            role,
            pattern: p.clone(),
            source,
        })
}

/// A refused call: who, what, and what it needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub identity: String,
    pub role: Option<Role>,
    pub call: Call,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Some(r) => format!("role {r}"),
            None => "no role".to_string(),
        };
        write!(
            f,
            "identity '{}' ({role}) may not call {}: it needs the {} role",
            self.identity,
            self.call,
            self.call.needs()
        )
    }
}

/// Whether `caller` may make `call`: `Ok(Some(role))` for an identity with
/// a role that allows it, `Ok(None)` for a plaintext caller (everything is
/// allowed without TLS), otherwise who was refused and why.
pub fn authorize(
    caller: &Caller,
    call: Call,
    config: &BTreeMap<String, Role>,
    catalog: &BTreeMap<String, RoleGrant>,
) -> Result<Option<Role>, Denied> {
    let Some(identity) = caller.identity() else {
        return Ok(None);
    };
    let role = resolve(config, catalog, identity).map(|r| r.role);
    match role {
        Some(r) if call.allows(r) => Ok(Some(r)),
        _ => Err(Denied {
            identity: identity.to_string(),
            role,
            call,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role) -> RoleGrant {
        RoleGrant {
            role,
            set_at_unix_ms: 1,
        }
    }

    fn id(name: &str) -> Caller {
        Caller::Identity(name.into())
    }

    /// The defaults give each conventional name its role; an exact name
    /// beats a pattern, a longer prefix a shorter one, the catalog the
    /// config for the same pattern; unmatched identities have none.
    #[test]
    fn the_most_specific_role_wins() {
        let config = default_roles();
        let none = BTreeMap::new();
        let role = |cat: &BTreeMap<String, RoleGrant>, who: &str| {
            resolve(&config, cat, who).map(|r| (r.role, r.source))
        };
        assert_eq!(
            role(&none, "agent-db1"),
            Some((Role::Agent, Source::Config))
        );
        assert_eq!(
            role(&none, "coordinator-2"),
            Some((Role::Coordinator, Source::Config))
        );
        assert_eq!(
            role(&none, "operator"),
            Some((Role::Operator, Source::Config))
        );
        assert_eq!(role(&none, "operator2"), None, "exact names only");
        assert_eq!(role(&none, "mallory"), None);

        let cat = BTreeMap::from([
            ("agent-*".to_string(), grant(Role::Viewer)),
            ("agent-db9".to_string(), grant(Role::None)),
            ("agent-media-*".to_string(), grant(Role::Operator)),
            ("*".to_string(), grant(Role::Viewer)),
        ]);
        assert_eq!(
            role(&cat, "agent-db1"),
            Some((Role::Viewer, Source::Catalog)),
            "the catalog wins for the same pattern"
        );
        assert_eq!(role(&cat, "agent-db9"), Some((Role::None, Source::Catalog)));
        assert_eq!(
            role(&cat, "agent-media-1"),
            Some((Role::Operator, Source::Catalog)),
            "a longer prefix wins"
        );
        assert_eq!(
            role(&cat, "operator"),
            Some((Role::Operator, Source::Config)),
            "an exact config name beats a catalog pattern"
        );
        assert_eq!(role(&cat, "mallory"), Some((Role::Viewer, Source::Catalog)));
    }

    /// A viewer reads but cannot start a backup; an operator does both; an
    /// agent registers but reads nothing; a coordinator asks NodeStatus;
    /// plaintext callers may do anything; refusals name identity, role, call
    /// and the role needed.
    #[test]
    fn calls_need_their_role() {
        let config = default_roles();
        let cat = BTreeMap::new();
        let auth = |who: &Caller, call| authorize(who, call, &config, &cat);
        assert_eq!(
            auth(&id("viewer"), Call::ListBackups),
            Ok(Some(Role::Viewer))
        );
        let denied = auth(&id("viewer"), Call::StartBackup).expect_err("viewer");
        assert_eq!(
            denied.to_string(),
            "identity 'viewer' (role viewer) may not call StartBackup: it needs the operator role"
        );
        assert_eq!(
            auth(&id("operator"), Call::StartBackup),
            Ok(Some(Role::Operator))
        );
        assert_eq!(
            auth(&id("viewer"), Call::ListRestorePoints),
            Ok(Some(Role::Viewer))
        );
        for call in [Call::CreateRestorePoint, Call::SetRestorePointSchedule] {
            assert!(auth(&id("viewer"), call).is_err(), "{call}");
            assert_eq!(auth(&id("operator"), call), Ok(Some(Role::Operator)));
        }
        assert_eq!(
            auth(&id("operator"), Call::ListAudit),
            Ok(Some(Role::Operator))
        );
        assert!(auth(&id("operator"), Call::RegisterServer).is_err());
        assert_eq!(
            auth(&id("agent-db1"), Call::RegisterServer),
            Ok(Some(Role::Agent))
        );
        assert!(auth(&id("agent-db1"), Call::ListBackups).is_err());
        assert!(auth(&id("agent-db1"), Call::RestoreBackup).is_err());
        assert_eq!(
            auth(&id("coordinator-1"), Call::NodeStatus),
            Ok(Some(Role::Coordinator))
        );
        assert!(auth(&id("coordinator-1"), Call::StartBackup).is_err());
        let nobody = auth(&id("mallory"), Call::ListBackups).expect_err("no role");
        assert_eq!(
            nobody.to_string(),
            "identity 'mallory' (no role) may not call ListBackups: it needs the viewer role"
        );
        for call in [Call::StartBackup, Call::RegisterServer, Call::SetRole] {
            assert_eq!(auth(&Caller::Plaintext(None), call), Ok(None));
        }
    }
}
