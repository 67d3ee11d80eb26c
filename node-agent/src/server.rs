//! Running the daemon: bind, serve gRPC until shutdown, release anything
//! held on the way out.

use std::net::SocketAddr;
use std::sync::Arc;

use lockstep_proto::agent::node_agent_server::NodeAgentServer;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentConfig};
use crate::error::{Error, Result};
use crate::grpc::AgentService;
use crate::grpc::access::AccessPolicy;
use lockstep_proto::tls::Guard;

/// How long open gRPC streams may keep the process alive after shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Serves the agent on `listen` until `shutdown` is cancelled.
pub async fn run(
    cfg: AgentConfig,
    listen: SocketAddr,
    insecure_plaintext: bool,
    shutdown: CancellationToken,
) -> Result<()> {
    let transport = cfg.transport.clone();
    transport
        .prepare_to_serve("the agent", listen, insecure_plaintext)
        .map_err(|e| Error::Config(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("listen address: {e}")))?;
    tracing::info!(
        listen = %local,
        name = %cfg.name,
        mysql = %cfg.server.as_ref().map_or("none (media agent)", |s| s.address()),
        sink = %cfg.sink_dir.display(),
        pools = ?cfg.pools,
        tls = transport.is_tls(),
        identity = transport.identity().unwrap_or_default(),
        "lockstep agent serving"
    );
    let registration = crate::register::Registration {
        cluster: cfg.cluster.clone(),
        name: cfg.name.clone(),
        agent_addr: cfg
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{local}")),
        coordinators: cfg.coordinators.clone(),
        transport: transport.clone(),
    };
    let (policy, refusals) = AccessPolicy::new(cfg.access.clone(), cfg.name.clone());
    // The media service serves the sink directory as a disk pool to other
    // agents (and the --pool directories, once there are any).
    let agent = Agent::new(cfg, shutdown.clone());
    // Before serving: snapshots and staged copies a crashed run left.
    agent.clean_leftovers().await;
    let pools = agent.local();
    // Registration runs beside the service and never blocks it.
    let registering = (!registration.coordinators.is_empty()).then(|| {
        tokio::spawn(crate::register::run(
            agent.clone(),
            registration,
            refusals,
            shutdown.clone(),
        ))
    });
    // Continuous binlog archiving runs beside the service too.
    let archiving = match (&agent.config().archive, &agent.config().server) {
        (Some(settings), Some(server)) => Some(tokio::spawn(crate::binlog::ship::run(
            server.clone(),
            settings.clone(),
            agent.config().cluster.clone(),
            agent.config().name.clone(),
            agent.config().coordinators.clone(),
            agent.local(),
            shutdown.clone(),
        ))),
        _ => None,
    };
    let service = NodeAgentServer::new(AgentService::new(agent.clone()));
    // No Nagle: PREPARED and COMMIT are tiny messages on the lock's critical
    // path, and delayed ACKs would add ~40 ms to the hold time.
    let (refused_tx, mut refused) = tokio::sync::mpsc::channel(64);
    let incoming = transport.incoming(listener, Some(refused_tx));
    // Connections refused at the handshake go to the audit trail with the
    // calls refused by the access policy.
    let reporter = policy.reporter();
    tokio::spawn(async move {
        while let Some(r) = refused.recv().await {
            let _ = reporter.try_send(crate::grpc::access::Refusal {
                identity: String::new(),
                address: r.remote.to_string(),
                at_unix_ms: crate::grpc::access::now_unix_ms(),
                call: "connect".into(),
                reason: r.reason,
            });
        }
    });
    // After the shutdown signal, open streams get a short grace period; the
    // agent's locks are already released by then (the prepare watchers see
    // the same signal).
    let hard_stop = {
        let s = shutdown.clone();
        async move {
            s.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let served = tonic::transport::Server::builder()
        // Notice a vanished caller quickly: the lock of a Prepare whose
        // caller is gone must drop well before its lease.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(2)))
        // Who may call what, before any handler runs.
        .layer(Guard::new(Arc::new(policy)))
        .add_service(service)
        .add_service(crate::grpc::media::media_service(pools))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
    let served = tokio::select! {
        r = served => r,
        _ = hard_stop => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; stopping anyway");
            Ok(())
        }
    };
    release(&agent).await;
    if let Some(task) = registering {
        task.abort();
    }
    if let Some(task) = archiving {
        // It stops on the shutdown signal after fsyncing what it took.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
    }
    served.map_err(|e| Error::Config(format!("gRPC server on {local} failed: {e}")))
}

async fn release(agent: &Arc<Agent>) {
    agent.release_all().await;
    tracing::info!("lockstep agent stopped");
}
