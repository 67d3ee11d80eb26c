//! Configuration of one raft node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{Error, Result};

/// Configuration of one coordinator's raft node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// This node's raft id (non-zero, a key of `peers`).
    pub id: u64,
    /// Where the embedding gRPC server listens; `peers[id]` must reach it.
    pub listen_addr: SocketAddr,
    /// Every voter's raft id and gRPC URL (`http://host:port`), this node
    /// included. 1 voter (single-node mode), 3 or 5. Used as the initial
    /// membership when the store is empty and for leader redirects.
    pub peers: BTreeMap<u64, String>,
    /// Directory holding the raft store (`raft.redb`).
    pub data_dir: PathBuf,
    /// Interval between raft ticks.
    pub tick_interval: Duration,
    /// Ticks without a leader heartbeat before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Applied entries between log compactions (each compaction makes the
    /// current state machine snapshot the log's base).
    pub snapshot_threshold: u64,
    /// Capacity of each per-peer outgoing message queue; messages beyond it
    /// are dropped (raft retries).
    pub peer_queue: usize,
}

impl RaftConfig {
    /// A config with the default timings for node `id` of `peers`.
    pub fn new(
        id: u64,
        listen_addr: SocketAddr,
        peers: BTreeMap<u64, String>,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            id,
            listen_addr,
            peers,
            data_dir,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 3,
            snapshot_threshold: 1000,
            peer_queue: 1024,
        }
    }

    /// Check the config for mistakes raft-rs would only find later.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::Config("node id must be non-zero".into()));
        }
        if !self.peers.contains_key(&self.id) {
            return Err(Error::Config(format!(
                "peers must include this node's id {}",
                self.id
            )));
        }
        if self.peers.contains_key(&0) {
            return Err(Error::Config("peer id 0 is reserved by raft".into()));
        }
        if self.tick_interval.is_zero() {
            return Err(Error::Config("tick interval must be positive".into()));
        }
        if self.heartbeat_tick == 0 || self.election_tick <= self.heartbeat_tick {
            return Err(Error::Config(format!(
                "election tick ({}) must exceed heartbeat tick ({}) and both be positive",
                self.election_tick, self.heartbeat_tick
            )));
        }
        if self.snapshot_threshold == 0 || self.peer_queue == 0 {
            return Err(Error::Config(
                "snapshot threshold and peer queue must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The store file inside `data_dir`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("raft.redb")
    }
}
