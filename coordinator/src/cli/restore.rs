//! `lockstep restore run|list`.

use std::collections::HashMap;
use std::time::Duration;

use lockstep_proto::coordinator as pb;

use super::output::{print_restore, print_restores};
use super::{LostAnswers, RestoreArgs, RestoreListArgs};
use crate::client::{Client, Once};
use crate::error::Error;

/// How long `restore run` waits for the leader's answer (the coordinator
/// bounds each server's load by its transfer timeout, 6 h by default).
pub(super) const RESTORE_TIMEOUT: Duration = Duration::from_secs(7 * 3600);
/// How often a restore whose answer was lost asks again while the lost run
/// is still recorded as running.
const RUNNING_POLL: Duration = Duration::from_millis(200);

/// `restore list`.
pub(super) async fn list(
    client: &mut Client,
    json: bool,
    a: &RestoreListArgs,
) -> anyhow::Result<i32> {
    let req = pb::ListRestoresRequest {
        backup_id: a.backup.clone().unwrap_or_default(),
    };
    let reply = client
        .call("list restores", |mut c| {
            let req = req.clone();
            async move { c.list_restores(req).await }
        })
        .await?;
    print_restores(json, &reply.restores);
    Ok(0)
}

/// The request `restore run` and `restore plan` send.
fn request(a: &RestoreArgs) -> anyhow::Result<pb::RestoreBackupRequest> {
    let mut targets = HashMap::new();
    for (name, url) in &a.targets {
        if has_password(url) {
            eprintln!(
                "warning: --target {name}: the URL's password is visible in the process list and crosses the coordinators; name an entry of the loading agent's credentials file instead (--target {name}=cred:NAME)"
            );
        }
        if targets.insert(name.clone(), url.clone()).is_some() {
            anyhow::bail!("--target names server {name} twice");
        }
    }
    let mut agents = HashMap::new();
    for (server, agent) in &a.agents {
        if agents.insert(server.clone(), agent.clone()).is_some() {
            anyhow::bail!("--agent names server {server} twice");
        }
    }
    let mut datadirs = std::collections::HashMap::new();
    for (server, dir) in &a.datadirs {
        if datadirs.insert(server.clone(), dir.clone()).is_some() {
            anyhow::bail!("--datadir names server {server} twice");
        }
    }
    Ok(pb::RestoreBackupRequest {
        backup_id: a.backup.clone(),
        targets,
        force: a.force,
        in_place: a.in_place,
        allow_reset_master: a.allow_reset_master,
        from: a.from.clone().unwrap_or_default(),
        agents,
        datadirs,
        files_to: a.files_to.clone().unwrap_or_default(),
    })
}

/// Whether a `mysql://USER:PASSWORD@...` URL has a password.
fn has_password(url: &str) -> bool {
    url.strip_prefix("mysql://")
        .and_then(|rest| rest.rsplit_once('@'))
        .is_some_and(|(user, _)| user.split_once(':').is_some_and(|(_, pw)| !pw.is_empty()))
}

/// `restore plan`: which copy and agent each server would be loaded from.
pub(super) async fn plan(client: &mut Client, json: bool, a: &RestoreArgs) -> anyhow::Result<i32> {
    let req = request(a)?;
    let reply = client
        .call("plan restore", |mut c| {
            let req = req.clone();
            async move { c.plan_restore(req).await }
        })
        .await?;
    super::sink::print_plan(json, &reply);
    Ok(0)
}

/// `restore run`: every server of the backup at once, while the command
/// waits; exit 1 if any server failed.
///
/// When the leader goes away while the restore runs, its answer is lost:
/// the next leader records that restore FAILED ("the coordinator changed
/// while it ran"), and the command restores again once that leader
/// answers. Running it again is what the user would do by hand, and is
/// safe: without `--force`, a target the lost run already loaded is
/// refused (and named), so nothing is loaded twice over data; with
/// `--force`, the user asked for the targets to be overwritten anyway.
pub(super) async fn run(client: Client, json: bool, a: &RestoreArgs) -> anyhow::Result<i32> {
    let req = request(a)?;
    eprintln!("restoring every server of backup {} ...", a.backup);
    let mut client = client.with_call_timeout(RESTORE_TIMEOUT);
    let mut lost = LostAnswers::new("restore backup", client.patience());
    let reply = loop {
        let outcome = client
            .call_once("restore backup", |mut c| {
                let req = req.clone();
                async move { c.restore_backup(req).await }
            })
            .await;
        match outcome {
            Ok(Once::Done(reply)) => break reply,
            Ok(Once::Unknown { url, error }) => {
                lost.lost(&url, &error)?;
                eprintln!("restoring backup {} again once a leader answers", a.backup);
            }
            // The lost run is recorded as running until the next leader
            // fails it; wait for that, within the patience.
            Err(Error::Rpc {
                code: tonic::Code::AlreadyExists,
                message,
                ..
            }) if lost.patient() => {
                tracing::info!(%message, "the lost restore is still recorded as running");
                tokio::time::sleep(RUNNING_POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    print_restore(json, &reply);
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
    Ok(0)
}
