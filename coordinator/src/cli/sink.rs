//! `lockstep sink add|list|remove|policy|scan`, `lockstep copy`,
//! `lockstep verify`, and the printing of restore plans.

use lockstep_proto::coordinator as pb;
use serde_json::json;

use super::output::print_table;
use super::{
    CopyArgs, SinkAddArgs, SinkListArgs, SinkNameArgs, SinkPolicyArgs, SinkScanArgs, VerifyArgs,
};
use crate::client::Client;

/// How long a copy or verification may run while the command waits.
const SINK_JOB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 3600);

/// `sink add`.
pub(super) async fn add(client: &mut Client, json: bool, a: &SinkAddArgs) -> anyhow::Result<i32> {
    let encrypt = if a.encrypt {
        Some(true)
    } else if a.no_encrypt {
        Some(false)
    } else {
        None
    };
    let req = pb::AddSinkRequest {
        cluster: a.cluster.clone(),
        name: a.name.clone(),
        kind: a.kind.clone(),
        agent: a.agent.clone().unwrap_or_default(),
        path: a.path.clone().unwrap_or_default(),
        url: a.url.clone().unwrap_or_default(),
        endpoint: a.endpoint.clone().unwrap_or_default(),
        region: a.region.clone().unwrap_or_default(),
        encrypt,
        no_check: a.no_check,
    };
    let info = client
        .call("add sink", |mut c| {
            let req = req.clone();
            async move { c.add_sink(req).await }
        })
        .await?;
    if json {
        println!("{}", sink_json(&info));
    } else {
        println!(
            "sink {} added: {} {}{}",
            info.name,
            info.kind,
            info.place,
            if info.encrypt { ", encrypted" } else { "" }
        );
    }
    Ok(0)
}

fn sink_json(s: &pb::SinkInfo) -> serde_json::Value {
    json!({
        "name": s.name,
        "kind": s.kind,
        "place": s.place,
        "encrypt": s.encrypt,
        "primary": s.primary,
        "copy": s.copy,
        "copies": s.copies,
        "objects": s.objects,
        "bytes": s.bytes,
        "usage_error": (!s.usage_error.is_empty()).then_some(&s.usage_error),
    })
}

/// `sink list`.
pub(super) async fn list(client: &mut Client, json: bool, a: &SinkListArgs) -> anyhow::Result<i32> {
    let req = pb::ListSinksRequest {
        cluster: a.cluster.clone(),
        usage: !a.no_usage,
    };
    let reply = client
        .call("list sinks", |mut c| {
            let req = req.clone();
            async move { c.list_sinks(req).await }
        })
        .await?;
    if json {
        let sinks: Vec<_> = reply.sinks.iter().map(sink_json).collect();
        println!("{}", json!({ "cluster": a.cluster, "sinks": sinks }));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = reply
        .sinks
        .iter()
        .map(|s| {
            let role = match (s.primary, s.copy) {
                (true, _) => "primary",
                (_, true) => "copy",
                _ => "-",
            };
            let usage = match (s.objects, s.bytes) {
                (Some(o), Some(b)) => format!("{b} bytes in {o} objects"),
                _ if !s.usage_error.is_empty() => s.usage_error.clone(),
                _ => "-".into(),
            };
            vec![
                s.name.clone(),
                s.kind.clone(),
                role.into(),
                if s.encrypt { "yes" } else { "no" }.into(),
                s.copies.to_string(),
                usage,
                s.place.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "SINK",
            "KIND",
            "POLICY",
            "ENCRYPTED",
            "COPIES",
            "USAGE",
            "WHERE",
        ],
        &rows,
    );
    Ok(0)
}

/// `sink remove`.
pub(super) async fn remove(
    client: &mut Client,
    json: bool,
    a: &SinkNameArgs,
) -> anyhow::Result<i32> {
    let req = pb::RemoveSinkRequest {
        cluster: a.cluster.clone(),
        name: a.name.clone(),
    };
    client
        .call("remove sink", |mut c| {
            let req = req.clone();
            async move { c.remove_sink(req).await }
        })
        .await?;
    if json {
        println!("{}", json!({ "removed": a.name, "cluster": a.cluster }));
    } else {
        println!(
            "sink {} removed from cluster {} (its objects stay where they are)",
            a.name, a.cluster
        );
    }
    Ok(0)
}

/// `sink policy`.
pub(super) async fn policy(
    client: &mut Client,
    json: bool,
    a: &SinkPolicyArgs,
) -> anyhow::Result<i32> {
    let req = pb::SetSinkPolicyRequest {
        cluster: a.cluster.clone(),
        primary: a.primary.clone(),
        copies: a.copies.clone(),
    };
    client
        .call("set sink policy", |mut c| {
            let req = req.clone();
            async move { c.set_sink_policy(req).await }
        })
        .await?;
    if json {
        println!(
            "{}",
            json!({ "cluster": a.cluster, "primary": a.primary, "copies": a.copies })
        );
    } else {
        println!(
            "cluster {}: backups go to {}{}",
            a.cluster,
            a.primary,
            if a.copies.is_empty() {
                String::new()
            } else {
                format!(", then are copied to {}", a.copies.join(", "))
            }
        );
    }
    Ok(0)
}

/// `sink scan [--import]`.
pub(super) async fn scan(client: &mut Client, json: bool, a: &SinkScanArgs) -> anyhow::Result<i32> {
    let req = pb::ScanSinkRequest {
        cluster: a.cluster.clone(),
        sink: a.name.clone(),
        import: a.import,
    };
    let mut client = client.clone().with_call_timeout(SINK_JOB_TIMEOUT);
    let r = client
        .call("scan sink", |mut c| {
            let req = req.clone();
            async move { c.scan_sink(req).await }
        })
        .await?;
    if json {
        let backups: Vec<_> = r
            .backups
            .iter()
            .map(|b| json!({"id": b.id, "servers": b.servers, "known": b.known, "imported": b.imported}))
            .collect();
        println!(
            "{}",
            json!({
                "sink": a.name, "agent": r.agent, "objects": r.objects, "bytes": r.bytes,
                "backups": backups, "partial": r.partial, "incomplete": r.incomplete,
                "unreadable": r.unreadable,
            })
        );
        return Ok(0);
    }
    println!(
        "sink {} (read by agent {}): {} bytes in {} objects",
        a.name, r.agent, r.bytes, r.objects
    );
    let rows: Vec<Vec<String>> = r
        .backups
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.servers.join(","),
                match (b.imported, b.known) {
                    (true, _) => "imported",
                    (_, true) => "in catalog",
                    _ => "not in catalog",
                }
                .into(),
            ]
        })
        .collect();
    print_table(&["BACKUP", "SERVERS", "CATALOG"], &rows);
    for p in &r.partial {
        println!("partial     {p}");
    }
    for i in &r.incomplete {
        println!("incomplete  {i} (objects but no manifest)");
    }
    for u in &r.unreadable {
        println!("unreadable  {u}");
    }
    Ok(0)
}

/// Prints the per-server outcome of a copy or verification; exit 1 if any
/// failed.
fn print_outcomes(json: bool, verb: &str, r: &pb::SinkJobReply) -> i32 {
    if json {
        let outcomes: Vec<_> = r
            .outcomes
            .iter()
            .map(|o| json!({"server": o.server, "sink": o.sink, "agent": o.agent, "bytes": o.bytes, "ok": o.ok, "error": (!o.error.is_empty()).then_some(&o.error)}))
            .collect();
        println!(
            "{}",
            json!({ "backup_id": r.backup_id, "outcomes": outcomes })
        );
    } else {
        let rows: Vec<Vec<String>> = r
            .outcomes
            .iter()
            .map(|o| {
                vec![
                    o.server.clone(),
                    o.sink.clone(),
                    o.agent.clone(),
                    o.bytes.to_string(),
                    if o.ok {
                        "ok".into()
                    } else {
                        format!("FAILED: {}", o.error)
                    },
                ]
            })
            .collect();
        print_table(&["SERVER", "SINK", "AGENT", "BYTES", verb], &rows);
    }
    let failed = r.outcomes.iter().filter(|o| !o.ok).count();
    if failed > 0 {
        eprintln!("error: {failed} of {} failed", r.outcomes.len());
        return 1;
    }
    0
}

/// `copy --backup ID --to SINK`.
pub(super) async fn copy(client: &mut Client, json: bool, a: &CopyArgs) -> anyhow::Result<i32> {
    let req = pb::CopyBackupRequest {
        backup_id: a.backup.clone(),
        to: a.to.clone(),
    };
    let mut client = client.clone().with_call_timeout(SINK_JOB_TIMEOUT);
    let reply = client
        .call("copy backup", |mut c| {
            let req = req.clone();
            async move { c.copy_backup(req).await }
        })
        .await?;
    if reply.outcomes.is_empty() && !json {
        println!(
            "sink {} already holds every server of backup {}",
            a.to, a.backup
        );
        return Ok(0);
    }
    Ok(print_outcomes(json, "COPY", &reply))
}

/// `verify --backup ID [--copy SINK]`.
pub(super) async fn verify(client: &mut Client, json: bool, a: &VerifyArgs) -> anyhow::Result<i32> {
    let req = pb::VerifyBackupRequest {
        backup_id: a.backup.clone(),
        sink: a.copy.clone().unwrap_or_default(),
    };
    let mut client = client.clone().with_call_timeout(SINK_JOB_TIMEOUT);
    let reply = client
        .call("verify backup", |mut c| {
            let req = req.clone();
            async move { c.verify_backup(req).await }
        })
        .await?;
    Ok(print_outcomes(json, "CHECK", &reply))
}

/// Prints `restore plan`.
pub(super) fn print_plan(json: bool, r: &pb::RestorePlanReply) {
    if json {
        let servers: Vec<_> = r
            .servers
            .iter()
            .map(|s| json!({"server": s.server, "target": s.target, "sink": s.sink, "location": s.location, "agent": s.agent, "bytes": s.bytes, "estimated_ms": s.estimated_ms, "skipped": s.skipped}))
            .collect();
        println!(
            "{}",
            json!({ "backup_id": r.backup_id, "servers": servers })
        );
        return;
    }
    let rows: Vec<Vec<String>> = r
        .servers
        .iter()
        .map(|s| {
            vec![
                s.server.clone(),
                s.target.clone(),
                s.sink.clone(),
                s.agent.clone(),
                s.bytes.to_string(),
                format!("{:.1}", s.estimated_ms as f64 / 1000.0),
            ]
        })
        .collect();
    print_table(
        &["SERVER", "TARGET", "FROM SINK", "AGENT", "BYTES", "EST_S"],
        &rows,
    );
    for s in &r.servers {
        for k in &s.skipped {
            println!("{}: passed over {k}", s.server);
        }
    }
}
