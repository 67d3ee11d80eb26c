//! lockstep's wire protocol, generated from the `.proto` files beside this crate.
//!
//! Modules:
//! - [`agent`]: `lockstep.agent.v1`, the node agent's service (two-phase cut,
//!   transfer, status).
//! - [`raft`]: `lockstep.raft.v1`, the coordinators' raft transport (raft-rs
//!   messages as opaque bytes).
//! - [`coordinator`]: `lockstep.coordinator.v1`, the coordinators' service for
//!   agents and the CLI (registration, backups, catalog, group status).
//! - [`media`]: `lockstep.media.v1`, a media agent's disk pools for other
//!   agents (chunked, checksummed, resumable object streams).
//!
//! - [`tls`]: how the messages travel: mutual TLS on every connection (or
//!   plaintext where allowed), and who the caller of a request is.
//!
//! Besides [`tls`], nothing but generated code lives here; conversions to
//! domain types belong to the crate that owns the domain type.

#[allow(missing_debug_implementations, clippy::all)]
pub mod agent {
    tonic::include_proto!("lockstep.agent.v1");
}

#[allow(missing_debug_implementations, clippy::all)]
pub mod raft {
    tonic::include_proto!("lockstep.raft.v1");
}

#[allow(missing_debug_implementations, clippy::all)]
pub mod coordinator {
    tonic::include_proto!("lockstep.coordinator.v1");
}

#[allow(missing_debug_implementations, clippy::all)]
pub mod tls;

pub mod media {
    tonic::include_proto!("lockstep.media.v1");
}
