//! Roles and the audit trail as the catalog keeps them: the roles set with
//! `lockstep role set` (identity or pattern → role), and the newest
//! [`AUDIT_LIMIT`] audit records. Who may call what, and how config roles
//! and these combine, is `crate::access`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::store::Key;
use super::{Catalog, Rejected};

/// How many audit records the catalog keeps: the oldest is dropped when a
/// new one would exceed it, so the catalog (and its raft snapshot) stays
/// small.
pub const AUDIT_LIMIT: usize = 10_000;

/// What an identity may do. One role per identity: the most specific
/// pattern that matches it decides (see `crate::access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Another coordinator of the group: raft, calling agents, `NodeStatus`.
    Coordinator,
    /// A node agent: registration, heartbeats, refusal reports.
    Agent,
    /// Backups, restores, sinks, copies, checks, scans, server removal,
    /// role changes; and everything a viewer may do.
    Operator,
    /// Catalog reads.
    Viewer,
    /// Nothing at all (to take a config role away from one identity).
    None,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Coordinator,
        Role::Agent,
        Role::Operator,
        Role::Viewer,
        Role::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::None => "none",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown role {s:?} (use coordinator, agent, operator, viewer or none)")
            })
    }
}

/// Checks an identity pattern: a name, or a prefix followed by one `*` at
/// the end (`agent-*`; `*` alone matches everyone).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    if pattern.is_empty() {
        return Err("the identity pattern is empty".into());
    }
    if pattern.len() > 256 || body.contains('*') || pattern.chars().any(char::is_whitespace) {
        return Err(format!(
            "identity pattern {pattern:?}: a name, or a prefix with one '*' at the end \
             (no spaces, at most 256 characters)"
        ));
    }
    Ok(())
}

/// A role set in the catalog for an identity or pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleGrant {
    pub role: Role,
    pub set_at_unix_ms: i64,
}

/// How an audited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It did what was asked (the detail says what it started).
    Ok,
    /// Its caller may not make it (the detail says why).
    Refused,
    /// It was allowed and failed (the detail is the error).
    Failed,
}

impl AuditOutcome {
    pub fn name(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// One audited call. Arguments and detail never hold secrets: passwords in
/// URLs are replaced with `***` before the record is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_unix_ms: i64,
    /// The caller's certificate identity; `None`: a plaintext caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The caller's address, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The gRPC call, e.g. `StartBackup`.
    pub call: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    pub outcome: AuditOutcome,
    /// What it started (ok), why it was refused, or the error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Who recorded it: `coordinator N`, or the agent that refused the call
    /// (`ReportRefusal`).
    pub recorded_by: String,
}

impl Catalog {
    pub(super) fn set_role(
        &mut self,
        pattern: String,
        role: Role,
        at_unix_ms: i64,
    ) -> Result<(), Rejected> {
        check_pattern(&pattern).map_err(|reason| Rejected::BadRole {
            pattern: pattern.clone(),
            reason,
        })?;
        self.roles.insert(
            pattern,
            RoleGrant {
                role,
                set_at_unix_ms: at_unix_ms,
            },
        );
        Ok(())
    }

    pub(super) fn remove_role(&mut self, pattern: &str) -> Result<(), Rejected> {
        self.roles
            .remove(pattern)
            .map(|_| ())
            .ok_or_else(|| Rejected::UnknownRole(pattern.to_string()))
    }

    /// Appends `record` under the next sequence number and drops the oldest
    /// beyond [`AUDIT_LIMIT`] (marking their keys changed, so the store
    /// deletes them).
    pub(super) fn append_audit(&mut self, record: AuditRecord) {
        let seq = self.audit.last_key_value().map_or(1, |(s, _)| s + 1);
        self.audit.insert(seq, record);
        while self.audit.len() > AUDIT_LIMIT {
            if let Some((old, _)) = self.audit.pop_first() {
                self.dirty.0.insert(Key::Audit { seq: old });
            }
        }
    }

    /// The key of the next audit record.
    pub(super) fn next_audit_key(&self) -> Key {
        Key::Audit {
            seq: self.audit.last_key_value().map_or(1, |(s, _)| s + 1),
        }
    }
}

/// The identity a (re-)registration leaves a server bound to: the first
/// identity that registered it stays bound; another identity is refused; a
/// plaintext registration (`caller` `None`) changes no binding.
pub(super) fn bind(
    what: &str,
    cluster: &str,
    name: &str,
    bound: Option<&str>,
    caller: Option<String>,
) -> Result<Option<String>, Rejected> {
    match (bound, caller) {
        (Some(b), Some(c)) if b != c => Err(Rejected::RegisteredByOther {
            what: what.into(),
            cluster: cluster.into(),
            name: name.into(),
            bound: b.into(),
            caller: c,
        }),
        (Some(b), _) => Ok(Some(b.to_string())),
        (None, c) => Ok(c),
    }
}
