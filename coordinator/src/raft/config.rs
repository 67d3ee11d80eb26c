//! Configuration of one raft node.

use lockstep_proto::tls::Transport;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{Error, Result};

/// Configuration of one coordinator's raft node.
#[derive(Debug, Clone)]
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
    /// Largest raft snapshot (the whole state machine image) this node
    /// accepts from a leader; a larger one is refused, naming both sizes.
    pub max_snapshot_size: u64,
    /// Bytes of snapshot data per chunk of the `SendSnapshot` stream (not a
    /// coordinator setting: tests make it small to force many chunks).
    pub snapshot_chunk_size: usize,
    /// Largest gRPC message of the raft transport, either way: a batch of
    /// raft messages or a snapshot chunk. A proposal must leave room for
    /// its message around it ([`RaftConfig::max_entry_size`]). Not a
    /// coordinator setting: tests make it small.
    pub max_message_size: usize,
    /// How peers are dialled and who may speak for them: with mutual TLS a
    /// message from node N is accepted only from identity `coordinator-N`.
    pub transport: Transport,
}

/// Default [`RaftConfig::max_snapshot_size`]: 4 GiB.
pub const DEFAULT_MAX_SNAPSHOT_SIZE: u64 = 4 << 30;
/// Room left in a transport message around one entry's data (the raft
/// message, the entry's fields, the batch's own fields).
const ENTRY_HEADROOM: usize = 4096;

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
            max_snapshot_size: DEFAULT_MAX_SNAPSHOT_SIZE,
            snapshot_chunk_size: 1 << 20,
            max_message_size: 64 << 20,
            transport: Transport::Plaintext,
        }
    }

    /// Largest proposal: one entry always fits one transport message.
    pub fn max_entry_size(&self) -> usize {
        self.max_message_size.saturating_sub(ENTRY_HEADROOM)
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
        if self.max_snapshot_size == 0 {
            return Err(Error::Config("max snapshot size must be positive".into()));
        }
        if self.max_message_size < 4 * ENTRY_HEADROOM {
            return Err(Error::Config(format!(
                "max message size ({} bytes) must be at least {} bytes",
                self.max_message_size,
                4 * ENTRY_HEADROOM
            )));
        }
        if self.snapshot_chunk_size == 0 || self.snapshot_chunk_size > self.max_entry_size() {
            return Err(Error::Config(format!(
                "snapshot chunk size ({} bytes) must be positive and at most {} bytes",
                self.snapshot_chunk_size,
                self.max_entry_size()
            )));
        }
        Ok(())
    }

    /// The store file inside `data_dir`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("raft.redb")
    }
}
