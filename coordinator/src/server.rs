//! Running one coordinator: the raft node, the leadership watcher (which
//! resolves inherited backups), and one gRPC server carrying both the raft
//! transport and the coordinator service, until shutdown.
//!
//! Fail fast: the raft task ending while the coordinator serves (its store
//! failed, say) stops everything and [`run`] returns the raft task's error,
//! so the process exits non-zero instead of answering "raft node N is
//! stopped" forever. Every shutdown step is bounded: a task that does not
//! finish is named and left behind, never waited for without end.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::coordinator::coordinator_server::CoordinatorServer;
use tokio_util::sync::CancellationToken;

use crate::catalog::{AuditOutcome, AuditRecord, Catalog, Command};
use crate::config::Config;
use crate::core::Core;
use crate::core::now_unix_ms;
use crate::error::{Error, Result};
use crate::job::Jobs;
use crate::raft::{self, RaftNode};
use crate::service::CoordinatorService;

/// How long open gRPC streams may keep the process alive after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How long each later shutdown step (leadership watcher, jobs, raft node)
/// may take before it is left behind.
const STEP_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the coordinator described by `config` until `shutdown` is cancelled
/// (or its raft node fails: then the raft node's error is returned).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let mut raft_config = config.validate()?;
    let id = config.id;
    let listen = config.listen;
    let transport = config
        .tls
        .transport()
        .map_err(|e| Error::Config(e.to_string()))?;
    if let Some(identity) = transport.identity()
        && identity != crate::raft::peer_identity(id)
    {
        return Err(Error::Config(format!(
            "coordinator {id}'s certificate {} names identity '{identity}'; the other \
             coordinators accept raft messages from node {id} only as '{}'",
            config
                .tls
                .cert
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display(),
            crate::raft::peer_identity(id)
        )));
    }
    transport
        .prepare_to_serve("the coordinator", listen, config.insecure_plaintext)
        .map_err(|e| Error::Config(e.to_string()))?;
    raft_config.transport = transport.clone();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Serve {
            addr: listen,
            message: format!("cannot listen: {e}"),
        })?;
    let peers = raft_config.peers.clone();
    let node = RaftNode::start(raft_config, Catalog::default(), &shutdown)?;
    tracing::info!(
        id, %listen, peers = ?peers, data_dir = %config.data_dir.display(),
        tls = transport.is_tls(), identity = transport.identity().unwrap_or_default(),
        "lockstep coordinator serving"
    );
    let core = Arc::new(Core::new(node.handle(), peers, config, transport.clone()));
    let jobs = Jobs::new(core.clone(), shutdown.child_token());
    let watcher = tokio::spawn(jobs.clone().watch_leadership(shutdown.clone()));
    let schedules = tokio::spawn(jobs.clone().run_schedules());
    let versioner = tokio::spawn(crate::version::raise_cluster_version(
        core.clone(),
        shutdown.clone(),
    ));

    let service = CoordinatorServer::new(CoordinatorService::new(core.clone(), jobs.clone()));
    let (refused_tx, refused) = tokio::sync::mpsc::channel(64);
    let incoming = transport.incoming(listener, Some(refused_tx));
    tokio::spawn(audit_refused_connections(core.clone(), refused));
    let transport = node.transport_service();
    // Ends when the raft task ends: on shutdown, or on its own (a failure).
    let mut raft_task = tokio::spawn(node.wait());
    let hard_stop = {
        let s = shutdown.clone();
        async move {
            s.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(transport)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let serving = async {
        tokio::select! {
            r = served => r.map_err(|e| Error::Serve { addr: listen, message: e.to_string() }),
            _ = hard_stop => Ok(()),
        }
    };
    tokio::pin!(serving);
    let mut raft_ended = None;
    let served = tokio::select! {
        r = &mut serving => r,
        r = &mut raft_task => {
            let r = raft_result(id, r);
            if shutdown.is_cancelled() {
                // Stopped for the shutdown (or the watcher saw it fail).
                raft_ended = Some(r);
            } else {
                match &r {
                    Err(e) => tracing::error!(error = %crate::client::error_chain(e), "the raft node failed; shutting down"),
                    Ok(()) => tracing::error!("the raft node stopped unexpectedly; shutting down"),
                }
                raft_ended = Some(r.and(Err(raft::Error::Stopped { id })));
                shutdown.cancel();
            }
            serving.await
        }
    };
    shutdown.cancel();
    bounded("the leadership watcher", async {
        if let Err(e) = watcher.await {
            tracing::error!(error = %e, "leadership watcher ended abnormally");
        }
    })
    .await;
    bounded("the restore point schedules", async {
        if let Err(e) = schedules.await {
            tracing::error!(error = %e, "restore point schedules ended abnormally");
        }
    })
    .await;
    bounded("the cluster version task", async {
        if let Err(e) = versioner.await {
            tracing::error!(error = %e, "cluster version task ended abnormally");
        }
    })
    .await;
    bounded("the backup jobs", jobs.wait()).await;
    let raft = match raft_ended {
        Some(r) => r,
        None => bounded("the raft node", async { raft_result(id, raft_task.await) })
            .await
            .unwrap_or(Err(raft::Error::Stopped { id })),
    };
    tracing::info!("lockstep coordinator stopped");
    raft?;
    served
}

/// Records connections refused at the TLS handshake (plaintext, no or a
/// stranger's certificate) in the audit trail, when this node leads (a
/// follower only logs them: the CLI and agents reach the leader too).
async fn audit_refused_connections(
    core: Arc<Core>,
    mut refused: tokio::sync::mpsc::Receiver<lockstep_proto::tls::Refused>,
) {
    while let Some(r) = refused.recv().await {
        if core.require_leader().await.is_err() {
            continue;
        }
        let record = Command::Audit {
            record: AuditRecord {
                at_unix_ms: now_unix_ms(),
                identity: None,
                address: r.remote.to_string(),
                call: "connect".into(),
                args: Default::default(),
                outcome: AuditOutcome::Refused,
                detail: r.reason,
                recorded_by: format!("coordinator {}", core.id),
            },
        };
        if let Err(e) = core.propose(&record).await {
            tracing::warn!(remote = %r.remote, error = %e, "refused connection not audited");
        }
    }
}

/// The raft task's own result, or why it ended abnormally.
fn raft_result(
    id: u64,
    joined: std::result::Result<raft::Result<()>, tokio::task::JoinError>,
) -> raft::Result<()> {
    joined.unwrap_or_else(|e| {
        Err(raft::Error::TaskFailed {
            id,
            reason: e.to_string(),
        })
    })
}

/// Waits for one shutdown step, at most [`STEP_DEADLINE`]; `None` (and an
/// error naming the step) if it did not finish.
async fn bounded<T>(what: &str, step: impl Future<Output = T>) -> Option<T> {
    match tokio::time::timeout(STEP_DEADLINE, step).await {
        Ok(t) => Some(t),
        Err(_) => {
            tracing::error!("{what} did not stop within {STEP_DEADLINE:?}; exiting without it");
            None
        }
    }
}
