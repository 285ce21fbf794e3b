//! Schema and migrations for both backends. Each migration runs once, in order, recorded in
//! `wasmtx_migrations`; on Postgres an advisory lock keeps coordinators that start together
//! from migrating twice.

use sqlx::{AnyPool, Row};

use super::{Dialect, Result};


/// (version, statements). `{blob}` is the binary column type of the backend.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE components (
            digest TEXT PRIMARY KEY,
            bytes {blob} NOT NULL,
            size BIGINT NOT NULL,
            created_at BIGINT NOT NULL)",
        "CREATE TABLE plugins (
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            digest TEXT NOT NULL REFERENCES components (digest),
            exports TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, name, version),
            UNIQUE (tenant_id, name, digest))",
        "CREATE TABLE transactions (
            tenant_id TEXT NOT NULL,
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            doc TEXT NOT NULL,
            rev BIGINT NOT NULL,
            owner TEXT,
            lease_until BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL)",
        "CREATE INDEX transactions_by_tenant ON transactions (tenant_id, kind, created_at)",
        "CREATE INDEX transactions_by_lease ON transactions (state, lease_until)",
        "CREATE TABLE events (
            tx_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            at BIGINT NOT NULL,
            kind TEXT NOT NULL,
            step TEXT,
            detail TEXT NOT NULL,
            PRIMARY KEY (tx_id, seq))",
        "CREATE TABLE idempotency (
            tenant_id TEXT NOT NULL,
            key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status BIGINT NOT NULL,
            response TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, key))",
    ],
), (
    2,
    &["CREATE TABLE tenant_settings (
            tenant_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (tenant_id, key))"],
), (
    3,
    &[
        "CREATE TABLE tenants (
            tenant_id TEXT PRIMARY KEY,
            limits TEXT NOT NULL,
            allowed_hosts TEXT NOT NULL,
            created_at BIGINT NOT NULL)",
        "CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants (tenant_id),
            salt TEXT NOT NULL,
            hash TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT)",
    ],
), (
    4,
    &[
        "CREATE TABLE audit (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL)",
        "CREATE INDEX audit_by_tenant ON audit (tenant_id, id)",
    ],
), (
    5,
    &[
        // The last history sequence number of each transaction, so group commit numbers a
        // batch's events without reading them back.
        "ALTER TABLE transactions ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0",
        "UPDATE transactions SET last_seq = COALESCE((SELECT MAX(seq) FROM events WHERE events.tx_id = transactions.id), 0)",
    ],
), (
    6,
    &[
        // Leases change on nearly every write; with lease_until out of every index (the
        // recovery scan finds the few unfinished rows by kind and state) and room left on each
        // page, most writes are HOT updates that touch no index at all.
        "DROP INDEX IF EXISTS transactions_by_lease",
        "CREATE INDEX transactions_by_state ON transactions (kind, state)",
        "postgres: ALTER TABLE transactions SET (fillfactor = 70)",
    ],
), (
    7,
    &[
        // History as journal entries: the events of one write in one row (a JSON array,
        // numbered from `seq`), instead of a row and an index entry per event. A saga of three
        // steps writes 4–5 entries where it wrote 12 event rows.
        "CREATE TABLE journal (
            tx_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            at BIGINT NOT NULL,
            events TEXT NOT NULL,
            PRIMARY KEY (tx_id, seq))",
        "sqlite: INSERT INTO journal (tx_id, seq, at, events)
            SELECT tx_id, seq, at, json_array(json_object('kind', kind, 'step', step, 'detail', json(detail))) FROM events",
        "postgres: INSERT INTO journal (tx_id, seq, at, events)
            SELECT tx_id, seq, at, json_build_array(json_build_object('kind', kind, 'step', step, 'detail', detail::json))::text
            FROM events",
        "DROP TABLE events",
    ],
)];

pub(super) async fn migrate(pool: &AnyPool, backend: Dialect) -> Result<()> {
    let mut conn = pool.acquire().await?;
    if backend == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_lock(727375)").execute(&mut *conn).await?;
    }
    let result = run(&mut conn, backend).await;
    if backend == Dialect::Postgres {
        sqlx::query("SELECT pg_advisory_unlock(727375)").execute(&mut *conn).await?;
    }
    result
}

async fn run(conn: &mut sqlx::pool::PoolConnection<sqlx::Any>, backend: Dialect) -> Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS wasmtx_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&mut **conn)
        .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM wasmtx_migrations")
        .fetch_one(&mut **conn)
        .await?
        .try_get(0)?;
    let blob = match backend {
        Dialect::Sqlite => "BLOB",
        Dialect::Postgres => "BYTEA",
    };
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let mut tx = sqlx::Connection::begin(&mut **conn).await?;
        for statement in statements.iter() {
            // `postgres: …` and `sqlite: …` statements are for that backend only (storage
            // parameters, its JSON functions).
            let statement = match (statement.split_once(": "), backend) {
                (Some(("postgres", pg)), Dialect::Postgres) => pg,
                (Some(("sqlite", lite)), Dialect::Sqlite) => lite,
                (Some(("postgres" | "sqlite", _)), _) => continue,
                _ => statement,
            };
            sqlx::query(&statement.replace("{blob}", blob)).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO wasmtx_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied store migration");
    }
    Ok(())
}
