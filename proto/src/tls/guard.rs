//! [`Guard`]: a tower layer for a tonic server that asks a [`Policy`]
//! about every call before any handler runs, by the call's gRPC path and
//! its [`Caller`]. A refused call is answered with the policy's status
//! (`PERMISSION_DENIED`) and never reaches the service, so no handler can
//! forget the check.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;

use super::caller::PeerInfo;

/// Decides whether the caller on the connection `peer` may make the call
/// at gRPC path `path` (`/package.Service/Method`).
pub trait Policy: Send + Sync + std::fmt::Debug + 'static {
    fn check(&self, peer: &PeerInfo, path: &str) -> Result<(), tonic::Status>;
}

/// The layer: wrap a server's routes with `Server::builder().layer(...)`.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: Arc<dyn Policy>,
}

impl Guard {
    pub fn new(policy: Arc<dyn Policy>) -> Guard {
        Guard { policy }
    }
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A service behind a [`Guard`].
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    policy: Arc<dyn Policy>,
}

impl<S> tower::Service<http::Request<Body>> for Guarded<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let unknown = PeerInfo::default();
        let peer = req.extensions().get::<PeerInfo>().unwrap_or(&unknown);
        match self.policy.check(peer, req.uri().path()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
