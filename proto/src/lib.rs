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

/// The packages as generated, nested as their names are (the
/// coordinator's messages name the agent's `SinkSpec` by its package path).
#[allow(missing_debug_implementations, clippy::all)]
mod lockstep {
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("lockstep.agent.v1");
        }
    }
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("lockstep.raft.v1");
        }
    }
    pub mod coordinator {
        pub mod v1 {
            tonic::include_proto!("lockstep.coordinator.v1");
        }
    }
}

pub use lockstep::agent::v1 as agent;
pub use lockstep::coordinator::v1 as coordinator;
pub use lockstep::raft::v1 as raft;

#[allow(missing_debug_implementations, clippy::all)]
pub mod tls;

pub mod media {
    tonic::include_proto!("lockstep.media.v1");
}
