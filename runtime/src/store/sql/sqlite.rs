//! SQLite's batch writer: the committer's own connection (beside the pool's readers), driven
//! through cached prepared statements on a thread of its own. Binding rows directly replaced a
//! JSON array unpacked with `json_each`, whose parsing was half of the writer thread's time.

use std::ops::Range;
use std::sync::Arc;

use rusqlite::OptionalExtension;

use crate::store::commit::{BatchWriter, Write};
use crate::store::{Result, StoreError};

/// Writes batches through one connection (SQLite has one writer at a time anyway), on its own
/// thread rather than tokio's blocking pool: what else waits there (a DNS lookup an endpoint's
/// name server never answers, a component compiling) must not hold up durable writes.
pub(crate) struct SqliteWriter {
    batches: std::sync::mpsc::Sender<Batch>,
}

/// One batch for the writer's thread, and where its results go.
struct Batch {
    writes: Arc<Vec<Write>>,
    range: Range<usize>,
    done: tokio::sync::oneshot::Sender<Result<Vec<Result<i64>>>>,
}

#[async_trait::async_trait]
impl BatchWriter for SqliteWriter {
    async fn apply(&self, all: &Arc<Vec<Write>>, range: Range<usize>) -> Result<Vec<Result<i64>>> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.batches.send(Batch { writes: all.clone(), range, done }).map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    fn committers(&self) -> usize {
        1
    }
}

/// Applies `writes` through the committer's SQLite connection in one transaction, with the
/// same per-write results as the set-based statements of PostgreSQL.
fn apply_sqlite(conn: &mut rusqlite::Connection, writes: &[Write]) -> Result<Vec<Result<i64>>> {
    // IMMEDIATE: take the write lock up front rather than upgrading a read lock mid-batch,
    // which SQLite may refuse with "database is locked" if a pool connection writes.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(writes.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO transactions (tenant_id, id, kind, name, state, doc, rev, owner, lease_until, created_at, updated_at, last_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (id) DO NOTHING",
        )?;
        let mut update = tx.prepare_cached(
            "UPDATE transactions SET state = ?3, doc = ?4, rev = rev + 1, owner = ?6, lease_until = ?7, updated_at = ?8,
                 last_seq = last_seq + ?9
             WHERE id = ?2 AND tenant_id = ?1 AND rev = ?5
             RETURNING last_seq",
        )?;
        let mut journal = tx.prepare_cached("INSERT INTO journal (tx_id, seq, at, events) VALUES (?1, ?2, ?3, ?4)")?;
        let mut audit =
            tx.prepare_cached("INSERT INTO audit (id, tenant_id, at, actor, action, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        let mut remember = tx.prepare_cached(
            "INSERT INTO idempotency (tenant_id, key, request_hash, status, response, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tenant_id, key) DO NOTHING",
        )?;
        for w in writes {
            let last_seq = match w {
                Write::Audit(_) => None,
                Write::Reply(r) => {
                    let stored = remember.execute(rusqlite::params![r.tenant, r.key, r.request_hash, r.status, r.body, r.created_at_ms])?;
                    (stored == 1).then_some(0)
                }
                Write::Insert(row, events, _) => {
                    let n = events.len() as i64;
                    let inserted = insert.execute(rusqlite::params![
                        row.tenant, row.id, row.kind, row.name, row.state, row.doc, row.rev, row.owner,
                        row.lease_until_ms, row.created_at_ms, row.updated_at_ms, n
                    ])?;
                    (inserted == 1).then_some(n)
                }
                Write::Save(row, events, _) => update
                    .query_row(
                        rusqlite::params![
                            row.tenant, row.id, row.state, row.doc, row.rev, row.owner, row.lease_until_ms,
                            row.updated_at_ms, events.len() as i64
                        ],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?,
            };
            let (result, entry) = w.outcome(last_seq);
            if let Some(entry) = entry {
                journal.execute(rusqlite::params![entry.tx_id, entry.seq, entry.at, entry.events])?;
            }
            if let Some(a) = w.audit_row(result.is_ok()) {
                audit.execute(rusqlite::params![a.id, a.tenant, a.at_ms, a.actor, a.action, a.detail])?;
            }
            results.push(result);
        }
    }
    tx.commit()?;
    Ok(results)
}

impl SqliteWriter {
    /// Opens the committer's connection to the SQLite file at `path`, with the pool's settings,
    /// and starts its thread (which ends, closing the connection, when the writer is dropped).
    pub(crate) fn open(path: &std::path::Path) -> Result<SqliteWriter> {
        let mut conn = rusqlite::Connection::open(path)?;
        // WAL is a property of the file (the pool set it); FULL sync makes every commit survive
        // power loss, and waiting out a pool connection's write beats failing the batch.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let (batches, received) = std::sync::mpsc::channel::<Batch>();
        std::thread::Builder::new()
            .name("wasmtx-sqlite-writer".into())
            .spawn(move || {
                for batch in received {
                    // A batch that panics fails alone (its waiter hears `Closed`); the next runs.
                    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply_sqlite(&mut conn, &batch.writes[batch.range.clone()])));
                    if let Ok(result) = applied {
                        let _ = batch.done.send(result);
                    }
                }
            })
            .map_err(|e| StoreError::Database(format!("starting the SQLite writer's thread: {e}")))?;
        Ok(SqliteWriter { batches })
    }
}
