//! lockstep's wire protocol, generated from the `.proto` files beside this crate.
//!
//! Modules:
//! - [`agent`]: `lockstep.agent.v1`, the node agent's service (two-phase cut,
//!   transfer, status).
//!
//! Nothing but generated code lives here; conversions to domain types belong to
//! the crate that owns the domain type.

#[allow(missing_debug_implementations, clippy::all)]
pub mod agent {
    tonic::include_proto!("lockstep.agent.v1");
}
