//! The gRPC face of the agent: thin handlers ([`service`]) over
//! [`crate::agent::Agent`], and the conversions between wire and domain
//! types ([`convert`]); and [`media`], the `lockstep.media.v1` service over
//! the disk pools this agent holds for others.

pub mod convert;
pub mod media;
pub mod service;

pub use service::AgentService;
