//! A client of the coordinator group that finds the leader by itself and
//! waits out elections: it tries the given coordinators in turn, follows a
//! follower's `lockstep-leader` redirect, and treats everything an election
//! looks like from outside (a coordinator that cannot be reached, a redirect
//! to a leader that is gone, "no leader known yet", a connection that broke
//! mid-call) as transient: it backs off and tries every coordinator again
//! until its patience runs out. Only a coordinator's answer ends a call
//! early.
//!
//! Calls that must not run twice use [`Client::call_once`]: when an attempt
//! reached a coordinator but its answer was lost, the caller is told
//! ([`Once::Unknown`]) and decides, from the catalog, whether to repeat it.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use lockstep_proto::tls::Transport;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::service::LEADER_METADATA;

/// How long connecting to one coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may take, unless [`Client::with_call_timeout`] says.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest limit for one attempt near the end of the patience.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// Pause after the first round in which no leader answered; it doubles
/// after every further round, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between two rounds (about an election timeout, so a new
/// leader is found soon after it is elected).
const MAX_PAUSE: Duration = Duration::from_millis(800);

/// What became of a call that must not run twice.
#[derive(Debug)]
pub enum Once<T> {
    /// The leader answered.
    Done(T),
    /// The call reached coordinator `url`, which may have acted on it, but
    /// its answer was lost (`error`: the connection broke, the call timed
    /// out, or the leader changed while it ran).
    Unknown {
        /// The coordinator the call went to.
        url: String,
        /// What happened to the answer.
        error: String,
    },
}

/// What one attempt at one coordinator came to.
enum Attempt<T> {
    /// The coordinator answered.
    Answer(T),
    /// A transient failure: try the others, and again after a pause.
    /// `maybe_done` when the coordinator may have acted on the call;
    /// `leader` when it named another coordinator as the leader.
    Retry {
        why: String,
        maybe_done: bool,
        leader: Option<String>,
    },
    /// A final answer (the call is wrong, or the catalog refused it).
    Fail(tonic::Status),
}

/// Leader-following coordinator client.
#[derive(Debug, Clone)]
pub struct Client {
    urls: Vec<String>,
    /// Where the last answer (or redirect) said the leader is.
    leader: Option<String>,
    /// How long a call keeps trying while no leader answers.
    patience: Duration,
    /// How long one attempt of a call may take.
    call_timeout: Duration,
    /// Whether an attempt is cut short when the patience runs out (not for
    /// calls that run while the caller waits, like a restore).
    bounded: bool,
    /// Mutual TLS or plaintext.
    transport: Transport,
}

impl Client {
    /// A client of the coordinators at `urls` that keeps trying for
    /// `patience` while no leader answers (covers an election).
    pub fn new(urls: Vec<String>, patience: Duration) -> Result<Client> {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
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
            bounded: true,
            transport: Transport::Plaintext,
        })
    }

    /// The same client connecting through `transport` (mutual TLS).
    pub fn with_transport(mut self, transport: Transport) -> Client {
        self.transport = transport;
        self
    }

    /// The same client with a longer (or shorter) limit per attempt, for
    /// calls that run while the caller waits (a restore): such an attempt
    /// may outlast the patience.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Client {
        self.call_timeout = timeout;
        self.bounded = false;
        self
    }

    /// How long a call keeps trying while no leader answers.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// Calls `f` on the leader, following redirects and waiting out
    /// elections until the patience runs out. Only for calls that are safe
    /// to repeat: an attempt whose answer was lost is simply made again.
    pub async fn call<T, F, Fut>(&mut self, what: &str, f: F) -> Result<T>
    where
        F: FnMut(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.run(what, true, f).await? {
            Once::Done(t) => Ok(t),
            // Not returned when repeating is allowed; mapped for totality.
            Once::Unknown { url, error } => Err(Error::NoCoordinator {
                what: what.to_string(),
                waited: Duration::ZERO,
                tried: url.clone(),
                last: format!("{url}: {error}"),
            }),
        }
    }

    /// Like [`Client::call`], for calls that must not run twice: stops at
    /// the first attempt that may have reached the leader without its
    /// answer coming back, and says so with [`Once::Unknown`].
    pub async fn call_once<T, F, Fut>(&mut self, what: &str, f: F) -> Result<Once<T>>
    where
        F: FnMut(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.run(what, false, f).await
    }

    async fn run<T, F, Fut>(&mut self, what: &str, repeat: bool, mut f: F) -> Result<Once<T>>
    where
        F: FnMut(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.patience;
        let mut tried: Vec<String> = Vec::new();
        let mut pause = FIRST_PAUSE;
        loop {
            // One round: the known leader first, then every coordinator; a
            // redirect puts the leader it names next, once per round.
            let mut queue: VecDeque<String> = self.leader.iter().cloned().collect();
            queue.extend(self.urls.iter().cloned());
            let mut seen: Vec<String> = Vec::new();
            // What each coordinator said in this round.
            let mut said: Vec<String> = Vec::new();
            while let Some(url) = queue.pop_front() {
                if seen.contains(&url) {
                    continue;
                }
                seen.push(url.clone());
                if !tried.contains(&url) {
                    tried.push(url.clone());
                }
                let limit = if self.bounded {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.call_timeout.min(left.max(MIN_ATTEMPT))
                } else {
                    self.call_timeout
                };
                match attempt(&self.transport, &url, limit, &mut f).await {
                    Attempt::Answer(t) => {
                        self.leader = Some(url);
                        return Ok(Once::Done(t));
                    }
                    Attempt::Fail(status) => {
                        return Err(Error::Rpc {
                            what: what.to_string(),
                            url,
                            code: status.code(),
                            message: status.message().to_string(),
                        });
                    }
                    Attempt::Retry {
                        why,
                        maybe_done,
                        leader,
                    } => {
                        tracing::debug!(what, %url, %why, maybe_done, "no answer from the leader; trying on");
                        if maybe_done && !repeat {
                            self.leader = None;
                            return Ok(Once::Unknown { url, error: why });
                        }
                        said.push(format!("{url}: {why}"));
                        self.leader = None;
                        if let Some(leader) = leader.map(|l| l.trim_end_matches('/').to_string())
                            && !seen.contains(&leader)
                        {
                            queue.push_front(leader.clone());
                            self.leader = Some(leader);
                        }
                    }
                }
            }
            let last = said.join("; ");
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NoCoordinator {
                    what: what.to_string(),
                    waited: now - started,
                    tried: tried.join(", "),
                    last,
                });
            }
            tracing::info!(what, %last, ?pause, "no leader answered; trying again");
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// One attempt of `f` at `url`, within `limit`.
async fn attempt<T, F, Fut>(
    transport: &Transport,
    url: &str,
    limit: Duration,
    f: &mut F,
) -> Attempt<T>
where
    F: FnMut(CoordinatorClient<Channel>) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    // Bounded as a whole: a frozen coordinator accepts the TCP connection
    // but never completes the HTTP/2 handshake.
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(transport, url))
        .await
        .unwrap_or_else(|_| Err(format!("cannot connect within {CONNECT_TIMEOUT:?}")));
    let client = match connected {
        Ok(c) => c,
        Err(why) => {
            return Attempt::Retry {
                why,
                maybe_done: false,
                leader: None,
            };
        }
    };
    match tokio::time::timeout(limit, f(client)).await {
        Err(_) => Attempt::Retry {
            why: format!("no answer within {limit:?}"),
            maybe_done: true,
            leader: None,
        },
        Ok(Ok(resp)) => Attempt::Answer(resp.into_inner()),
        Ok(Err(status)) => classify(status),
    }
}

/// Sorts a failed call: a redirect or an election is transient and the
/// call was not acted on; a broken connection or a coordinator whose raft
/// node is going away is transient but the call may have been acted on;
/// anything else is the answer.
fn classify<T>(status: tonic::Status) -> Attempt<T> {
    let message = status.message().to_string();
    if let Some(leader) = status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
    {
        return Attempt::Retry {
            why: message,
            maybe_done: false,
            leader: Some(leader.to_string()),
        };
    }
    let transient = match status.code() {
        // An election, a proposal that timed out or was dropped, or a
        // transport failure.
        tonic::Code::Unavailable
        // The connection broke mid-call (tonic's "transport error", an
        // HTTP/2 reset).
        | tonic::Code::Unknown
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded => true,
        // A coordinator whose raft node stopped (older coordinators answer
        // INTERNAL; this one UNAVAILABLE), or an HTTP/2 failure.
        tonic::Code::Internal => {
            message.contains("is stopped")
                || message.contains("ended abnormally")
                || message.contains("h2 protocol error")
        }
        _ => false,
    };
    if !transient {
        return Attempt::Fail(status);
    }
    Attempt::Retry {
        why: format!("{message} ({:?})", status.code()),
        maybe_done: !message.starts_with("no raft leader is known"),
        leader: None,
    }
}

async fn connect(
    transport: &Transport,
    url: &str,
) -> std::result::Result<CoordinatorClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad coordinator URL: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = transport
        .connect(endpoint)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: tonic::Status) -> (bool, bool, Option<String>) {
        match classify::<()>(status) {
            Attempt::Answer(()) => panic!("an error is no answer"),
            Attempt::Retry {
                maybe_done, leader, ..
            } => (true, maybe_done, leader),
            Attempt::Fail(_) => (false, false, None),
        }
    }

    #[test]
    fn a_redirect_is_followed_and_was_not_acted_on() {
        let mut s = tonic::Status::failed_precondition("not the leader");
        s.metadata_mut().insert(
            LEADER_METADATA,
            "http://127.0.0.1:7301".parse().expect("ascii"),
        );
        assert_eq!(
            verdict(s),
            (true, false, Some("http://127.0.0.1:7301".into()))
        );
    }

    #[test]
    fn elections_and_broken_connections_are_transient() {
        let election = tonic::Status::unavailable("no raft leader is known yet; retry");
        assert_eq!(verdict(election), (true, false, None));
        let proposal = tonic::Status::unavailable("start backup: not applied within 5s");
        assert_eq!(verdict(proposal), (true, true, None));
        let broken = tonic::Status::unknown("transport error");
        assert_eq!(verdict(broken), (true, true, None));
        let stopped = tonic::Status::internal("raft node 1 is stopped");
        assert_eq!(verdict(stopped), (true, true, None));
    }

    #[test]
    fn refusals_are_final() {
        for s in [
            tonic::Status::not_found("unknown cluster \"x\""),
            tonic::Status::already_exists("backup b1 of cluster c1 is still running"),
            tonic::Status::invalid_argument("cluster is empty"),
            tonic::Status::failed_precondition("backup b1 is FAILED, not COMPLETE"),
            tonic::Status::internal("decode the catalog's reply"),
        ] {
            assert_eq!(verdict(s), (false, false, None));
        }
    }

    #[tokio::test]
    async fn gives_up_after_the_patience_naming_what_it_tried() {
        // Nothing listens on these ports (bound, then closed).
        let urls: Vec<String> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                format!("http://{}", l.local_addr().expect("addr"))
            })
            .collect();
        let mut client = Client::new(urls.clone(), Duration::from_millis(600)).expect("client");
        let started = Instant::now();
        let err = client
            .call("list backups", |mut c| async move {
                c.list_backups(lockstep_proto::coordinator::ListBackupsRequest::default())
                    .await
            })
            .await
            .expect_err("nothing listens");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let Error::NoCoordinator { tried, last, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            tried.contains(&urls[0]) && tried.contains(&urls[1]),
            "{err}"
        );
        assert!(last.contains("cannot connect"), "{err}");
    }
}
