//! Registration with the coordinators: register this agent's server
//! (cluster, name, advertised address, identity), then send a heartbeat every
//! second. Follows the leader redirect (`lockstep-leader` metadata), rotates
//! through the coordinators on errors, backs off, and registers again when
//! the leader does not know the server. It runs beside the agent's own
//! service and never blocks it; failures are logged, never fatal.

use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::coordinator as pb;
use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use lockstep_proto::tls::Transport;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::agent::Agent;
use crate::error::error_text;
use crate::grpc::access::Refusal;
use tokio::sync::mpsc;

/// Interval between heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// First pause after a failure; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long connecting to a coordinator or one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The metadata key a follower puts the leader's URL in.
const LEADER_METADATA: &str = "lockstep-leader";

/// Who this agent is, for the coordinators.
#[derive(Debug, Clone)]
pub struct Registration {
    pub cluster: String,
    pub name: String,
    /// The agent's gRPC URL as coordinators reach it.
    pub agent_addr: String,
    pub coordinators: Vec<String>,
    /// Mutual TLS (the agent's certificate) or plaintext.
    pub transport: Transport,
}

/// What one call's failure means for the loop.
#[derive(Debug)]
enum Failure {
    /// The coordinator is a follower; the leader is at this URL.
    Redirect(String),
    /// The leader does not know the server: register again.
    NotRegistered,
    /// Anything else; try the next coordinator after a pause.
    Other(String),
}

/// Registers and heartbeats until `shutdown` is cancelled; after each
/// heartbeat, reports the calls this agent refused (`refusals`) to the
/// leader's audit trail.
pub async fn run(
    agent: Arc<Agent>,
    reg: Registration,
    mut refusals: mpsc::Receiver<Refusal>,
    shutdown: CancellationToken,
) {
    if reg.coordinators.is_empty() {
        return;
    }
    let mut target = 0usize;
    let mut redirect: Option<String> = None;
    let mut client: Option<(String, CoordinatorClient<Channel>)> = None;
    let mut registered = false;
    let mut backoff = MIN_BACKOFF;
    let mut last_error = String::new();
    loop {
        let url = redirect
            .clone()
            .unwrap_or_else(|| reg.coordinators[target % reg.coordinators.len()].clone());
        let result = match connect(&mut client, &reg.transport, &url).await {
            Err(e) => Err(Failure::Other(e)),
            Ok(c) if registered => match heartbeat(c, &reg).await {
                Ok(()) => report_refusals(c, &reg, &mut refusals).await,
                Err(e) => Err(e),
            },
            Ok(c) => register(c, &agent, &reg).await,
        };
        let pause = match result {
            Ok(()) => {
                if !registered {
                    tracing::info!(coordinator = %url, cluster = %reg.cluster, name = %reg.name, "registered with the coordinators");
                }
                registered = true;
                backoff = MIN_BACKOFF;
                last_error.clear();
                HEARTBEAT_EVERY
            }
            Err(Failure::Redirect(leader)) => {
                redirect = Some(leader);
                client = None;
                Duration::ZERO
            }
            Err(Failure::NotRegistered) => {
                tracing::info!(coordinator = %url, "the leader does not know this server; registering again");
                registered = false;
                Duration::ZERO
            }
            Err(Failure::Other(e)) => {
                if e != last_error {
                    tracing::warn!(coordinator = %url, error = %e, "cannot reach the coordinators; retrying");
                    last_error = e;
                }
                redirect = None;
                client = None;
                target += 1;
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn connect<'a>(
    cached: &'a mut Option<(String, CoordinatorClient<Channel>)>,
    transport: &Transport,
    url: &str,
) -> Result<&'a mut CoordinatorClient<Channel>, String> {
    if cached.as_ref().is_none_or(|(u, _)| u != url) {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad coordinator URL {url:?}: {e}"))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = transport
            .connect(endpoint)
            .await
            .map_err(|e| format!("connect to coordinator {url}: {}", error_text(&e)))?;
        *cached = Some((url.to_string(), CoordinatorClient::new(channel)));
    }
    Ok(&mut cached.as_mut().expect("set just above").1)
}

fn classify(what: &str, status: tonic::Status) -> Failure {
    if let Some(leader) = status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
    {
        return Failure::Redirect(leader.to_string());
    }
    if status.code() == tonic::Code::NotFound {
        return Failure::NotRegistered;
    }
    Failure::Other(format!(
        "{what}: {} ({:?})",
        status.message(),
        status.code()
    ))
}

async fn register(
    client: &mut CoordinatorClient<Channel>,
    agent: &Agent,
    reg: &Registration,
) -> Result<(), Failure> {
    let mut req = pb::RegisterServerRequest {
        cluster: reg.cluster.clone(),
        name: reg.name.clone(),
        agent_addr: reg.agent_addr.clone(),
        media: true,
        ..Default::default()
    };
    if let Some(own) = &agent.config().server {
        let Some(server) = agent.status().await.server else {
            return Err(Failure::Other(format!(
                "cannot detect the identity of server {} to register it",
                own.address()
            )));
        };
        req = pb::RegisterServerRequest {
            flavour: server.flavour.as_str().to_string(),
            version: server.version.clone(),
            server_id: server.server_id,
            server_uuid: server.server_uuid.clone(),
            media: false,
            ..req
        };
    }
    client
        .register_server(req)
        .await
        .map(|_| ())
        .map_err(|s| classify("register", s))
}

/// Sends the refusals waiting in `queue`; one that could not be sent is
/// logged (the agent's log has them all anyway).
async fn report_refusals(
    client: &mut CoordinatorClient<Channel>,
    reg: &Registration,
    queue: &mut mpsc::Receiver<Refusal>,
) -> Result<(), Failure> {
    while let Ok(r) = queue.try_recv() {
        let sent = client
            .report_refusal(pb::ReportRefusalRequest {
                cluster: reg.cluster.clone(),
                server: reg.name.clone(),
                identity: r.identity.clone(),
                address: r.address.clone(),
                call: r.call.clone(),
                reason: r.reason.clone(),
                args: Default::default(),
                at_unix_ms: r.at_unix_ms,
            })
            .await;
        if let Err(s) = sent {
            tracing::warn!(identity = %r.identity, call = %r.call, error = %s.message(), "could not report a refused call to the audit trail");
            return Err(classify("report a refusal", s));
        }
    }
    Ok(())
}

async fn heartbeat(
    client: &mut CoordinatorClient<Channel>,
    reg: &Registration,
) -> Result<(), Failure> {
    client
        .heartbeat(pb::HeartbeatRequest {
            cluster: reg.cluster.clone(),
            name: reg.name.clone(),
        })
        .await
        .map(|_| ())
        .map_err(|s| classify("heartbeat", s))
}

/// A client of the coordinators' leader for calls other than the
/// registration loop's (the binlog archiver's reports): follows the leader
/// redirect, and moves to the next coordinator when one cannot be reached.
#[derive(Debug)]
pub struct LeaderClient {
    coordinators: Vec<String>,
    transport: Transport,
    target: usize,
    redirect: Option<String>,
    cached: Option<(String, CoordinatorClient<Channel>)>,
}

impl LeaderClient {
    pub fn new(coordinators: Vec<String>, transport: Transport) -> Self {
        Self {
            coordinators,
            transport,
            target: 0,
            redirect: None,
            cached: None,
        }
    }

    /// Makes one call on the leader: tries each coordinator at most once
    /// (and each redirect it is given); the error says what the last one
    /// answered.
    pub async fn call<T, F, Fut>(&mut self, what: &str, mut f: F) -> Result<T, tonic::Status>
    where
        F: FnMut(CoordinatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if self.coordinators.is_empty() {
            return Err(tonic::Status::failed_precondition(
                "no coordinators are configured",
            ));
        }
        let mut last = tonic::Status::unavailable("no coordinator answered");
        for _ in 0..(2 * self.coordinators.len() + 1) {
            let url = self.redirect.clone().unwrap_or_else(|| {
                self.coordinators[self.target % self.coordinators.len()].clone()
            });
            let client = match connect(&mut self.cached, &self.transport, &url).await {
                Ok(c) => c.clone(),
                Err(e) => {
                    last = tonic::Status::unavailable(e);
                    self.next();
                    continue;
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(status)) => match classify(what, status.clone()) {
                    Failure::Redirect(leader) if self.redirect.as_ref() != Some(&leader) => {
                        self.redirect = Some(leader);
                        self.cached = None;
                    }
                    Failure::Other(_) if status.code() == tonic::Code::Unavailable => {
                        last = status;
                        self.next();
                    }
                    _ => return Err(status),
                },
                Err(_) => {
                    last = tonic::Status::deadline_exceeded(format!(
                        "{what}: coordinator {url} did not answer within {CALL_TIMEOUT:?}"
                    ));
                    self.next();
                }
            }
        }
        Err(last)
    }

    fn next(&mut self) {
        self.redirect = None;
        self.cached = None;
        self.target += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_and_unknown_servers_are_told_apart() {
        let mut s = tonic::Status::failed_precondition("not the leader");
        s.metadata_mut().insert(
            LEADER_METADATA,
            "http://127.0.0.1:1".parse().expect("ascii"),
        );
        assert!(matches!(classify("x", s), Failure::Redirect(u) if u == "http://127.0.0.1:1"));
        assert!(matches!(
            classify("x", tonic::Status::not_found("no such server")),
            Failure::NotRegistered
        ));
        assert!(matches!(
            classify("heartbeat", tonic::Status::unavailable("no leader")),
            Failure::Other(m) if m.contains("heartbeat") && m.contains("no leader")
        ));
    }
}
