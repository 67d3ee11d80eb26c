//! Observing what a user of the database sees: can a write get through right
//! now, and driving one cut on an agent over gRPC.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lockstep_proto::agent as pb;
use lockstep_proto::agent::node_agent_client::NodeAgentClient;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::MariaDb;

/// Creates `lockstep_probe.w`, the table write probes insert into.
pub async fn create_probe_table(server: &MariaDb) -> anyhow::Result<()> {
    server
        .exec("CREATE DATABASE IF NOT EXISTS lockstep_probe")
        .await?;
    server
        .exec("CREATE TABLE IF NOT EXISTS lockstep_probe.w (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB")
        .await
}

/// Whether an autocommit INSERT commits within `within`. A write that does not
/// is left pending on its own connection (it commits once the lock drops).
pub async fn write_commits_within(server: &MariaDb, within: Duration) -> anyhow::Result<bool> {
    let mut conn = server.conn().await?;
    let insert = async move {
        use mysql_async::prelude::Queryable;
        conn.query_drop("INSERT INTO lockstep_probe.w () VALUES ()")
            .await
            .map(|_| conn)
    };
    match tokio::time::timeout(within, insert).await {
        Ok(Ok(conn)) => {
            drop(conn);
            Ok(true)
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("probe write on {}", server.name())),
        Err(_) => Ok(false),
    }
}

/// Polls until a write commits within 200 ms, for at most `deadline`;
/// returns how long it took.
pub async fn wait_writable(server: &MariaDb, deadline: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if write_commits_within(server, Duration::from_millis(200)).await? {
            return Ok(started.elapsed());
        }
    }
    bail!(
        "{} ({}) still rejects writes after {deadline:?}: it stayed locked",
        server.name(),
        server.address()
    )
}

/// A Prepare in progress: the PREPARED reply and the open event stream.
#[derive(Debug)]
pub struct PreparedCut {
    pub prepared: pb::Prepared,
    pub events: Streaming<pb::PrepareEvent>,
}

impl PreparedCut {
    /// The captured position.
    pub fn position(&self) -> pb::Position {
        self.prepared.position.clone().unwrap_or_default()
    }

    /// Waits for the `released` event that ends the stream.
    pub async fn released(&mut self, within: Duration) -> anyhow::Result<pb::Released> {
        let msg = tokio::time::timeout(within, self.events.message())
            .await
            .context("no release event in time")?
            .context("prepare stream failed")?;
        match msg.and_then(|m| m.event) {
            Some(pb::prepare_event::Event::Released(r)) => Ok(r),
            other => bail!("expected a released event, got {other:?}"),
        }
    }
}

/// Sends Prepare and waits for PREPARED.
pub async fn prepare(
    client: &mut NodeAgentClient<Channel>,
    backup_id: &str,
    lease: Duration,
    budgets: Option<pb::Budgets>,
) -> Result<PreparedCut, tonic::Status> {
    let mut events = client
        .prepare(pb::PrepareRequest {
            kind: String::new(),
            backup_id: backup_id.into(),
            lease_ms: lease.as_millis() as u64,
            budgets,
            snapshot_connections: 2,
            term: 0,
            wait_for_go: false,
            position_only: false,
        })
        .await?
        .into_inner();
    match events.message().await? {
        Some(pb::PrepareEvent {
            event: Some(pb::prepare_event::Event::Prepared(prepared)),
        }) => Ok(PreparedCut { prepared, events }),
        other => Err(tonic::Status::internal(format!(
            "expected PREPARED, got {other:?}"
        ))),
    }
}

/// Runs Transfer to the end and returns the artifact.
pub async fn transfer(
    client: &mut NodeAgentClient<Channel>,
    backup_id: &str,
) -> anyhow::Result<pb::Artifact> {
    let mut stream = client
        .transfer(pb::TransferRequest {
            sink: None,
            cluster: String::new(),
            cut_servers: Vec::new(),
            backup_id: backup_id.into(),
            zstd_level: 0,
            term: 0,
        })
        .await
        .context("start transfer")?
        .into_inner();
    while let Some(m) = stream.message().await.context("transfer stream")? {
        if m.done {
            return m
                .artifact
                .context("final transfer message without artifact");
        }
    }
    bail!("transfer stream ended without a final message")
}

/// Runs Restore (the agent loads `location` into `target`, or its own server
/// when `target` is empty) to the end and returns the report.
pub async fn restore(
    client: &mut NodeAgentClient<Channel>,
    location: &str,
    target: &str,
) -> Result<pb::RestoreReport, tonic::Status> {
    restore_with(
        client,
        pb::RestoreRequest {
            location: location.into(),
            target_mysql: target.into(),
            threads: 2,
            ..Default::default()
        },
    )
    .await
}

/// Runs the Restore `req` to the end and returns the report.
pub async fn restore_with(
    client: &mut NodeAgentClient<Channel>,
    req: pb::RestoreRequest,
) -> Result<pb::RestoreReport, tonic::Status> {
    let mut stream = client.restore(req).await?.into_inner();
    while let Some(m) = stream.message().await? {
        if m.done {
            return m
                .report
                .ok_or_else(|| tonic::Status::internal("final restore message without report"));
        }
    }
    Err(tonic::Status::internal(
        "restore stream ended without a final message",
    ))
}
