//! The coordinator's raft core: a raft-rs `RawNode` driven by one task,
//! durable in redb, talking to its peers over gRPC, replicating any
//! [`StateMachine`] (the backup catalog in production).
//!
//! Files, and what goes where:
//! - `config.rs`: [`RaftConfig`] (ids, peer URLs, timings, thresholds) and its
//!   validation.
//! - `error.rs`: the one [`Error`] enum and the [`Result`] alias.
//! - `state_machine.rs`: the [`StateMachine`] hook (stored as keys) and the
//!   raft snapshot image of all keys.
//! - `handle.rs`: [`RaftHandle`] (propose, read, status) and the types it
//!   returns; only message passing to the raft task, no raft logic.
//! - `node.rs`: [`RaftNode`] (start, transport service, shutdown) and the raft
//!   task: the only code that touches the `RawNode`; all `Ready` handling is
//!   in `RaftTask::on_ready`, in the raft-rs documented order.
//! - `storage.rs`: the redb-backed `raft::Storage` and every durable write.
//! - `transport.rs`: gRPC in and out (per-peer sender tasks batching raft
//!   messages under the message limit, the `RaftTransport` service); raft
//!   messages stay opaque bytes on the wire.
//! - `snapshot_stream.rs`: snapshot messages over the chunked `SendSnapshot`
//!   stream (sending, and the receiver's checks, size bound and reassembly).
//! - `log.rs`: the slog→tracing drain handed to raft-rs.
//!
//! Durability: every store write is one redb transaction, fsynced at commit.
//! Applying committed entries writes the state machine keys they changed,
//! the applied position and any conf change in one transaction, so a restart
//! never re-applies an entry that transaction covers. Proposers hear back
//! just before it (their entries are committed on a quorum; a crash in
//! between re-applies them from the log). New log entries and the hard
//! state are durable before the Ready's persisted messages are sent.

mod config;
mod error;
mod handle;
mod log;
mod node;
mod snapshot_stream;
mod state_machine;
mod storage;
mod transport;

#[cfg(test)]
mod tests;

pub use config::{DEFAULT_MAX_SNAPSHOT_SIZE, RaftConfig};
pub use error::{Error, Result};
pub use handle::{NodeStatus, RaftHandle, Role};
pub use node::RaftNode;
pub use state_machine::{Change, KeyValue, StateMachine};
pub use transport::{TransportService, peer_identity};
