//! What the gRPC handlers and the backup driver share: the raft handle, the
//! peer map, proposals and reads on the catalog, and the leader's in-memory
//! server health (heartbeats are not replicated: a new leader starts with
//! none and learns them within a heartbeat interval).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lockstep_proto::agent::node_agent_client::NodeAgentClient;
use lockstep_proto::coordinator as pb;
use lockstep_proto::coordinator::coordinator_client::CoordinatorClient;
use lockstep_proto::tls::Transport;
use tonic::transport::{Channel, Endpoint};

use crate::catalog::{CATALOG_VERSION, Catalog, Command, FIRST_VERSION, Rejected};
use crate::config::Config;
use crate::convert;
use crate::error::{Error, Result};
use crate::raft::{self, RaftHandle, Role};

/// How long one proposal may take before we give up waiting for it.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer has to answer `NodeStatus` for `CoordinatorStatus`.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting to an agent may take.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of one coordinator.
#[derive(Debug)]
pub struct Core {
    /// This node's raft id.
    pub id: u64,
    /// The raft node.
    pub raft: RaftHandle<Catalog>,
    /// Every voter's URL.
    pub peers: BTreeMap<u64, String>,
    /// Timings of the backup job.
    pub config: Config,
    /// How this coordinator reaches agents and peers (mutual TLS or
    /// plaintext).
    pub transport: Transport,
    /// (cluster, server) → last heartbeat, on the leader.
    health: Mutex<HashMap<(String, String), Instant>>,
}

/// Fault injection: when fail point `name` is configured as `return(MS)`
/// (FAILPOINTS, in builds with the `failpoints` feature), pauses MS ms;
/// otherwise returns at once.
pub(crate) async fn fail_pause(name: &'static str) {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = fail::eval(name, |arg| {
        arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(5000)
    }) {
        tracing::warn!(name, ms, "fail point: pausing");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Fault injection: whether fail point `name` is configured (any action
/// but `off`), in builds with the `failpoints` feature; never otherwise.
pub(crate) fn fail_hit(name: &'static str) -> bool {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        tracing::warn!(name, "fail point: hit");
        return true;
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    false
}

/// Milliseconds since the Unix epoch, for catalog commands.
pub fn now_unix_ms() -> i64 {
    now_unix_us() / 1000
}

/// A unix time in milliseconds as RFC 3339 (seconds), for messages.
pub fn unix_ms_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Microseconds since the Unix epoch.
pub fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Core {
    /// A core for node `config.id`.
    pub fn new(
        raft: RaftHandle<Catalog>,
        peers: BTreeMap<u64, String>,
        config: Config,
        transport: Transport,
    ) -> Core {
        Core {
            id: config.id,
            raft,
            peers,
            config,
            transport,
            health: Mutex::new(HashMap::new()),
        }
    }

    /// Connects to an agent (bounded), without Nagle: COMMIT is on the
    /// lock's critical path.
    pub(crate) async fn agent_client(
        &self,
        addr: &str,
    ) -> std::result::Result<NodeAgentClient<Channel>, String> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("bad agent address {addr:?}: {e}"))?
            .connect_timeout(AGENT_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2));
        let channel = self.transport.connect(endpoint).await.map_err(|e| {
            format!(
                "cannot reach agent at {addr}: {}",
                crate::client::error_chain(&e)
            )
        })?;
        Ok(NodeAgentClient::new(channel))
    }

    /// Replicates `cmd`; `Ok` once applied and accepted by the catalog.
    ///
    /// A command needing a catalog version above the cluster's is refused
    /// before it reaches raft (some voter might not decode it), naming the
    /// coordinators that hold the cluster back.
    pub async fn propose(&self, cmd: &Command) -> Result<()> {
        let what = describe(cmd);
        let data = serde_json::to_vec(cmd).map_err(|source| Error::Reply {
            what: what.clone(),
            source,
        })?;
        let needs = cmd.min_version();
        // Every cluster is at FIRST_VERSION or above: such commands skip the
        // read (and its wait behind the raft task) on the backup's hot path.
        if needs > FIRST_VERSION {
            let mut admits = self.raft.read_local(move |c| c.admits(needs)).await?;
            if let Err(cluster) = admits {
                // Every voter may support it already and the periodic
                // raise not have run yet (a group just formed): raise now.
                let voters = self.voter_versions().await;
                if let Some(version) = crate::catalog::raise_to(cluster, voters.values().copied())
                    .filter(|v| *v >= needs)
                {
                    let raise = Command::SetClusterVersion { version };
                    match Box::pin(self.propose(&raise)).await {
                        Ok(()) | Err(Error::Rejected(Rejected::VersionNotRaised { .. })) => {}
                        Err(e) => return Err(e),
                    }
                    admits = self.raft.read_local(move |c| c.admits(needs)).await?;
                }
            }
            if let Err(cluster) = admits {
                let op = serde_json::from_slice::<serde_json::Value>(&data)
                    .ok()
                    .and_then(|v| v.get("op")?.as_str().map(String::from))
                    .unwrap_or(what);
                return Err(self.version_refusal(op, needs, cluster).await);
            }
        }
        #[cfg(feature = "failpoints")]
        let data = if fail::eval("propose-as-newer-build", |_| ()).is_some() {
            tracing::warn!(%what, "fail point: proposing a command kind this build cannot decode");
            br#"{"op":"from_a_newer_build"}"#.to_vec()
        } else {
            data
        };
        let reply = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.propose(data))
            .await
            .map_err(|_| Error::ProposalTimeout {
                what: what.clone(),
                timeout: PROPOSE_TIMEOUT,
            })??;
        let result: std::result::Result<(), Rejected> =
            serde_json::from_slice(&reply).map_err(|source| Error::Reply { what, source })?;
        Ok(result?)
    }

    /// The cluster version this node has applied.
    pub async fn cluster_version(&self) -> Result<u32> {
        Ok(self.raft.read_local(Catalog::cluster_version).await?)
    }

    /// The catalog version each voter advertises in `NodeStatus` (this
    /// node: its own build's); `None` for a voter that did not answer. A
    /// build that predates versions answers 0, counted as version 1.
    pub async fn voter_versions(&self) -> BTreeMap<u64, Option<u32>> {
        let asks = self.peers.iter().map(|(&id, url)| async move {
            if id == self.id {
                return (id, Some(CATALOG_VERSION));
            }
            let v = tokio::time::timeout(PEER_STATUS_TIMEOUT, peer_status(&self.transport, url))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|m| m.catalog_version.max(FIRST_VERSION));
            (id, v)
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// Why a command needing catalog version `needs` cannot be proposed
    /// while the cluster is at `cluster`.
    async fn version_refusal(&self, command: String, needs: u32, cluster: u32) -> Error {
        let behind = crate::version::behind(needs, cluster, &self.voter_versions().await);
        Error::VersionTooLow {
            command,
            needs,
            behind,
        }
    }

    /// Linearizable read of the catalog (leader only).
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Catalog) -> R + Send + 'static,
    {
        Ok(self.raft.read(f).await?)
    }

    /// Fails with the not-leader redirect unless this node leads; returns
    /// the term it leads in.
    pub async fn require_leader(&self) -> Result<u64> {
        let st = self.raft.status().await?;
        if st.role == Role::Leader {
            return Ok(st.term);
        }
        Err(Error::Raft(raft::Error::NotLeader {
            leader_id: st.leader_id,
            leader_addr: st.leader_id.and_then(|id| self.peers.get(&id).cloned()),
        }))
    }

    /// Records a heartbeat (leader only; NOT_FOUND-style rejection for an
    /// unregistered server so its agent registers again).
    pub async fn heartbeat(&self, cluster: &str, name: &str) -> Result<()> {
        self.require_leader().await?;
        let (c, n) = (cluster.to_string(), name.to_string());
        let known = self
            .raft
            .read_local(move |cat| {
                cat.clusters.get(&c).is_some_and(|s| s.contains_key(&n))
                    || cat.media.get(&c).is_some_and(|m| m.contains_key(&n))
            })
            .await?;
        if !known {
            return Err(Error::UnknownServer {
                cluster: cluster.into(),
                name: name.into(),
            });
        }
        self.touch(cluster, name);
        Ok(())
    }

    /// Notes that `cluster/name` is alive now.
    pub fn touch(&self, cluster: &str, name: &str) {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((cluster.into(), name.into()), Instant::now());
    }

    /// Forgets every heartbeat (on losing or gaining leadership).
    pub fn clear_health(&self) {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Registered servers (of one cluster, or all) with their health, then
    /// the media agents (`media` set).
    pub async fn list_servers(&self, cluster: Option<String>) -> Result<Vec<pb::Server>> {
        let (servers, media) = self
            .read(move |cat| {
                let wanted = |c: &String| cluster.as_ref().is_none_or(|want| want == c);
                let servers: Vec<_> = cat
                    .clusters
                    .iter()
                    .filter(|(c, _)| wanted(c))
                    .flat_map(|(_, s)| s.values().cloned())
                    .collect();
                let media: Vec<_> = cat
                    .media
                    .iter()
                    .filter(|(c, _)| wanted(c))
                    .flat_map(|(_, m)| m.values().cloned())
                    .collect();
                (servers, media)
            })
            .await?;
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let seen = |cluster: &str, name: &str| {
            let age = health
                .get(&(cluster.to_string(), name.to_string()))
                .map(Instant::elapsed);
            let healthy = age.is_some_and(|a| a < self.config.health_window);
            (age.map(|a| a.as_millis() as u64), healthy)
        };
        let servers = servers.iter().map(|s| {
            let (age, healthy) = seen(&s.cluster, &s.name);
            convert::server(s, age, healthy)
        });
        let media = media.iter().map(|m| {
            let (age, healthy) = seen(&m.cluster, &m.name);
            pb::Server {
                cluster: m.cluster.clone(),
                name: m.name.clone(),
                agent_addr: m.agent_addr.clone(),
                registered_at_unix_ms: m.registered_at_unix_ms,
                last_heartbeat_age_ms: age,
                healthy,
                media: true,
                ..pb::Server::default()
            }
        });
        Ok(servers.chain(media).collect())
    }

    /// This member's status as `CoordinatorStatus` and `NodeStatus` report
    /// it.
    pub fn own_member(&self, st: &raft::NodeStatus, url: &str, cluster_version: u32) -> pb::Member {
        let transport = match self.transport.identity() {
            Some(identity) => format!("mutual TLS as {identity}"),
            None if self.config.listen.ip().is_loopback() => "plaintext (loopback only)".into(),
            None => "INSECURE PLAINTEXT (--insecure-plaintext)".into(),
        };
        pb::Member {
            transport,
            ..convert::member(st, url, cluster_version)
        }
    }

    /// Every member's raft state; unreachable peers are reported unhealthy.
    pub async fn group_status(&self) -> Result<pb::CoordinatorStatusReply> {
        let own = self.raft.status().await?;
        let cluster_version = self.cluster_version().await?;
        let asks = self.peers.iter().map(|(&id, url)| {
            let own = own.clone();
            async move {
                if id == own.id {
                    return self.own_member(&own, url, cluster_version);
                }
                match tokio::time::timeout(PEER_STATUS_TIMEOUT, peer_status(&self.transport, url))
                    .await
                {
                    Ok(Ok(mut m)) => {
                        m.url = url.clone();
                        // A build that predates catalog versions: version 1.
                        m.catalog_version = m.catalog_version.max(FIRST_VERSION);
                        m.cluster_version = m.cluster_version.max(FIRST_VERSION);
                        m
                    }
                    Ok(Err(e)) => unreachable_member(id, url, e),
                    Err(_) => unreachable_member(
                        id,
                        url,
                        format!("no answer within {PEER_STATUS_TIMEOUT:?}"),
                    ),
                }
            }
        });
        let mut members = futures::future::join_all(asks).await;
        // A member whose voters differ was configured with other peers: the
        // coordinators disagree on membership (their raft traffic is refused).
        for m in members
            .iter_mut()
            .filter(|m| m.healthy && m.voters != own.voters)
        {
            m.healthy = false;
            m.error = format!(
                "disagrees on membership: its voters are {:?}, coordinator {}'s are {:?}",
                m.voters, own.id, own.voters
            );
        }
        let leader_id = own.leader_id.unwrap_or(0);
        Ok(pb::CoordinatorStatusReply {
            answered_by: own.id,
            leader_id,
            leader_url: self.peers.get(&leader_id).cloned().unwrap_or_default(),
            members,
            cluster_version,
        })
    }
}

fn unreachable_member(id: u64, url: &str, error: String) -> pb::Member {
    pb::Member {
        id,
        url: url.to_string(),
        healthy: false,
        error,
        ..pb::Member::default()
    }
}

async fn peer_status(transport: &Transport, url: &str) -> std::result::Result<pb::Member, String> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| format!("bad URL: {e}"))?;
    let channel = transport
        .connect(endpoint)
        .await
        .map_err(|e| format!("connect: {}", crate::client::error_chain(&e)))?;
    let mut client = CoordinatorClient::new(channel);
    client
        .node_status(pb::NodeStatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("NodeStatus: {}", s.message()))
}

/// A short description of a command for errors and logs.
fn describe(cmd: &Command) -> String {
    match cmd {
        Command::RegisterServer(s) => format!("register server {}/{}", s.cluster, s.name),
        Command::RemoveServer { cluster, name } => format!("remove server {cluster}/{name}"),
        Command::StartBackup { id, cluster, .. } => format!("start backup {id} of {cluster}"),
        Command::CommitCut { id, .. } => format!("commit the cut of backup {id}"),
        Command::Released { id, server, .. } => {
            format!("record server {server} released for backup {id}")
        }
        Command::ArtifactStored { id, server, .. } => {
            format!("record server {server}'s artifact of backup {id}")
        }
        Command::Complete { id, .. } => format!("complete backup {id}"),
        Command::StartRestore { id, backup_id, .. } => {
            format!("start restore {id} of backup {backup_id}")
        }
        Command::RestoreServerDone { id, server, .. } => {
            format!("record server {server} of restore {id}")
        }
        Command::FinishRestore { id, .. } => format!("finish restore {id}"),
        Command::Fail { id, .. } => format!("fail backup {id}"),
        Command::SetClusterVersion { version } => {
            format!("raise the cluster's catalog version to {version}")
        }
        Command::RegisterMedia(m) => format!("register media agent {}/{}", m.cluster, m.name),
        Command::AddSink { cluster, sink } => format!("add sink {} to {cluster}", sink.name),
        Command::RemoveSink { cluster, name } => format!("remove sink {name} from {cluster}"),
        Command::SetSinkPolicy { cluster, .. } => format!("set the sink policy of {cluster}"),
        Command::CopyStored {
            id, server, sink, ..
        } => format!("record the copy of server {server} of backup {id} in sink {sink}"),
        Command::CopyVerified {
            id, server, sink, ..
        } => format!("record the check of server {server} of backup {id} in sink {sink:?}"),
        Command::ImportBackup { backup } => format!("import backup {}", backup.id),
        Command::RemoveMedia { cluster, name } => format!("remove media agent {cluster}/{name}"),
        Command::SetRole { pattern, role, .. } => format!("give {pattern:?} role {role}"),
        Command::RemoveRole { pattern } => format!("remove the role of {pattern:?}"),
        Command::Audit { record } => format!("record the audit of a {} call", record.call),
        Command::ArchiveSegments {
            cluster,
            server,
            segments,
        } => format!(
            "record {} archived binlog segment(s) of {cluster}/{server}",
            segments.len()
        ),
        Command::AddRestorePoint { point } => {
            format!("record restore point {} of {}", point.id, point.cluster)
        }
        Command::SetRestorePointSchedule { cluster, .. } => {
            format!("set the restore point schedule of {cluster}")
        }
    }
}
