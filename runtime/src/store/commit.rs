//! Group commit: the journal writes of many concurrent transactions share one database
//! transaction, so durable throughput is not one fsync per state change.
//!
//! Writers queue a `Write`; a committer task takes what is queued (at most `MAX_BATCH`, with
//! no artificial wait: the commit in progress is the batching window) and applies it with a few
//! set-based statements — insert the new transactions, update the revised ones where the
//! revision still matches, append every event and audit entry — then commits once and answers
//! each writer. Rows travel as typed arrays on PostgreSQL and as one JSON array on SQLite.
//! A write is acknowledged only after its commit. A revision conflict fails that write alone;
//! a database error fails the batch, whose writes are then retried one by one so that one bad
//! write never takes its neighbours down with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::{AnyPool, Row};
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
            Db::Json { .. } => 1,
            Db::Arrays(_) => 4,
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
        let writes: Vec<&Write> = batch.iter().map(|j| &j.write).collect();
        let started = std::time::Instant::now();
        let applied = db.apply(&writes).await;
        tracing::debug!(target: "wasmtx::store::commit", writes = writes.len(), micros = started.elapsed().as_micros() as u64, "group commit");
        let results = match applied {
            Ok(results) => results,
            Err(e) if batch.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!("group commit of {} writes failed ({e}); committing them one by one", batch.len());
                let mut one_by_one = Vec::with_capacity(batch.len());
                for write in &writes {
                    one_by_one.push(db.apply(std::slice::from_ref(write)).await.and_then(|mut r| r.remove(0)));
                }
                one_by_one
            }
        };
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// Where and how batches are written.
pub(crate) enum Db {
    /// SQLite: each statement takes its rows as one JSON array (`json_each`).
    Json { pool: AnyPool, sql: Statements },
    /// PostgreSQL, natively: rows go as typed arrays (binary), unpacked with `UNNEST` — no
    /// JSON for the server to parse, which was its largest cost per write.
    Arrays(sqlx::PgPool),
}

impl Db {
    /// Applies `writes` (distinct ids) in one database transaction. The outer error is the
    /// database's; the inner results are per write.
    async fn apply(&self, writes: &[&Write]) -> Result<Vec<Result<i64>>> {
        let inserts: Vec<&Write> = writes.iter().copied().filter(|w| matches!(w, Write::Insert(..))).collect();
        let saves: Vec<&Write> = writes.iter().copied().filter(|w| matches!(w, Write::Save(..))).collect();
        let audits: Vec<&AuditRow> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Audit(a) => Some(a),
                _ => None,
            })
            .collect();
        match self {
            Db::Json { pool, sql } => {
                let mut tx = pool.begin().await?;
                let mut inserted = HashSet::new();
                if !inserts.is_empty() {
                    let rows: Vec<TxJson> = inserts.iter().map(|w| TxJson::of(w)).collect();
                    for row in sqlx::query(&sql.insert).bind(to_json(&rows)).fetch_all(&mut *tx).await? {
                        inserted.insert(row.try_get::<String, _>(0)?);
                    }
                }
                let mut saved = HashMap::new();
                if !saves.is_empty() {
                    let rows: Vec<TxJson> = saves.iter().map(|w| TxJson::of(w)).collect();
                    for row in sqlx::query(&sql.update).bind(to_json(&rows)).fetch_all(&mut *tx).await? {
                        saved.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
                    }
                }
                let (results, events) = outcomes(writes, &inserted, &saved);
                if !events.is_empty() {
                    sqlx::query(&sql.events).bind(to_json(&events)).execute(&mut *tx).await?;
                }
                if !audits.is_empty() {
                    let rows: Vec<AuditJson> = audits.iter().map(|a| AuditJson::of(a)).collect();
                    sqlx::query(&sql.audit).bind(to_json(&rows)).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(results)
            }
            Db::Arrays(pool) => {
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
                let (results, events) = outcomes(writes, &inserted, &saved);
                if !events.is_empty() {
                    let tx_id: Vec<&str> = events.iter().map(|e| e.tx_id).collect();
                    let seq: Vec<i64> = events.iter().map(|e| e.seq).collect();
                    let at: Vec<i64> = events.iter().map(|e| e.at).collect();
                    let kind: Vec<&str> = events.iter().map(|e| e.kind).collect();
                    let step: Vec<Option<&str>> = events.iter().map(|e| e.step).collect();
                    let detail: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
                    sqlx::query(
                        "INSERT INTO events (tx_id, seq, at, kind, step, detail)
                         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[])",
                    )
                    .bind(&tx_id).bind(&seq).bind(&at).bind(&kind).bind(&step).bind(&detail)
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
        }
    }
}

/// Each write's result, given which inserts and updates took effect, and the events of those
/// that did, numbered after the transaction's last event.
fn outcomes<'a>(
    writes: &[&'a Write],
    inserted: &HashSet<String>,
    saved: &HashMap<String, i64>,
) -> (Vec<Result<i64>>, Vec<EventJson<'a>>) {
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        if matches!(w, Write::Audit(_)) {
            results.push(Ok(0));
            continue;
        }
        let row = w.row();
        let last_seq = match w {
            Write::Insert(..) if inserted.contains(&row.id) => Some(w.events().len() as i64),
            Write::Save(..) => saved.get(&row.id).copied(),
            _ => None,
        };
        let Some(last_seq) = last_seq else {
            results.push(Err(StoreError::Conflict { kind: "transaction", id: row.id.clone() }));
            continue;
        };
        let first = last_seq - w.events().len() as i64 + 1;
        for (i, e) in w.events().iter().enumerate() {
            events.push(EventJson {
                tx_id: &row.id,
                seq: first + i as i64,
                at: row.updated_at_ms,
                kind: &e.kind,
                step: e.step.as_deref(),
                detail: e.detail.to_string(),
            });
        }
        results.push(Ok(match w {
            Write::Save(..) => row.rev + 1,
            _ => row.rev,
        }));
    }
    (results, events)
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

/// A transaction row as the set-based statements read it (`n`: how many events it brings).
#[derive(serde::Serialize)]
struct TxJson<'a> {
    tenant_id: &'a str,
    id: &'a str,
    kind: &'a str,
    name: &'a str,
    state: &'a str,
    doc: &'a str,
    rev: i64,
    owner: Option<&'a str>,
    lease_until: i64,
    created_at: i64,
    updated_at: i64,
    n: usize,
}

impl<'a> TxJson<'a> {
    fn of(w: &'a Write) -> Self {
        let r = w.row();
        TxJson {
            tenant_id: &r.tenant,
            id: &r.id,
            kind: &r.kind,
            name: &r.name,
            state: &r.state,
            doc: &r.doc,
            rev: r.rev,
            owner: r.owner.as_deref(),
            lease_until: r.lease_until_ms,
            created_at: r.created_at_ms,
            updated_at: r.updated_at_ms,
            n: w.events().len(),
        }
    }
}

#[derive(serde::Serialize)]
struct EventJson<'a> {
    tx_id: &'a str,
    seq: i64,
    at: i64,
    kind: &'a str,
    step: Option<&'a str>,
    detail: String,
}

#[derive(serde::Serialize)]
struct AuditJson<'a> {
    id: &'a str,
    tenant_id: &'a str,
    at: i64,
    actor: &'a str,
    action: &'a str,
    detail: &'a str,
}

impl<'a> AuditJson<'a> {
    fn of(a: &'a AuditRow) -> Self {
        AuditJson { id: &a.id, tenant_id: &a.tenant, at: a.at_ms, actor: &a.actor, action: &a.action, detail: &a.detail }
    }
}

fn to_json<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("rows serialise")
}

/// The set-based statements of the JSON path (SQLite). Each takes one parameter: a JSON array
/// of row objects, unpacked with `json_each`.
pub(crate) struct Statements {
    insert: String,
    update: String,
    events: String,
    audit: String,
}

impl Statements {
    pub(crate) fn new() -> Statements {
        let rows = |columns: &[&str]| {
            let picked: Vec<String> = columns.iter().map(|c| format!("json_extract(value, '$.{c}') AS {c}")).collect();
            format!("(SELECT {} FROM json_each($1)) AS v", picked.join(", "))
        };
        let selected = |columns: &[&str]| columns.iter().map(|c| format!("v.{c}")).collect::<Vec<_>>().join(", ");
        let tx_columns = [
            "tenant_id", "id", "kind", "name", "state", "doc", "rev", "owner", "lease_until", "created_at", "updated_at",
        ];
        let insert = format!(
            "INSERT INTO transactions ({}, last_seq) SELECT {}, v.n FROM {} WHERE true
             ON CONFLICT (id) DO NOTHING RETURNING id",
            tx_columns.join(", "),
            selected(&tx_columns),
            rows(&[&tx_columns[..], &["n"]].concat()),
        );
        let update = format!(
            "UPDATE transactions SET state = v.state, doc = v.doc, rev = transactions.rev + 1, owner = v.owner,
                 lease_until = v.lease_until, updated_at = v.updated_at, last_seq = transactions.last_seq + v.n
             FROM {}
             WHERE transactions.id = v.id AND transactions.tenant_id = v.tenant_id AND transactions.rev = v.rev
             RETURNING transactions.id, transactions.last_seq",
            rows(&["tenant_id", "id", "state", "doc", "rev", "owner", "lease_until", "updated_at", "n"]),
        );
        let event_columns = ["tx_id", "seq", "at", "kind", "step", "detail"];
        let events = format!(
            "INSERT INTO events ({}) SELECT {} FROM {}",
            event_columns.join(", "),
            selected(&event_columns),
            rows(&event_columns),
        );
        let audit_columns = ["id", "tenant_id", "at", "actor", "action", "detail"];
        let audit = format!(
            "INSERT INTO audit ({}) SELECT {} FROM {}",
            audit_columns.join(", "),
            selected(&audit_columns),
            rows(&audit_columns),
        );
        Statements { insert, update, events, audit }
    }
}
