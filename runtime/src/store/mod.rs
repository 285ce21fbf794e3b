//! Durable state, behind traits: what the engines, the catalog and the API may ask of a store
//! ([`TxStore`], [`PluginStore`], [`TenantStore`], [`IdempotencyStore`], [`SettingStore`],
//! [`AuditStore`]), the rows they deal in, and [`Store`], the handle every part holds. A
//! backend is one folder that implements the traits: [`sql`] is SQLite (the embedded
//! default) and PostgreSQL, [`redis`] one Redis server or a Redis Cluster, [`memory`] the
//! process's memory.
//!
//! The store deals in rows, not in engine types: a transaction's document is JSON the engine
//! owns, next to the few columns queries need (state, owner, lease, revision). Every write that
//! changes a transaction also appends its history events atomically, and is conditional on the
//! revision the writer read, so two coordinators can never both advance one transaction. Writes
//! of many transactions share commits ([`commit`]). Nothing here calls a participant or decides
//! anything, and no driver type leaves a backend's folder.

pub(crate) mod commit;
pub mod memory;
pub mod redis;
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or refused the operation (its own words).
    #[error("database error: {0}")]
    Database(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH, postgres://…, redis://…, redis+cluster://… or memory://")]
    UnsupportedUrl(String),
    /// The row changed since it was read (another writer, or the lease was taken over).
    #[error("{kind} {id} was changed concurrently")]
    Conflict { kind: &'static str, id: String },
    #[error("stored document of {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("the store is shutting down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored transaction (saga, 2PC or managed), as the engines persist it.
#[derive(Debug, Clone, PartialEq)]
pub struct TxRow {
    pub tenant: String,
    pub id: String,
    /// `saga`, `2pc` or `transaction`.
    pub kind: String,
    pub name: String,
    pub state: String,
    /// The engine's document, as JSON text (decoded only by its engine).
    pub doc: String,
    /// Incremented by every write; writers must present the revision they read.
    pub rev: i64,
    pub owner: Option<String>,
    pub lease_until_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Whether `state` is an end state of its kind: the engine says so when it writes (see
    /// `txn::Record`), and a store that expires ended transactions after the retention period
    /// (Redis) keeps and acts on it; a row read back from another store says `false`.
    pub ended: bool,
}

/// A history event to append; a journal entry stores its events in this shape (JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewEvent {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub detail: Value,
}

impl NewEvent {
    pub fn new(kind: &str, step: Option<&str>, detail: Value) -> Self {
        NewEvent { kind: kind.to_string(), step: step.map(str::to_string), detail }
    }
}

/// Who asked for a transaction's write, and what for: an entry of its tenant's audit trail,
/// written by the same commit as the change it records, so the trail holds exactly the
/// changes that took effect (a write refused as a conflict records nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub actor: String,
    pub action: String,
    pub detail: Value,
}

impl Audit {
    /// `actor` asked for `action` on transaction `id`.
    pub fn of(actor: &str, action: &str, id: &str) -> Self {
        Audit { actor: actor.to_string(), action: action.to_string(), detail: serde_json::json!({ "id": id }) }
    }
}

/// A history event as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventRow {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub step: Option<String>,
    pub detail: Value,
}

/// Who holds a transaction, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until_ms: i64,
}

/// A stored plugin version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PluginRow {
    pub tenant: String,
    pub name: String,
    pub version: i64,
    pub digest: String,
    pub exports: Vec<String>,
    pub created_at_ms: i64,
}

/// A tenant and its settings (JSON as given at creation).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TenantRow {
    pub tenant_id: String,
    pub limits: Value,
    pub allowed_hosts: Value,
    pub created_at_ms: i64,
}

/// An API key as stored: never the key itself, only a salted hash of its secret.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyRow {
    pub key_id: String,
    pub tenant_id: String,
    pub salt: String,
    pub hash: String,
    pub created_at_ms: i64,
}

/// A remembered answer to a request that carried an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdempotentReply {
    pub request_hash: String,
    pub status: u16,
    pub body: Value,
}

/// Transactions: revision-checked writes with their journal entries, reads, leases.
#[async_trait]
pub trait TxStore: Send + Sync {
    /// Inserts a new transaction with its first events (and `audit`, in the tenant's trail);
    /// `Conflict` if the id exists. Committed together with other writers' changes (group
    /// commit), acknowledged after.
    async fn insert_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<()>;

    /// Writes `row` (its state, document, lease) if the stored revision is still
    /// `row.rev`, appends `events` (and `audit`), and returns the new revision. Otherwise
    /// `Conflict`, and nothing is written. Committed together with other writers' changes
    /// (group commit), acknowledged after.
    async fn save_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<i64>;

    async fn get_tx(&self, tenant: &str, kind: &str, id: &str) -> Result<Option<TxRow>>;

    /// A tenant's transactions that match `query`, newest first (by creation, then id, both
    /// descending), at most `limit`.
    async fn search_tx(&self, tenant: &str, query: &TxQuery, limit: i64) -> Result<Vec<TxRow>>;

    /// Newest first.
    async fn list_tx(&self, tenant: &str, kind: &str, state: Option<&str>, limit: i64) -> Result<Vec<TxRow>> {
        let query = TxQuery { kind: Some(kind.into()), state: state.map(str::to_string), ..TxQuery::default() };
        self.search_tx(tenant, &query, limit).await
    }

    /// The history of transaction `id`, in order.
    async fn events(&self, id: &str) -> Result<Vec<EventRow>>;

    /// Sagas and 2PC transactions of `tenant` that are running now (whatever coordinator
    /// drives them): what `max_concurrent` counts. Managed transactions are counted through
    /// the saga or 2PC they delegate to.
    async fn count_active(&self, tenant: &str) -> Result<i64>;

    /// Takes over up to `limit` transactions of `kind` in `states` whose lease has expired
    /// (with `own`, also those `lease.owner` held before it restarted). Taking over bumps the
    /// revision, so the previous owner's next write fails.
    async fn claim_expired(
        &self,
        kind: &str,
        states: &[&str],
        lease: &Lease,
        now_ms: i64,
        limit: i64,
        own: bool,
    ) -> Result<Vec<TxRow>>;

    /// Extends a lease the caller holds; false if it no longer holds it.
    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<bool>;
}

/// The kinds of transaction the engines store: sagas, 2PC transactions, managed ones.
pub const KINDS: &[&str] = &["saga", "2pc", "transaction"];

/// What a search of a tenant's transactions asks for; every part optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxQuery {
    pub kind: Option<String>,
    pub state: Option<String>,
    pub name: Option<String>,
    /// Created strictly after this (ms since the epoch).
    pub created_after_ms: Option<i64>,
    /// Created strictly before this.
    pub created_before_ms: Option<i64>,
    /// The cursor: only transactions that come after this one in the newest-first order
    /// (its creation time and id). New transactions come before any cursor, so paging is
    /// stable under concurrent inserts.
    pub after: Option<(i64, String)>,
}

impl TxQuery {
    /// Whether `row` (already known to be the tenant's) matches.
    pub fn matches(&self, row: &TxRow) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        same(&self.kind, &row.kind)
            && same(&self.state, &row.state)
            && same(&self.name, &row.name)
            && self.created_after_ms.is_none_or(|t| row.created_at_ms > t)
            && self.created_before_ms.is_none_or(|t| row.created_at_ms < t)
            && self.after.as_ref().is_none_or(|(at, id)| (row.created_at_ms, row.id.as_str()) < (*at, id.as_str()))
    }
}

/// What [`TxStore::count_active`] counts: (kind, states) of transactions being driven.
pub(crate) const ACTIVE: &[(&str, &[&str])] = &[("saga", &["running", "compensating"]), ("2pc", &["preparing", "committing", "aborting"])];

/// Plugin bytes (content-addressed) and numbered versions per tenant and name.
#[async_trait]
pub trait PluginStore: Send + Sync {
    /// Records `bytes` as the next version of `name`, unless these exact bytes are already a
    /// version of it (then that version is returned with `false`). Atomic per name.
    async fn put_plugin(
        &self,
        tenant: &str,
        name: &str,
        digest: &str,
        bytes: &[u8],
        exports: &[&str],
        now_ms: i64,
    ) -> Result<(PluginRow, bool)>;

    /// `version: None` → the newest.
    async fn plugin(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<PluginRow>>;

    /// Every version of `name`, oldest first.
    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginRow>>;

    /// The newest version of every plugin of `tenant`, by name.
    async fn latest_plugins(&self, tenant: &str) -> Result<Vec<PluginRow>>;

    async fn component_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>>;
}

/// Tenants and their API keys (hashed).
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Creates a tenant with its first key; false if the tenant exists.
    async fn create_tenant(&self, tenant: &TenantRow, key: &KeyRow) -> Result<bool>;

    async fn add_key(&self, key: &KeyRow) -> Result<()>;

    /// Revokes a key of `tenant`; false if there is no such live key.
    async fn revoke_key(&self, tenant: &str, key_id: &str, now_ms: i64) -> Result<bool>;

    /// The live key with this id.
    async fn live_key(&self, key_id: &str) -> Result<Option<KeyRow>>;

    /// `tenant`'s live keys, newest first.
    async fn live_keys(&self, tenant: &str) -> Result<Vec<KeyRow>>;

    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRow>>;

    async fn tenant_ids(&self) -> Result<Vec<String>>;

    /// Whether any tenant exists (then every request needs a key).
    async fn has_tenants(&self) -> Result<bool>;
}

/// Remembered answers of requests that carried an `Idempotency-Key`.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn idempotent_reply(&self, tenant: &str, key: &str) -> Result<Option<IdempotentReply>>;

    /// Remembers a reply; the first one stored for a key wins. `true` if it was this one.
    async fn remember_reply(&self, tenant: &str, key: &str, reply: &IdempotentReply, now_ms: i64) -> Result<bool>;
}

/// Per-tenant settings (the default policy).
#[async_trait]
pub trait SettingStore: Send + Sync {
    async fn setting(&self, tenant: &str, key: &str) -> Result<Option<String>>;

    async fn put_setting(&self, tenant: &str, key: &str, value: &str) -> Result<()>;
}

/// The per-tenant audit trail.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records who did what; ids are time-ordered (UUIDv7).
    async fn audit(&self, tenant: &str, actor: &str, action: &str, detail: &Value) -> Result<()>;

    /// The newest `limit` audit entries of `tenant`, newest first: (at, actor, action, detail).
    async fn audit_log(&self, tenant: &str, limit: i64) -> Result<Vec<(i64, String, String, Value)>>;
}

/// Deleting what the retention periods no longer keep, in small batches. Each call is
/// safe to run on several coordinators at once: a row is deleted once, and a transaction
/// that left its end state since it was chosen is not deleted.
#[async_trait]
pub trait Retention: Send + Sync {
    /// Deletes up to `limit` of `tenant`'s transactions of `kind` in one of `states` (its end
    /// states) last written before `before_ms`, with their journals; returns how many.
    async fn purge_ended(&self, tenant: &str, kind: &str, states: &[&str], before_ms: i64, limit: i64) -> Result<u64>;

    /// Deletes up to `limit` of `tenant`'s idempotency replies remembered before `before_ms`.
    async fn purge_replies(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64>;

    /// Deletes up to `limit` of `tenant`'s audit entries written before `before_ms`.
    async fn purge_audit(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64>;
}

/// Everything a coordinator needs of its store.
#[async_trait]
pub trait Backend: TxStore + PluginStore + TenantStore + IdempotencyStore + SettingStore + AuditStore + Retention + Inspect {
    /// `sqlite`, `postgres`, …
    fn kind(&self) -> &'static str;

    /// Answers when the database does.
    async fn ping(&self) -> Result<()>;
}

/// Reads across the whole store, for tests and `bench fleet`'s end-state checks — never for
/// the engines, which only ever look at their own transactions.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// How many transactions are in each (kind, state).
    async fn state_counts(&self) -> Result<Vec<(String, String, i64)>>;

    /// (id, state) of every transaction of `kind`.
    async fn states_of_kind(&self, kind: &str) -> Result<Vec<(String, String)>>;

    /// Every event named `event` in the journals of transactions of `kind`: (transaction,
    /// when its entry was written, the event).
    async fn journal_events(&self, kind: &str, event: &str) -> Result<Vec<(String, i64, NewEvent)>>;
}

/// A fresh, empty store beside a shared one, for a run that must not see other data
/// (`bench fleet`): a new database on the same PostgreSQL server, or a new key prefix on the
/// same Redis. `remove` deletes it.
pub struct Scratch {
    /// The scratch store's URL.
    pub url: String,
    /// What it is, for a report: "postgres (fresh database …)".
    pub described: String,
    dropped: Option<(String, String)>,
}

impl Scratch {
    /// Makes one beside the shared store at `url` (see `Store::is_shared`).
    pub async fn create(url: &str) -> Result<Scratch> {
        let fresh = format!("wasmtx_fleet_{}", uuid::Uuid::new_v4().simple());
        if redis::Location::handles(url) {
            let separator = if url.contains('?') { '&' } else { '?' };
            let url = format!("{url}{separator}prefix={fresh}");
            let kind = Store::open(&url).await?.kind();
            return Ok(Scratch { url, described: format!("{kind} (fresh key prefix {fresh})"), dropped: None });
        }
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let scratch = sql::create_database(url, &fresh).await?;
            return Ok(Scratch { url: scratch, described: format!("postgres (fresh database {fresh})"), dropped: Some((url.to_string(), fresh)) });
        }
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }

    /// Deletes the scratch database (a Redis prefix's keys expire with their retention).
    pub async fn remove(self) -> Result<()> {
        match self.dropped {
            Some((admin, name)) => sql::drop_database(&admin, &name).await,
            None => Ok(()),
        }
    }
}

/// The store a coordinator holds: any backend, behind one cheap, cloneable handle.
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Store").field(&self.0.kind()).finish()
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `url`: `sqlite://PATH` (created if
    /// missing), `postgres://…`, `redis://…` or `redis+cluster://…` (see [`redis`]), or
    /// `memory://[NAME]` (nothing kept when the process stops; within
    /// one process every opening of the same NAME is the same store, and a bare `memory://` a
    /// fresh one).
    pub async fn open(url: &str) -> Result<Store> {
        if let Some(name) = url.strip_prefix("memory://") {
            return Ok(Store(memory::MemoryStore::named(name)));
        }
        if url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:") {
            return Ok(Store(Arc::new(sql::SqlStore::open(url).await?)));
        }
        if redis::Location::handles(url) {
            return Ok(Store(Arc::new(redis::RedisStore::open(url).await?)));
        }
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }

    /// Whether `url` names a store that several coordinators can share (PostgreSQL, Redis).
    pub fn is_shared(url: &str) -> bool {
        url.starts_with("postgres:") || url.starts_with("postgresql:") || redis::Location::handles(url)
    }

    /// A store over another backend.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store(backend)
    }

    /// The plugin part of this store.
    pub fn plugins(&self) -> Arc<dyn PluginStore> {
        self.0.clone()
    }
}

/// The store's traits, for callers that use a [`Store`]'s methods.
pub mod prelude {
    pub use super::{AuditStore, Backend, IdempotencyStore, Inspect, PluginStore, Retention, SettingStore, TenantStore, TxStore};
}

/// Milliseconds since the Unix epoch.
/// Parses JSON the coordinator stored itself (documents, journal entries, replies). Whatever
/// entered was parsed within serde_json's nesting limit of 128, but is stored a few levels
/// deeper (a step's output inside its document), so reading it back within that same limit
/// could fail for good; its depth is bounded by what was parsed, so the stack is not at risk.
pub fn parse_stored<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
