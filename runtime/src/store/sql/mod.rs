//! SQLite (embedded, the default) and PostgreSQL through sqlx: the schema and its migrations,
//! reads through a connection pool, and transaction writes through the group committer with
//! one batch writer per database (`sqlite`, `postgres`). Everything driver-specific of the
//! store lives in this folder and is turned into `StoreError` at its edge.

mod postgres;
mod schema;
mod sqlite;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Row};

use super::commit;
use super::{
    Audit, AuditStore, Backend, EventRow, IdempotencyStore, IdempotentReply, Inspect, KeyRow, Lease, NewEvent, PluginRow,
    PluginStore, Result, Retention, SettingStore, StoreError, TenantRow, TenantStore, TxQuery, TxRow, TxStore, now_ms,
};

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Which SQL database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// What differs between the two dialects, in one place; the store's methods ask here
/// instead of matching on the dialect.
impl Dialect {
    fn kind(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// The clause that makes a selection skip rows other coordinators hold (Postgres). SQLite
    /// has one writer at a time: the statement around it is atomic on its own.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// A transaction that writes. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`), so it waits its turn behind the group committer (busy_timeout) instead of
    /// failing with "database is locked" when its read lock cannot be upgraded.
    async fn begin_write(self, pool: &AnyPool) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self {
            Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => pool.begin().await?,
        })
    }

    /// Serialises writers of `lock` until `tx` ends, across coordinators (Postgres: an
    /// advisory lock; SQLite's write lock already does).
    async fn serialise(self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, lock: &str) -> Result<()> {
        if self == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(lock).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Every Postgres reader session plans each execution with what the tables hold now. A generic
/// plan cached while a fresh database's tables were nearly empty keeps scanning whole tables as
/// they grow (measured: 228 sagas/s in `bench saga`, PostgreSQL spending 78% of the CPU in index
/// scans). The group committer's statement is the exception: see `postgres::APPLY`.
const PG_SESSION: &str = "SET plan_cache_mode = force_custom_plan";

/// A PostgreSQL connection idle this long is pinged before it is used again (the database may
/// have restarted meanwhile): the readers' pool and the group committer's connections alike.
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Connections of a coordinator's PostgreSQL pool (its reads; the committers have their own):
/// four per core, 8 to 32. Only a few run at once (a read is one short statement), and each
/// one more is a server process PostgreSQL forks and warms up: a fleet of three on 2 cores
/// held 53 (16 each with their committers') where snapshots found 2 at work, and restarting
/// one opened its share again.
fn pg_readers() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32).saturating_mul(4).clamp(8, 32)
}

/// A store on SQLite or PostgreSQL.
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Every transaction write goes through here (group commit).
    commits: commit::GroupCommit,
}

impl SqlStore {
    /// Opens (creating if needed) and migrates the database at `url`:
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub async fn open(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        // The group committer writes through a connection of its own, which an in-memory
        // database would not share: SQLite needs a file.
        if dialect == Dialect::Sqlite && (url.contains(":memory:") || url.contains("mode=memory")) {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        }
        let pool = match dialect {
            Dialect::Sqlite => {
                let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
                let options = AnyConnectOptions::from_str(&url)?;
                AnyPoolOptions::new()
                    .max_connections(8)
                    // A file does not go away under its connection: the ping sqlx sends before
                    // handing one out (a round trip to the connection's own thread) buys
                    // nothing here.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the writer; FULL sync makes every
                            // commit survive power loss, not just a process crash.
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = FULL",
                                "PRAGMA busy_timeout = 10000",
                                "PRAGMA foreign_keys = ON",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Dialect::Postgres => {
                let options = AnyConnectOptions::from_str(url)?;
                AnyPoolOptions::new()
                    .max_connections(pg_readers())
                    .acquire_timeout(Duration::from_secs(10))
                    // sqlx pings every connection it hands out; only one idle for a while
                    // (the database may have restarted meanwhile) is worth that round trip.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= IDLE_CHECK {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query(PG_SESSION).execute(&mut *conn).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
        schema::migrate(&pool, dialect).await?;
        let writer: Arc<dyn commit::BatchWriter> = match dialect {
            Dialect::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
                Arc::new(sqlite::SqliteWriter::open(options.get_filename())?)
            }
            Dialect::Postgres => Arc::new(postgres::PostgresWriter::connect(url).await?),
        };
        let commits = commit::GroupCommit::start(writer);
        Ok(SqlStore { pool, dialect, commits })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        self.dialect.begin_write(&self.pool).await
    }
}

#[async_trait]
impl Backend for SqlStore {
    fn kind(&self) -> &'static str {
        self.dialect.kind()
    }

    /// Answers when the database does.
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl Inspect for SqlStore {
    async fn state_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query("SELECT kind, state, COUNT(*) FROM transactions GROUP BY kind, state").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    async fn states_of_kind(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, state FROM transactions WHERE kind = $1").bind(kind).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn journal_events(&self, kind: &str, event: &str) -> Result<Vec<(String, i64, NewEvent)>> {
        let rows = sqlx::query(
            "SELECT j.tx_id, j.at, j.events FROM journal j JOIN transactions t ON t.id = j.tx_id
             WHERE t.kind = $1 AND j.events LIKE '%' || $2 || '%'",
        )
        .bind(kind)
        .bind(format!("\"{event}\""))
        .fetch_all(&self.pool)
        .await?;
        let mut found = Vec::new();
        for r in &rows {
            let (tx, at, text): (String, i64, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let events: Vec<NewEvent> = super::parse_stored(&text)
                .map_err(|e| StoreError::Corrupt { id: tx.clone(), reason: format!("journal entry: {e}") })?;
            found.extend(events.into_iter().filter(|e| e.kind == event).map(|e| (tx.clone(), at, e)));
        }
        Ok(found)
    }
}

#[async_trait]
impl TxStore for SqlStore {
    async fn insert_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<()> {
        let audit = audit.map(|a| commit::AuditRow::riding(&row.tenant, a));
        self.commits.submit(commit::Write::Insert(row.clone(), events.to_vec(), audit)).await.map(drop)
    }

    async fn save_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<i64> {
        let audit = audit.map(|a| commit::AuditRow::riding(&row.tenant, a));
        self.commits.submit(commit::Write::Save(row.clone(), events.to_vec(), audit)).await
    }

    async fn get_tx(&self, tenant: &str, kind: &str, id: &str) -> Result<Option<TxRow>> {
        // By the primary key alone, so no plan can prefer the tenant index; another tenant's
        // or kind's row is then "not found", exactly as if it did not exist.
        let row = sqlx::query(&format!("{TX_COLUMNS} WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?;
        let row = row.as_ref().map(tx_row).transpose()?;
        Ok(row.filter(|r| r.tenant == tenant && r.kind == kind))
    }

    async fn search_tx(&self, tenant: &str, query: &TxQuery, limit: i64) -> Result<Vec<TxRow>> {
        enum Bind<'a> {
            Text(&'a str),
            Number(i64),
        }
        // Each condition's values, numbered ($2, $3, …) in the order they are added.
        let mut sql = format!("{TX_COLUMNS} WHERE tenant_id = $1");
        let mut binds = vec![Bind::Text(tenant)];
        let place = |binds: &[Bind<'_>]| format!("${}", binds.len() + 1);
        for (column, value) in [("kind", &query.kind), ("state", &query.state), ("name", &query.name)] {
            if let Some(v) = value {
                sql += &format!(" AND {column} = {}", place(&binds));
                binds.push(Bind::Text(v));
            }
        }
        for (condition, value) in [("created_at >", query.created_after_ms), ("created_at <", query.created_before_ms)] {
            if let Some(t) = value {
                sql += &format!(" AND {condition} {}", place(&binds));
                binds.push(Bind::Number(t));
            }
        }
        if let Some((at, id)) = &query.after {
            let at_place = place(&binds);
            binds.push(Bind::Number(*at));
            let id_place = place(&binds);
            binds.push(Bind::Text(id));
            sql += &format!(" AND (created_at < {at_place} OR (created_at = {at_place} AND id < {id_place}))");
        }
        sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT {}", place(&binds));
        let mut q = sqlx::query(&sql);
        for bind in binds {
            q = match bind {
                Bind::Text(t) => q.bind(t),
                Bind::Number(n) => q.bind(n),
            };
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(tx_row).collect()
    }

    async fn events(&self, id: &str) -> Result<Vec<EventRow>> {
        let rows = sqlx::query("SELECT seq, at, events FROM journal WHERE tx_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let mut history = Vec::new();
        for r in &rows {
            let (first, at_ms): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
            let text: String = r.try_get(2)?;
            let stored: Vec<NewEvent> = super::parse_stored(&text)
                .map_err(|e| StoreError::Corrupt { id: id.to_string(), reason: format!("journal entry {first}: {e}") })?;
            history.extend(stored.into_iter().zip(first..).map(|(e, seq)| EventRow {
                seq,
                at_ms,
                kind: e.kind,
                step: e.step,
                detail: e.detail,
            }));
        }
        Ok(history)
    }

    async fn count_active(&self, tenant: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM transactions WHERE tenant_id = $1 AND (
                (kind = 'saga' AND state IN ('running', 'compensating'))
                OR (kind = '2pc' AND state IN ('preparing', 'committing', 'aborting')))",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn claim_expired(
        &self,
        kind: &str,
        states: &[&str],
        lease: &Lease,
        now_ms: i64,
        limit: i64,
        own: bool,
    ) -> Result<Vec<TxRow>> {
        let placeholders: Vec<String> = (0..states.len()).map(|i| format!("${}", i + 6)).collect();
        let in_states = placeholders.join(", ");
        let lock = self.dialect.skip_locked();
        let limit_param = states.len() + 6;
        let sql = format!(
            "UPDATE transactions SET owner = $1, lease_until = $2, rev = rev + 1
             WHERE id IN (SELECT id FROM transactions
                          WHERE kind = $4 AND state IN ({in_states})
                            AND (lease_until < $3 OR ($5 = 1 AND owner = $1))
                          ORDER BY lease_until LIMIT ${limit_param} {lock})
             RETURNING tenant_id, id, kind, name, state, doc, rev, owner, lease_until, created_at, updated_at"
        );
        let mut q = sqlx::query(&sql)
            .bind(&lease.owner)
            .bind(lease.until_ms)
            .bind(now_ms)
            .bind(kind)
            .bind(if own { 1i64 } else { 0i64 });
        for s in states {
            q = q.bind(*s);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(tx_row).collect()
    }

    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<bool> {
        let done = sqlx::query("UPDATE transactions SET lease_until = $1 WHERE id = $2 AND owner = $3")
            .bind(lease.until_ms)
            .bind(id)
            .bind(&lease.owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl PluginStore for SqlStore {
    async fn put_plugin(
        &self,
        tenant: &str,
        name: &str,
        digest: &str,
        bytes: &[u8],
        exports: &[&str],
        now_ms: i64,
    ) -> Result<(PluginRow, bool)> {
        let mut tx = self.begin_write().await?;
        // Version numbers per (tenant, name) are given out one writer at a time.
        self.dialect.serialise(&mut tx, &format!("plugin:{tenant}:{name}")).await?;
        let existing = sqlx::query(
            "SELECT tenant_id, name, version, digest, exports, created_at FROM plugins
             WHERE tenant_id = $1 AND name = $2 AND digest = $3",
        )
        .bind(tenant)
        .bind(name)
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.commit().await?;
            return Ok((plugin_row(&row)?, false));
        }
        sqlx::query(
            "INSERT INTO components (digest, bytes, size, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM plugins WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let exports_json = serde_json::to_string(exports).expect("strings serialise");
        sqlx::query(
            "INSERT INTO plugins (tenant_id, name, version, digest, exports, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(name)
        .bind(next)
        .bind(digest)
        .bind(&exports_json)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let row = PluginRow {
            tenant: tenant.into(),
            name: name.into(),
            version: next,
            digest: digest.into(),
            exports: exports.iter().map(|s| s.to_string()).collect(),
            created_at_ms: now_ms,
        };
        Ok((row, true))
    }

    async fn plugin(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<PluginRow>> {
        let row = match version {
            Some(v) => {
                sqlx::query(
                    "SELECT tenant_id, name, version, digest, exports, created_at FROM plugins
                     WHERE tenant_id = $1 AND name = $2 AND version = $3",
                )
                .bind(tenant)
                .bind(name)
                .bind(v)
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT tenant_id, name, version, digest, exports, created_at FROM plugins
                     WHERE tenant_id = $1 AND name = $2 ORDER BY version DESC LIMIT 1",
                )
                .bind(tenant)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(plugin_row).transpose()
    }

    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginRow>> {
        let rows = sqlx::query(
            "SELECT tenant_id, name, version, digest, exports, created_at FROM plugins
             WHERE tenant_id = $1 AND name = $2 ORDER BY version",
        )
        .bind(tenant)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plugin_row).collect()
    }

    async fn latest_plugins(&self, tenant: &str) -> Result<Vec<PluginRow>> {
        let rows = sqlx::query(
            "SELECT p.tenant_id, p.name, p.version, p.digest, p.exports, p.created_at FROM plugins p
             WHERE p.tenant_id = $1
               AND p.version = (SELECT MAX(q.version) FROM plugins q WHERE q.tenant_id = p.tenant_id AND q.name = p.name)
             ORDER BY p.name",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plugin_row).collect()
    }

    async fn component_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT bytes FROM components WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<Vec<u8>, _>(0)?),
            None => None,
        })
    }
}

#[async_trait]
impl TenantStore for SqlStore {
    async fn create_tenant(&self, tenant: &TenantRow, key: &KeyRow) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (tenant_id, limits, allowed_hosts, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&tenant.tenant_id)
        .bind(tenant.limits.to_string())
        .bind(tenant.allowed_hosts.to_string())
        .bind(tenant.created_at_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        insert_key(&mut tx, key).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn add_key(&self, key: &KeyRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        insert_key(&mut tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND tenant_id = $3 AND revoked_at IS NULL")
            .bind(now_ms)
            .bind(key_id)
            .bind(tenant)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn live_keys(&self, tenant: &str) -> Result<Vec<KeyRow>> {
        let rows = sqlx::query("SELECT key_id, tenant_id, salt, hash, created_at FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, key_id")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(KeyRow { key_id: r.try_get(0)?, tenant_id: r.try_get(1)?, salt: r.try_get(2)?, hash: r.try_get(3)?, created_at_ms: r.try_get(4)? }))
            .collect()
    }

    async fn live_key(&self, key_id: &str) -> Result<Option<KeyRow>> {
        let row = sqlx::query("SELECT key_id, tenant_id, salt, hash, created_at FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(KeyRow {
                key_id: r.try_get(0)?,
                tenant_id: r.try_get(1)?,
                salt: r.try_get(2)?,
                hash: r.try_get(3)?,
                created_at_ms: r.try_get(4)?,
            })
        })
        .transpose()
    }

    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRow>> {
        let row = sqlx::query("SELECT tenant_id, limits, allowed_hosts, created_at FROM tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let limits: String = r.try_get(1)?;
            let hosts: String = r.try_get(2)?;
            Ok(TenantRow {
                tenant_id: r.try_get(0)?,
                limits: serde_json::from_str(&limits).unwrap_or(Value::Null),
                allowed_hosts: serde_json::from_str(&hosts).unwrap_or(Value::Null),
                created_at_ms: r.try_get(3)?,
            })
        })
        .transpose()
    }

    async fn tenant_ids(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT tenant_id FROM tenants ORDER BY tenant_id").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn has_tenants(&self) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM tenants LIMIT 1").fetch_optional(&self.pool).await?.is_some())
    }
}

#[async_trait]
impl IdempotencyStore for SqlStore {
    async fn idempotent_reply(&self, tenant: &str, key: &str) -> Result<Option<IdempotentReply>> {
        let row = sqlx::query("SELECT request_hash, status, response FROM idempotency WHERE tenant_id = $1 AND key = $2")
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let body: String = r.try_get(2)?;
            Ok(IdempotentReply {
                request_hash: r.try_get(0)?,
                status: r.try_get::<i64, _>(1)? as u16,
                body: super::parse_stored(&body).unwrap_or(Value::Null),
            })
        })
        .transpose()
    }

    async fn remember_reply(&self, tenant: &str, key: &str, reply: &IdempotentReply, now_ms: i64) -> Result<bool> {
        let write = commit::Write::Reply(commit::ReplyRow::new(tenant, key, reply, now_ms));
        Ok(self.commits.submit(write).await? == 1)
    }
}

#[async_trait]
impl SettingStore for SqlStore {
    async fn setting(&self, tenant: &str, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM tenant_settings WHERE tenant_id = $1 AND key = $2")
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    async fn put_setting(&self, tenant: &str, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenant_settings (tenant_id, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(tenant)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn audit(&self, tenant: &str, actor: &str, action: &str, detail: &Value) -> Result<()> {
        self.commits.submit(commit::Write::Audit(commit::AuditRow::new(tenant, actor, action, detail))).await.map(drop)
    }

    async fn audit_log(&self, tenant: &str, limit: i64) -> Result<Vec<(i64, String, String, Value)>> {
        let rows = sqlx::query("SELECT at, actor, action, detail FROM audit WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(tenant)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get(3)?;
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, serde_json::from_str(&detail).unwrap_or(Value::Null)))
            })
            .collect()
    }
}


async fn insert_key(tx: &mut sqlx::Transaction<'_, sqlx::Any>, key: &KeyRow) -> Result<()> {
    sqlx::query("INSERT INTO api_keys (key_id, tenant_id, salt, hash, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&key.key_id)
        .bind(&key.tenant_id)
        .bind(&key.salt)
        .bind(&key.hash)
        .bind(key.created_at_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Retention for SqlStore {
    async fn purge_ended(&self, tenant: &str, kind: &str, states: &[&str], before_ms: i64, limit: i64) -> Result<u64> {
        let in_states: Vec<String> = (0..states.len()).map(|i| format!("${}", i + 5)).collect();
        // Rows another coordinator is purging (or writing) are skipped, not waited for.
        let lock = self.dialect.skip_locked();
        let sql = format!(
            "DELETE FROM transactions WHERE id IN (SELECT id FROM transactions
                 WHERE tenant_id = $1 AND kind = $2 AND updated_at < $3 AND state IN ({})
                 ORDER BY updated_at LIMIT $4 {lock})
             RETURNING id",
            in_states.join(", ")
        );
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query(&sql).bind(tenant).bind(kind).bind(before_ms).bind(limit);
        for st in states {
            q = q.bind(*st);
        }
        let ids: Vec<String> = q.fetch_all(&mut *tx).await?.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        if !ids.is_empty() {
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let delete = format!("DELETE FROM journal WHERE tx_id IN ({})", marks.join(", "));
            let mut d = sqlx::query(&delete);
            for id in &ids {
                d = d.bind(id);
            }
            d.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn purge_replies(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM idempotency WHERE tenant_id = $1 AND key IN
                 (SELECT key FROM idempotency WHERE tenant_id = $1 AND created_at < $2 LIMIT $3)",
        )
        .bind(tenant)
        .bind(before_ms)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn purge_audit(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE tenant_id = $1 AND at < $2 ORDER BY id LIMIT $3)",
        )
        .bind(tenant)
        .bind(before_ms)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

const TX_COLUMNS: &str =
    "SELECT tenant_id, id, kind, name, state, doc, rev, owner, lease_until, created_at, updated_at FROM transactions";

fn tx_row(r: &AnyRow) -> Result<TxRow> {
    let id: String = r.try_get(1)?;
    let doc: String = r.try_get(5)?;
    Ok(TxRow {
        tenant: r.try_get(0)?,
        id,
        kind: r.try_get(2)?,
        name: r.try_get(3)?,
        state: r.try_get(4)?,
        doc,
        rev: r.try_get(6)?,
        owner: r.try_get(7)?,
        lease_until_ms: r.try_get(8)?,
        created_at_ms: r.try_get(9)?,
        updated_at_ms: r.try_get(10)?,
        ended: false,
    })
}

fn plugin_row(r: &AnyRow) -> Result<PluginRow> {
    let exports: String = r.try_get(4)?;
    Ok(PluginRow {
        tenant: r.try_get(0)?,
        name: r.try_get(1)?,
        version: r.try_get(2)?,
        digest: r.try_get(3)?,
        exports: serde_json::from_str(&exports).unwrap_or_default(),
        created_at_ms: r.try_get(5)?,
    })
}

/// Creates database `name` (letters, digits, `_`) on the PostgreSQL server at `admin_url`;
/// returns its URL.
pub(crate) async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let base = admin_url.split('?').next().unwrap_or(admin_url);
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

/// Drops database `name` on the PostgreSQL server at `admin_url`, closing its connections.
pub(crate) async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    Ok(())
}
