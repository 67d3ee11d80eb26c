//! `lockstep restore-point create|list|schedule`: restore points (the
//! two-phase cut without data) and a cluster's schedule of them; their
//! arguments, calls and printing.

use std::time::Duration;

use clap::{Args, Subcommand};
use lockstep_proto::coordinator as pb;
use serde_json::{Value, json};

use super::output::{print_table, unix_ms_text};
use crate::client::Client;

/// `lockstep restore-point ...`
#[derive(Debug, Subcommand)]
pub enum RestorePointCmd {
    /// Take a restore point now: every server of the cluster is locked
    /// together for milliseconds and its binlog position recorded (after a
    /// backup's cut of the cluster, if one runs). Prints the point.
    Create(CreateArgs),
    /// A cluster's restore points, oldest first, with its schedule.
    List(ListArgs),
    /// Take a restore point every --every on the leader, keeping the newest
    /// --keep; or turn the schedule off with --off.
    Schedule(ScheduleArgs),
}

/// `restore-point create` arguments.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub cluster: String,
    /// Free text shown with the point, e.g. "before deploy 42".
    #[arg(long, default_value = "")]
    pub label: String,
}

/// `restore-point list` arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub cluster: String,
    /// Only points created at or after this time: RFC 3339
    /// (2026-11-29T10:00:00Z), or a duration meaning that long ago (10m).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<i64>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// `restore-point schedule` arguments.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[arg(long)]
    pub cluster: String,
    /// How often, e.g. 1s, 500ms, 1m (at least 100ms).
    #[arg(long, value_parser = humantime::parse_duration, required_unless_present = "off", conflicts_with = "off")]
    pub every: Option<Duration>,
    /// Keep the newest this many points [default: 3600].
    #[arg(long)]
    pub keep: Option<u32>,
    /// Stop taking points (the points kept stay).
    #[arg(long)]
    pub off: bool,
}

/// `--since`: RFC 3339, a duration ago, or Unix milliseconds.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(crate::core::now_unix_ms() - ago.as_millis() as i64);
    }
    s.parse::<i64>().map_err(|_| {
        format!("expected an RFC 3339 time (2026-11-29T10:00:00Z) or a duration (10m), got {s:?}")
    })
}

/// Runs a `restore-point` command.
pub(super) async fn run(
    client: &mut Client,
    json: bool,
    cmd: &RestorePointCmd,
) -> anyhow::Result<i32> {
    match cmd {
        RestorePointCmd::Create(a) => {
            let req = pb::CreateRestorePointRequest {
                cluster: a.cluster.clone(),
                label: a.label.clone(),
            };
            // A point taken twice for a lost answer is harmless.
            let point = client
                .call("create restore point", |mut c| {
                    let req = req.clone();
                    async move { c.create_restore_point(req).await }
                })
                .await?;
            if json {
                println!("{}", point_json(&point));
            } else {
                print_point(&point);
            }
        }
        RestorePointCmd::List(a) => {
            let req = pb::ListRestorePointsRequest {
                cluster: a.cluster.clone(),
                since_unix_ms: a.since.unwrap_or(0),
                limit: a.limit,
            };
            let reply = client
                .call("list restore points", |mut c| {
                    let req = req.clone();
                    async move { c.list_restore_points(req).await }
                })
                .await?;
            print_list(json, &reply);
        }
        RestorePointCmd::Schedule(a) => {
            let every_ms = match (a.off, a.every) {
                (true, _) | (false, None) => 0,
                (false, Some(d)) if d.is_zero() => {
                    anyhow::bail!("--every 0 takes no points; use --off to stop the schedule")
                }
                (false, Some(d)) => (d.as_millis() as u64).max(1),
            };
            let req = pb::SetRestorePointScheduleRequest {
                cluster: a.cluster.clone(),
                every_ms,
                keep: a.keep.unwrap_or(0),
            };
            let s = client
                .call("set restore point schedule", |mut c| {
                    let req = req.clone();
                    async move { c.set_restore_point_schedule(req).await }
                })
                .await?;
            if json {
                println!("{}", schedule_json(&s));
            } else {
                println!("{}", schedule_text(&s));
            }
        }
    }
    Ok(0)
}

fn schedule_json(s: &pb::RestorePointSchedule) -> Value {
    json!({ "cluster": s.cluster, "every_ms": s.every_ms, "keep": s.keep })
}

fn schedule_text(s: &pb::RestorePointSchedule) -> String {
    match s.every_ms {
        0 => format!(
            "cluster {}: no restore point schedule; keeping the newest {}",
            s.cluster, s.keep
        ),
        ms => format!(
            "cluster {}: a restore point every {}, keeping the newest {}",
            s.cluster,
            humantime::format_duration(Duration::from_millis(ms)),
            s.keep
        ),
    }
}

fn freeze_ms(p: &pb::RestorePoint) -> f64 {
    (p.frozen_until_unix_us - p.frozen_from_unix_us).max(0) as f64 / 1000.0
}

fn point_json(p: &pb::RestorePoint) -> Value {
    json!({
        "id": p.id,
        "seq": p.seq,
        "cluster": p.cluster,
        "label": p.label,
        "created_at_unix_ms": p.created_at_unix_ms,
        "created_at": unix_ms_text(p.created_at_unix_ms),
        "sealed": p.sealed,
        "freeze_ms": freeze_ms(p),
        "frozen_from_unix_us": p.frozen_from_unix_us,
        "frozen_until_unix_us": p.frozen_until_unix_us,
        "servers": p.servers.iter().map(|s| json!({
            "server": s.server,
            "binlog_file": s.binlog_file,
            "binlog_pos": s.binlog_pos,
            "gtid": s.gtid,
            "lock_method": s.lock_method,
            "locked_at_unix_us": s.locked_at_unix_us,
            "released_at_unix_us": s.released_at_unix_us,
            "held_ms": s.held_us as f64 / 1000.0,
        })).collect::<Vec<_>>(),
    })
}

fn print_point(p: &pb::RestorePoint) {
    let label = if p.label.is_empty() {
        String::new()
    } else {
        format!(" \"{}\"", p.label)
    };
    println!(
        "restore point {} (#{}){label} of cluster {} at {}: freeze {:.2} ms, {}",
        p.id,
        p.seq,
        p.cluster,
        unix_ms_text(p.created_at_unix_ms),
        freeze_ms(p),
        if p.sealed { "sealed" } else { "not sealed yet" }
    );
    let rows: Vec<Vec<String>> = p
        .servers
        .iter()
        .map(|s| {
            vec![
                s.server.clone(),
                format!("{}:{}", s.binlog_file, s.binlog_pos),
                s.gtid.clone(),
                format!("{:.2}", s.held_us as f64 / 1000.0),
            ]
        })
        .collect();
    print_table(&["SERVER", "POSITION", "GTID", "LOCK MS"], &rows);
}

fn print_list(json: bool, r: &pb::ListRestorePointsReply) {
    let schedule = r.schedule.clone().unwrap_or_default();
    if json {
        println!(
            "{}",
            json!({
                "points": r.points.iter().map(point_json).collect::<Vec<_>>(),
                "schedule": schedule_json(&schedule),
                "total": r.total,
                "failed": r.failed,
                "skipped": r.skipped,
                "last_failure": r.last_failure,
            })
        );
        return;
    }
    println!("{}", schedule_text(&schedule));
    println!(
        "{} point(s) kept; on this leader {} failed, {} skipped{}",
        r.total,
        r.failed,
        r.skipped,
        if r.last_failure.is_empty() {
            String::new()
        } else {
            format!(" (last failure: {})", r.last_failure)
        }
    );
    let rows: Vec<Vec<String>> = r
        .points
        .iter()
        .map(|p| {
            vec![
                p.seq.to_string(),
                p.id.clone(),
                unix_ms_text(p.created_at_unix_ms),
                format!("{:.2}", freeze_ms(p)),
                if p.sealed { "yes" } else { "no" }.into(),
                p.servers
                    .iter()
                    .map(|s| format!("{}={}:{}", s.server, s.binlog_file, s.binlog_pos))
                    .collect::<Vec<_>>()
                    .join(" "),
                p.label.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "#",
            "ID",
            "CREATED",
            "FREEZE MS",
            "SEALED",
            "POSITIONS",
            "LABEL",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_a_duration_or_ms() {
        assert_eq!(parse_since("2026-01-01T00:00:00Z"), Ok(1_767_225_600_000));
        let ago = parse_since("10m").expect("duration");
        let now = crate::core::now_unix_ms();
        assert!((now - 600_000 - ago).abs() < 5_000, "{ago}");
        assert_eq!(parse_since("1234"), Ok(1234));
        assert!(parse_since("soon").is_err());
    }
}
