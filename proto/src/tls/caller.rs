//! Who is calling: the identity a server learned from the caller's client
//! certificate when the connection was accepted, read back in a handler.

use std::fmt;
use std::net::SocketAddr;

/// What a server knows about one accepted connection. Tonic puts it into
/// every request's extensions (it is the connection's `ConnectInfo`).
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's identity; `None` on a plaintext
    /// connection.
    pub identity: Option<String>,
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A mutual-TLS caller: its certificate chains to our CA and names it.
    Identity(String),
    /// A plaintext caller (the daemon runs without TLS: on loopback, or with
    /// `--insecure-plaintext`). Nobody is authenticated; every call is
    /// allowed, as before TLS existed.
    Plaintext(Option<SocketAddr>),
}

impl Caller {
    /// The caller of `request`.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        Caller::from_peer(request.extensions().get::<PeerInfo>())
    }

    /// The caller of a connection described by `peer` (none: plaintext).
    pub fn from_peer(peer: Option<&PeerInfo>) -> Caller {
        match peer {
            Some(PeerInfo {
                identity: Some(id), ..
            }) => Caller::Identity(id.clone()),
            Some(PeerInfo { remote, .. }) => Caller::Plaintext(*remote),
            None => Caller::Plaintext(None),
        }
    }

    /// The authenticated identity, if any.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Caller::Identity(id) => Some(id),
            Caller::Plaintext(_) => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Identity(id) => write!(f, "identity '{id}'"),
            Caller::Plaintext(Some(addr)) => write!(f, "plaintext caller {addr}"),
            Caller::Plaintext(None) => write!(f, "plaintext caller"),
        }
    }
}

/// Whether `identity` matches `pattern`: equal, or, for a pattern ending in
/// `*`, starting with the part before it (`agent-*` matches `agent-db1`).
pub fn matches(pattern: &str, identity: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => identity.starts_with(prefix),
        None => pattern == identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("agent-*", "agent-db1"));
        assert!(matches("agent-*", "agent-"));
        assert!(!matches("agent-*", "agen"));
        assert!(matches("operator", "operator"));
        assert!(!matches("operator", "operator2"));
        assert!(matches("*", "anyone"));
    }

    #[test]
    fn caller_from_extensions() {
        let mut req = tonic::Request::new(());
        assert_eq!(Caller::of(&req), Caller::Plaintext(None));
        req.extensions_mut().insert(PeerInfo {
            remote: None,
            identity: Some("operator".into()),
        });
        assert_eq!(Caller::of(&req), Caller::Identity("operator".into()));
        assert_eq!(Caller::of(&req).to_string(), "identity 'operator'");
    }
}
