//! `lockstep role set|remove|list`: the roles set in the catalog, and the
//! coordinators' configured ones (see docs/coordinator.md, "Roles").

use clap::{Args, Subcommand};
use lockstep_proto::coordinator as pb;
use serde_json::{Value, json};

use super::output::{print_table, unix_ms_text};
use crate::client::Client;

/// `lockstep role ...`
#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Give an identity (a client certificate's name), or every identity
    /// matching a pattern such as `agent-*`, a role: coordinator, agent,
    /// operator, viewer or none. Replaces the configured role of the same
    /// pattern on every coordinator.
    Set(RoleSetArgs),
    /// Remove the role set for a pattern (the configured one applies again).
    Remove(RolePatternArgs),
    /// The configured roles and the catalog's; the most specific pattern
    /// matching an identity decides its role.
    List,
}

/// `role set` arguments.
#[derive(Debug, Args)]
pub struct RoleSetArgs {
    /// An identity, or a prefix ending in `*`.
    pub pattern: String,
    /// coordinator, agent, operator, viewer or none.
    pub role: String,
}

/// `role remove` arguments.
#[derive(Debug, Args)]
pub struct RolePatternArgs {
    /// The pattern exactly as it was set.
    pub pattern: String,
}

/// Runs a `role` command.
pub(super) async fn run(client: &mut Client, json: bool, cmd: &RoleCmd) -> anyhow::Result<i32> {
    match cmd {
        RoleCmd::Set(a) => {
            let req = pb::SetRoleRequest {
                pattern: a.pattern.clone(),
                role: a.role.clone(),
            };
            // Setting the same role twice is harmless: asked again if lost.
            let entry = client
                .call("set role", |mut c| {
                    let req = req.clone();
                    async move { c.set_role(req).await }
                })
                .await?;
            if json {
                println!("{}", role_json(&entry));
            } else {
                println!("{} has role {}", entry.pattern, entry.role);
            }
        }
        RoleCmd::Remove(a) => {
            let req = pb::RemoveRoleRequest {
                pattern: a.pattern.clone(),
            };
            client
                .call("remove role", |mut c| {
                    let req = req.clone();
                    async move { c.remove_role(req).await }
                })
                .await?;
            if json {
                println!("{}", json!({ "pattern": a.pattern, "removed": true }));
            } else {
                println!("removed the role of {}", a.pattern);
            }
        }
        RoleCmd::List => {
            let reply = client
                .call("list roles", |mut c| async move {
                    c.list_roles(pb::ListRolesRequest {}).await
                })
                .await?;
            print_roles(json, &reply.roles);
        }
    }
    Ok(0)
}

fn role_json(r: &pb::RoleEntry) -> Value {
    json!({
        "pattern": r.pattern,
        "role": r.role,
        "source": r.source,
        "overridden": r.overridden,
        "set_at_unix_ms": (r.set_at_unix_ms != 0).then_some(r.set_at_unix_ms),
    })
}

fn print_roles(json: bool, roles: &[pb::RoleEntry]) {
    if json {
        println!("{}", Value::Array(roles.iter().map(role_json).collect()));
        return;
    }
    let rows: Vec<Vec<String>> = roles
        .iter()
        .map(|r| {
            vec![
                r.pattern.clone(),
                r.role.clone(),
                if r.overridden {
                    format!("{} (overridden by the catalog)", r.source)
                } else {
                    r.source.clone()
                },
                if r.set_at_unix_ms == 0 {
                    "-".into()
                } else {
                    unix_ms_text(r.set_at_unix_ms)
                },
            ]
        })
        .collect();
    print_table(&["PATTERN", "ROLE", "SOURCE", "SET AT"], &rows);
}
