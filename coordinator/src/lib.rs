//! The lockstep coordinator: a raft group whose state machine is the backup
//! catalog, and whose leader runs the cluster-wide two-phase cut.
//!
//! Modules:
//! - [`raft`]: the raft core (one task owning a raft-rs `RawNode`, redb
//!   storage, gRPC transport, a generic [`raft::StateMachine`] hook). Anything
//!   about replication, election, log storage or raft transport goes there;
//!   the catalog itself only implements `StateMachine`.
//! - [`catalog`]: the backup catalog, the raft state machine: clusters,
//!   servers, backups with their cuts and artifacts, and the commands that
//!   change them. Validation of state transitions lives here.
//!
//! Not built yet: the coordinator's gRPC API, the two-phase cut driver and
//! the `lockstep` CLI; the node agent
//! (`lockstep-node-agent`) comes first and can be used on its own
//! (`lockstep-agent dump|load|serve`).

pub mod catalog;
pub mod raft;
