//! The watcher every held lock gets (a backup's or a restore point's):
//! the lock is never left to the caller's good behaviour.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Agent, CALLER_GONE, Released};

/// Which kind of cut a lock watcher releases.
#[derive(Debug, Clone, Copy)]
pub(super) enum Held {
    Backup,
    Point,
}

impl Agent {
    /// The watcher of a held lock: whichever comes first releases it — the
    /// Commit or Abort that notifies `notify_rx`, the lease, the caller
    /// going away, or shutdown — and the release goes to `out_tx`.
    pub(super) fn watch_lock(
        self: &Arc<Self>,
        held: Held,
        id: String,
        lease: Duration,
        notify_rx: oneshot::Receiver<Released>,
        caller_gone: impl Future<Output = ()> + Send + 'static,
        out_tx: oneshot::Sender<Released>,
    ) {
        let agent = self.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let released = tokio::select! {
                r = notify_rx => r.ok(),
                _ = tokio::time::sleep(lease) => agent.expire_held(held, &id, "lease-expired").await,
                _ = caller_gone => agent.expire_held(held, &id, CALLER_GONE).await,
                _ = shutdown.cancelled() => agent.expire_held(held, &id, "shutdown").await,
            };
            if let Some(r) = released {
                let _ = out_tx.send(r);
            }
        });
    }

    async fn expire_held(self: &Arc<Self>, held: Held, id: &str, reason: &str) -> Option<Released> {
        match held {
            Held::Backup => self.expire(id, reason).await,
            Held::Point => self.expire_point(id, reason).await,
        }
    }
}
