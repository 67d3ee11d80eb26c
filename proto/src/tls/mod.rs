//! How lockstep's gRPC travels: mutual TLS (rustls) on every connection, or
//! plaintext where the operator allows it, and who the caller is.
//!
//! - [`caller`]: the identity of a request's caller ([`Caller`]) and the
//!   `agent-*` patterns roles are written in.
//! - [`config`]: certificates and keys from PEM files, the rustls server and
//!   client configurations built from them ([`Tls`]), reloaded in place.
//! - [`certs`]: a CA and certificates for demos and tests.
//! - [`guard`]: a server layer that asks a [`guard::Policy`] about every
//!   call (by its gRPC path and caller) before any handler runs.
//! - [`transport`]: [`Transport`], what daemons and clients hold: the accept
//!   loop of a server (TLS handshakes off the accept path, the caller's
//!   identity attached to the connection) and the connector of a client.
//!
//! Every connection is mutual: a server asks for a client certificate and
//! refuses a connection without one that chains to the configured CA; a
//! client checks the server's certificate against the same CA and the host
//! it dialled. An identity is the certificate's subject common name (or its
//! first DNS name when it has no common name).

pub mod caller;
pub mod certs;
pub mod config;
pub mod guard;
pub mod transport;

#[cfg(test)]
mod tests;

pub use caller::{Caller, PeerInfo, matches};
pub use config::{Tls, TlsFiles, TlsOptions};
pub use guard::{Guard, Policy};
pub use transport::{Conn, Refused, Transport};

use std::path::PathBuf;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or CA file could not be read or parsed.
    #[error("TLS {what} file {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A private key file others can read.
    #[error(
        "TLS key file {path} is readable by group or others (mode {mode:04o}); \
         it must be accessible by its owner only (chmod 600 {path})"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// rustls refused the certificates or key.
    #[error("TLS configuration from {cert}: {reason}")]
    Config { cert: PathBuf, reason: String },
    /// The settings cannot be used as given (files missing, plaintext off
    /// loopback, a bad identity name, no SIGHUP watch).
    #[error("{0}")]
    Setup(String),
}
