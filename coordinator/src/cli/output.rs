//! How the CLI prints: human tables by default, one JSON document with
//! `--json` (the shapes scripts rely on are tested below).

use std::collections::BTreeMap;

use lockstep_proto::coordinator as pb;
use serde_json::{Value, json};

use crate::catalog::FIRST_VERSION;

pub(super) fn progress_line(b: &pb::Backup) -> String {
    let n = b.servers.len();
    match b.status.as_str() {
        "preparing" => format!("preparing: {}/{n} servers prepared", b.cut.len()),
        "transferring" => format!(
            "transferring: cut committed, {}/{n} released, {}/{n} artifacts stored",
            b.cut
                .iter()
                .filter(|c| c.released_at_unix_us.is_some())
                .count(),
            b.artifacts.len()
        ),
        other => other.to_string(),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One copy of a server's snapshot.
fn copy_json(a: &pb::Artifact) -> Value {
    json!({
        "sink": a.sink,
        "location": a.location,
        "manifest_sha256": a.manifest_sha256,
        "bytes": a.bytes,
        "files": a.files,
        "rows": a.rows,
        "verified_at_unix_ms": a.verified_at_unix_ms,
        "verify_error": (!a.verify_error.is_empty()).then_some(&a.verify_error),
        "snapshot_bytes": (a.snapshot_bytes > 0).then_some(a.snapshot_bytes),
        "free_bytes": (a.free_bytes > 0).then_some(a.free_bytes),
        "file_sets": a.file_sets,
    })
}

/// A server's kind: from its cut entry, else its artifact; older
/// catalogs hold only logical backups.
fn kind_of<'a>(c: Option<&&'a pb::CutEntry>, a: Option<&&'a pb::Artifact>) -> &'a str {
    match (c.map(|c| c.kind.as_str()), a.map(|a| a.kind.as_str())) {
        (Some(k), _) if !k.is_empty() => k,
        (_, Some(k)) if !k.is_empty() => k,
        _ => "logical",
    }
}

/// The JSON form of a backup (`catalog show --json`).
pub(super) fn backup_json(b: &pb::Backup) -> Value {
    let artifacts: BTreeMap<&str, &pb::Artifact> =
        b.artifacts.iter().map(|a| (a.server.as_str(), a)).collect();
    let cut: BTreeMap<&str, &pb::CutEntry> = b.cut.iter().map(|c| (c.server.as_str(), c)).collect();
    let servers: Vec<Value> = b
        .servers
        .iter()
        .map(|name| {
            let c = cut.get(name.as_str());
            let a = artifacts.get(name.as_str());
            json!({
                "name": name,
                "binlog_file": c.map(|c| c.binlog_file.clone()),
                "binlog_pos": c.map(|c| c.binlog_pos),
                "gtid": c.map(|c| c.gtid.clone()),
                "lock_method": c.map(|c| c.lock_method.clone()),
                "lock_wait_ms": c.map(|c| ms(c.lock_wait_us)),
                "capture_ms": c.map(|c| ms(c.capture_us)),
                "lock_ms": c.and_then(|c| c.held_us).map(ms),
                "locked_at_unix_us": c.map(|c| c.locked_at_unix_us),
                "released_at_unix_us": c.and_then(|c| c.released_at_unix_us),
                "kind": kind_of(c, a),
                "provider": c.map(|c| c.provider.clone()).filter(|p| !p.is_empty()),
                "snapshot_ms": c.filter(|c| c.snapshot_us > 0).map(|c| ms(c.snapshot_us)),
                "artifact": a.map(|a| copy_json(a)),
                "copies": b.copies.iter().filter(|c| c.server == *name).map(copy_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": b.id,
        "cluster": b.cluster,
        "status": b.status.to_uppercase(),
        "started_at_unix_ms": b.started_at_unix_ms,
        "finished_at_unix_ms": b.finished_at_unix_ms,
        "cut_committed_at_unix_ms": b.cut_committed_at_unix_ms,
        "freeze_ms": b.freeze_us.map(ms),
        "sink": b.sink,
        "servers": servers,
        "reason": (!b.reason.is_empty()).then_some(&b.reason),
    })
}

pub(super) fn print_backup(as_json: bool, b: &pb::Backup) {
    if as_json {
        println!("{}", backup_json(b));
        return;
    }
    println!("backup   {}", b.id);
    println!("cluster  {}", b.cluster);
    println!("status   {}", b.status.to_uppercase());
    if let Some(f) = b.freeze_us {
        println!(
            "freeze   {:.3} ms (first lock acquired to last lock released)",
            ms(f)
        );
    }
    if !b.reason.is_empty() {
        println!("reason   {}", b.reason);
    }
    let cut: BTreeMap<&str, &pb::CutEntry> = b.cut.iter().map(|c| (c.server.as_str(), c)).collect();
    let artifacts: BTreeMap<&str, &pb::Artifact> =
        b.artifacts.iter().map(|a| (a.server.as_str(), a)).collect();
    let rows: Vec<Vec<String>> = b
        .servers
        .iter()
        .map(|name| {
            let c = cut.get(name.as_str());
            let a = artifacts.get(name.as_str());
            vec![
                name.clone(),
                c.map(|c| format!("{}:{}", c.binlog_file, c.binlog_pos))
                    .unwrap_or_else(|| "-".into()),
                c.map(|c| c.gtid.clone()).unwrap_or_else(|| "-".into()),
                c.map(|c| format!("{:.2}", ms(c.lock_wait_us)))
                    .unwrap_or_else(|| "-".into()),
                c.and_then(|c| c.held_us)
                    .map(|h| format!("{:.2}", ms(h)))
                    .unwrap_or_else(|| "-".into()),
                match (kind_of(c, a), c) {
                    // Its copy ran before the cut: no snapshot inside it.
                    ("physical", Some(c)) if c.provider == MARIABACKUP => {
                        "physical mariabackup (base before the cut)".to_string()
                    }
                    ("physical", Some(c)) => {
                        format!("physical {} {:.2} ms", c.provider, ms(c.snapshot_us))
                    }
                    (k, _) => k.to_string(),
                },
                a.filter(|a| a.snapshot_bytes > 0)
                    .map(|a| match c.map(|c| c.provider.as_str()) {
                        Some(MARIABACKUP) => format!("{} (base)", a.snapshot_bytes),
                        _ => format!("{} ({} free)", a.snapshot_bytes, a.free_bytes),
                    })
                    .unwrap_or_else(|| "-".into()),
                a.map(|a| a.bytes.to_string()).unwrap_or_else(|| "-".into()),
                a.map(|a| a.manifest_sha256.chars().take(16).collect())
                    .unwrap_or_else(|| "-".into()),
                a.map(|a| a.location.clone()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!();
    print_table(
        &[
            "SERVER",
            "BINLOG",
            "GTID",
            "WAIT_MS",
            "HOLD_MS",
            "KIND / SNAPSHOT",
            "SNAPSHOT_BYTES",
            "BYTES",
            "SHA256",
            "LOCATION",
        ],
        &rows,
    );
    let copies: Vec<Vec<String>> = b
        .artifacts
        .iter()
        .chain(&b.copies)
        .map(|a| {
            let verified = match (a.verified_at_unix_ms, a.verify_error.is_empty()) {
                (None, _) => "never".to_string(),
                (Some(t), true) => format!("ok at {}", crate::cli::output::unix_ms_text(t)),
                (Some(t), false) => format!(
                    "FAILED at {}: {}",
                    crate::cli::output::unix_ms_text(t),
                    a.verify_error
                ),
            };
            vec![
                a.sink.clone(),
                a.server.clone(),
                a.bytes.to_string(),
                verified,
            ]
        })
        .collect();
    if !copies.is_empty() {
        println!();
        print_table(&["COPY IN SINK", "SERVER", "BYTES", "VERIFIED"], &copies);
    }
}

/// The provider name of a physical backup whose data mover is
/// `mariadb-backup` (the agent's `physical::mariabackup::NAME`).
const MARIABACKUP: &str = "mariabackup";

/// A unix time in milliseconds as RFC 3339 (UTC, seconds).
pub(super) use crate::core::unix_ms_text;

/// The JSON form of a restore (`restore run --json`).
pub(super) fn restore_json(r: &pb::RestoreBackupReply) -> Value {
    json!({
        "restore_id": r.restore_id,
        "backup_id": r.backup_id,
        "ok": r.servers.iter().all(|s| s.ok),
        "servers": servers_restore_json(&r.servers),
    })
}

fn servers_restore_json(servers: &[pb::ServerRestore]) -> Vec<Value> {
    servers
        .iter()
        .map(|s| {
            json!({
                "name": s.server,
                "target": s.target,
                "ok": s.ok,
                "error": (!s.error.is_empty()).then_some(&s.error),
                "tables": s.tables,
                "rows": s.rows,
                "duration_ms": s.duration_ms,
                "gtid": s.gtid_slave_pos,
                "location": s.location,
                "sink": (!s.sink.is_empty()).then_some(&s.sink),
                "agent": (!s.agent.is_empty()).then_some(&s.agent),
                "kind": if s.kind.is_empty() { "logical" } else { s.kind.as_str() },
                "datadir": (!s.datadir.is_empty()).then_some(&s.datadir),
                "gtid_binlog_pos": (!s.gtid_binlog_pos.is_empty()).then_some(&s.gtid_binlog_pos),
                "recovery_ms": (s.recovery_ms > 0).then_some(s.recovery_ms),
                "file_sets": s.file_sets,
            })
        })
        .collect()
}

pub(super) fn print_restores(as_json: bool, restores: &[pb::RestoreRecord]) {
    if as_json {
        let list: Vec<Value> = restores
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "backup_id": r.backup_id,
                    "status": r.status.to_uppercase(),
                    "force": r.force,
                    "started_at_unix_ms": r.started_at_unix_ms,
                    "finished_at_unix_ms": r.finished_at_unix_ms,
                    "reason": (!r.reason.is_empty()).then_some(&r.reason),
                    "servers": servers_restore_json(&r.servers),
                })
            })
            .collect();
        println!("{}", Value::Array(list));
        return;
    }
    let rows: Vec<Vec<String>> = restores
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.backup_id.clone(),
                r.status.to_uppercase(),
                r.servers
                    .iter()
                    .map(|s| format!("{}→{}", s.server, s.target))
                    .collect::<Vec<_>>()
                    .join(" "),
                r.servers.iter().map(|s| s.rows).sum::<u64>().to_string(),
                if r.reason.is_empty() {
                    "-".into()
                } else {
                    r.reason.clone()
                },
            ]
        })
        .collect();
    print_table(
        &["ID", "BACKUP", "STATUS", "SERVERS", "ROWS", "REASON"],
        &rows,
    );
}

pub(super) fn print_restore(as_json: bool, r: &pb::RestoreBackupReply) {
    if as_json {
        println!("{}", restore_json(r));
        return;
    }
    println!("backup   {}", r.backup_id);
    println!("restore  {}", r.restore_id);
    println!();
    let rows: Vec<Vec<String>> = r
        .servers
        .iter()
        .map(|s| {
            let dash = |v: String| if s.ok { v } else { "-".into() };
            vec![
                s.server.clone(),
                s.target.clone(),
                dash(format!("{} by {}", s.sink, s.agent)),
                dash(s.tables.to_string()),
                dash(s.rows.to_string()),
                dash(s.duration_ms.to_string()),
                match (s.gtid_slave_pos.is_empty(), s.gtid_binlog_pos.is_empty()) {
                    (false, _) => s.gtid_slave_pos.clone(),
                    (true, false) => {
                        format!("{} (recovered in {} ms)", s.gtid_binlog_pos, s.recovery_ms)
                    }
                    (true, true) => "-".into(),
                },
                if s.ok {
                    "ok".into()
                } else {
                    format!("FAILED: {}", s.error)
                },
            ]
        })
        .collect();
    print_table(
        &[
            "SERVER",
            "TARGET",
            "FROM",
            "TABLES",
            "ROWS",
            "DURATION_MS",
            "GTID",
            "RESULT",
        ],
        &rows,
    );
}

pub(super) fn print_backups(as_json: bool, backups: &[pb::Backup]) {
    if as_json {
        let list: Vec<Value> = backups.iter().map(backup_json).collect();
        println!("{}", Value::Array(list));
        return;
    }
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.cluster.clone(),
                b.status.to_uppercase(),
                b.servers.len().to_string(),
                b.freeze_us
                    .map(|f| format!("{:.2}", ms(f)))
                    .unwrap_or_else(|| "-".into()),
                b.reason.clone(),
            ]
        })
        .collect();
    print_table(
        &["ID", "CLUSTER", "STATUS", "SERVERS", "FREEZE_MS", "REASON"],
        &rows,
    );
}

pub(super) fn print_servers(as_json: bool, servers: &[pb::Server]) {
    if as_json {
        let list: Vec<Value> = servers
            .iter()
            .map(|s| {
                json!({
                    "cluster": s.cluster,
                    "name": s.name,
                    "agent_addr": s.agent_addr,
                    "flavour": s.flavour,
                    "version": s.version,
                    "server_id": s.server_id,
                    "server_uuid": s.server_uuid,
                    "healthy": s.healthy,
                    "last_heartbeat_age_ms": s.last_heartbeat_age_ms,
                    "media": s.media,
                })
            })
            .collect();
        println!("{}", Value::Array(list));
        return;
    }
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.cluster.clone(),
                s.name.clone(),
                s.agent_addr.clone(),
                if s.media {
                    "media agent".to_string()
                } else {
                    format!("{} {}", s.flavour, s.version)
                },
                if s.healthy { "healthy" } else { "unhealthy" }.into(),
                s.last_heartbeat_age_ms
                    .map(|a| format!("{a} ms ago"))
                    .unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "CLUSTER",
            "SERVER",
            "AGENT",
            "VERSION",
            "HEALTH",
            "HEARTBEAT",
        ],
        &rows,
    );
}

pub(super) fn print_status(as_json: bool, s: &pb::CoordinatorStatusReply) {
    if as_json {
        let members: Vec<Value> = s
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "url": m.url,
                    "role": m.role,
                    "leader_id": m.leader_id,
                    "term": m.term,
                    "commit": m.commit,
                    "applied": m.applied,
                    "voters": m.voters,
                    "healthy": m.healthy,
                    "error": (!m.error.is_empty()).then_some(&m.error),
                    "catalog_version": version(m.catalog_version),
                    "cluster_version": version(m.cluster_version),
                    "transport": (!m.transport.is_empty()).then_some(&m.transport),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "answered_by": s.answered_by,
                "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                "leader_url": (!s.leader_url.is_empty()).then_some(&s.leader_url),
                "cluster_version": s.cluster_version.max(FIRST_VERSION),
                "members": members,
            })
        );
        return;
    }
    if s.leader_id == 0 {
        println!("leader: none known (election in progress?)");
    } else {
        println!("leader: {} at {}", s.leader_id, s.leader_url);
    }
    println!(
        "cluster version: {} (as coordinator {} applied it)",
        s.cluster_version.max(FIRST_VERSION),
        s.answered_by
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.url.clone(),
                if m.role.is_empty() {
                    "-".into()
                } else {
                    m.role.clone()
                },
                m.term.to_string(),
                m.commit.to_string(),
                m.applied.to_string(),
                version(m.catalog_version).map_or("-".into(), |v| v.to_string()),
                version(m.cluster_version).map_or("-".into(), |v| v.to_string()),
                if m.transport.is_empty() {
                    "-".into()
                } else {
                    m.transport.clone()
                },
                if m.healthy {
                    "healthy".into()
                } else {
                    format!("unhealthy: {}", m.error)
                },
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "URL",
            "ROLE",
            "TERM",
            "COMMIT",
            "APPLIED",
            "SUPPORTS",
            "CLUSTER-V",
            "TRANSPORT",
            "HEALTH",
        ],
        &rows,
    );
    for m in s
        .members
        .iter()
        .filter(|m| m.transport.starts_with("INSECURE"))
    {
        eprintln!(
            "warning: coordinator {} serves in PLAINTEXT on a network address: every call to it \
             is unauthenticated and unencrypted",
            m.id
        );
    }
}

/// A member's catalog or cluster version: `None` when it did not answer
/// (0); a member built before catalog versions reports version 1.
fn version(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

/// Prints left-aligned columns separated by two spaces.
pub(super) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_json_has_the_documented_fields() {
        let r = pb::RestoreBackupReply {
            backup_id: "b1".into(),
            servers: vec![
                pb::ServerRestore {
                    server: "s1".into(),
                    target: "h:1".into(),
                    ok: true,
                    rows: 7,
                    ..pb::ServerRestore::default()
                },
                pb::ServerRestore {
                    server: "s2".into(),
                    target: "h:2".into(),
                    error: "server s2: not empty".into(),
                    ..pb::ServerRestore::default()
                },
            ],
            restore_id: "r1".into(),
        };
        let v = restore_json(&r);
        assert_eq!(v["restore_id"], "r1");
        assert_eq!(v["ok"], false);
        assert_eq!(v["servers"][0]["name"], "s1");
        assert_eq!(v["servers"][0]["rows"], 7);
        assert_eq!(v["servers"][0]["ok"], true);
        assert!(v["servers"][0]["error"].is_null());
        assert_eq!(v["servers"][1]["target"], "h:2");
        assert_eq!(v["servers"][1]["error"], "server s2: not empty");
    }

    #[test]
    fn backup_json_has_the_documented_fields() {
        let b = pb::Backup {
            id: "b1".into(),
            status: "complete".into(),
            servers: vec!["s1".into()],
            cut: vec![pb::CutEntry {
                server: "s1".into(),
                binlog_file: "mysql-bin.000001".into(),
                binlog_pos: 42,
                gtid: "1-1-5".into(),
                held_us: Some(2500),
                ..pb::CutEntry::default()
            }],
            freeze_us: Some(3000),
            ..pb::Backup::default()
        };
        let v = backup_json(&b);
        assert_eq!(v["id"], "b1");
        assert_eq!(v["status"], "COMPLETE");
        assert_eq!(v["freeze_ms"], 3.0);
        assert_eq!(v["servers"][0]["name"], "s1");
        assert_eq!(v["servers"][0]["binlog_pos"], 42);
        assert_eq!(v["servers"][0]["gtid"], "1-1-5");
        assert_eq!(v["servers"][0]["lock_ms"], 2.5);
    }
}
