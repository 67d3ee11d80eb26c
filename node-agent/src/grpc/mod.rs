//! The gRPC face of the agent: thin handlers ([`service`]) over
//! [`crate::agent::Agent`], and the conversions between wire and domain
//! types ([`convert`]).

pub mod convert;
pub mod service;

pub use service::AgentService;
