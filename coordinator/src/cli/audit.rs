//! `lockstep audit list`: the audit trail of mutating and refused calls.

use std::time::Duration;

use clap::{Args, Subcommand};
use lockstep_proto::coordinator as pb;
use serde_json::{Value, json};

use super::output::{print_table, unix_ms_text};
use crate::client::Client;

/// `lockstep audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Audited calls, oldest first: time, caller, call, arguments
    /// (passwords as ***), outcome.
    List(AuditListArgs),
}

/// `audit list` arguments.
#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only records since this time: RFC 3339 (2026-11-29T08:00:00Z) or a
    /// duration before now (1h, 30m, 2days).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// At most this many records, the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// A `--since` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// A unix time in milliseconds.
    At(i64),
    /// This long before now.
    Ago(Duration),
}

impl Since {
    pub(super) fn unix_ms(self) -> i64 {
        match self {
            Since::At(ms) => ms,
            Since::Ago(d) => crate::core::now_unix_ms().saturating_sub(d.as_millis() as i64),
        }
    }
}

/// Parses an RFC 3339 time or a duration.
pub(super) fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(Since::At((t.unix_timestamp_nanos() / 1_000_000) as i64));
    }
    humantime::parse_duration(s)
        .map(Since::Ago)
        .map_err(|_| format!("expected an RFC 3339 time or a duration such as 1h, got {s:?}"))
}

/// Runs an `audit` command.
pub(super) async fn run(client: &mut Client, json: bool, cmd: &AuditCmd) -> anyhow::Result<i32> {
    let AuditCmd::List(a) = cmd;
    let req = pb::ListAuditRequest {
        since_unix_ms: a.since.map_or(0, Since::unix_ms),
        limit: a.limit,
    };
    let reply = client
        .call("list the audit trail", |mut c| async move {
            c.list_audit(req).await
        })
        .await?;
    print_audit(json, &reply.records);
    if reply.truncated {
        eprintln!(
            "the oldest matching records did not fit in one answer; narrow the list with --since or --limit"
        );
    }
    Ok(0)
}

fn caller(r: &pb::AuditRecord) -> String {
    match (r.identity.is_empty(), r.address.is_empty()) {
        (false, _) => r.identity.clone(),
        (true, false) => format!("plaintext {}", r.address),
        (true, true) => "plaintext".into(),
    }
}

fn print_audit(as_json: bool, records: &[pb::AuditRecord]) {
    if as_json {
        let list: Vec<Value> = records
            .iter()
            .map(|r| {
                json!({
                    "seq": r.seq,
                    "at": unix_ms_text(r.at_unix_ms),
                    "at_unix_ms": r.at_unix_ms,
                    "identity": (!r.identity.is_empty()).then_some(&r.identity),
                    "plaintext": r.identity.is_empty(),
                    "address": (!r.address.is_empty()).then_some(&r.address),
                    "call": r.call,
                    "args": r.args.iter().collect::<std::collections::BTreeMap<_, _>>(),
                    "outcome": r.outcome,
                    "detail": r.detail,
                    "recorded_by": r.recorded_by,
                })
            })
            .collect();
        println!("{}", Value::Array(list));
        return;
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut args: Vec<(&String, &String)> = r.args.iter().collect();
            args.sort();
            vec![
                unix_ms_text(r.at_unix_ms),
                caller(r),
                r.call.clone(),
                args.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                r.outcome.clone(),
                r.detail.clone(),
            ]
        })
        .collect();
    print_table(
        &["TIME", "CALLER", "CALL", "ARGUMENTS", "OUTCOME", "DETAIL"],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_duration() {
        assert_eq!(
            parse_since("2026-11-29T08:00:00Z"),
            Ok(Since::At(1_795_939_200_000))
        );
        assert_eq!(parse_since("1h"), Ok(Since::Ago(Duration::from_secs(3600))));
        assert!(parse_since("yesterday").is_err());
        let ago = Since::Ago(Duration::from_secs(60)).unix_ms();
        assert!((crate::core::now_unix_ms() - ago - 60_000).abs() < 1000);
    }
}
