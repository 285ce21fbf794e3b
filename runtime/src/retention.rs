//! Retention: ended transactions (their documents and journals) and idempotency replies are
//! deleted once they are older than the retention period — the server's `--retention-ms`
//! (default 7 days) or the tenant's `limits.retention_ms`, `0` keeping them forever — and
//! audit entries after their own period (`--audit-retention-ms`, default 90 days). In-flight
//! transactions are never touched: only end states are purged. The sweeper deletes in small
//! batches, yielding between them, so the engines are never held up; several coordinators
//! may sweep at once (each row goes once, and a row that left its end state is kept).

use std::time::Duration;

use crate::manager::Status;
use crate::saga::SagaState;
use crate::store::{Store, StoreError};
use crate::tpc::TpcState;
use crate::txn::recovery::AbortOnDrop;

pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
pub const DEFAULT_AUDIT_RETENTION_MS: u64 = 90 * 24 * 3600 * 1000;
/// Rows one statement deletes at most.
const BATCH: i64 = 500;

#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// How long ended transactions and idempotency replies are kept unless a tenant says
    /// otherwise; 0 = forever.
    pub transactions_ms: u64,
    /// How long audit entries are kept; 0 = forever.
    pub audit_ms: u64,
    /// How often the sweeper runs.
    pub every: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy { transactions_ms: DEFAULT_RETENTION_MS, audit_ms: DEFAULT_AUDIT_RETENTION_MS, every: Duration::from_secs(60) }
    }
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub transactions: u64,
    pub replies: u64,
    pub audit: u64,
}

/// The end states of each kind the engines store: what retention may purge.
fn ended() -> [(&'static str, Vec<&'static str>); 4] {
    let sagas = [SagaState::Completed, SagaState::Compensated, SagaState::Failed];
    let tpc = [TpcState::Committed, TpcState::Aborted, TpcState::Failed];
    let managed = [Status::Committed, Status::Compensated, Status::Aborted, Status::Failed];
    [
        (crate::saga::KIND, sagas.iter().map(|s| s.as_str()).collect()),
        (crate::tpc::KIND, tpc.iter().map(|s| s.as_str()).collect()),
        (crate::manager::KIND, managed.iter().map(|s| s.as_str()).collect()),
        // Alert deliveries, delivered or given up.
        (crate::alert::KIND, vec!["delivered", "failed"]),
    ]
}

/// One pass over every tenant (and the single-tenant `default`).
pub async fn sweep(store: &Store, policy: &RetentionPolicy, now_ms: i64) -> Result<Swept, StoreError> {
    let mut tenants = store.tenant_ids().await?;
    tenants.push("default".into());
    let mut swept = Swept::default();
    for tenant in &tenants {
        let keep = match store.tenant(tenant).await? {
            // Read from the stored limits (`retention_ms`), as the API validated them.
            Some(row) => row.limits.get("retention_ms").and_then(|v| v.as_u64()).unwrap_or(policy.transactions_ms),
            None => policy.transactions_ms,
        };
        if keep > 0 {
            let before = now_ms.saturating_sub(keep as i64);
            for (kind, states) in ended() {
                swept.transactions += drain(|| store.purge_ended(tenant, kind, &states, before, BATCH)).await?;
            }
            swept.replies += drain(|| store.purge_replies(tenant, before, BATCH)).await?;
        }
        if policy.audit_ms > 0 {
            let before = now_ms.saturating_sub(policy.audit_ms as i64);
            swept.audit += drain(|| store.purge_audit(tenant, before, BATCH)).await?;
        }
    }
    Ok(swept)
}

/// Repeats a batch until it deletes less than a full one, yielding between batches.
async fn drain<F, Fut>(batch: F) -> Result<u64, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Sweeps every `policy.every` until the guard is dropped.
pub fn spawn(store: Store, policy: RetentionPolicy) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(policy.every).await;
            match sweep(&store, &policy, crate::store::now_ms()).await {
                Ok(s) if s != Swept::default() => {
                    tracing::info!(transactions = s.transactions, replies = s.replies, audit = s.audit, "retention sweep")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("retention sweep failed: {e}"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::TxState;

    #[test]
    fn only_end_states_are_purged() {
        for (kind, states) in ended() {
            for s in states {
                if kind == crate::alert::KIND {
                    continue;
                }
                let terminal = match kind {
                    "saga" => SagaState::parse(s).map(TxState::is_terminal),
                    "2pc" => TpcState::parse(s).map(TxState::is_terminal),
                    _ => Status::parse(s).map(TxState::is_terminal),
                };
                assert_eq!(terminal, Some(true), "{kind} {s}");
            }
        }
    }
}
