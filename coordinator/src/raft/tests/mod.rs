//! Real raft nodes over real gRPC on 127.0.0.1 with redb stores in temp dirs,
//! replicating a small counter state machine.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use super::*;

mod snapshot;

/// Counts how often a node instance applied entries or restored images.
#[derive(Debug, Default)]
struct Probe {
    applies: AtomicU64,
    restores: AtomicU64,
}

/// Adds little-endian u64s; remembers every value in apply order.
#[derive(Debug, Default)]
struct Counter {
    total: u64,
    log: Vec<u64>,
    /// Applied to since the last `take_changes`.
    changed: bool,
    probe: Arc<Probe>,
}

/// The one key a [`Counter`] is stored under.
const COUNTER_KEY: &str = "counter";
/// An entry the counter cannot apply (one a newer build would write).
const NEWER: &[u8] = b"new";

impl StateMachine for Counter {
    /// An entry that is not 8 bytes is one this counter cannot apply: it
    /// stops the node (as an entry from a newer build stops a coordinator).
    fn apply(
        &mut self,
        index: u64,
        data: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        // `NEWER` stands for an entry written by a newer build: it cannot
        // be applied, and stops the node. Any other data that is not a
        // counter value is applied as a no-op answered "bad command".
        if data == NEWER {
            return Err(format!("counter entry {index} comes from a newer build").into());
        }
        self.probe.applies.fetch_add(1, Ordering::SeqCst);
        let Some(v) = data.try_into().ok().map(u64::from_le_bytes) else {
            return Ok(b"bad command".to_vec());
        };
        self.total += v;
        self.log.push(v);
        self.changed = true;
        Ok(self.total.to_le_bytes().to_vec())
    }

    fn take_changes(&mut self) -> Vec<Change> {
        if !std::mem::take(&mut self.changed) {
            return Vec::new();
        }
        let mut image = self.total.to_le_bytes().to_vec();
        for v in &self.log {
            image.extend_from_slice(&v.to_le_bytes());
        }
        vec![(COUNTER_KEY.to_string(), Some(image))]
    }

    /// Counts a restore when there is a stored state to load.
    fn load(
        &mut self,
        entries: Vec<KeyValue>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Some((_, data)) = entries.into_iter().find(|(k, _)| k == COUNTER_KEY) else {
            self.total = 0;
            self.log.clear();
            return Ok(());
        };
        self.probe.restores.fetch_add(1, Ordering::SeqCst);
        if !data.len().is_multiple_of(8) || data.is_empty() {
            return Err(format!("counter image of {} bytes", data.len()).into());
        }
        let mut words = data
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")));
        self.total = words.next().expect("non-empty image");
        self.log = words.collect();
        Ok(())
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

/// One running node: the raft node plus the gRPC server carrying its
/// transport service.
struct Running {
    node: RaftNode<Counter>,
    handle: RaftHandle<Counter>,
    probe: Arc<Probe>,
    server: JoinHandle<()>,
    server_stop: CancellationToken,
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
    addrs: BTreeMap<u64, SocketAddr>,
    peers: BTreeMap<u64, String>,
    snapshot_threshold: u64,
    /// Applied to every node's config after the defaults.
    tweak: Arc<Tweak>,
    nodes: BTreeMap<u64, Running>,
    shutdown: CancellationToken,
}

/// Changes a node's config (given its id) before it starts.
type Tweak = dyn Fn(u64, &mut RaftConfig) + Send + Sync;

/// A member of a 3-node cluster other than `leader`.
fn follower_of(leader: u64) -> u64 {
    (1..=3).find(|&i| i != leader).expect("a follower")
}

impl Cluster {
    /// Start `n` voters on free ports.
    async fn start(n: u64, snapshot_threshold: u64) -> Cluster {
        Self::start_with(n, snapshot_threshold, |_, _| {}).await
    }

    /// Start `n` voters on free ports, each config changed by `tweak`.
    async fn start_with(
        n: u64,
        snapshot_threshold: u64,
        tweak: impl Fn(u64, &mut RaftConfig) + Send + Sync + 'static,
    ) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("create temp dir");
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind free port");
            listeners.insert(id, l);
        }
        let addrs: BTreeMap<u64, SocketAddr> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().expect("local addr")))
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, a)| (*id, format!("http://{a}")))
            .collect();
        let mut cluster = Cluster {
            root: dir.path().to_path_buf(),
            _dir: dir,
            addrs,
            peers,
            snapshot_threshold,
            tweak: Arc::new(tweak),
            nodes: BTreeMap::new(),
            shutdown: CancellationToken::new(),
        };
        for (id, l) in listeners {
            cluster.run_node(id, l);
        }
        cluster
    }

    fn config(&self, id: u64) -> RaftConfig {
        let mut c = RaftConfig::new(
            id,
            self.addrs[&id],
            self.peers.clone(),
            self.root.join(format!("node{id}")),
        );
        c.tick_interval = Duration::from_millis(50);
        c.snapshot_threshold = self.snapshot_threshold;
        (self.tweak)(id, &mut c);
        c
    }

    fn run_node(&mut self, id: u64, listener: TcpListener) {
        let probe = Arc::new(Probe::default());
        let sm = Counter {
            probe: probe.clone(),
            ..Counter::default()
        };
        let node = RaftNode::start(self.config(id), sm, &self.shutdown).expect("start raft node");
        let service = node.transport_service();
        let server_stop = CancellationToken::new();
        let stop = server_stop.clone();
        let server = tokio::spawn(async move {
            let r = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(node = id, error = %e, "grpc server");
            }
        });
        let handle = node.handle();
        self.nodes.insert(
            id,
            Running {
                node,
                handle,
                probe,
                server,
                server_stop,
            },
        );
    }

    /// Restart a stopped node from its data dir, on its old port.
    async fn restart(&mut self, id: u64) {
        let listener = TcpListener::bind(self.addrs[&id])
            .await
            .expect("rebind node port");
        self.run_node(id, listener);
    }

    /// Stop one node: raft tasks first, then its gRPC server.
    async fn stop(&mut self, id: u64) {
        let r = self.nodes.remove(&id).expect("node is running");
        r.node.shutdown().await.expect("raft node stopped cleanly");
        r.server_stop.cancel();
        let mut server = r.server;
        if tokio::time::timeout(Duration::from_secs(3), &mut server)
            .await
            .is_err()
        {
            server.abort();
            let _ = server.await;
        }
    }

    async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    fn h(&self, id: u64) -> &RaftHandle<Counter> {
        &self.nodes[&id].handle
    }

    /// Wait until every running node sees the same leader, which is running
    /// and says it leads.
    async fn leader(&self) -> u64 {
        wait_for("a leader all running nodes agree on", async || {
            let mut seen = None;
            for r in self.nodes.values() {
                let s = r.handle.status().await.ok()?;
                let l = s.leader_id?;
                if seen.is_some_and(|x| x != l) {
                    return None;
                }
                seen = Some(l);
            }
            let l = seen?;
            let s = self.nodes.get(&l)?.handle.status().await.ok()?;
            (s.role == Role::Leader).then_some(l)
        })
        .await
    }

    /// Wait until every running node applied at least `index`.
    async fn applied_everywhere(&self, index: u64) {
        wait_for("all running nodes applied", async || {
            for r in self.nodes.values() {
                if r.handle.status().await.ok()?.applied < index {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// Proposes 1..=5 on `leader` and waits until every node applied them;
    /// returns the applied index.
    async fn settled(&self, leader: u64) -> u64 {
        for v in 1..=5 {
            propose(self.h(leader), v).await;
        }
        let applied = self.h(leader).status().await.expect("status").applied;
        self.applied_everywhere(applied).await;
        applied
    }

    /// After [`Cluster::settled`], stops a follower and proposes
    /// 6..=`upto` without it; returns the follower and the leader's counter.
    async fn lag_a_follower(&mut self, leader: u64, upto: u64) -> (u64, (u64, Vec<u64>)) {
        self.settled(leader).await;
        let lagging = follower_of(leader);
        info!(
            lagging,
            upto, "--- step: stop a follower, commit up to {upto} without it"
        );
        self.stop(lagging).await;
        for v in 6..=upto {
            propose(self.h(leader), v).await;
        }
        (lagging, self.counter(leader).await)
    }

    /// Restarts the stopped `lagging` node and waits until its counter is
    /// `want`, checking it was restored once from its own store and once
    /// from the leader's snapshot; returns its probe.
    async fn restart_and_catch_up_by_snapshot(
        &mut self,
        lagging: u64,
        want: &(u64, Vec<u64>),
    ) -> Arc<Probe> {
        self.restart(lagging).await;
        let probe = self.nodes[&lagging].probe.clone();
        wait_for("lagging node to catch up", async || {
            (self.counter(lagging).await == *want).then_some(())
        })
        .await;
        assert_eq!(
            probe.restores.load(Ordering::SeqCst),
            2,
            "restored once from its own store and once from the leader's snapshot"
        );
        probe
    }

    async fn counter(&self, id: u64) -> (u64, Vec<u64>) {
        self.h(id)
            .read_local(|c| (c.total, c.log.clone()))
            .await
            .expect("local read")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for r in self.nodes.values() {
            r.server_stop.cancel();
        }
    }
}

/// Poll `check` until it yields a value; panic after 20 s.
async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn propose(h: &RaftHandle<Counter>, v: u64) -> u64 {
    let reply = h.propose(v.to_le_bytes().to_vec()).await.expect("proposal");
    u64::from_le_bytes(reply.try_into().expect("8-byte reply"))
}

/// Three nodes elect a leader; proposals on it apply everywhere in the same
/// order; a follower redirects to the leader's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_in_order_and_redirect() {
    let mut c = Cluster::start(3, 1000).await;
    info!("--- step: elect");
    let t0 = Instant::now();
    let leader = c.leader().await;
    info!(leader, elapsed = ?t0.elapsed(), "leader elected");
    eprintln!("initial election took {:?}", t0.elapsed());

    info!("--- step: propose 1..=20 on the leader");
    let mut latencies = Vec::new();
    let mut expected = 0;
    for v in 1..=20 {
        let t = Instant::now();
        expected += v;
        assert_eq!(propose(c.h(leader), v).await, expected);
        latencies.push(t.elapsed());
    }
    latencies.sort();
    eprintln!(
        "proposal latency: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    let applied = c.h(leader).status().await.expect("status").applied;
    c.applied_everywhere(applied).await;
    let want: Vec<u64> = (1..=20).collect();
    for id in 1..=3 {
        assert_eq!(c.counter(id).await, (expected, want.clone()), "node {id}");
    }

    info!("--- step: follower redirects");
    let follower = follower_of(leader);
    let err = c
        .h(follower)
        .propose(1u64.to_le_bytes().to_vec())
        .await
        .expect_err("follower must refuse");
    assert!(err.is_retryable());
    match err {
        Error::NotLeader {
            leader_id,
            leader_addr,
        } => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_addr.as_deref(), Some(c.peers[&leader].as_str()));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert!(matches!(
        c.h(follower).read(|c| c.total).await,
        Err(Error::NotLeader { .. })
    ));

    info!("--- step: linearizable read and status");
    assert_eq!(c.h(leader).read(|c| c.total).await.expect("read"), expected);
    let s = c.h(leader).status().await.expect("status");
    assert_eq!(s.voters, vec![1, 2, 3]);
    assert_eq!(s.role, Role::Leader);
    assert_eq!(s.id, leader);
    c.stop_all().await;
}

/// Every node restarts from its data dir; state survives and no entry is
/// applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_without_reapplying() {
    let mut c = Cluster::start(3, 1000).await;
    let leader = c.leader().await;
    for v in 1..=10 {
        propose(c.h(leader), v).await;
    }
    let applied = c.h(leader).status().await.expect("status").applied;
    c.applied_everywhere(applied).await;

    info!("--- step: restart all");
    c.stop_all().await;
    for id in 1..=3 {
        c.restart(id).await;
    }
    for id in 1..=3 {
        assert_eq!(c.counter(id).await.0, 55, "node {id} loaded its state");
        assert_eq!(c.nodes[&id].probe.restores.load(Ordering::SeqCst), 1);
    }
    let leader = c.leader().await;
    for v in [100, 200] {
        propose(c.h(leader), v).await;
    }
    let applied = c.h(leader).status().await.expect("status").applied;
    c.applied_everywhere(applied).await;
    for id in 1..=3 {
        let (total, log) = c.counter(id).await;
        assert_eq!(total, 355, "node {id}");
        assert_eq!(log.len(), 12, "node {id}");
        assert_eq!(
            c.nodes[&id].probe.applies.load(Ordering::SeqCst),
            2,
            "node {id} applied only the new entries after restart"
        );
    }
    c.stop_all().await;
}

/// A node that missed more than the snapshot threshold catches up through a
/// snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_via_snapshot() {
    let mut c = Cluster::start(3, 20).await;
    let leader = c.leader().await;
    let (lagging, want) = c.lag_a_follower(leader, 60).await;
    assert_eq!(want.0, (1..=60).sum::<u64>());

    info!("--- step: restart it");
    let probe = c.restart_and_catch_up_by_snapshot(lagging, &want).await;
    assert!(
        probe.applies.load(Ordering::SeqCst) < 55,
        "caught up by snapshot, not by replaying every entry"
    );
    c.stop_all().await;
}

/// One voter elects itself, commits, and keeps its state over a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_mode() {
    let mut c = Cluster::start(1, 5).await;
    assert_eq!(c.leader().await, 1);
    for v in 1..=12 {
        propose(c.h(1), v).await;
    }
    assert_eq!(c.h(1).read(|c| c.total).await.expect("read"), 78);
    c.stop(1).await;
    c.restart(1).await;
    assert_eq!(c.leader().await, 1);
    assert_eq!(propose(c.h(1), 2).await, 80);
    assert_eq!(c.nodes[&1].probe.applies.load(Ordering::SeqCst), 1);
    c.stop_all().await;
}

/// An entry the state machine cannot apply stops the node with an error
/// naming its index, instead of being skipped; the entry is not recorded as
/// applied, so the node stops at it again after a restart (until a build
/// that can apply it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_state_machine_cannot_apply_stops_the_node() {
    let mut c = Cluster::start(1, 1000).await;
    assert_eq!(c.leader().await, 1);
    info!("--- step: a good entry applies");
    assert_eq!(propose(c.h(1), 5).await, 5);
    info!("--- step: an entry the counter cannot decode");
    let bad = c.h(1).propose(NEWER.to_vec()).await;
    assert!(bad.is_err(), "the proposer hears the node stopped: {bad:?}");
    let r = c.nodes.remove(&1).expect("node 1");
    let ended = tokio::time::timeout(Duration::from_secs(10), r.node.wait())
        .await
        .expect("the raft task ends by itself");
    r.server_stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), r.server)
        .await
        .expect("the gRPC server stops")
        .expect("gRPC server task");
    let e = ended.expect_err("the node stopped with an error");
    let msg = format!(
        "{e}: {}",
        e.source().map(|s| s.to_string()).unwrap_or_default()
    );
    assert!(
        matches!(e, Error::Apply { id: 1, index: i, .. } if i >= 2)
            && msg.contains("counter entry")
            && msg.contains("newer build"),
        "{msg}"
    );
    let Error::Apply { index, .. } = e else {
        unreachable!("matched above")
    };
    assert!(msg.contains(&format!("index {index}")), "{msg}");

    info!("--- step: a restart stops at the same entry");
    c.restart(1).await;
    let r = c.nodes.remove(&1).expect("node 1");
    let again = tokio::time::timeout(Duration::from_secs(10), r.node.wait())
        .await
        .expect("the raft task ends by itself again");
    r.server_stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), r.server)
        .await
        .expect("the gRPC server stops")
        .expect("gRPC server task");
    assert!(
        matches!(again, Err(Error::Apply { index: i, .. }) if i == index),
        "{again:?}"
    );
    assert_eq!(
        r.probe.applies.load(Ordering::SeqCst),
        0,
        "the good entry stayed applied; the bad one never is"
    );
    assert_eq!(
        r.probe.restores.load(Ordering::SeqCst),
        1,
        "state from the store"
    );
}

/// Stopping the leader gets a new one elected within a few seconds, and it
/// accepts proposals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover() {
    let mut c = Cluster::start(3, 1000).await;
    let old = c.leader().await;
    let old_term = c.h(old).status().await.expect("status").term;
    propose(c.h(old), 7).await;

    info!(old, "--- step: stop the leader");
    c.stop(old).await;
    let t0 = Instant::now();
    let new = c.leader().await;
    let took = t0.elapsed();
    eprintln!("failover election took {took:?}");
    assert_ne!(new, old);
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    assert!(c.h(new).status().await.expect("status").term > old_term);
    assert_eq!(propose(c.h(new), 3).await, 10);
    c.stop_all().await;
}

#[test]
fn config_validation() {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let peers = BTreeMap::from([(1, "http://127.0.0.1:1".to_string())]);
    let ok = RaftConfig::new(1, addr, peers.clone(), PathBuf::from("/tmp/x"));
    assert!(ok.validate().is_ok());
    assert!(
        RaftConfig::new(2, addr, peers.clone(), PathBuf::from("/x"))
            .validate()
            .is_err()
    );
    let mut bad = ok.clone();
    bad.election_tick = bad.heartbeat_tick;
    assert!(bad.validate().is_err());
}
