//! A transaction as every engine holds it — its stored row, typed state and typed document —
//! and the one way the engines write it: revision-checked, with its history events in the same
//! database transaction, the lease renewed while it has an owner, then announced to observers.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::model::{Change, Progress};
use crate::store::{Audit, NewEvent, Store, StoreError, TxRow};

/// The state enum of a transaction kind.
pub trait TxState: Copy + Send + Sync + 'static {
    fn as_str(self) -> &'static str;
    fn parse(s: &str) -> Option<Self>;
    fn is_terminal(self) -> bool;
}

/// A stored transaction with its state and document decoded.
#[derive(Debug, Clone)]
pub struct Record<S, D> {
    pub row: TxRow,
    pub state: S,
    pub doc: D,
    /// Events of changes made in memory and written with the next `persist` (see `defer`).
    pub pending: Vec<NewEvent>,
    /// Who asked for the change written next: recorded in the tenant's audit trail by that
    /// write's own commit (see `asked_by`).
    pub audit: Option<Audit>,
}

impl<S: TxState, D: Serialize + DeserializeOwned> Record<S, D> {
    pub fn from_row(row: TxRow) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { id: row.id.clone(), reason };
        let state = S::parse(&row.state).ok_or_else(|| corrupt(format!("unknown state {}", row.state)))?;
        let doc = crate::store::parse_stored(&row.doc).map_err(|e| corrupt(e.to_string()))?;
        let row = TxRow { ended: state.is_terminal(), ..row };
        Ok(Record { row, state, doc, pending: Vec::new(), audit: None })
    }

    /// A new, unowned record of `kind` for `tenant`, not yet stored.
    pub fn create(tenant: &str, kind: &str, id: String, name: &str, state: S, doc: D, now: i64) -> Self {
        let row = TxRow {
            tenant: tenant.into(),
            id,
            kind: kind.into(),
            name: name.into(),
            state: state.as_str().into(),
            // Serialised by `Journal::insert`, which writes the record.
            doc: String::new(),
            rev: 0,
            owner: None,
            lease_until_ms: 0,
            created_at_ms: now,
            updated_at_ms: now,
            ended: state.is_terminal(),
        };
        Record { row, state, doc, pending: Vec::new(), audit: None }
    }

    pub fn id(&self) -> &str {
        &self.row.id
    }

    /// Records `actor` asking for `action` on this transaction, in the tenant's audit trail,
    /// with the next write — only if that write takes effect.
    pub fn asked_by(&mut self, asked: Option<&Asked>) {
        self.audit = asked.map(|a| Audit::of(&a.actor, a.action, &self.row.id));
    }

    /// Records `events` of a change already made to the record in memory, to be written with
    /// the next `Journal::persist` — for an outcome that nothing acts on before that write (a
    /// step's completion is written with the next step's start), saving one commit per step.
    /// Until then the change is not durable: recovery redoes that step's call, with the same
    /// idempotency key, exactly as after a crash between the call and its write.
    pub fn defer(&mut self, events: Vec<NewEvent>) {
        self.pending.extend(events);
    }
}

/// Who asks an engine for a change, for the audit trail: the API's caller and what it asked.
#[derive(Debug, Clone)]
pub struct Asked {
    pub actor: String,
    pub action: &'static str,
}

impl Asked {
    pub fn new(actor: &str, action: &'static str) -> Self {
        Asked { actor: actor.to_string(), action }
    }
}

/// Rows this journal wrote last, kept to spare a read before the next change.
const MAX_CACHED_ROWS: usize = 10_000;
/// Larger documents are read again instead of kept: the cache stays within ~160 MiB.
const MAX_CACHED_DOC_BYTES: usize = 16 << 10;

/// Writes records and tells observers. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    store: Store,
    lease: Duration,
    clock: std::sync::Arc<dyn super::Clock>,
    progress: broadcast::Sender<Progress>,
    /// The row as this journal last wrote it, per transaction not yet at an end state. Only a
    /// starting point for a change: the write is revision-checked like any other, and a
    /// conflict drops the entry (another coordinator wrote since), so the caller reads again.
    written: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, TxRow>>>,
}

impl Journal {
    /// A journal announcing on `progress` (shared by a node's engines: `EngineConfig`).
    pub fn new(store: Store, lease: Duration, clock: std::sync::Arc<dyn super::Clock>, progress: broadcast::Sender<Progress>) -> Self {
        Journal { store, lease, clock, progress, written: Default::default() }
    }

    /// The row this journal last wrote for `id`, if it is still the last one it knows of.
    pub fn last_written(&self, tenant: &str, kind: &str, id: &str) -> Option<TxRow> {
        let written = self.written.lock().unwrap();
        written.get(id).filter(|r| r.tenant == tenant && r.kind == kind).cloned()
    }

    fn remember(&self, row: &TxRow, terminal: bool) {
        let mut written = self.written.lock().unwrap();
        if terminal || row.doc.len() > MAX_CACHED_DOC_BYTES {
            written.remove(&row.id);
            return;
        }
        if written.len() >= MAX_CACHED_ROWS {
            written.clear();
        }
        written.insert(row.id.clone(), row.clone());
    }

    fn forget(&self, id: &str) {
        self.written.lock().unwrap().remove(id);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Every durable change written through this journal and those sharing its channel (a
    /// node's engines), as it is committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Stores a new record with its first events.
    pub async fn insert<S: TxState, D: Serialize>(&self, rec: &mut Record<S, D>, events: Vec<NewEvent>) -> Result<(), StoreError> {
        self.stamp(rec);
        let audit = rec.audit.take();
        self.store.insert_tx(&rec.row, &events, audit.as_ref()).await?;
        self.remember(&rec.row, rec.state.is_terminal());
        self.announce(rec, events);
        Ok(())
    }

    /// Brings the row up to the record: state, document, time, and the lease if owned.
    fn stamp<S: TxState, D: Serialize>(&self, rec: &mut Record<S, D>) {
        let now = self.clock.now_ms();
        rec.row.state = rec.state.as_str().into();
        rec.row.ended = rec.state.is_terminal();
        rec.row.doc = serde_json::to_string(&rec.doc).expect("documents serialise");
        rec.row.updated_at_ms = now;
        rec.row.lease_until_ms = if rec.row.owner.is_some() { now + self.lease.as_millis() as i64 } else { 0 };
    }

    /// Commits the record's new state and document with any deferred events and `events`, if
    /// nobody wrote it since it was read (otherwise `Conflict`), then announces the events.
    pub async fn persist<S: TxState, D: Serialize>(&self, rec: &mut Record<S, D>, events: Vec<NewEvent>) -> Result<(), StoreError> {
        let events = match rec.pending.is_empty() {
            true => events,
            false => [std::mem::take(&mut rec.pending), events].concat(),
        };
        self.stamp(rec);
        let audit = rec.audit.take();
        rec.row.rev = match self.store.save_tx(&rec.row, &events, audit.as_ref()).await {
            Ok(rev) => rev,
            Err(e) => {
                self.forget(&rec.row.id);
                return Err(e);
            }
        };
        self.remember(&rec.row, rec.state.is_terminal());
        self.announce(rec, events);
        Ok(())
    }

    /// Tells observers about `events`, just written.
    fn announce<S: TxState, D>(&self, rec: &Record<S, D>, events: Vec<NewEvent>) {
        let last = events.len().saturating_sub(1);
        for (i, event) in events.into_iter().enumerate() {
            let _ = self.progress.send(Progress::new(Change {
                tenant: rec.row.tenant.clone(),
                tx_id: rec.row.id.clone(),
                state: rec.state.as_str(),
                // Observers stop at the end state: announce it with the batch's last event.
                terminal: rec.state.is_terminal() && i == last,
                created_at_ms: rec.row.created_at_ms,
                rev: rec.row.rev,
                event,
            }));
        }
    }
}

/// Waits (at most a minute) until `id` reaches an end state, as announced by a journal.
pub async fn wait_for_end(progress: &mut broadcast::Receiver<Progress>, id: &str) {
    let wait = async {
        while let Some(p) = next_announced(progress).await {
            if p.tx_id == id && p.terminal {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), wait).await;
}

/// The next announcement on `progress`, skipping what a lagging receiver missed; `None` once
/// the engines are gone.
pub async fn next_announced(progress: &mut broadcast::Receiver<Progress>) -> Option<Progress> {
    loop {
        match progress.recv().await {
            Ok(p) => return Some(p),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}
