//! The gRPC face of the agent: thin handlers ([`service`]) over
//! [`crate::agent::Agent`], and the conversions between wire and domain
//! types ([`convert`]); and [`media`], the `lockstep.media.v1` service over
//! the disk pools this agent holds for others; [`access`], who may call
//! what (checked before any handler runs).

pub mod access;
pub mod convert;
pub mod media;
pub mod service;

pub use service::AgentService;
