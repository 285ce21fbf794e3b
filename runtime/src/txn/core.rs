//! What every engine holds: the store, the plugin catalog, the invoker, its settings, the
//! journal it writes through, and the registry of what it is driving in this process.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::{Record, TxError, TxState};
use crate::model::Progress;
use crate::participant::{Invoker, Target};
use crate::plugin::{Catalog, Role};
use crate::store::{EventRow, NewEvent, Store};
use crate::txn::journal::Journal;
use crate::txn::recovery::Drivers;

/// A document that counts how often its transaction was recovered (taken over after its
/// coordinator stopped renewing the lease).
pub(crate) trait Recovers {
    /// Counts one more recovery; returns the count.
    fn count_recovery(&mut self) -> u32;
}

/// A protocol's transactions: their `kind` in the store, and how errors name one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    pub(crate) store: &'static str,
    pub(crate) name: &'static str,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This coordinator's identity in leases.
    pub node_id: String,
    /// How long a lease lasts without renewal (default 10 s).
    pub lease: Duration,
    /// The time and new ids (default: the system's).
    pub clock: Arc<dyn super::Clock>,
    /// Where the engines built with this configuration (or a clone of it) announce every
    /// durable change: one channel for all of them, so an observer of a node's transactions
    /// subscribes once and sees them in the order they were committed.
    pub announcements: broadcast::Sender<Progress>,
}

/// Announcements a channel keeps for its slowest observer before that observer lags (and
/// skips what it missed).
const ANNOUNCEMENTS_KEPT: usize = 16_384;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: uuid::Uuid::new_v4().to_string(),
            lease: Duration::from_secs(10),
            clock: Arc::new(super::SystemClock),
            announcements: broadcast::channel(ANNOUNCEMENTS_KEPT).0,
        }
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
        let journal = Journal::new(store.clone(), config.lease, config.clock.clone(), config.announcements.clone());
        Arc::new(EngineCore { store, catalog, invoker, config, journal, driving: Arc::default() })
    }

    /// Stops starting work and hands each driven transaction back once its calls in flight
    /// are answered (shutdown).
    pub(crate) fn drain(&self) {
        self.driving.drain();
    }

    /// Renews this node's lease on `id` while the guard lives (see `recovery::keep_lease`).
    pub(crate) fn keep_lease(&self, id: &str) -> super::recovery::AbortOnDrop {
        super::recovery::keep_lease(self.store.clone(), id.to_string(), self.config.node_id.clone(), self.config.lease, self.config.clock.clone())
    }

    /// Now, by the engine's clock.
    pub(crate) fn now(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// The unique part of a new transaction's id.
    pub(crate) fn new_id(&self) -> uuid::Uuid {
        self.config.clock.new_id()
    }

    /// Transaction `id` of `kind`, if it is `tenant`'s.
    pub(crate) async fn get<S: TxState, D: Serialize + DeserializeOwned>(&self, tenant: &str, kind: Kind, id: &str) -> Result<Record<S, D>, TxError> {
        let row = self.store.get_tx(tenant, kind.store, id).await?.ok_or_else(|| TxError::NotFound { kind: kind.name, id: id.into() })?;
        Ok(Record::from_row(row)?)
    }

    /// `tenant`'s transactions of `kind` (in `state`), newest first, at most `limit`.
    pub(crate) async fn list<S: TxState, D: Serialize + DeserializeOwned>(
        &self,
        tenant: &str,
        kind: Kind,
        state: Option<S>,
        limit: i64,
    ) -> Result<Vec<Record<S, D>>, TxError> {
        let rows = self.store.list_tx(tenant, kind.store, state.map(S::as_str), limit).await?;
        Ok(rows.into_iter().map(Record::from_row).collect::<Result<_, _>>()?)
    }

    /// Transaction `id` to change: as this node last wrote it when it has it (and `cached`),
    /// else as stored.
    pub(crate) async fn get_for_update<S: TxState, D: Serialize + DeserializeOwned>(
        &self,
        tenant: &str,
        kind: Kind,
        id: &str,
        cached: bool,
    ) -> Result<Record<S, D>, TxError> {
        match self.journal.last_written(tenant, kind.store, id).filter(|_| cached) {
            Some(row) => Ok(Record::from_row(row)?),
            None => self.get(tenant, kind, id).await,
        }
    }

    /// The history of transaction `id`, if it is `tenant`'s.
    pub(crate) async fn history(&self, tenant: &str, kind: Kind, id: &str) -> Result<Vec<EventRow>, TxError> {
        if self.store.get_tx(tenant, kind.store, id).await?.is_none() {
            return Err(TxError::NotFound { kind: kind.name, id: id.into() });
        }
        Ok(self.store.events(id).await?)
    }

    /// Claims up to 64 transactions of `kind` in `states` whose lease expired — with `own`,
    /// also those this node held before it restarted — for this node; returns how many were
    /// claimed and those this process is not driving already, to recover.
    pub(crate) async fn claim_expired<S: TxState, D: Serialize + DeserializeOwned>(
        &self,
        kind: Kind,
        states: &[&str],
        own: bool,
    ) -> Result<(usize, Vec<Record<S, D>>), TxError> {
        let now = self.now();
        let lease = crate::store::Lease { owner: self.config.node_id.clone(), until_ms: now + self.config.lease.as_millis() as i64 };
        let claimed = self.store.claim_expired(kind.store, states, &lease, now, 64, own).await?;
        let n = claimed.len();
        let records = claimed.into_iter().filter(|row| !self.driving.contains(&row.id)).map(Record::from_row).collect::<Result<_, _>>()?;
        Ok((n, records))
    }

    /// One recovery pass over `kind`: claims what expired (see `claim_expired`), counts and
    /// records each recovery (an `event` naming this node, with what `more` adds: 2PC
    /// presumes abort), and hands each recorded one to `resume`. Returns how many were
    /// claimed.
    pub(crate) async fn recover_expired<S, D, Fut>(
        &self,
        kind: Kind,
        states: &[&str],
        own: bool,
        event: &str,
        more: impl Fn(&mut Record<S, D>) -> Result<Vec<NewEvent>, TxError>,
        resume: impl Fn(Record<S, D>) -> Fut,
    ) -> Result<usize, TxError>
    where
        S: TxState,
        D: Serialize + DeserializeOwned + Recovers,
        Fut: std::future::Future<Output = ()>,
    {
        let (n, claimed) = self.claim_expired::<S, D>(kind, states, own).await?;
        for mut rec in claimed {
            tracing::info!(transaction_id = %rec.row.id, kind = kind.name, state = rec.state.as_str(), "recovering");
            let recoveries = rec.doc.count_recovery();
            let mut events = vec![NewEvent::new(event, None, serde_json::json!({ "owner": self.config.node_id, "recoveries": recoveries }))];
            events.extend(more(&mut rec)?);
            // A write that fails (another coordinator got there first) leaves it to them.
            if self.journal.persist(&mut rec, events).await.is_ok() {
                resume(rec).await;
            }
        }
        Ok(n)
    }

    /// Refuses a plugin reference that does not resolve, or whose component does not export
    /// `role`.
    pub(crate) async fn check_plugin(&self, tenant: &str, plugin: &str, role: Role) -> Result<(), TxError> {
        let (_, component) = self.catalog.resolve(tenant, plugin).await?;
        if !component.exports(role) {
            return Err(TxError::Invalid(format!(
                "plugin {plugin} does not export `{}` (it exports: {})",
                role.as_str(),
                component.export_names().join(", ")
            )));
        }
        Ok(())
    }

    /// The version of `plugin` a transaction runs from its start on: `name@version`.
    pub(crate) async fn pin(&self, tenant: &str, plugin: &str) -> Result<String, TxError> {
        let (row, _) = self.catalog.resolve(tenant, plugin).await?;
        Ok(format!("{}@{}", row.name, row.version))
    }

    /// What runs a call: the pinned plugin version, else the endpoint (`what` names the step
    /// or participant in the error). Owns what it needs, so calls can run in parallel.
    pub(crate) fn target(
        &self,
        tenant: &str,
        pinned: Option<String>,
        endpoint: Option<String>,
        what: &'static str,
    ) -> impl std::future::Future<Output = Result<Target, String>> + Send + use<> {
        let (catalog, tenant) = (self.catalog.clone(), tenant.to_string());
        async move {
            match (pinned, endpoint) {
                (Some(pinned), _) => match catalog.resolve(&tenant, &pinned).await {
                    Ok((_, component)) => Ok(Target::Plugin(component)),
                    Err(e) => Err(format!("plugin {pinned} unavailable: {e}")),
                },
                (None, Some(endpoint)) => Ok(Target::Http { endpoint }),
                (None, None) => Err(format!("{what} has neither a plugin nor an endpoint")),
            }
        }
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
