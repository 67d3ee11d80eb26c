//! Carrying out a recovery: the base backup restored on every server (the
//! coordinated restore), then every server's binlogs replayed to its
//! position in the point by the agent that loaded it, in parallel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lockstep_proto::agent as agent_pb;
use lockstep_proto::coordinator as pb;
use tracing::{info, warn};

use super::{ServerPlan, Target, plan, search};
use crate::catalog::BinlogPos;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::job::{Jobs, status_text};
use crate::restore::RestoreRequest;
use crate::sinks;

/// The target a request names.
async fn target(core: &Core, cluster: &str, to: Option<&pb::pitr_request::To>) -> Result<Target> {
    use pb::pitr_request::To;
    match to {
        None => Err(Error::Config(
            "say where to recover to: --to TIME, --to-restore-point ID or --before-event SERVER:GTID|SERVER:FILE:POS".into(),
        )),
        Some(To::ToUnixMs(t)) => Ok(Target::Time(*t)),
        Some(To::RestorePoint(id)) => Ok(Target::Point(id.clone())),
        Some(To::BeforeEvent(e)) => before_event(core, cluster, e).await,
        Some(To::ExactUnixMs(t)) => Ok(Target::Exact {
            at: *t,
            positions: search::last_before(core, cluster, *t).await?,
        }),
    }
}

/// `SERVER:FILE:POS` or `SERVER:GTID` (resolved through the archive's
/// event index).
async fn before_event(core: &Core, cluster: &str, e: &str) -> Result<Target> {
    let bad = || {
        Error::Config(format!(
            "--before-event {e:?}: expected SERVER:GTID (e.g. s1:0-1-42) or SERVER:FILE:POS"
        ))
    };
    let (server, rest) = e.split_once(':').ok_or_else(bad)?;
    if let Some((file, pos)) = rest.rsplit_once(':') {
        let pos = pos.parse().map_err(|_| bad())?;
        return Ok(Target::Before {
            server: server.to_string(),
            pos: BinlogPos {
                file: file.to_string(),
                pos,
            },
        });
    }
    if rest.split('-').count() != 3 {
        return Err(bad());
    }
    let pos = search::find_gtid(core, cluster, server, rest).await?;
    Ok(Target::Before {
        server: server.to_string(),
        pos,
    })
}

/// Plans the recovery `req` asks for and, unless it asks for the plan
/// only, carries it out.
pub async fn run(core: &Core, jobs: &Arc<Jobs>, req: pb::PitrRequest) -> Result<pb::PitrReply> {
    core.require_leader().await?;
    let target = target(core, &req.cluster, req.to.as_ref()).await?;
    let cluster = req.cluster.clone();
    let plan = core.read(move |cat| plan(cat, &cluster, &target)).await??;
    let targets: BTreeMap<String, String> = req.targets.clone().into_iter().collect();
    if let Some(unknown) = targets
        .keys()
        .find(|t| !plan.servers.iter().any(|s| &s.server == *t))
    {
        return Err(Error::Config(format!(
            "--target names server {unknown}, which is not in {} (its servers: {})",
            plan.point.name,
            plan.servers
                .iter()
                .map(|s| s.server.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut reply = plan.reply(&targets);
    if req.plan {
        return Ok(reply);
    }
    info!(cluster = %plan.cluster, point = %plan.point.name, base = %plan.base_backup, "point-in-time recovery");
    let cluster = plan.cluster.clone();
    let agents = core
        .read(move |cat| {
            let all = sinks::agents(cat, &cluster);
            all.into_iter()
                .map(|a| (a.name.clone(), a.addr))
                .collect::<BTreeMap<_, _>>()
        })
        .await?;
    // Who replays each server: the agent that loaded it, or its own.
    let mut loaders: BTreeMap<String, String> = BTreeMap::new();
    if !req.replay_only {
        // Nothing is touched unless every server's segments are intact
        // and every target is empty (or forced).
        let checks = plan.servers.iter().map(|s| {
            let addr = agents.get(&s.server).cloned();
            let target = targets.get(&s.server).cloned().unwrap_or_default();
            async move {
                match addr {
                    None => Err(format!("server {}: its agent is not registered", s.server)),
                    Some(addr) => replay(core, s, &addr, &target, true, req.force)
                        .await
                        .map(|_| ()),
                }
            }
        });
        let refused: Vec<String> = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|r| r.err())
            .collect();
        if !refused.is_empty() {
            return Err(Error::PitrRefused {
                reason: format!("nothing was changed: {}", refused.join("; ")),
            });
        }
        let restored = jobs
            .restore(RestoreRequest {
                backup_id: plan.base_backup.clone(),
                targets: targets.clone(),
                force: req.force,
                in_place: true,
                ..Default::default()
            })
            .await?;
        reply.restore_id = restored.restore_id.clone();
        let mut failed = false;
        for (server, r) in restored.servers {
            if let Some(s) = reply.servers.iter_mut().find(|s| s.server == server) {
                s.base_rows = r.rows;
                if let Some(e) = r.error {
                    s.error = format!("base restore: {e}");
                    failed = true;
                }
            }
            loaders.insert(server, r.agent);
        }
        if failed {
            return Ok(reply);
        }
    }
    let replays = plan.servers.iter().map(|s| {
        let agent = loaders
            .get(&s.server)
            .filter(|a| !a.is_empty())
            .cloned()
            .unwrap_or_else(|| s.server.clone());
        let addr = agents.get(&agent).cloned();
        let target = targets.get(&s.server).cloned().unwrap_or_default();
        async move {
            let started = Instant::now();
            let r = match addr {
                None => Err(format!(
                    "server {}: agent {agent} is not registered",
                    s.server
                )),
                Some(addr) => replay(core, s, &addr, &target, false, false).await,
            };
            (s.server.clone(), r, started.elapsed())
        }
    });
    let mut all_ok = true;
    for (server, r, elapsed) in futures::future::join_all(replays).await {
        let Some(out) = reply.servers.iter_mut().find(|s| s.server == server) else {
            continue;
        };
        match r {
            Ok(p) => {
                info!(%server, method = %p.method, ?elapsed, "replayed to the point");
                out.method = p.method;
                out.duration_ms = p.duration_ms;
                out.gtid_slave_pos = p.gtid_slave_pos;
            }
            Err(e) => {
                warn!(%server, error = %e, "replay failed");
                out.error = e;
                all_ok = false;
            }
        }
    }
    reply.done = all_ok;
    Ok(reply)
}

/// One server's replay (or its pre-flight check) by one agent, to the end
/// of its stream.
async fn replay(
    core: &Core,
    s: &ServerPlan,
    addr: &str,
    target: &str,
    check_only: bool,
    force: bool,
) -> std::result::Result<agent_pb::ReplayProgress, String> {
    if s.from == s.to && !check_only {
        return Ok(agent_pb::ReplayProgress {
            done: true,
            method: "none (the base backup is the point)".into(),
            ..Default::default()
        });
    }
    let name = &s.server;
    let term = core
        .require_leader()
        .await
        .map_err(|e| format!("server {name}: {e}"))?;
    let mut client = core
        .agent_client(addr)
        .await
        .map_err(|e| format!("server {name}: {e}"))?;
    let what = if check_only { "check" } else { "replay" };
    let failed = |st: tonic::Status| format!("server {name}: {what} failed: {}", status_text(&st));
    let mut stream = client
        .replay(agent_pb::ReplayRequest {
            segments: s.segments.clone(),
            sinks: s.sinks.clone().into_iter().collect(),
            start_file: s.from.file.clone(),
            start_pos: s.from.pos,
            stop_file: s.to.file.clone(),
            stop_pos: s.to.pos,
            target_mysql: target.to_string(),
            method: String::new(),
            term,
            check_only,
            force,
        })
        .await
        .map_err(failed)?
        .into_inner();
    loop {
        match stream.message().await.map_err(failed)? {
            Some(p) if p.done => return Ok(p),
            Some(_) => {}
            None => return Err(format!("server {name}: the {what} ended without a report")),
        }
    }
}
