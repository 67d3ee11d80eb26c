//! `lockstep backup start [--wait]` and the catalog queries `catalog
//! list|show`.

use std::time::Duration;

use lockstep_proto::coordinator as pb;
use serde_json::json;

use super::output::{print_backup, print_backups, progress_line};
use super::{ClusterFilter, ShowArgs, StartArgs};
use crate::client::Client;

/// How often `backup start --wait` polls.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// `backup start`: prints the id, or with `--wait` follows the backup to
/// its end (exit 1 if it FAILED).
pub(super) async fn start(client: &mut Client, json: bool, a: &StartArgs) -> anyhow::Result<i32> {
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
        if json {
            println!("{}", json!({ "id": id }));
        } else {
            println!("{id}");
        }
        return Ok(0);
    }
    eprintln!("backup {id} started");
    let backup = wait_for(client, &id).await?;
    print_backup(json, &backup);
    Ok(if backup.status == "complete" { 0 } else { 1 })
}

/// `catalog list`.
pub(super) async fn list(
    client: &mut Client,
    json: bool,
    f: &ClusterFilter,
) -> anyhow::Result<i32> {
    let req = pb::ListBackupsRequest {
        cluster: f.cluster.clone().unwrap_or_default(),
    };
    let reply = client
        .call("list backups", |mut c| {
            let req = req.clone();
            async move { c.list_backups(req).await }
        })
        .await?;
    print_backups(json, &reply.backups);
    Ok(0)
}

/// `catalog show`.
pub(super) async fn show(client: &mut Client, json: bool, a: &ShowArgs) -> anyhow::Result<i32> {
    let backup = get_backup(client, &a.id).await?;
    print_backup(json, &backup);
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
