//! The coordinator's error type (everything outside the raft core, whose
//! errors are wrapped in [`Error::Raft`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::catalog::Rejected;

/// Result alias for the coordinator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the coordinator and its clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The raft core refused or failed (not the leader, stopped, storage).
    #[error(transparent)]
    Raft(#[from] crate::raft::Error),
    /// The catalog rejected a command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// A heartbeat named a server that is not registered.
    #[error("server {name} of cluster {cluster} is not registered")]
    UnknownServer {
        /// Its cluster.
        cluster: String,
        /// Its name.
        name: String,
    },
    /// A proposal was not applied in time (it may still apply later).
    #[error("{what}: not applied within {timeout:?}")]
    ProposalTimeout {
        /// What was proposed.
        what: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The catalog's reply did not decode.
    #[error("decode the catalog's reply to {what}")]
    Reply {
        /// What was proposed.
        what: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A cut failed on some server (it was aborted everywhere, and nothing
    /// was recorded).
    #[error("{what} failed: {reason}")]
    CutFailed {
        /// What the cut was for ("restore point ID of cluster C").
        what: String,
        /// Why, naming the server.
        reason: String,
    },
    /// A restore was asked of a backup that is not COMPLETE.
    #[error("backup {id} is {status}, not COMPLETE; only a complete backup can be restored")]
    NotRestorable {
        /// The backup.
        id: String,
        /// Its status.
        status: String,
    },
    /// A point-in-time recovery the catalog cannot carry out (no base, a
    /// gap, a point not sealed); the reason names the server and file.
    #[error("point-in-time recovery refused: {reason}")]
    PitrRefused { reason: String },
    /// A restore target names a server that is not in the backup.
    #[error("{flag} names server {server}, which is not in backup {id} (its servers: {servers})")]
    UnknownTarget {
        /// The option that named it (`--target`, `--agent`, `--datadir`).
        flag: &'static str,
        /// The backup.
        id: String,
        /// The name given.
        server: String,
        /// The backup's servers, comma-separated.
        servers: String,
    },
    /// A restore names no target for some servers and does not say
    /// `--in-place`: it would load into the live servers the backup came from.
    #[error(
        "backup {id}: no --target for server(s) {servers}; name a target for every server (--target SERVER=mysql://USER@HOST:PORT), or pass --in-place to load into the servers the backup was taken from (overwriting them)"
    )]
    MissingTarget {
        /// The backup.
        id: String,
        /// The servers without a target, comma-separated.
        servers: String,
    },
    /// A command needs a catalog version the group has not reached: some
    /// coordinator runs an older build (see `catalog/version.rs`).
    #[error("catalog command {command} needs catalog version {needs}; {behind}")]
    VersionTooLow {
        /// The command's op.
        command: String,
        /// The version it needs.
        needs: u32,
        /// Which coordinators support less (or were not heard from), and
        /// what to do.
        behind: String,
    },
    /// Some server of a restore has no artifact or no reachable agent to
    /// load it; nothing was started.
    #[error("backup {id} cannot be restored now, nothing was started: {reasons}")]
    CannotLoad {
        /// The backup.
        id: String,
        /// Why, per server.
        reasons: String,
    },
    /// A restore target is not a usable `mysql://` URL, or serves two
    /// servers of the backup.
    #[error("backup {id}: --target for server {server}: {reason}; nothing was restored")]
    BadTarget {
        /// The backup.
        id: String,
        /// The server whose target it is.
        server: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or serving the gRPC listener failed.
    #[error("serve gRPC on {addr}: {message}")]
    Serve {
        /// The listen address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// A coordinator answered a call with an error.
    #[error("{what} at {url}: {message} ({code:?})")]
    Rpc {
        /// Which call.
        what: String,
        /// The coordinator that answered.
        url: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The message.
        message: String,
    },
    /// No coordinator answered (or none knew a leader) before the deadline.
    #[error(
        "{what}: no coordinator answered within {waited:?} (tried {tried}); last error: {last}"
    )]
    NoCoordinator {
        /// Which call.
        what: String,
        /// How long we tried.
        waited: Duration,
        /// The URLs tried.
        tried: String,
        /// The last error seen.
        last: String,
    },
}

impl Error {
    /// True when retrying (after following a redirect or a short pause) may
    /// succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Raft(e) => e.is_retryable(),
            Error::NoCoordinator { .. } | Error::ProposalTimeout { .. } => true,
            Error::Rpc { code, .. } => *code == tonic::Code::Unavailable,
            _ => false,
        }
    }
}
