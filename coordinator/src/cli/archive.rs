//! `lockstep archive status`: how far each server's binlog archive reaches
//! in the sink, its lag, and its gaps.

use clap::{Args, Subcommand};
use lockstep_proto::coordinator as pb;
use serde_json::{Value, json};

use super::output::{print_table, unix_ms_text};
use crate::client::Client;

/// `lockstep archive ...`
#[derive(Debug, Subcommand)]
pub enum ArchiveCmd {
    /// Per server: archived to (file:offset), lag in bytes and seconds,
    /// gaps, and the archiver's last error.
    Status(ArchiveStatusArgs),
}

/// `archive status` arguments.
#[derive(Debug, Args)]
pub struct ArchiveStatusArgs {
    #[arg(long)]
    pub cluster: String,
}

/// Runs an `archive` command. Exit code 1 when a server has a gap.
pub(super) async fn run(client: &mut Client, json: bool, cmd: &ArchiveCmd) -> anyhow::Result<i32> {
    let ArchiveCmd::Status(a) = cmd;
    let req = pb::ArchiveStatusRequest {
        cluster: a.cluster.clone(),
    };
    let reply = client
        .call("read the archive status", |mut c| {
            let req = req.clone();
            async move { c.archive_status(req).await }
        })
        .await?;
    print_status(json, &reply.servers);
    for s in &reply.servers {
        for w in s.head.iter().flat_map(|h| &h.warnings) {
            eprintln!("warning: {w}");
        }
    }
    Ok(if reply.servers.iter().any(|s| !s.gaps.is_empty()) {
        1
    } else {
        0
    })
}

fn secs_text(t: u32) -> String {
    if t == 0 {
        "-".into()
    } else {
        unix_ms_text(i64::from(t) * 1000)
    }
}

fn print_status(as_json: bool, servers: &[pb::ServerArchiveStatus]) {
    if as_json {
        let list: Vec<Value> = servers
            .iter()
            .map(|s| {
                let head = s.head.as_ref().map(|h| {
                    json!({
                        "server_file": h.server_file,
                        "server_pos": h.server_pos,
                        "local_file": h.local_file,
                        "local_pos": h.local_pos,
                        "lag_bytes": h.lag_bytes,
                        "lag_ms": h.lag_ms,
                        "connected": h.connected,
                        "last_error": (!h.last_error.is_empty()).then_some(&h.last_error),
                        "warnings": h.warnings,
                        "reported_ms_ago": s.head_age_ms,
                    })
                });
                json!({
                    "server": s.server,
                    "first_file": s.first_file,
                    "file": s.file,
                    "end": s.end,
                    "files": s.files,
                    "bytes": s.bytes,
                    "first_time": (s.first_time > 0).then(|| secs_text(s.first_time)),
                    "last_time": (s.last_time > 0).then(|| secs_text(s.last_time)),
                    "head": head,
                    "gaps": s.gaps,
                })
            })
            .collect();
        println!("{}", Value::Array(list));
        return;
    }
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            let (server_at, lag_bytes, lag, state) = match &s.head {
                Some(h) => (
                    format!("{}:{}", h.server_file, h.server_pos),
                    h.lag_bytes.to_string(),
                    format!("{:.1}s", h.lag_ms as f64 / 1000.0),
                    if !h.last_error.is_empty() {
                        format!("error: {}", h.last_error)
                    } else if h.connected {
                        "streaming".into()
                    } else {
                        "connecting".into()
                    },
                ),
                None => ("-".into(), "-".into(), "-".into(), "no report".into()),
            };
            vec![
                s.server.clone(),
                if s.file.is_empty() {
                    "-".into()
                } else {
                    format!("{}:{}", s.file, s.end)
                },
                server_at,
                lag_bytes,
                lag,
                s.files.to_string(),
                s.gaps.len().to_string(),
                state,
            ]
        })
        .collect();
    print_table(
        &[
            "SERVER",
            "ARCHIVED TO",
            "SERVER AT",
            "LAG BYTES",
            "LAG",
            "FILES",
            "GAPS",
            "STATE",
        ],
        &rows,
    );
    for s in servers {
        for g in &s.gaps {
            println!("gap on {}: {g}", s.server);
        }
    }
}
