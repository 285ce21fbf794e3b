//! Group commit: the journal writes of many concurrent transactions share one database
//! transaction, so durable throughput is not one fsync per state change.
//!
//! Writers queue a `Write`; a committer task takes what is queued (at most `MAX_BATCH`, with
//! no artificial wait: the commit in progress is the batching window), applies it — insert the
//! new transactions, update the revised ones where the revision still matches, append each
//! write's events as one journal entry, and the audit entries — then commits once and answers
//! each writer. On PostgreSQL rows travel as typed arrays, unpacked by set-based statements; on
//! SQLite, which runs in-process, cached prepared statements apply them row by row on a
//! blocking thread.
//! A write is acknowledged only after its commit. A revision conflict fails that write alone;
//! a database error fails the batch, whose writes are then retried one by one so that one bad
//! write never takes its neighbours down with it.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex as SyncMutex};

use rusqlite::OptionalExtension;
use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{NewEvent, Result, StoreError, TxRow};

/// Most writes committed together.
const MAX_BATCH: usize = 512;
/// Writes waiting for a committer; beyond this, writers wait to queue (back-pressure).
const QUEUE: usize = 8192;

/// One change to commit: a revision-checked change of a transaction with its history
/// events, or an audit entry.
pub(crate) enum Write {
    /// A new transaction (revision 0); conflicts if the id exists.
    Insert(TxRow, Vec<NewEvent>),
    /// A new revision of a stored transaction; conflicts unless the stored revision is `row.rev`.
    Save(TxRow, Vec<NewEvent>),
    /// Who did what, appended (API requests write one each; batching them spares a commit per
    /// request).
    Audit(AuditRow),
}

/// An entry of the audit trail.
pub(crate) struct AuditRow {
    pub id: String,
    pub tenant: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

impl Write {
    /// What a batch holds at most once.
    fn key(&self) -> &str {
        match self {
            Write::Insert(row, _) | Write::Save(row, _) => &row.id,
            Write::Audit(a) => &a.id,
        }
    }

    /// The transaction row (inserts and saves only).
    fn row(&self) -> &TxRow {
        match self {
            Write::Insert(row, _) | Write::Save(row, _) => row,
            Write::Audit(_) => unreachable!("an audit entry has no transaction row"),
        }
    }

    fn events(&self) -> &[NewEvent] {
        match self {
            Write::Insert(_, events) | Write::Save(_, events) => events,
            Write::Audit(_) => &[],
        }
    }

    /// This write's result once the database has said whether it took effect — `last_seq`: the
    /// transaction's last event number after it; `None`: its id or revision was taken — and
    /// the journal entry to append when it did. (An audit entry always takes effect.)
    fn outcome(&self, last_seq: Option<i64>) -> (Result<i64>, Option<JournalEntry<'_>>) {
        let row = match self {
            Write::Audit(_) => return (Ok(0), None),
            Write::Insert(row, _) | Write::Save(row, _) => row,
        };
        let Some(last_seq) = last_seq else {
            return (Err(StoreError::Conflict { kind: "transaction", id: row.id.clone() }), None);
        };
        let rev = match self {
            Write::Save(..) => row.rev + 1,
            _ => row.rev,
        };
        (Ok(rev), JournalEntry::of(row, self.events(), last_seq))
    }
}

struct Job {
    write: Write,
    /// The revision written, or why not.
    reply: oneshot::Sender<Result<i64>>,
}

/// The queue in front of the committer tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the committers: one for SQLite (it has one writer anyway), several for Postgres,
    /// so one batch is assembled while another commits.
    pub(crate) fn start(db: Db) -> GroupCommit {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        let committers = match db {
            Db::Sqlite(_) => 1,
            Db::Postgres(_) => 4,
        };
        let db = Arc::new(db);
        for _ in 0..committers {
            tokio::spawn(run(db.clone(), jobs.clone()));
        }
        GroupCommit { queue }
    }

    /// Queues `write` and waits for its commit; returns the revision now stored.
    pub(crate) async fn submit(&self, write: Write) -> Result<i64> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { write, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(db: Arc<Db>, jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    // A write for a transaction already in the batch waits for the next one: within a batch
    // every id appears once, so set-based statements cannot apply two revisions at once.
    let mut held: Vec<Job> = Vec::new();
    loop {
        // Held writes first, in their order, still at most one per id.
        let mut batch: Vec<Job> = Vec::new();
        let mut ids: HashSet<String> = HashSet::new();
        for job in std::mem::take(&mut held) {
            if ids.insert(job.write.key().to_string()) {
                batch.push(job);
            } else {
                held.push(job);
            }
        }
        // With held writes in hand, never wait for the queue: another committer may be
        // parked on it (holding the lock) while these writes' writers wait for them.
        let queue = match batch.is_empty() {
            true => Some(jobs.lock().await),
            false => jobs.try_lock().ok(),
        };
        if let Some(mut queue) = queue {
            if batch.is_empty() {
                match queue.recv().await {
                    Some(job) => {
                        ids.insert(job.write.key().to_string());
                        batch.push(job);
                    }
                    None => return,
                }
            }
            while batch.len() < MAX_BATCH {
                let Ok(job) = queue.try_recv() else { break };
                if ids.insert(job.write.key().to_string()) {
                    batch.push(job);
                } else {
                    held.push(job);
                }
            }
        }
        let (writes, replies): (Vec<Write>, Vec<_>) = batch.into_iter().map(|j| (j.write, j.reply)).unzip();
        let writes = Arc::new(writes);
        let started = std::time::Instant::now();
        let applied = db.apply(&writes, 0..writes.len()).await;
        tracing::debug!(target: "wasmtx::store::commit", writes = writes.len(), micros = started.elapsed().as_micros() as u64, "group commit");
        let results = match applied {
            Ok(results) => results,
            Err(e) if writes.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!("group commit of {} writes failed ({e}); committing them one by one", writes.len());
                let mut one_by_one = Vec::with_capacity(writes.len());
                for i in 0..writes.len() {
                    one_by_one.push(db.apply(&writes, i..i + 1).await.and_then(|mut r| r.remove(0)));
                }
                one_by_one
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Where and how batches are written.
pub(crate) enum Db {
    /// SQLite: the committer's own connection (beside the pool's readers), driven through
    /// prepared statements on a blocking thread. Binding rows directly replaced a JSON array
    /// unpacked with `json_each`, whose parsing was half of the writer thread's time.
    Sqlite(Arc<SyncMutex<rusqlite::Connection>>),
    /// PostgreSQL, natively: rows go as typed arrays (binary), unpacked with `UNNEST` — no
    /// JSON for the server to parse, which was its largest cost per write.
    Postgres(sqlx::PgPool),
}

impl Db {
    /// Applies `writes[range]` (distinct ids) in one database transaction. The outer error is
    /// the database's; the inner results are per write.
    async fn apply(&self, all: &Arc<Vec<Write>>, range: Range<usize>) -> Result<Vec<Result<i64>>> {
        match self {
            Db::Sqlite(conn) => {
                let (conn, all) = (conn.clone(), all.clone());
                tokio::task::spawn_blocking(move || {
                    let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    apply_sqlite(&mut conn, &all[range])
                })
                .await
                .map_err(|_| StoreError::Closed)?
            }
            Db::Postgres(pool) => apply_postgres(pool, &all[range]).await,
        }
    }
}

/// Applies `writes` on PostgreSQL with set-based statements over typed arrays.
async fn apply_postgres(pool: &sqlx::PgPool, writes: &[Write]) -> Result<Vec<Result<i64>>> {
    let inserts: Vec<&Write> = writes.iter().filter(|w| matches!(w, Write::Insert(..))).collect();
    let saves: Vec<&Write> = writes.iter().filter(|w| matches!(w, Write::Save(..))).collect();
    let audits: Vec<&AuditRow> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Audit(a) => Some(a),
            _ => None,
        })
        .collect();
    let mut tx = pool.begin().await?;
    let mut inserted = HashSet::new();
    if !inserts.is_empty() {
        let c = Columns::of(&inserts);
        let rows = sqlx::query(
            "INSERT INTO transactions (tenant_id, id, kind, name, state, doc, rev, owner, lease_until, created_at, updated_at, last_seq)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                                  $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[])
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(&c.tenant).bind(&c.id).bind(&c.kind).bind(&c.name).bind(&c.state).bind(&c.doc).bind(&c.rev)
        .bind(&c.owner).bind(&c.lease_until).bind(&c.created_at).bind(&c.updated_at).bind(&c.n)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            inserted.insert(row.try_get::<String, _>(0)?);
        }
    }
    let mut saved = HashMap::new();
    if !saves.is_empty() {
        let c = Columns::of(&saves);
        let rows = sqlx::query(
            "UPDATE transactions AS t SET state = v.state, doc = v.doc, rev = t.rev + 1, owner = v.owner,
                 lease_until = v.lease_until, updated_at = v.updated_at, last_seq = t.last_seq + v.n
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::int8[], $8::int8[], $9::int8[])
                  AS v(tenant_id, id, state, doc, rev, owner, lease_until, updated_at, n)
             WHERE t.id = v.id AND t.tenant_id = v.tenant_id AND t.rev = v.rev
             RETURNING t.id, t.last_seq",
        )
        .bind(&c.tenant).bind(&c.id).bind(&c.state).bind(&c.doc).bind(&c.rev).bind(&c.owner)
        .bind(&c.lease_until).bind(&c.updated_at).bind(&c.n)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            saved.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
        }
    }
    let (results, entries) = outcomes(writes, &inserted, &saved);
    if !entries.is_empty() {
        let tx_id: Vec<&str> = entries.iter().map(|e| e.tx_id).collect();
        let seq: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        let at: Vec<i64> = entries.iter().map(|e| e.at).collect();
        let events: Vec<&str> = entries.iter().map(|e| e.events.as_str()).collect();
        sqlx::query(
            "INSERT INTO journal (tx_id, seq, at, events)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[])",
        )
        .bind(&tx_id).bind(&seq).bind(&at).bind(&events)
        .execute(&mut *tx)
        .await?;
    }
    if !audits.is_empty() {
        let column = |f: fn(&AuditRow) -> &str| audits.iter().map(|a| f(a)).collect::<Vec<&str>>();
        let at: Vec<i64> = audits.iter().map(|a| a.at_ms).collect();
        sqlx::query(
            "INSERT INTO audit (id, tenant_id, at, actor, action, detail)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[])",
        )
        .bind(column(|a| &a.id)).bind(column(|a| &a.tenant)).bind(&at).bind(column(|a| &a.actor))
        .bind(column(|a| &a.action)).bind(column(|a| &a.detail))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(results)
}

/// Each write's result, given which inserts and updates took effect, and the journal entries
/// of those that did.
fn outcomes<'a>(
    writes: &'a [Write],
    inserted: &HashSet<String>,
    saved: &HashMap<String, i64>,
) -> (Vec<Result<i64>>, Vec<JournalEntry<'a>>) {
    let mut entries = Vec::new();
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        let last_seq = match w {
            Write::Insert(row, events) => inserted.contains(&row.id).then_some(events.len() as i64),
            Write::Save(row, _) => saved.get(&row.id).copied(),
            Write::Audit(_) => None,
        };
        let (result, entry) = w.outcome(last_seq);
        results.push(result);
        entries.extend(entry);
    }
    (results, entries)
}

/// Transaction rows column by column, for `UNNEST`.
struct Columns<'a> {
    tenant: Vec<&'a str>,
    id: Vec<&'a str>,
    kind: Vec<&'a str>,
    name: Vec<&'a str>,
    state: Vec<&'a str>,
    doc: Vec<&'a str>,
    rev: Vec<i64>,
    owner: Vec<Option<&'a str>>,
    lease_until: Vec<i64>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    n: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(writes: &[&'a Write]) -> Self {
        let rows = || writes.iter().map(|w| w.row());
        Columns {
            tenant: rows().map(|r| r.tenant.as_str()).collect(),
            id: rows().map(|r| r.id.as_str()).collect(),
            kind: rows().map(|r| r.kind.as_str()).collect(),
            name: rows().map(|r| r.name.as_str()).collect(),
            state: rows().map(|r| r.state.as_str()).collect(),
            doc: rows().map(|r| r.doc.as_str()).collect(),
            rev: rows().map(|r| r.rev).collect(),
            owner: rows().map(|r| r.owner.as_deref()).collect(),
            lease_until: rows().map(|r| r.lease_until_ms).collect(),
            created_at: rows().map(|r| r.created_at_ms).collect(),
            updated_at: rows().map(|r| r.updated_at_ms).collect(),
            n: writes.iter().map(|w| w.events().len() as i64).collect(),
        }
    }
}

/// One row of the journal: the events of one write, numbered from `seq` on. A write's events
/// share a row — a saga's step completion and the next step's start are one entry — which
/// spares the database a row and an index entry per event.
struct JournalEntry<'a> {
    tx_id: &'a str,
    seq: i64,
    at: i64,
    events: String,
}

impl<'a> JournalEntry<'a> {
    /// The entry of `events` (none if there are none) whose last is numbered `last_seq`.
    fn of(row: &'a TxRow, events: &[NewEvent], last_seq: i64) -> Option<Self> {
        if events.is_empty() {
            return None;
        }
        Some(JournalEntry {
            tx_id: &row.id,
            seq: last_seq - events.len() as i64 + 1,
            at: row.updated_at_ms,
            events: serde_json::to_string(events).expect("events serialise"),
        })
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
        for w in writes {
            let last_seq = match w {
                Write::Audit(a) => {
                    audit.execute(rusqlite::params![a.id, a.tenant, a.at_ms, a.actor, a.action, a.detail])?;
                    None
                }
                Write::Insert(row, events) => {
                    let n = events.len() as i64;
                    let inserted = insert.execute(rusqlite::params![
                        row.tenant, row.id, row.kind, row.name, row.state, row.doc, row.rev, row.owner,
                        row.lease_until_ms, row.created_at_ms, row.updated_at_ms, n
                    ])?;
                    (inserted == 1).then_some(n)
                }
                Write::Save(row, events) => update
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
            results.push(result);
        }
    }
    tx.commit()?;
    Ok(results)
}

/// Opens the committer's connection to the SQLite file at `path`, with the pool's settings.
pub(crate) fn open_sqlite(path: &std::path::Path) -> Result<Db> {
    let conn = rusqlite::Connection::open(path)?;
    // WAL is a property of the file (the pool set it); FULL sync makes every commit survive
    // power loss, and waiting out a pool connection's write beats failing the batch.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(Db::Sqlite(Arc::new(SyncMutex::new(conn))))
}
