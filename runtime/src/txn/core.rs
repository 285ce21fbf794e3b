//! What every engine holds: the store, the plugin catalog, the invoker, its settings, the
//! journal it writes through, and the registry of what it is driving in this process.

use std::sync::Arc;
use std::time::Duration;

use crate::txn::journal::Journal;
use crate::participant::Invoker;
use crate::plugin::Catalog;
use crate::txn::recovery::Drivers;
use crate::store::Store;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This coordinator's identity in leases.
    pub node_id: String,
    /// How long a lease lasts without renewal (default 10 s).
    pub lease: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { node_id: uuid::Uuid::new_v4().to_string(), lease: Duration::from_secs(10) }
    }
}

pub(crate) struct EngineCore {
    pub(crate) store: Store,
    pub(crate) catalog: Catalog,
    pub(crate) invoker: Invoker,
    pub(crate) config: EngineConfig,
    pub(crate) journal: Journal,
    /// Transactions this process is driving, with their stop flags.
    pub(crate) driving: Arc<Drivers>,
}

impl EngineCore {
    pub(crate) fn new(store: Store, catalog: Catalog, invoker: Invoker, config: EngineConfig) -> Arc<Self> {
        let journal = Journal::new(store.clone(), config.lease);
        Arc::new(EngineCore { store, catalog, invoker, config, journal, driving: Arc::default() })
    }

    /// Refuses an HTTP endpoint the tenant's outbound policy does not let it call (checked
    /// again at each call: names are judged by the addresses they resolve to then).
    pub(crate) fn check_endpoint(&self, tenant: &str, endpoint: &Option<String>) -> Result<(), String> {
        match endpoint {
            Some(url) => self.invoker.check_endpoint(tenant, url).map_err(|r| format!("endpoint {url} refused: {r}")),
            None => Ok(()),
        }
    }
}

/// Runs a read-modify-write `change` starting from the row this node last wrote (`true`), and
/// once more from the stored row (`false`) when another writer changed it meanwhile — the one
/// place that decides how far the journal's remembered rows are trusted.
pub(crate) async fn from_remembered_row<T, Fut>(change: impl Fn(bool) -> Fut) -> Result<T, super::TxError>
where
    Fut: std::future::Future<Output = Result<T, super::TxError>>,
{
    match change(true).await {
        Err(e) if e.is_conflict() => change(false).await,
        done => done,
    }
}
