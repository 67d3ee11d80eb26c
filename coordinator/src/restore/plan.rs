//! Choosing what a restore loads: the request checked against the backup,
//! and each server's sources (a copy and an agent that reads it), best
//! first.

use std::collections::BTreeMap;

use lockstep_proto::agent as agent_pb;

use super::RestoreRequest;
use crate::catalog::{Artifact, Backup, Catalog, SinkKind, Status};
use crate::error::{Error, Result};
use crate::sinks::{AgentRef, readers, shown, spec};

/// Assumed load rate when no restore of the cluster has been measured.
const DEFAULT_ROWS_PER_SEC: u64 = 100_000;

/// One way to load a server: a copy and the agent that reads it.
#[derive(Debug, Clone)]
pub(super) struct Source {
    /// Empty: host-local.
    pub(super) sink: String,
    pub(super) spec: Option<agent_pb::SinkSpec>,
    /// The copy's catalog record.
    pub(super) copy: Artifact,
    pub(super) agent: AgentRef,
}

impl Source {
    pub(super) fn describe(&self) -> String {
        format!(
            "copy in sink {} read by agent {}",
            shown(&self.sink),
            self.agent.name
        )
    }
}

/// One server to restore: its target and its sources, best first. Its
/// `Debug` shows the target as the catalog does (never a password).
#[derive(Clone)]
pub(super) struct Plan {
    pub(super) server: String,
    pub(super) target_mysql: String,
    /// A physical backup's datadir on the loading agent's host.
    pub(super) target_datadir: String,
    pub(super) files_to: String,
    pub(super) sources: Vec<Source>,
    /// Why sources were passed over (or none exist).
    pub(super) skipped: Vec<String>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("server", &self.server)
            .field("target", &self.shown_target())
            .field("sources", &self.sources)
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// One server of a restore plan, as `restore plan` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub server: String,
    pub target: String,
    pub sink: String,
    pub location: String,
    pub agent: String,
    pub bytes: u64,
    pub estimated_ms: u64,
    pub skipped: Vec<String>,
}

/// Rows per second of the cluster's finished restores, or a default.
pub(super) fn measured_rate(cat: &Catalog, cluster: &str) -> u64 {
    let (rows, ms) = cat
        .restores
        .values()
        .filter(|r| {
            cat.backups
                .get(&r.backup_id)
                .is_some_and(|b| b.cluster == cluster)
        })
        .flat_map(|r| r.servers.values())
        .filter(|s| s.error.is_none() && s.duration_ms > 0)
        .fold((0u64, 0u64), |(r, d), s| (r + s.rows, d + s.duration_ms));
    (rows * 1000)
        .checked_div(ms)
        .map_or(DEFAULT_ROWS_PER_SEC, |rate| rate.max(1))
}

/// Checks the request against the backup and gives each server its
/// target and sources, best first.
pub(super) fn plan(cat: &Catalog, b: &Backup, req: &RestoreRequest) -> Result<Vec<Plan>> {
    let id = &b.id;
    if b.status != Status::Complete {
        return Err(Error::NotRestorable {
            id: id.to_string(),
            status: crate::convert::status_name(b.status).to_uppercase(),
        });
    }
    let names = || b.servers.join(", ");
    let named = [
        ("--target", &req.targets),
        ("--agent", &req.agents),
        ("--datadir", &req.datadirs),
    ];
    for (flag, unknown) in named
        .iter()
        .flat_map(|(flag, m)| m.keys().map(move |k| (*flag, k)))
    {
        if !b.servers.contains(unknown) {
            return Err(Error::UnknownTarget {
                flag,
                id: id.to_string(),
                server: unknown.clone(),
                servers: names(),
            });
        }
    }
    // Checked here, before anything is recorded or any agent called: a
    // typo must not leave the fleet partly restored.
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (server, url) in &req.targets {
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
    check_datadirs(b, req)?;
    let untargeted: Vec<&str> = b
        .servers
        .iter()
        .map(String::as_str)
        .filter(|name| !req.targets.contains_key(*name) && !req.datadirs.contains_key(*name))
        .collect();
    if !req.in_place && !untargeted.is_empty() {
        return Err(Error::MissingTarget {
            id: id.to_string(),
            servers: untargeted.join(", "),
        });
    }
    if let Some(from) = &req.from
        && from != crate::catalog::HOST_LOCAL
        && cat.sink(&b.cluster, from).is_none()
    {
        return Err(Error::Config(format!(
            "--from {from}: cluster {} has no such sink",
            b.cluster
        )));
    }
    for (server, agent) in &req.agents {
        if crate::sinks::agent(cat, &b.cluster, agent).is_none() {
            return Err(Error::BadTarget {
                id: id.to_string(),
                server: server.clone(),
                reason: format!("--agent {agent}: no such agent in cluster {}", b.cluster),
            });
        }
    }
    Ok(b.servers
        .iter()
        .map(|server| {
            let target_mysql = req.targets.get(server).cloned().unwrap_or_default();
            let target_datadir = req.datadirs.get(server).cloned().unwrap_or_default();
            // Its own agent loads its own server, and a datadir on its own
            // host unless --agent names another.
            let own_agent = target_mysql.is_empty()
                && (target_datadir.is_empty() || !req.agents.contains_key(server));
            let (sources, skipped) = sources(cat, b, server, req, own_agent);
            Plan {
                server: server.clone(),
                target_mysql,
                target_datadir,
                files_to: req
                    .files_to
                    .as_ref()
                    .map(|to| format!("{}/{}", to.trim_end_matches('/'), server.replace('/', "_")))
                    .unwrap_or_default(),
                sources,
                skipped,
            }
        })
        .collect())
}

/// A physical backup is written into a datadir and a logical one loaded
/// into a server: every server of a physical backup needs `--datadir`
/// (an absolute path), and none of a logical one may have it.
fn check_datadirs(b: &Backup, req: &RestoreRequest) -> Result<()> {
    for server in &b.servers {
        let physical = b.copies_of(server).iter().any(|(_, a)| a.is_physical());
        let bad = |reason: String| Error::BadTarget {
            id: b.id.clone(),
            server: server.clone(),
            reason,
        };
        match (physical, req.datadirs.get(server)) {
            (true, None) => {
                return Err(bad(
                    "its backup is physical: give the datadir to write it into with --datadir SERVER=PATH (empty, or emptied with --force; no server may run on it)".into(),
                ));
            }
            (true, Some(_)) if req.targets.contains_key(server) => {
                return Err(bad(
                    "its backup is physical: it is written into a datadir (--datadir), not loaded into a server (--target)".into(),
                ));
            }
            (true, Some(dir)) if !dir.starts_with('/') => {
                return Err(bad(format!("--datadir {dir}: must be an absolute path")));
            }
            (false, Some(_)) => {
                return Err(bad(
                    "its backup is logical: it is loaded into a server (--target), not written into a datadir".into(),
                ));
            }
            _ => {}
        }
    }
    if let Some(to) = &req.files_to
        && !to.starts_with('/')
    {
        return Err(Error::Config(format!(
            "--files-to {to}: must be an absolute path"
        )));
    }
    Ok(())
}

/// A server's sources, best first, and the copies left out with why.
fn sources(
    cat: &Catalog,
    b: &Backup,
    server: &str,
    req: &RestoreRequest,
    in_place: bool,
) -> (Vec<Source>, Vec<String>) {
    let from = req.from.as_deref().map(|f| {
        if f == crate::catalog::HOST_LOCAL {
            ""
        } else {
            f
        }
    });
    let mut skipped = Vec::new();
    let mut copies: Vec<(u8, &str, &Artifact)> = Vec::new();
    for (sink, a) in b.copies_of(server) {
        if from.is_some_and(|f| f != sink) {
            continue;
        }
        let rank = match (sink, cat.sink(&b.cluster, sink).map(|s| &s.kind)) {
            ("", _) => 0,
            (_, Some(SinkKind::Disk { agent, .. })) if agent == server => 0,
            (_, Some(SinkKind::Disk { agent, .. }))
                if crate::sinks::agent(cat, &b.cluster, agent).is_some_and(|a| a.media) =>
            {
                1
            }
            (_, Some(SinkKind::Disk { .. })) => 2,
            (_, Some(SinkKind::S3 { .. })) => 3,
            (_, None) => {
                skipped.push(format!(
                    "copy in sink {sink}: the sink was removed from the catalog"
                ));
                continue;
            }
        };
        // A copy known to be bad goes last.
        let rank = rank + if a.verify_error.is_some() { 10 } else { 0 };
        copies.push((rank, sink, a));
    }
    copies.sort_by_key(|(rank, _, _)| *rank);
    let mut out = Vec::new();
    for (_, sink, a) in copies {
        let spec = match spec(cat, &b.cluster, sink) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(format!("copy in sink {}: {e}", shown(sink)));
                continue;
            }
        };
        let mut agents = readers(cat, &b.cluster, sink, server);
        if let Some(forced) = req.agents.get(server) {
            agents.retain(|a| &a.name == forced);
            if agents.is_empty() {
                skipped.push(format!(
                    "copy in sink {}: agent {forced} cannot read it (it is on another agent's own disk)",
                    shown(sink)
                ));
            }
        }
        if in_place {
            // Its own server is only the server's own agent's.
            agents.retain(|a| a.name == server);
        }
        for agent in agents {
            out.push(Source {
                sink: sink.to_string(),
                spec: spec.clone(),
                copy: a.clone(),
                agent,
            });
        }
    }
    (out, skipped)
}

impl Plan {
    /// The target as the catalog and the caller see it: `host:port` (never
    /// the credentials) or "own server".
    pub(super) fn shown_target(&self) -> String {
        if !self.target_datadir.is_empty() {
            format!("datadir {}", self.target_datadir)
        } else if self.target_mysql.is_empty() {
            "own server".to_string()
        } else {
            redact(&self.target_mysql)
        }
    }
}

/// How a target names an entry of the loading agent's credentials file
/// instead of giving a URL: the coordinator passes the name on and never
/// sees the secret.
pub(super) const REFERENCE_PREFIX: &str = "cred:";

/// Whether `url` has the shape `mysql://USER[:PASS]@HOST:PORT[/...][?...]`
/// (the agent parses it fully) or is a reference `cred:NAME`; the error
/// never repeats the password.
pub(super) fn check_target_url(url: &str) -> std::result::Result<(), String> {
    if let Some(name) = url.strip_prefix(REFERENCE_PREFIX) {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "{url:?} is not a credential reference (cred:NAME, NAME of letters, digits, '.', '_' and '-')"
            ))
        };
    }
    let expected = "expected mysql://USER[:PASSWORD]@HOST:PORT or cred:NAME";
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
/// credentials), a reference `cred:NAME` as it is; anything unparsable
/// becomes "(target)". This is what the catalog (and so the raft log)
/// records.
pub(super) fn redact(url: &str) -> String {
    if url.starts_with(REFERENCE_PREFIX) && check_target_url(url).is_ok() {
        return url.to_string();
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() {
        "(target)".into()
    } else {
        host.to_string()
    }
}
