//! A client of the coordinator group that finds the leader by itself: it
//! tries the given coordinators in turn, follows the `lockstep-leader`
//! redirect of a follower, and waits out elections until a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::service::LEADER_METADATA;

/// How long connecting to one coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may take, unless [`Client::with_call_timeout`] says.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after every coordinator failed, before the next round.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// Leader-following coordinator client.
#[derive(Debug, Clone)]
pub struct Client {
    urls: Vec<String>,
    /// Where the last answer (or redirect) said the leader is.
    leader: Option<String>,
    /// How long a call keeps trying before it gives up.
    patience: Duration,
    /// How long one attempt of a call may take.
    call_timeout: Duration,
}

impl Client {
    /// A client of the coordinators at `urls` that keeps trying for
    /// `patience` (covers an election).
    pub fn new(urls: Vec<String>, patience: Duration) -> Result<Client> {
        if urls.is_empty() {
            return Err(Error::Config(
                "no coordinators given (--coordinators URL,... or LOCKSTEP_COORDINATORS)".into(),
            ));
        }
        Ok(Client {
            urls,
            leader: None,
            patience,
            call_timeout: CALL_TIMEOUT,
        })
    }

    /// The same client with a longer (or shorter) limit per attempt, for
    /// calls that run while the caller waits (a restore).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Client {
        self.call_timeout = timeout;
        self
    }

    /// Calls `f` on the leader (or on whichever coordinator answers first if
    /// the call is not leader-only), following redirects.
    pub async fn call<T, F, Fut>(&mut self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut last = String::from("nothing tried");
        let mut redirects = 0;
        loop {
            let mut order: Vec<String> = self.leader.iter().cloned().collect();
            order.extend(
                self.urls
                    .iter()
                    .filter(|u| Some(*u) != self.leader.as_ref())
                    .cloned(),
            );
            let mut redirected = false;
            for url in order {
                let client = match connect(&url).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("{url}: {e}");
                        continue;
                    }
                };
                match tokio::time::timeout(self.call_timeout, f(client)).await {
                    Err(_) => last = format!("{url}: no answer within {:?}", self.call_timeout),
                    Ok(Ok(resp)) => {
                        self.leader = Some(url);
                        return Ok(resp.into_inner());
                    }
                    Ok(Err(status)) => {
                        if let Some(leader) = status
                            .metadata()
                            .get(LEADER_METADATA)
                            .and_then(|v| v.to_str().ok())
                            && redirects < 8
                        {
                            redirects += 1;
                            tracing::debug!(from = %url, to = leader, "following the leader redirect");
                            self.leader = Some(leader.to_string());
                            redirected = true;
                            break;
                        }
                        if status.code() == tonic::Code::Unavailable {
                            last = format!("{url}: {}", status.message());
                            continue;
                        }
                        return Err(Error::Rpc {
                            what: what.to_string(),
                            url,
                            code: status.code(),
                            message: status.message().to_string(),
                        });
                    }
                }
            }
            if started.elapsed() >= self.patience {
                return Err(Error::NoCoordinator {
                    what: what.to_string(),
                    waited: started.elapsed(),
                    tried: self.urls.join(","),
                    last,
                });
            }
            if !redirected {
                self.leader = None;
                tokio::time::sleep(ROUND_PAUSE).await;
            }
        }
    }
}

async fn connect(url: &str) -> std::result::Result<CoordinatorClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad coordinator URL: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {}", error_chain(&e)))?;
    Ok(CoordinatorClient::new(channel))
}

/// An error with its sources, "outer: inner: innermost" (tonic's transport
/// errors say little without them).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
