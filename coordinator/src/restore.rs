//! The coordinated restore, a leader job: every server of a COMPLETE backup
//! is loaded at once, each by its own agent from the artifact that agent
//! stored (`Restore` on `lockstep.agent.v1`).
//!
//! The request is checked against the catalog (the backup exists and is
//! COMPLETE, every server has a target or the request says in-place, every
//! target names one of its servers, no other restore of it runs) and
//! recorded there (`StartRestore`, [`record`]) before any agent is called;
//! [`run`] then loads every server, recording each outcome as it finishes
//! and the end (`FinishRestore`). [`crate::job::Jobs::restore`] runs it as
//! a task of its own, so a caller that goes away does not cut it short; a
//! leader fails the restores no job of its own drives (see
//! [`crate::job::Jobs::watch_leadership`]).

use std::collections::BTreeMap;
use std::time::Instant;

use lockstep_proto::agent as agent_pb;
use lockstep_proto::agent::node_agent_client::NodeAgentClient;
use tonic::transport::Channel;
use tracing::{Instrument as _, info, info_span, warn};

use crate::catalog::{Command, Rejected, RestoredServer, Status};
use crate::core::{Core, fail_pause, now_unix_ms};
use crate::error::{Error, Result};
use crate::job::{agent_client, status_text};

/// What to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// The backup's id.
    pub backup_id: String,
    /// Server name → `mysql://` URL of the server to load it into.
    pub targets: BTreeMap<String, String>,
    /// Load into non-empty targets.
    pub force: bool,
    /// Servers not in `targets` go into their agent's own database server
    /// (without it, every server needs a target).
    pub in_place: bool,
    /// Let agents run RESET MASTER on MySQL 5.7 targets with GTIDs.
    pub allow_reset_master: bool,
}

/// A finished restore: its catalog id and every server's outcome, in the
/// backup's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub restore_id: String,
    pub servers: Vec<(String, RestoredServer)>,
}

/// A server of a backup as the catalog has it: name, agent address, and
/// its artifact's location and manifest sha256 (if stored).
type CatalogServer = (String, String, Option<(String, String)>);

/// One server to restore: where its agent is and what it loads.
#[derive(Debug, Clone)]
struct Plan {
    server: String,
    agent_addr: String,
    location: Option<String>,
    /// The artifact's manifest sha256, which the agent checks.
    manifest_sha256: String,
    target_mysql: String,
}

/// A restore checked and recorded, ready to [`run`].
#[derive(Debug, Clone)]
pub struct Recorded {
    restore_id: String,
    backup_id: String,
    force: bool,
    allow_reset_master: bool,
    plans: Vec<Plan>,
}

/// Checks `req` against the catalog and records it as restore
/// `restore_id`. Fails before anything is recorded if the backup is unknown
/// or not COMPLETE, a server has no target (without in-place), a target
/// names a server not in it, or another restore of it runs.
pub async fn record(core: &Core, restore_id: &str, req: RestoreRequest) -> Result<Recorded> {
    core.require_leader().await?;
    let id = req.backup_id.clone();
    let wanted = id.clone();
    let found = core
        .read(move |cat| {
            cat.backups.get(&wanted).map(|b| {
                let agents = cat.clusters.get(&b.cluster);
                let servers: Vec<CatalogServer> = b
                    .servers
                    .iter()
                    .map(|name| {
                        (
                            name.clone(),
                            agents
                                .and_then(|s| s.get(name))
                                .map(|s| s.agent_addr.clone())
                                .unwrap_or_default(),
                            b.artifacts
                                .get(name)
                                .map(|a| (a.location.clone(), a.manifest_sha256.clone())),
                        )
                    })
                    .collect();
                (b.status, servers)
            })
        })
        .await?;
    let (status, servers) = found.ok_or_else(|| Rejected::UnknownBackup(id.clone()))?;
    let plans = plan(&id, status, servers, &req.targets, req.in_place)?;
    // Every server must have an artifact and a reachable loading agent
    // before any is loaded: a fleet restore starts on every server or none.
    let reached = futures::future::join_all(plans.iter().map(Plan::loader)).await;
    let unreachable: Vec<String> = reached.into_iter().filter_map(|r| r.err()).collect();
    if !unreachable.is_empty() {
        return Err(Error::CannotLoad {
            id: id.clone(),
            reasons: unreachable.join("; "),
        });
    }
    core.propose(&Command::StartRestore {
        id: restore_id.to_string(),
        backup_id: id.clone(),
        targets: plans
            .iter()
            .map(|p| (p.server.clone(), p.shown_target()))
            .collect(),
        force: req.force,
        at_unix_ms: now_unix_ms(),
    })
    .await?;
    Ok(Recorded {
        restore_id: restore_id.to_string(),
        backup_id: id,
        force: req.force,
        allow_reset_master: req.allow_reset_master,
        plans,
    })
}

/// Restores every server of a recorded restore in parallel; returns one
/// outcome per server in the backup's order.
pub async fn run(core: &Core, rec: Recorded) -> Restored {
    let Recorded {
        restore_id,
        backup_id: id,
        force,
        allow_reset_master,
        plans,
    } = rec;
    fail_pause("before-restore-agents").await;

    let span = info_span!("restore", backup = %id, restore = %restore_id);
    async {
        info!(servers = plans.len(), force, "restoring every server");
        let timeout = core.config.transfer_timeout;
        let rid = &restore_id;
        let bid = &id;
        let runs = plans.into_iter().map(|p| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(timeout, restore_one(&p, bid, force, allow_reset_master)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "server {}: restore not finished within {timeout:?}",
                    p.server
                )),
            };
            match &outcome {
                Ok((_, l)) => info!(server = %p.server, rows = l.rows, elapsed = ?started.elapsed(), "server restored"),
                Err(e) => warn!(server = %p.server, error = %e, "server restore failed"),
            }
            let mut done = match outcome {
                Ok((reported, loaded)) => RestoredServer {
                    target: reported,
                    ..loaded
                },
                Err(e) => RestoredServer {
                    error: Some(e),
                    ..RestoredServer::default()
                },
            };
            if done.target.is_empty() {
                done.target = p.shown_target();
            }
            done.location = p.location.clone().unwrap_or_default();
            let record = Command::RestoreServerDone {
                id: rid.clone(),
                server: p.server.clone(),
                result: done.clone(),
            };
            if let Err(e) = core.propose(&record).await {
                warn!(server = %p.server, error = %e, "could not record the server's outcome");
            }
            (p.server, done)
        });
        let servers = futures::future::join_all(runs).await;
        let finish = Command::FinishRestore {
            id: restore_id.clone(),
            reason: None,
            at_unix_ms: now_unix_ms(),
        };
        if let Err(e) = core.propose(&finish).await {
            warn!(error = %e, "could not record the end of the restore; the next leader fails it");
        }
        Restored {
            restore_id: restore_id.clone(),
            servers,
        }
    }
    .instrument(span)
    .await
}

/// Checks the request against the backup and pairs each server with its
/// target.
fn plan(
    id: &str,
    status: Status,
    servers: Vec<CatalogServer>,
    targets: &BTreeMap<String, String>,
    in_place: bool,
) -> Result<Vec<Plan>> {
    if status != Status::Complete {
        return Err(Error::NotRestorable {
            id: id.to_string(),
            status: crate::convert::status_name(status).to_uppercase(),
        });
    }
    if let Some(unknown) = targets
        .keys()
        .find(|t| !servers.iter().any(|(name, _, _)| name == *t))
    {
        return Err(Error::UnknownTarget {
            id: id.to_string(),
            server: unknown.clone(),
            servers: servers
                .iter()
                .map(|(n, _, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // Checked here, before anything is recorded or any agent called: a
    // typo must not leave the fleet partly restored.
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (server, url) in targets {
        let bad = |reason: String| Error::BadTarget {
            id: id.to_string(),
            server: server.clone(),
            reason,
        };
        check_target_url(url).map_err(bad)?;
        let at = redact(url);
        if let Some(other) = seen.insert(at.clone(), server) {
            return Err(bad(format!(
                "{at} is also the target of server {other}; each server needs a target of its own"
            )));
        }
    }
    let untargeted: Vec<&str> = servers
        .iter()
        .map(|(name, _, _)| name.as_str())
        .filter(|name| !targets.contains_key(*name))
        .collect();
    if !in_place && !untargeted.is_empty() {
        return Err(Error::MissingTarget {
            id: id.to_string(),
            servers: untargeted.join(", "),
        });
    }
    Ok(servers
        .into_iter()
        .map(|(server, agent_addr, artifact)| {
            let (location, manifest_sha256) = match artifact {
                Some((l, sha)) => (Some(l), sha),
                None => (None, String::new()),
            };
            Plan {
                target_mysql: targets.get(&server).cloned().unwrap_or_default(),
                server,
                agent_addr,
                location,
                manifest_sha256,
            }
        })
        .collect())
}

impl Plan {
    /// The artifact's location and a connection to the agent that loads
    /// it, or why there is none (naming the server).
    async fn loader(&self) -> std::result::Result<(String, NodeAgentClient<Channel>), String> {
        let name = &self.server;
        let location = self
            .location
            .clone()
            .ok_or_else(|| format!("server {name}: the backup has no artifact for it"))?;
        if self.agent_addr.is_empty() {
            return Err(format!("server {name}: no agent is registered for it"));
        }
        let client = agent_client(&self.agent_addr)
            .await
            .map_err(|e| format!("server {name}: {e}"))?;
        Ok((location, client))
    }

    /// The target as the catalog and the caller see it: `host:port` (never
    /// the credentials) or "own server".
    fn shown_target(&self) -> String {
        if self.target_mysql.is_empty() {
            "own server".to_string()
        } else {
            redact(&self.target_mysql)
        }
    }
}

/// One agent's `Restore`, to the end of its stream; returns the target the
/// agent reported and its report.
async fn restore_one(
    p: &Plan,
    backup_id: &str,
    force: bool,
    allow_reset_master: bool,
) -> std::result::Result<(String, RestoredServer), String> {
    let name = &p.server;
    let (location, mut client) = p.loader().await?;
    let mut stream = client
        .restore(agent_pb::RestoreRequest {
            location,
            target_mysql: p.target_mysql.clone(),
            force,
            threads: 0,
            binlog: false,
            backup_id: backup_id.to_string(),
            manifest_sha256: p.manifest_sha256.clone(),
            allow_reset_master,
            sink: None,
        })
        .await
        .map_err(|s| restore_error(name, &s))?
        .into_inner();
    loop {
        let msg = stream
            .message()
            .await
            .map_err(|s| restore_error(name, &s))?
            .ok_or_else(|| format!("server {name}: the restore ended without a report"))?;
        if !msg.done {
            continue;
        }
        let r = msg
            .report
            .ok_or_else(|| format!("server {name}: the restore finished without a report"))?;
        return Ok((
            r.server,
            RestoredServer {
                tables: r.tables,
                rows: r.rows,
                duration_ms: r.duration_ms,
                gtid_slave_pos: r.gtid_slave_pos,
                ..RestoredServer::default()
            },
        ));
    }
}

/// An agent's refusal or failure, naming the server; a non-empty target
/// says how to override.
fn restore_error(name: &str, s: &tonic::Status) -> String {
    if s.code() == tonic::Code::AlreadyExists {
        return format!(
            "server {name}: restore refused, the target is not empty (pass --force to load into it anyway): {}",
            s.message()
        );
    }
    format!("server {name}: restore failed: {}", status_text(s))
}

/// Whether `url` has the shape `mysql://USER[:PASS]@HOST:PORT[/...]` (the
/// agent parses it fully); the error never repeats the password.
fn check_target_url(url: &str) -> std::result::Result<(), String> {
    let expected = "expected mysql://USER[:PASSWORD]@HOST:PORT";
    let Some(rest) = url.strip_prefix("mysql://") else {
        return Err(format!(
            "{:?} is not a mysql:// URL ({expected})",
            redact(url)
        ));
    };
    let Some((user, host)) = rest.rsplit_once('@') else {
        return Err(format!("{:?} names no user ({expected})", redact(url)));
    };
    let host = host.split(['/', '?']).next().unwrap_or_default();
    let port_ok = host
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if user.split(':').next().unwrap_or_default().is_empty() || !port_ok {
        return Err(format!("{host:?} is not USER@HOST:PORT ({expected})"));
    }
    Ok(())
}

/// `host:port` of a `mysql://USER[:PASS]@HOST:PORT[/...]` URL (never the
/// credentials); anything unparsable becomes "(target)".
fn redact(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() {
        "(target)".into()
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> Vec<CatalogServer> {
        ["s1", "s2"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    format!("http://{n}"),
                    Some((format!("/b/{n}"), "sha".to_string())),
                )
            })
            .collect()
    }

    #[test]
    fn plan_maps_targets_and_refuses_bad_requests() {
        let targets = BTreeMap::from([("s2".to_string(), "mysql://root@h:1".to_string())]);
        let plans = plan("b1", Status::Complete, servers(), &targets, true).expect("plan");
        assert_eq!(plans[0].target_mysql, "");
        assert_eq!(plans[1].target_mysql, "mysql://root@h:1");

        let missing = plan("b1", Status::Complete, servers(), &targets, false)
            .expect_err("a server without a target is refused without in-place");
        let text = missing.to_string();
        assert!(
            text.contains("s1") && !text.contains("s2") && text.contains("--in-place"),
            "{text}"
        );

        let failed = plan("b1", Status::Failed, servers(), &targets, true)
            .expect_err("a FAILED backup is refused");
        assert!(failed.to_string().contains("FAILED"), "{failed}");

        let bad = BTreeMap::from([("s9".to_string(), "mysql://root@h:1".to_string())]);
        let unknown = plan("b1", Status::Complete, servers(), &bad, true)
            .expect_err("an unknown target is refused");
        let text = unknown.to_string();
        assert!(text.contains("s9") && text.contains("s1, s2"), "{text}");
    }

    #[test]
    fn plan_refuses_bad_and_shared_targets_before_anything_runs() {
        let bad = |url: &str| {
            let targets = BTreeMap::from([
                ("s1".to_string(), url.to_string()),
                ("s2".to_string(), "mysql://root@h:2".to_string()),
            ]);
            plan("b1", Status::Complete, servers(), &targets, false)
                .expect_err("refused")
                .to_string()
        };
        for url in [
            "root@h:1",
            "mysql://h:1",
            "mysql://root@h",
            "mysql://root@h:x",
            "mysql://:pw@h:1",
        ] {
            let e = bad(url);
            assert!(
                e.contains("server s1") && e.contains("mysql://USER"),
                "{url}: {e}"
            );
        }
        let secret = bad("mysql://root:secret@h");
        assert!(!secret.contains("secret"), "{secret}");
        let shared = bad("mysql://admin@h:2");
        assert!(
            shared.contains("h:2") && shared.contains("server s1") && shared.contains("s2"),
            "{shared}"
        );
    }

    #[test]
    fn redact_drops_credentials() {
        assert_eq!(
            redact("mysql://root:secret@127.0.0.1:3306/db"),
            "127.0.0.1:3306"
        );
        assert_eq!(redact("mysql://127.0.0.1:3306"), "127.0.0.1:3306");
        assert_eq!(redact(""), "(target)");
    }

    #[test]
    fn a_non_empty_target_says_how_to_override() {
        let s = tonic::Status::already_exists("target is not empty");
        let e = restore_error("s1", &s);
        assert!(e.contains("server s1") && e.contains("--force"), "{e}");
    }
}
