//! What keeps in-flight transactions moving when coordinators come and go: lease renewal
//! while a transaction is being driven, and the loop that claims transactions whose
//! coordinator stopped renewing and hands them to their engine.

use std::time::Duration;

use crate::store::{Lease, Store, now_ms};

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease on `id` every third of its length while the guard lives, so a long call
/// does not let another coordinator take over a transaction that is still being driven.
pub fn keep_lease(store: Store, id: String, owner: String, lease: Duration) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(lease / 3).await;
            let l = Lease { owner: owner.clone(), until_ms: now_ms() + lease.as_millis() as i64 };
            match store.renew_lease(&id, &l).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => tracing::warn!(transaction_id = %id, "lease renewal failed: {e}"),
            }
        }
    }))
}

/// Runs `pass` now with `own = true` (take back what this node held before a restart), then
/// every `every` with `own = false`, until the returned guard is dropped.
pub fn spawn_loop<F, Fut>(every: Duration, pass: F) -> AbortOnDrop
where
    F: Fn(bool) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    AbortOnDrop(tokio::spawn(async move {
        let n = pass(true).await;
        if n > 0 {
            tracing::info!(claimed = n, "recovering in-flight transactions");
        }
        loop {
            tokio::time::sleep(every).await;
            pass(false).await;
        }
    }))
}
