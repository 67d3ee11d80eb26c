//! The `lockstep` CLI: server list, coordinator status, backup start,
//! catalog queries and the coordinated restore, against the coordinator group (the leader is found by
//! [`Client`]). Human tables by default, `--json` for scripts; the exit code
//! is 0 on success, 1 on failure (including a backup that ends FAILED), 2 on
//! bad usage.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lockstep_proto::coordinator as pb;
use serde_json::{Value, json};

use crate::client::Client;

/// How long a command keeps looking for a leader.
const PATIENCE: Duration = Duration::from_secs(20);
/// How often `backup start --wait` polls.
const WAIT_POLL: Duration = Duration::from_millis(200);
/// How long `restore run` waits for the leader's answer (the coordinator
/// bounds each server's load by its transfer timeout, 6 h by default).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(7 * 3600);

/// `lockstep`: cluster-wide consistent backups of MySQL/MariaDB.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, about)]
pub struct Cli {
    /// Coordinator URLs, comma-separated (any member; the leader is found).
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_COORDINATORS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7300"
    )]
    pub coordinators: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log filter (tracing syntax) for diagnostics on stderr.
    #[arg(long, global = true, env = "LOCKSTEP_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Registered servers and their health.
    #[command(subcommand)]
    Server(ServerCmd),
    /// The coordinator group.
    #[command(subcommand)]
    Coordinator(CoordinatorCmd),
    /// Take backups.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Query the backup catalog.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Restore backups.
    #[command(subcommand)]
    Restore(RestoreCmd),
}

/// `lockstep restore ...`
#[derive(Debug, Subcommand)]
pub enum RestoreCmd {
    /// Restore every server of a COMPLETE backup at once; reports per server.
    Run(RestoreArgs),
    /// Restores recorded in the catalog, oldest first.
    List(RestoreListArgs),
}

/// `restore list` arguments.
#[derive(Debug, Args)]
pub struct RestoreListArgs {
    /// Only restores of this backup.
    #[arg(long)]
    pub backup: Option<String>,
}

/// `restore run` arguments.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup id.
    #[arg(long)]
    pub backup: String,
    /// Load SERVER into this database server
    /// (SERVER=mysql://USER[:PASS]@HOST:PORT); repeat for every server of
    /// the backup.
    #[arg(long = "target", value_name = "SERVER=URL", value_parser = parse_target)]
    pub targets: Vec<(String, String)>,
    /// Load the servers without a --target into the live servers the backup
    /// was taken from (their agents' own servers), overwriting them.
    #[arg(long)]
    pub in_place: bool,
    /// Load into targets that already hold databases.
    #[arg(long)]
    pub force: bool,
    /// Wait for every server to finish (always the case: the restore runs
    /// while the command waits; accepted for symmetry with `backup start`).
    #[arg(long)]
    pub wait: bool,
}

/// Parses `SERVER=URL`.
fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, url)) if !name.trim().is_empty() && !url.trim().is_empty() => {
            Ok((name.trim().to_string(), url.trim().to_string()))
        }
        _ => Err(format!("expected SERVER=mysql://USER@HOST:PORT, got {s:?}")),
    }
}

/// `lockstep server ...`
#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// List registered servers with flavour, version and health.
    List(ClusterFilter),
    /// Remove a retired server from its cluster: later backups leave it
    /// out. Stop its agent first, or it registers again.
    Remove(RemoveArgs),
}

/// `server remove` arguments.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The server's cluster.
    #[arg(long)]
    pub cluster: String,
    /// The server's name.
    pub name: String,
}

/// `lockstep coordinator ...`
#[derive(Debug, Subcommand)]
pub enum CoordinatorCmd {
    /// Members, leader, term, commit and applied index, health per member.
    Status,
}

/// `lockstep backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Start a backup of every server of a cluster; prints its id.
    Start(StartArgs),
}

/// `lockstep catalog ...`
#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// List backups, oldest first.
    List(ClusterFilter),
    /// One backup: status, the cut per server, freeze window, artifacts.
    Show(ShowArgs),
}

/// An optional cluster filter.
#[derive(Debug, Args)]
pub struct ClusterFilter {
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
}

/// `backup start` arguments.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The cluster to back up.
    #[arg(long)]
    pub cluster: String,
    /// Wait for the backup to finish, showing progress; exit 1 if it failed.
    #[arg(long)]
    pub wait: bool,
}

/// `catalog show` arguments.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The backup id.
    pub id: String,
}

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match execute(&cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn execute(cli: &Cli) -> anyhow::Result<i32> {
    let mut client = Client::new(cli.coordinators.clone(), PATIENCE)?;
    match &cli.command {
        Command::Server(ServerCmd::Remove(a)) => {
            let req = pb::RemoveServerRequest {
                cluster: a.cluster.clone(),
                name: a.name.clone(),
            };
            client
                .call("remove server", |mut c| {
                    let req = req.clone();
                    async move { c.remove_server(req).await }
                })
                .await?;
            if cli.json {
                println!(
                    "{}",
                    json!({ "cluster": a.cluster, "name": a.name, "removed": true })
                );
            } else {
                println!("removed server {} from cluster {}", a.name, a.cluster);
            }
        }
        Command::Server(ServerCmd::List(f)) => {
            let req = pb::ListServersRequest {
                cluster: f.cluster.clone().unwrap_or_default(),
            };
            let reply = client
                .call("list servers", |mut c| {
                    let req = req.clone();
                    async move { c.list_servers(req).await }
                })
                .await?;
            print_servers(cli.json, &reply.servers);
        }
        Command::Coordinator(CoordinatorCmd::Status) => {
            let reply = client
                .call("coordinator status", |mut c| async move {
                    c.coordinator_status(pb::CoordinatorStatusRequest {}).await
                })
                .await?;
            print_status(cli.json, &reply);
            // Non-zero when any member is unreachable or misconfigured, so
            // monitoring can run this command as a check.
            let unhealthy: Vec<&pb::Member> = reply.members.iter().filter(|m| !m.healthy).collect();
            for m in &unhealthy {
                eprintln!("error: coordinator {} ({}): {}", m.id, m.url, m.error);
            }
            if !unhealthy.is_empty() {
                return Ok(1);
            }
        }
        Command::Backup(BackupCmd::Start(a)) => {
            let req = pb::StartBackupRequest {
                cluster: a.cluster.clone(),
            };
            let reply = client
                .call("start backup", |mut c| {
                    let req = req.clone();
                    async move { c.start_backup(req).await }
                })
                .await?;
            let id = reply.backup_id;
            if !a.wait {
                if cli.json {
                    println!("{}", json!({ "id": id }));
                } else {
                    println!("{id}");
                }
                return Ok(0);
            }
            eprintln!("backup {id} started");
            let backup = wait_for(&mut client, &id).await?;
            print_backup(cli.json, &backup);
            return Ok(if backup.status == "complete" { 0 } else { 1 });
        }
        Command::Catalog(CatalogCmd::List(f)) => {
            let req = pb::ListBackupsRequest {
                cluster: f.cluster.clone().unwrap_or_default(),
            };
            let reply = client
                .call("list backups", |mut c| {
                    let req = req.clone();
                    async move { c.list_backups(req).await }
                })
                .await?;
            print_backups(cli.json, &reply.backups);
        }
        Command::Catalog(CatalogCmd::Show(a)) => {
            let backup = get_backup(&mut client, &a.id).await?;
            print_backup(cli.json, &backup);
        }
        Command::Restore(RestoreCmd::List(a)) => {
            let req = pb::ListRestoresRequest {
                backup_id: a.backup.clone().unwrap_or_default(),
            };
            let reply = client
                .call("list restores", |mut c| {
                    let req = req.clone();
                    async move { c.list_restores(req).await }
                })
                .await?;
            print_restores(cli.json, &reply.restores);
        }
        Command::Restore(RestoreCmd::Run(a)) => {
            let mut targets = std::collections::HashMap::new();
            for (name, url) in &a.targets {
                if targets.insert(name.clone(), url.clone()).is_some() {
                    anyhow::bail!("--target names server {name} twice");
                }
            }
            let req = pb::RestoreBackupRequest {
                backup_id: a.backup.clone(),
                targets,
                force: a.force,
                in_place: a.in_place,
            };
            eprintln!("restoring every server of backup {} ...", a.backup);
            let mut client = client.with_call_timeout(RESTORE_TIMEOUT);
            let reply = client
                .call("restore backup", |mut c| {
                    let req = req.clone();
                    async move { c.restore_backup(req).await }
                })
                .await?;
            print_restore(cli.json, &reply);
            let failed: Vec<&str> = reply
                .servers
                .iter()
                .filter(|s| !s.ok)
                .map(|s| s.server.as_str())
                .collect();
            if !failed.is_empty() {
                eprintln!(
                    "error: the restore failed on {} of {} servers: {}",
                    failed.len(),
                    reply.servers.len(),
                    failed.join(", ")
                );
                return Ok(1);
            }
        }
    }
    Ok(0)
}

async fn get_backup(client: &mut Client, id: &str) -> anyhow::Result<pb::Backup> {
    let req = pb::GetBackupRequest { id: id.to_string() };
    Ok(client
        .call("get backup", |mut c| {
            let req = req.clone();
            async move { c.get_backup(req).await }
        })
        .await?)
}

/// Polls until the backup is no longer running, printing each change.
async fn wait_for(client: &mut Client, id: &str) -> anyhow::Result<pb::Backup> {
    let mut last = String::new();
    loop {
        let b = get_backup(client, id).await?;
        let line = progress_line(&b);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if b.status == "complete" || b.status == "failed" {
            return Ok(b);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn progress_line(b: &pb::Backup) -> String {
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

/// The JSON form of a backup (`catalog show --json`).
pub fn backup_json(b: &pb::Backup) -> Value {
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
                "artifact": a.map(|a| json!({
                    "location": a.location,
                    "manifest_sha256": a.manifest_sha256,
                    "bytes": a.bytes,
                    "files": a.files,
                    "rows": a.rows,
                })),
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
        "servers": servers,
        "reason": (!b.reason.is_empty()).then_some(&b.reason),
    })
}

fn print_backup(as_json: bool, b: &pb::Backup) {
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
            "SERVER", "BINLOG", "GTID", "WAIT_MS", "HOLD_MS", "BYTES", "SHA256", "LOCATION",
        ],
        &rows,
    );
}

/// The JSON form of a restore (`restore run --json`).
pub fn restore_json(r: &pb::RestoreBackupReply) -> Value {
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
            })
        })
        .collect()
}

fn print_restores(as_json: bool, restores: &[pb::RestoreRecord]) {
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

fn print_restore(as_json: bool, r: &pb::RestoreBackupReply) {
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
                dash(s.tables.to_string()),
                dash(s.rows.to_string()),
                dash(s.duration_ms.to_string()),
                if s.gtid_slave_pos.is_empty() {
                    "-".into()
                } else {
                    s.gtid_slave_pos.clone()
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
            "TABLES",
            "ROWS",
            "DURATION_MS",
            "GTID",
            "RESULT",
        ],
        &rows,
    );
}

fn print_backups(as_json: bool, backups: &[pb::Backup]) {
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

fn print_servers(as_json: bool, servers: &[pb::Server]) {
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
                format!("{} {}", s.flavour, s.version),
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

fn print_status(as_json: bool, s: &pb::CoordinatorStatusReply) {
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
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "answered_by": s.answered_by,
                "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                "leader_url": (!s.leader_url.is_empty()).then_some(&s.leader_url),
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
                if m.healthy {
                    "healthy".into()
                } else {
                    format!("unhealthy: {}", m.error)
                },
            ]
        })
        .collect();
    print_table(
        &["ID", "URL", "ROLE", "TERM", "COMMIT", "APPLIED", "HEALTH"],
        &rows,
    );
}

/// Prints left-aligned columns separated by two spaces.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
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
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands_and_coordinator_lists() {
        let cli = Cli::try_parse_from([
            "lockstep",
            "--coordinators",
            "http://a:1,http://b:2",
            "backup",
            "start",
            "--cluster",
            "c1",
            "--wait",
            "--json",
        ])
        .expect("parse");
        assert_eq!(cli.coordinators, ["http://a:1", "http://b:2"]);
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Backup(BackupCmd::Start(StartArgs { wait: true, .. }))
        ));
        assert!(Cli::try_parse_from(["lockstep", "backup", "start"]).is_err());
    }

    #[test]
    fn parses_restore_run_with_targets() {
        let cli = Cli::try_parse_from([
            "lockstep",
            "restore",
            "run",
            "--backup",
            "b1",
            "--target",
            "s1=mysql://root@h:1",
            "--target",
            "s2=mysql://root:p=w@h:2",
            "--force",
        ])
        .expect("parse");
        let Command::Restore(RestoreCmd::Run(a)) = cli.command else {
            panic!("not restore run: {:?}", cli.command);
        };
        assert_eq!(a.backup, "b1");
        assert!(a.force && !a.wait);
        assert_eq!(
            a.targets,
            [
                ("s1".to_string(), "mysql://root@h:1".to_string()),
                ("s2".to_string(), "mysql://root:p=w@h:2".to_string())
            ]
        );
        assert!(
            Cli::try_parse_from([
                "lockstep", "restore", "run", "--backup", "b1", "--target", "s1"
            ])
            .is_err()
        );
    }

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
