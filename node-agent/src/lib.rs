//! The lockstep node agent: one per database host. It takes its server's share
//! of a cluster-wide cut (lock for milliseconds, capture the binlog position,
//! open consistent snapshots), streams the snapshot to a sink, and restores.
//!
//! Modules, from the database outwards:
//! - [`mysql`]: reaching a server (URL, `ssl-mode`, connect, session
//!   settings, quoting).
//! - [`secrets`]: files that hold secrets (private to their owner), the
//!   MySQL password without argv, and the credentials file restore targets
//!   name by reference (`cred:NAME`).
//! - [`flavour`]: MariaDB vs MySQL: version detection and every statement
//!   whose text differs between them.
//! - [`cut`]: phase one on one server (pre-flight, pre-flush, lock with a
//!   watchdog, snapshots, position) and the lock guard.
//! - [`schema`]: reading definitions (tables, views, routines, triggers, events).
//! - [`format`]: the on-disk snapshot format (manifest, data encoding, files).
//! - [`dump`]: phase two: snapshot connections → data files + manifest.
//! - [`ddl_guard`]: while a dump runs, notices DDL waiting on a table the
//!   snapshots hold and decides when the dump gives way (`ddl_policy`).
//! - [`restore`]: verify a snapshot and load it into a server.
//! - [`physical`]: physical copies: the settings a datadir copy depends
//!   on, streaming a file tree to a sink as `.tar.zst` and back, and
//!   recovering a private server on a restored datadir.
//! - [`progress`]: counters for long jobs.
//! - [`binlog`]: continuous binlog archiving (its foundation): a byte-exact
//!   `COM_BINLOG_DUMP` client and an archiver task that writes a server's
//!   binlogs into a directory, fsyncs commit groups and resumes. Not wired
//!   into the daemon, sinks or catalog yet.
//! - [`agent`]: the agent's state machine (one backup at a time, leases),
//!   and its restores, copies and checks of artifacts in sinks.
//! - [`grpc`]: the `lockstep.agent.v1` service over [`agent`], and
//!   `lockstep.media.v1` (the disk pools it serves to other agents).
//! - [`config`], [`server`], [`cli`]: the daemon's configuration, its run
//!   loop, and the `lockstep-agent` commands.
//! - [`register`]: registration and heartbeats with the coordinators.
//! - [`sink`]: where artifacts are stored (local disk, a media agent's
//!   disk pool, S3), behind one trait; an artifact in a store; encryption
//!   at rest.
//!
//! Where new code goes: SQL that depends on the server kind goes to
//! [`flavour`]; anything that decides bytes on disk goes to [`format`];
//! gRPC handlers stay thin and call [`agent`].

pub mod agent;
pub mod binlog;
pub mod cli;
pub mod config;
pub mod cut;
pub mod ddl_guard;
pub mod dump;
pub mod error;
pub mod flavour;
pub mod format;
pub mod grpc;
pub mod mysql;
pub mod physical;
pub mod progress;
pub mod register;
pub mod restore;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod sink;
pub mod snapshot;

pub use error::{Error, Result};

/// The current time as RFC 3339 (UTC), for manifests and logs.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
