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
//! - [`core`]: what handlers and jobs share: proposals and reads on the
//!   catalog, the leader check, server health, the group's status.
//! - [`job`]: the backup job the leader drives (PREPARE, barrier, CommitCut,
//!   COMMIT, TRANSFER), the restore points (the same cut without data, on
//!   demand or on the leader's per-cluster schedule) and the resolution of
//!   jobs inherited from a previous leader.
//! - [`archive`]: the binlog archive as the leader serves it: agents'
//!   state requests and segment reports, the lag they report, `archive
//!   status` (the records live in [`catalog`]).
//! - [`restore`]: the coordinated restore, a leader job: each server's
//!   copy and loading agent chosen and confirmed before any is loaded, then
//!   every agent's `Restore` in parallel, recorded in the catalog.
//! - [`pitr`]: point-in-time recovery, a leader job: the point, the base
//!   backup and every server's binlog range chosen from the catalog, then
//!   the base restored and each server's archive replayed to the point;
//!   and the search of the archive's transactions.
//! - [`sinks`]: sinks as the leader uses them: the description agents
//!   open, which agent reads a copy, copies, verification and scans.
//! - [`version`]: the leader's task that raises the cluster's catalog
//!   version once every voter supports a higher one (rolling upgrades; the
//!   versions themselves live in [`catalog`]).
//! - [`access`]: who may call what: the RPCs, roles and their resolution
//!   from the configured and the catalog's roles, [`access::authorize`].
//! - [`service`]: thin `lockstep.coordinator.v1` gRPC handlers and the error
//!   mapping with the leader redirect; [`convert`]: wire ↔ catalog types.
//! - [`config`], [`server`]: the daemon's flags/TOML and its run loop.
//! - [`client`]: the leader-following client; [`cli`]: the `lockstep` CLI.
//! - [`error`]: the crate's [`Error`].
//!
//! Where new code goes: a decision about a backup is a catalog command
//! proposed in [`job`] before it is acted on; wire types never leave
//! [`service`], [`convert`] and [`cli`].

pub mod access;
pub mod archive;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod convert;
pub mod core;
pub mod error;
pub mod job;
pub mod pitr;
pub mod raft;
pub mod restore;
pub mod server;
pub mod service;
pub mod sinks;
pub mod version;

pub use error::{Error, Result};
