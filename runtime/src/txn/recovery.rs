//! What keeps in-flight transactions moving when coordinators come and go: lease renewal
//! while a transaction is being driven, and the loop that claims transactions whose
//! coordinator stopped renewing and hands them to their engine.

use std::time::Duration;

use super::TxError;
use crate::store::{Lease, Store};

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease on `id` every third of its length while the guard lives, so a long call
/// does not let another coordinator take over a transaction that is still being driven.
pub fn keep_lease(store: Store, id: String, owner: String, lease: Duration, clock: std::sync::Arc<dyn super::Clock>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(lease / 3).await;
            let l = Lease { owner: owner.clone(), until_ms: clock.now_ms() + lease.as_millis() as i64 };
            match store.renew_lease(&id, &l).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => tracing::warn!(transaction_id = %id, "lease renewal failed: {e}"),
            }
        }
    }))
}

/// Runs `pass` with `own = true` (take back what this node held before a restart) and
/// returns when it is done — before the caller serves anything, since that pass claims every
/// running transaction this node owns — then every `every` with `own = false`, until the
/// returned guard is dropped.
pub async fn spawn_loop<F, Fut>(every: Duration, pass: F) -> AbortOnDrop
where
    F: Fn(bool) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let metrics = crate::metrics::Metrics::global();
    let n = pass(true).await;
    metrics.count_recovery_pass();
    if n > 0 {
        tracing::info!(claimed = n, "recovering in-flight transactions");
    }
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            pass(false).await;
            metrics.count_recovery_pass();
        }
    }))
}

/// The transactions this process is driving, each with a "stop requested" flag (cancel for a
/// saga, abort for 2PC) that its driver checks between steps.
#[derive(Default)]
pub struct Drivers {
    driven: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::atomic::AtomicBool>>>,
    /// Set when the process shuts down: drivers start nothing new, finish their calls, record
    /// the outcomes and hand their transactions back.
    draining: std::sync::atomic::AtomicBool,
    /// Told whenever a driver ends.
    ended: tokio::sync::Notify,
}

/// Unregisters a driven transaction when its driver ends, however it ends.
pub struct Driving {
    drivers: std::sync::Arc<Drivers>,
    id: String,
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.drivers.driven.lock().unwrap().remove(&self.id);
        self.drivers.ended.notify_waiters();
    }
}

impl Drivers {
    /// Starts draining (see `draining`).
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no transaction is driven here any more.
    pub async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            if self.driven.lock().unwrap().is_empty() {
                return;
            }
            ended.await;
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.driven.lock().unwrap().contains_key(id)
    }

    /// Asks the driver of `id` to stop; false if this process is not driving it.
    pub fn request_stop(&self, id: &str) -> bool {
        match self.driven.lock().unwrap().get(id) {
            Some(flag) => {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Registers `id` as driven here; `None` if it already is.
    pub fn register(self: &std::sync::Arc<Self>, id: &str) -> Option<Driving> {
        let mut map = self.driven.lock().unwrap();
        if map.contains_key(id) {
            return None;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        map.insert(id.to_string(), stop.clone());
        Some(Driving { drivers: self.clone(), id: id.to_string(), stop })
    }

    /// Runs `drive` (given the stop flag) in its own task as the driver of `id`, inside
    /// `span`, so a caller that goes away (an HTTP client hanging up) never stops a
    /// transaction half-way. `Busy` if `id` is already driven here.
    pub fn spawn<T, Fut>(self: &std::sync::Arc<Self>, id: &str, span: tracing::Span, drive: impl FnOnce(std::sync::Arc<std::sync::atomic::AtomicBool>) -> Fut) -> Result<Driver<T>, TxError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, TxError>> + Send + 'static,
    {
        use tracing::Instrument;
        let driving = self.register(id).ok_or_else(|| TxError::Busy(id.into()))?;
        let run = drive(driving.stop.clone());
        let task = tokio::spawn(
            async move {
                let result = run.await;
                drop(driving);
                if let Err(e) = &result {
                    tracing::warn!("driver stopped: {e}");
                }
                result
            }
            .instrument(span),
        );
        Ok(Driver(task))
    }
}

/// A transaction's driver running in its own task.
pub struct Driver<T>(tokio::task::JoinHandle<Result<T, TxError>>);

impl<T> Driver<T> {
    /// What the driver ended with; a driver that panicked is the server's fault (500).
    pub async fn join(self) -> Result<T, TxError> {
        match self.0.await {
            Ok(result) => result,
            Err(e) => Err(TxError::Internal(format!("the transaction's driver failed: {e}"))),
        }
    }
}
