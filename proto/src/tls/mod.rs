//! How lockstep's gRPC travels: mutual TLS (rustls) on every connection, or
//! plaintext where the operator allows it, and who the caller is.
//!
//! - [`caller`]: the identity of a request's caller ([`Caller`]) and the
//!   `agent-*` patterns roles are written in.

pub mod caller;

pub use caller::{Caller, PeerInfo, matches};
