//! The binlog archive as the leader serves it: agents ask where the
//! catalog's archive of their server ends and which sink to write to, then
//! report the segments they stored (each report one raft entry) and where
//! their server and archiver stand (kept in memory only, for the lag);
//! operators read `archive status`. The records and their continuity
//! checks live in `catalog/archive.rs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use lockstep_proto::coordinator as pb;

use crate::catalog::{Catalog, Command, Segment};
use crate::core::{Core, now_unix_ms};
use crate::error::{Error, Result};
use crate::sinks;

/// The latest head each agent reported to this leader.
#[derive(Debug, Default)]
pub struct Heads(Mutex<HashMap<(String, String), (Instant, pb::ArchiveHead)>>);

impl Heads {
    fn set(&self, cluster: &str, name: &str, head: pb::ArchiveHead) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((cluster.into(), name.into()), (Instant::now(), head));
    }

    fn get(&self, cluster: &str, name: &str) -> Option<(u64, pb::ArchiveHead)> {
        let heads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (at, head) = heads.get(&(cluster.to_string(), name.to_string()))?;
        Some((at.elapsed().as_millis() as u64, head.clone()))
    }
}

/// Where the archive of `cluster`/`name` ends, and the sink to write to.
pub async fn state(core: &Core, cluster: &str, name: &str) -> Result<pb::ArchiveStateReply> {
    core.require_leader().await?;
    let (c, n) = (cluster.to_string(), name.to_string());
    core.read(move |cat| reply(cat, &c, &n)).await?
}

fn reply(cat: &Catalog, cluster: &str, name: &str) -> Result<pb::ArchiveStateReply> {
    if !cat
        .clusters
        .get(cluster)
        .is_some_and(|s| s.contains_key(name))
    {
        return Err(Error::UnknownServer {
            cluster: cluster.into(),
            name: name.into(),
        });
    }
    let sink_name = sinks::primary_for(cat, cluster, None)?;
    let sink = sinks::spec(cat, cluster, &sink_name).map_err(Error::Config)?;
    let copies = cat
        .sinks
        .get(cluster)
        .map(|c| c.copies.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| *c != sink_name)
        .filter_map(|c| sinks::spec(cat, cluster, &c).ok().flatten())
        .filter(|s| !s.encrypt)
        .collect();
    let (file, end, closed) = cat
        .archived_to(cluster, name)
        .map_or((String::new(), 0, false), |(p, c)| (p.file, p.pos, c));
    Ok(pb::ArchiveStateReply {
        file,
        end,
        closed,
        sink,
        sink_name,
        copies,
    })
}

/// Records an agent's segments (one raft entry) and its head.
pub async fn report(
    core: &Core,
    heads: &Heads,
    r: pb::ReportArchiveRequest,
) -> Result<pb::ArchiveStateReply> {
    core.require_leader().await?;
    if let Some(head) = r.head {
        heads.set(&r.cluster, &r.name, head);
    }
    if !r.segments.is_empty() {
        let at = now_unix_ms();
        let segments = r
            .segments
            .into_iter()
            .map(|s| Segment {
                file: s.file,
                start: s.start,
                end: s.end,
                closed: s.closed,
                sha256: s.sha256,
                sink: s.sink,
                key: s.key,
                index_key: s.index_key,
                first_time: s.first_time,
                last_time: s.last_time,
                first_gtid: s.first_gtid,
                last_gtid: s.last_gtid,
                gap: (!s.gap.is_empty()).then_some(s.gap),
                recorded_at_unix_ms: at,
                copies: s.copies,
            })
            .collect();
        core.propose(&Command::ArchiveSegments {
            cluster: r.cluster.clone(),
            server: r.name.clone(),
            segments,
        })
        .await?;
    }
    state(core, &r.cluster, &r.name).await
}

/// Every server's archive of `cluster`, with its agent's latest head.
pub async fn status(core: &Core, heads: &Heads, cluster: &str) -> Result<pb::ArchiveStatusReply> {
    core.require_leader().await?;
    let c = cluster.to_string();
    let mut servers = core
        .read(move |cat| {
            let names: Vec<String> = cat
                .clusters
                .get(&c)
                .map(|s| s.keys().cloned().collect())
                .unwrap_or_default();
            if names.is_empty() {
                return Err(Error::Config(format!("unknown cluster {c:?}")));
            }
            Ok(names
                .into_iter()
                .map(|name| server_status(cat, &c, &name))
                .collect::<Vec<_>>())
        })
        .await??;
    for s in &mut servers {
        if let Some((age, head)) = heads.get(cluster, &s.server) {
            s.head = Some(head);
            s.head_age_ms = Some(age);
        }
    }
    Ok(pb::ArchiveStatusReply { servers })
}

fn server_status(cat: &Catalog, cluster: &str, name: &str) -> pb::ServerArchiveStatus {
    let mut s = pb::ServerArchiveStatus {
        server: name.to_string(),
        ..Default::default()
    };
    let Some(archive) = cat.server_archive(cluster, name) else {
        return s;
    };
    let segments = || archive.values().flat_map(|f| f.segments.iter());
    s.files = archive.len() as u64;
    s.bytes = archive.values().map(|f| f.bytes()).sum();
    s.first_file = archive.keys().next().cloned().unwrap_or_default();
    if let Some((file, f)) = archive.last_key_value() {
        s.file = file.clone();
        s.end = f.end();
    }
    s.first_time = segments()
        .map(|g| g.first_time)
        .find(|t| *t > 0)
        .unwrap_or(0);
    s.last_time = segments().map(|g| g.last_time).max().unwrap_or(0);
    s.gaps = segments()
        .filter_map(|g| {
            g.gap
                .as_ref()
                .map(|reason| format!("{}:{}: {reason}", g.file, g.start))
        })
        .collect();
    s
}
