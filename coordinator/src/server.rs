//! Running one coordinator: the raft node, the leadership watcher (which
//! resolves inherited backups), and one gRPC server carrying both the raft
//! transport and the coordinator service, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::coordinator::coordinator_server::CoordinatorServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::job::Jobs;
use crate::raft::RaftNode;
use crate::service::CoordinatorService;

/// How long open gRPC streams may keep the process alive after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Runs the coordinator described by `config` until `shutdown` is cancelled
/// (or its raft node fails).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let raft_config = config.validate()?;
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Serve {
            addr: listen,
            message: format!("cannot listen: {e}"),
        })?;
    let peers = raft_config.peers.clone();
    let node = RaftNode::start(raft_config, Catalog::default(), &shutdown)?;
    tracing::info!(id = config.id, %listen, peers = ?peers, data_dir = %config.data_dir.display(), "lockstep coordinator serving");
    let core = Arc::new(Core::new(node.handle(), peers, config));
    let jobs = Jobs::new(core.clone(), shutdown.child_token());
    let watcher = tokio::spawn(jobs.clone().watch_leadership(shutdown.clone()));

    let service = CoordinatorServer::new(CoordinatorService::new(core, jobs.clone()));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let hard_stop = {
        let s = shutdown.clone();
        async move {
            s.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(node.transport_service())
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let served = tokio::select! {
        r = served => r.map_err(|e| Error::Serve { addr: listen, message: e.to_string() }),
        _ = hard_stop => Ok(()),
    };
    shutdown.cancel();
    if let Err(e) = watcher.await {
        tracing::error!(error = %e, "leadership watcher ended abnormally");
    }
    jobs.wait().await;
    let raft = node.shutdown().await;
    tracing::info!("lockstep coordinator stopped");
    served?;
    Ok(raft?)
}
