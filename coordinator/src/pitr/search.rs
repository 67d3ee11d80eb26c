//! Finding transactions in the archive: each server's segments (whole
//! files, so the agent reads each file's format description) are searched
//! by an agent that can read the sink they are in, with the filter applied
//! there.

use lockstep_proto::agent as agent_pb;
use lockstep_proto::coordinator as pb;

use crate::catalog::{BinlogPos, Catalog};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::job::status_text;
use crate::sinks;

/// Most events one search returns unless asked for fewer.
const DEFAULT_LIMIT: u32 = 1000;

/// Events in binlogs carry whole seconds: a transaction stamped S ran in
/// [S, S+1), so it surely ran before `at_ms` when S + 1 ≤ at_ms / 1000.
fn last_second_before(at_ms: i64) -> u32 {
    (at_ms.div_euclid(1000) - 1).clamp(0, i64::from(u32::MAX)) as u32
}

/// What one server's search needs: its agent and its request.
struct Ask {
    server: String,
    addr: String,
    req: agent_pb::SearchBinlogRequest,
}

/// The asks for `req`: per server, the files whose segments may hold
/// matches (by their event times), whole.
fn asks(cat: &Catalog, req: &pb::SearchBinlogRequest, gtid: &str, last: bool) -> Result<Vec<Ask>> {
    let servers: Vec<String> = match cat.clusters.get(&req.cluster) {
        None => return Err(Error::Config(format!("unknown cluster {:?}", req.cluster))),
        Some(s) if req.server.is_empty() => s.keys().cloned().collect(),
        Some(s) if s.contains_key(&req.server) => vec![req.server.clone()],
        Some(_) => {
            return Err(Error::Config(format!(
                "cluster {} has no server {:?}",
                req.cluster, req.server
            )));
        }
    };
    let mut out = Vec::new();
    for server in servers {
        let Some(archive) = cat.server_archive(&req.cluster, &server) else {
            continue;
        };
        let files: Vec<_> = archive
            .iter()
            .filter(|(_, f)| {
                let first = f
                    .segments
                    .iter()
                    .map(|s| s.first_time)
                    .filter(|t| *t > 0)
                    .min();
                let last = f.segments.iter().map(|s| s.last_time).max().unwrap_or(0);
                // Times unknown (0): searched.
                (req.since == 0 || last == 0 || last >= req.since)
                    && (req.until == 0 || first.is_none_or(|t| t <= req.until))
            })
            .map(|(n, f)| (n.as_str(), f))
            .collect();
        if files.is_empty() {
            continue;
        }
        let (segments, specs, _, _) = super::segments_of(
            cat,
            &req.cluster,
            &files,
            &BinlogPos::default(),
            &BinlogPos::default(),
        )?;
        let sink = segments.first().map(|s| s.sink.clone()).unwrap_or_default();
        let Some(agent) = sinks::readers(cat, &req.cluster, &sink, &server)
            .into_iter()
            .next()
        else {
            continue;
        };
        out.push(Ask {
            server,
            addr: agent.addr,
            req: agent_pb::SearchBinlogRequest {
                segments,
                sinks: specs.into_iter().collect(),
                table: req.table.clone(),
                kind: req.kind.clone(),
                grep: req.grep.clone(),
                since: req.since,
                until: req.until,
                limit: if req.limit == 0 {
                    DEFAULT_LIMIT
                } else {
                    req.limit
                },
                gtid: gtid.to_string(),
                last,
            },
        });
    }
    Ok(out)
}

/// Searches every server's archive (or one's); events sorted by time.
pub async fn search(core: &Core, req: pb::SearchBinlogRequest) -> Result<pb::SearchBinlogReply> {
    search_with(core, req, "", false).await
}

/// A search for one GTID (`gtid` set), or for each server's last match
/// (`last`), or for every match.
async fn search_with(
    core: &Core,
    req: pb::SearchBinlogRequest,
    gtid: &str,
    last: bool,
) -> Result<pb::SearchBinlogReply> {
    core.require_leader().await?;
    let (r, g) = (req.clone(), gtid.to_string());
    let asks = core.read(move |cat| asks(cat, &r, &g, last)).await??;
    let runs = asks.into_iter().map(|a| async move {
        let result = match core.agent_client(&a.addr).await {
            Err(e) => Err(e),
            Ok(mut c) => c
                .search_binlog(a.req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| status_text(&s)),
        };
        (a.server, result)
    });
    let mut reply = pb::SearchBinlogReply::default();
    for (server, r) in futures::future::join_all(runs).await {
        match r {
            Ok(found) => {
                reply.truncated |= found.truncated;
                reply.errors.extend(
                    found
                        .unreadable
                        .iter()
                        .map(|e| format!("server {server}: {e}")),
                );
                reply
                    .events
                    .extend(found.events.into_iter().map(|e| pb::FoundEvent {
                        server: server.clone(),
                        event: Some(e),
                    }));
            }
            Err(e) => reply.errors.push(format!("server {server}: {e}")),
        }
    }
    reply.events.sort_by_key(|e| {
        let ev = e.event.as_ref();
        (
            ev.map_or(0, |e| e.time),
            e.server.clone(),
            ev.map(|e| (e.file.clone(), e.pos)),
        )
    });
    let limit = if req.limit == 0 {
        DEFAULT_LIMIT
    } else {
        req.limit
    } as usize;
    if reply.events.len() > limit {
        reply.events.truncate(limit);
        reply.truncated = true;
    }
    Ok(reply)
}

/// Where transaction `gtid` of `server` starts in its binlogs.
pub(super) async fn find_gtid(
    core: &Core,
    cluster: &str,
    server: &str,
    gtid: &str,
) -> Result<BinlogPos> {
    let req = pb::SearchBinlogRequest {
        cluster: cluster.to_string(),
        server: server.to_string(),
        limit: 1,
        ..Default::default()
    };
    let reply = search_with(core, req, gtid, false).await?;
    if let Some(e) = reply.events.into_iter().find_map(|e| e.event) {
        return Ok(BinlogPos {
            file: e.file,
            pos: e.pos,
        });
    }
    let unread = if reply.errors.is_empty() {
        String::new()
    } else {
        format!(" (not searched: {})", reply.errors.join("; "))
    };
    Err(Error::PitrRefused {
        reason: format!("GTID {gtid} is not in the binlog archive of server {server}{unread}"),
    })
}

/// Every server's last transaction before `at_ms` (its end), for
/// `pitr --exact`; servers without one are left out.
pub(super) async fn last_before(
    core: &Core,
    cluster: &str,
    at_ms: i64,
) -> Result<std::collections::BTreeMap<String, BinlogPos>> {
    let req = pb::SearchBinlogRequest {
        cluster: cluster.to_string(),
        until: last_second_before(at_ms),
        ..Default::default()
    };
    let reply = search_with(core, req, "", true).await?;
    if !reply.errors.is_empty() {
        return Err(Error::PitrRefused {
            reason: format!(
                "cannot find each server's last transaction: {}",
                reply.errors.join("; ")
            ),
        });
    }
    Ok(reply
        .events
        .into_iter()
        .filter_map(|e| {
            let ev = e.event?;
            Some((
                e.server,
                BinlogPos {
                    file: ev.file,
                    pos: ev.end,
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_transaction_counts_as_before_only_when_its_whole_second_is() {
        assert_eq!(super::last_second_before(5_000), 4);
        assert_eq!(super::last_second_before(5_999), 4);
        assert_eq!(super::last_second_before(6_000), 5);
        assert_eq!(super::last_second_before(0), 0);
    }
}
