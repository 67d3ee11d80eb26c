//! `lockstep server list|remove` and `lockstep coordinator status`.

use lockstep_proto::coordinator as pb;
use serde_json::json;

use super::output::{print_servers, print_status};
use super::{ClusterFilter, LostAnswers, RemoveArgs};
use crate::client::{Client, Once};
use crate::error::Error;

/// `server remove`. Removing twice is harmless, so an answer lost with its
/// leader is asked again; "unknown server" then means the lost call
/// removed it.
pub(super) async fn remove(client: &mut Client, json: bool, a: &RemoveArgs) -> anyhow::Result<i32> {
    let req = pb::RemoveServerRequest {
        cluster: a.cluster.clone(),
        name: a.name.clone(),
    };
    let mut lost = LostAnswers::new("remove server", client.patience());
    loop {
        let outcome = client
            .call_once("remove server", |mut c| {
                let req = req.clone();
                async move { c.remove_server(req).await }
            })
            .await;
        match outcome {
            Ok(Once::Done(_)) => break,
            Ok(Once::Unknown { url, error }) => lost.lost(&url, &error)?,
            Err(Error::Rpc {
                code: tonic::Code::NotFound,
                ..
            }) if lost.any() => break,
            Err(e) => return Err(e.into()),
        }
    }
    if json {
        println!(
            "{}",
            json!({ "cluster": a.cluster, "name": a.name, "removed": true })
        );
    } else {
        println!("removed server {} from cluster {}", a.name, a.cluster);
    }
    Ok(0)
}

/// `server list`.
pub(super) async fn list(
    client: &mut Client,
    json: bool,
    f: &ClusterFilter,
) -> anyhow::Result<i32> {
    let req = pb::ListServersRequest {
        cluster: f.cluster.clone().unwrap_or_default(),
    };
    let reply = client
        .call("list servers", |mut c| {
            let req = req.clone();
            async move { c.list_servers(req).await }
        })
        .await?;
    print_servers(json, &reply.servers);
    Ok(0)
}

/// `coordinator status`: non-zero when any member is unreachable or
/// misconfigured, so monitoring can run it as a check.
pub(super) async fn status(client: &mut Client, json: bool) -> anyhow::Result<i32> {
    let reply = client
        .call("coordinator status", |mut c| async move {
            c.coordinator_status(pb::CoordinatorStatusRequest {}).await
        })
        .await?;
    print_status(json, &reply);
    let unhealthy: Vec<&pb::Member> = reply.members.iter().filter(|m| !m.healthy).collect();
    for m in &unhealthy {
        eprintln!("error: coordinator {} ({}): {}", m.id, m.url, m.error);
    }
    Ok(if unhealthy.is_empty() { 0 } else { 1 })
}
