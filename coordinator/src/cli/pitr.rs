//! `lockstep pitr` (point-in-time recovery of a cluster) and `lockstep
//! catalog search-binlog` (finding the moment in the binlog archive).

use clap::{ArgGroup, Args};
use lockstep_proto::coordinator as pb;
use serde_json::{Value, json};

use super::audit::{Since, parse_since};
use super::output::{print_table, unix_ms_text};
use crate::client::{Client, Once};

/// `pitr` arguments.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("point").required(true).args(["to", "to_restore_point", "before_event", "exact"])))]
pub struct PitrArgs {
    #[arg(long)]
    pub cluster: String,
    /// The latest sealed consistent point at or before TIME (RFC 3339, or a
    /// duration before now such as 10m).
    #[arg(long, value_parser = parse_since)]
    pub to: Option<Since>,
    /// A restore point's id, or a backup's (its cut is a point too).
    #[arg(long)]
    pub to_restore_point: Option<String>,
    /// The latest consistent point before this transaction:
    /// SERVER:GTID or SERVER:FILE:POS (as `catalog search-binlog` shows it).
    #[arg(long)]
    pub before_event: Option<String>,
    /// Each server to its own last transaction before TIME: NOT a
    /// cluster-consistent state.
    #[arg(long, value_parser = parse_since)]
    pub exact: Option<Since>,
    /// Load SERVER into this server instead of its own: SERVER=cred:NAME or
    /// SERVER=mysql://USER@HOST:PORT; repeat per server.
    #[arg(long = "target", value_name = "SERVER=cred:NAME|URL", value_parser = super::parse_target)]
    pub targets: Vec<(String, String)>,
    /// Load into targets that already hold databases.
    #[arg(long)]
    pub force: bool,
    /// Wait for every server to finish (always the case).
    #[arg(long)]
    pub wait: bool,
    /// Print the plan (base backup, binlog ranges, bytes, estimated time)
    /// and change nothing.
    #[arg(long)]
    pub plan: bool,
    /// Skip the base restore: replay only, e.g. to continue a replay that
    /// failed part-way (transactions already applied are skipped).
    #[arg(long)]
    pub replay_only: bool,
}

/// `catalog search-binlog` arguments.
#[derive(Debug, Args)]
pub struct SearchArgs {
    #[arg(long)]
    pub cluster: String,
    /// Only this server.
    #[arg(long)]
    pub server: Option<String>,
    /// Only transactions touching DB.TABLE.
    #[arg(long)]
    pub table: Option<String>,
    /// insert, update, delete or ddl.
    #[arg(long = "type", value_parser = ["insert", "update", "delete", "ddl"])]
    pub kind: Option<String>,
    /// Text in the summary (the statement) or the tables, any case.
    #[arg(long)]
    pub grep: Option<String>,
    /// RFC 3339 or a duration before now.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    #[arg(long, value_parser = parse_since)]
    pub until: Option<Since>,
    /// At most this many events.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
}

fn unix_secs(s: Option<Since>) -> u32 {
    s.map_or(0, |s| (s.unix_ms() / 1000).max(0) as u32)
}

/// Runs `pitr`; exit code 1 unless every server reached the point.
pub(super) async fn pitr(mut client: Client, json: bool, a: &PitrArgs) -> anyhow::Result<i32> {
    use pb::pitr_request::To;
    let to = if let Some(t) = a.to {
        To::ToUnixMs(t.unix_ms())
    } else if let Some(p) = &a.to_restore_point {
        To::RestorePoint(p.clone())
    } else if let Some(e) = &a.before_event {
        To::BeforeEvent(e.clone())
    } else if let Some(t) = a.exact {
        To::ExactUnixMs(t.unix_ms())
    } else {
        anyhow::bail!("say where to recover to");
    };
    let req = pb::PitrRequest {
        cluster: a.cluster.clone(),
        to: Some(to),
        targets: a.targets.iter().cloned().collect(),
        force: a.force,
        plan: a.plan,
        replay_only: a.replay_only,
    };
    if !a.plan && !json {
        eprintln!(
            "recovering cluster {}: restoring the base backup, then replaying the binlogs...",
            a.cluster
        );
    }
    let reply = if a.plan {
        client
            .call("plan a point-in-time recovery", |mut c| {
                let req = req.clone();
                async move { c.pitr(req).await }
            })
            .await?
    } else {
        // One attempt, waited for as long as a restore: a recovery is not
        // repeated behind the user's back.
        let mut client = client.with_call_timeout(super::restore::RESTORE_TIMEOUT);
        match client
            .call_once("point-in-time recovery", |mut c| {
                let req = req.clone();
                async move { c.pitr(req).await }
            })
            .await?
        {
            Once::Done(reply) => reply,
            Once::Unknown { url, error } => anyhow::bail!(
                "the answer of coordinator {url} was lost ({error}); the recovery may still be running on the leader: \
                 check `lockstep restore list`, then run the same command with --replay-only to finish the replay"
            ),
        }
    };
    print_pitr(json, a.plan, &reply);
    Ok(if a.plan || reply.done { 0 } else { 1 })
}

fn print_pitr(as_json: bool, plan: bool, r: &pb::PitrReply) {
    if as_json {
        let servers: Vec<Value> = r
            .servers
            .iter()
            .map(|s| {
                json!({
                    "server": s.server,
                    "base_backup": s.base_backup,
                    "from": s.from,
                    "to": s.to,
                    "files": s.files,
                    "replay_bytes": s.replay_bytes,
                    "estimated_ms": s.estimated_ms,
                    "target": s.target,
                    "base_rows": s.base_rows,
                    "method": (!s.method.is_empty()).then_some(&s.method),
                    "duration_ms": s.duration_ms,
                    "gtid_slave_pos": (!s.gtid_slave_pos.is_empty()).then_some(&s.gtid_slave_pos),
                    "error": (!s.error.is_empty()).then_some(&s.error),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "point": r.point,
                "point_at": unix_ms_text(r.point_unix_ms),
                "point_unix_ms": r.point_unix_ms,
                "consistent": r.consistent,
                "plan_only": plan,
                "restore_id": (!r.restore_id.is_empty()).then_some(&r.restore_id),
                "done": r.done,
                "servers": servers,
            })
        );
        return;
    }
    println!(
        "point: {} at {}{}",
        r.point,
        unix_ms_text(r.point_unix_ms),
        if r.consistent {
            ""
        } else {
            " (per server, NOT cluster-consistent)"
        }
    );
    let rows: Vec<Vec<String>> = r
        .servers
        .iter()
        .map(|s| {
            let outcome = if plan {
                format!("~{:.1}s", s.estimated_ms as f64 / 1000.0)
            } else if !s.error.is_empty() {
                format!("FAILED: {}", s.error)
            } else {
                format!("{} in {:.1}s", s.method, s.duration_ms as f64 / 1000.0)
            };
            vec![
                s.server.clone(),
                s.base_backup.clone(),
                s.from.clone(),
                s.to.clone(),
                s.files.to_string(),
                s.replay_bytes.to_string(),
                s.target.clone(),
                outcome,
            ]
        })
        .collect();
    print_table(
        &[
            "SERVER",
            "BASE BACKUP",
            "FROM",
            "TO",
            "FILES",
            "REPLAY BYTES",
            "TARGET",
            if plan { "ESTIMATE" } else { "OUTCOME" },
        ],
        &rows,
    );
    if plan {
        println!("plan only: nothing was changed");
    } else if r.done {
        println!("recovered every server to {}", r.point);
    }
}

/// Runs `catalog search-binlog`; exit code 1 if a server could not be
/// searched.
pub(super) async fn search(client: &mut Client, json: bool, a: &SearchArgs) -> anyhow::Result<i32> {
    let req = pb::SearchBinlogRequest {
        cluster: a.cluster.clone(),
        server: a.server.clone().unwrap_or_default(),
        table: a.table.clone().unwrap_or_default(),
        kind: a.kind.clone().unwrap_or_default(),
        grep: a.grep.clone().unwrap_or_default(),
        since: unix_secs(a.since),
        until: unix_secs(a.until),
        limit: a.limit,
    };
    let reply = client
        .call("search the binlog archive", |mut c| {
            let req = req.clone();
            async move { c.search_binlog(req).await }
        })
        .await?;
    let events: Vec<(&str, &lockstep_proto::agent::BinlogEvent)> = reply
        .events
        .iter()
        .filter_map(|e| e.event.as_ref().map(|ev| (e.server.as_str(), ev)))
        .collect();
    if json {
        let list: Vec<Value> = events
            .iter()
            .map(|(server, e)| {
                json!({
                    "server": server,
                    "file": e.file,
                    "pos": e.pos,
                    "end": e.end,
                    "at": format!("{}:{}", e.file, e.pos),
                    "gtid": (!e.gtid.is_empty()).then_some(&e.gtid),
                    "time": unix_ms_text(i64::from(e.time) * 1000),
                    "unix_time": e.time,
                    "kinds": e.kinds,
                    "tables": e.tables,
                    "rows": e.rows,
                    "summary": e.summary,
                })
            })
            .collect();
        println!("{}", Value::Array(list));
    } else {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|(server, e)| {
                vec![
                    unix_ms_text(i64::from(e.time) * 1000),
                    server.to_string(),
                    format!("{}:{}", e.file, e.pos),
                    e.gtid.clone(),
                    e.kinds.join(","),
                    e.summary.clone(),
                ]
            })
            .collect();
        print_table(&["TIME", "SERVER", "AT", "GTID", "KIND", "SUMMARY"], &rows);
    }
    if reply.truncated {
        eprintln!(
            "more events matched than --limit {}; narrow the search",
            a.limit
        );
    }
    for e in &reply.errors {
        eprintln!("error: {e}");
    }
    Ok(if reply.errors.is_empty() { 0 } else { 1 })
}
