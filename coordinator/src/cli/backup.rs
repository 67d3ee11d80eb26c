//! `lockstep backup start [--wait]` and the catalog queries `catalog
//! list|show`.

use std::collections::HashSet;
use std::time::Duration;

use lockstep_proto::coordinator as pb;
use serde_json::json;

use super::output::{print_backup, print_backups, progress_line};
use super::{ClusterFilter, LostAnswers, ShowArgs, StartArgs};
use crate::client::{Client, Once};
use crate::error::Error;

/// How often `backup start --wait` polls.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// `backup start`: prints the id, or with `--wait` follows the backup to
/// its end (exit 1 if it FAILED).
///
/// Never two backups for one request: when the answer to StartBackup is
/// lost (its leader died after recording the backup, say), the backup a
/// retry would duplicate is found in the catalog instead. The catalog runs
/// one backup per cluster at a time and is read from the leader
/// (linearizably), so a backup of the cluster that was not listed before
/// the request and is listed after the lost answer is the request's (or
/// one started by someone else meanwhile, which serves as well); if none
/// is, the request was never recorded (a new leader's log cannot bring it
/// back) and is made again.
pub(super) async fn start(client: &mut Client, json: bool, a: &StartArgs) -> anyhow::Result<i32> {
    let before = backup_ids(client, &a.cluster).await?;
    let req = pb::StartBackupRequest {
        cluster: a.cluster.clone(),
        sink: a.sink.clone().unwrap_or_default(),
        kind: a.kind.clone().unwrap_or_default(),
    };
    let mut lost = LostAnswers::new("start backup", client.patience());
    let id = loop {
        let outcome = client
            .call_once("start backup", |mut c| {
                let req = req.clone();
                async move { c.start_backup(req).await }
            })
            .await;
        match outcome {
            Ok(Once::Done(reply)) => break reply.backup_id,
            Ok(Once::Unknown { url, error }) => {
                lost.lost(&url, &error)?;
                if let Some(id) = started_since(client, &a.cluster, &before).await? {
                    eprintln!("backup {id} was started by then: it is this request's backup");
                    break id;
                }
                eprintln!("no backup was recorded: starting it again");
            }
            // The lost request's backup, recorded after the catalog was
            // read, refuses the retry.
            Err(
                e @ Error::Rpc {
                    code: tonic::Code::AlreadyExists,
                    ..
                },
            ) if lost.any() => match started_since(client, &a.cluster, &before).await? {
                Some(id) => {
                    eprintln!("backup {id} was started by then: it is this request's backup");
                    break id;
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    };
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
    let backups = list_backups(client, f.cluster.as_deref().unwrap_or_default()).await?;
    print_backups(json, &backups);
    Ok(0)
}

/// `catalog show`.
pub(super) async fn show(client: &mut Client, json: bool, a: &ShowArgs) -> anyhow::Result<i32> {
    let backup = get_backup(client, &a.id).await?;
    print_backup(json, &backup);
    Ok(0)
}

/// The ids of the cluster's backups, read from the leader.
async fn backup_ids(client: &mut Client, cluster: &str) -> anyhow::Result<HashSet<String>> {
    Ok(list_backups(client, cluster)
        .await?
        .into_iter()
        .map(|b| b.id)
        .collect())
}

/// The first backup of `cluster` that is not in `before`.
async fn started_since(
    client: &mut Client,
    cluster: &str,
    before: &HashSet<String>,
) -> anyhow::Result<Option<String>> {
    Ok(list_backups(client, cluster)
        .await?
        .into_iter()
        .filter(|b| !before.contains(&b.id))
        .min_by_key(|b| b.started_at_unix_ms)
        .map(|b| b.id))
}

/// The backups of `cluster` (every cluster if empty), oldest first.
async fn list_backups(client: &mut Client, cluster: &str) -> anyhow::Result<Vec<pb::Backup>> {
    let req = pb::ListBackupsRequest {
        cluster: cluster.to_string(),
    };
    let reply = client
        .call("list backups", |mut c| {
            let req = req.clone();
            async move { c.list_backups(req).await }
        })
        .await?;
    Ok(reply.backups)
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

/// Polls until the backup is no longer running, printing each change. Each
/// poll waits out an election (the client's patience), so the backup is
/// followed to whichever coordinator leads next, and its end is the one
/// that leader records.
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
