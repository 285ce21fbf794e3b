//! The two-phase-commit engine, presumed abort.
//!
//! Prepare goes to every participant in parallel under `prepare_timeout`; only an explicit
//! `prepared` is a yes. The decision is committed to the store before any participant hears
//! it and never changes. Commit (or abort) is then sent in rounds to every participant that has
//! not acknowledged, each round's answers committed before the next round. Recovery: a
//! transaction with no decision is aborted; one with a decision finishes it.
//!
//! `state.rs` decides (the votes' decision, the acknowledgements' outcome); this module
//! persists, then calls. It must never touch sqlx, wasmtime or reqwest directly, nor the saga
//! engine: what both protocols share is in `txn`.

pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use futures::future::join_all;
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::txn::journal::{Asked, Record, wait_for_end};
use crate::txn::Transition;
use crate::txn::core::{EngineCore, Kind, from_remembered_row};

use crate::model::{CallContext, Outcome, Progress, RetryPolicy, Vote};
use crate::participant::{Invoker, Phase, Target};
use crate::plugin::{Catalog, Role};
use crate::txn::EngineConfig;
use crate::store::{EventRow, NewEvent, Store};
pub use state::{Decision, ParticipantRecord, ParticipantSpec, ParticipantState, TpcDoc, TpcState};
use state::{DEFAULT_PREPARE_TIMEOUT_MS, MAX_PARTICIPANTS};

pub const KIND: &str = "2pc";
const TRANSACTIONS: Kind = Kind { store: KIND, name: "2PC transaction" };

/// The 2PC engine's errors: the one error of the engines.
pub type TpcError = crate::txn::TxError;

/// The body of "begin" (API.md).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTpc {
    pub transaction_name: String,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub prepare_timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Extension: tries of commit/abort per participant before the transaction is `failed`
    /// (default: until acknowledged).
    #[serde(default)]
    pub decision_max_attempts: Option<u32>,
    /// Extension: the participants, as `POST /v1/2pc/{id}/participants` would add them one by
    /// one — one durable write instead of one per participant.
    #[serde(default)]
    pub participants: Option<Vec<ParticipantSpec>>,
    /// The request's W3C `traceparent` (a header, not part of the body).
    #[serde(skip)]
    pub traceparent: Option<String>,
}

/// A 2PC transaction as loaded from the store.
pub type Tpc = Record<TpcState, TpcDoc>;

/// `presume_abort`'s decision, as the events a recovery writes.
fn presume_abort_events(tx: &mut Tpc) -> Result<Vec<NewEvent>, TpcError> {
    Ok(presume_abort(tx)?.into_iter().collect())
}

/// Presumed abort: a transaction found preparing with no coordinator has no durable decision,
/// so no participant can have been told to commit; it is aborted. Returns the decision event.
fn presume_abort(tx: &mut Tpc) -> Result<Option<NewEvent>, TpcError> {
    if tx.state != TpcState::Preparing {
        return Ok(None);
    }
    let reason = "the coordinator stopped before deciding: presumed abort";
    tx.doc.decision = Some(Decision::Abort);
    tx.doc.error = Some(reason.into());
    tx.state.become_(TpcState::Aborting)?;
    Ok(Some(NewEvent::new("decision", None, json!({"decision": "abort", "reason": reason}))))
}

#[derive(Clone)]
pub struct TpcEngine {
    inner: Arc<EngineCore>,
}

impl TpcEngine {
    pub fn new(store: Store, catalog: Catalog, invoker: Invoker, config: EngineConfig) -> Self {
        TpcEngine { inner: EngineCore::new(store, catalog, invoker, config) }
    }

    /// Shutting down: start nothing new, let the calls in flight be answered and recorded,
    /// then hand every transaction driven here back to the fleet.
    pub fn drain(&self) {
        self.inner.drain();
    }

    /// Waits until this engine drives nothing any more.
    pub async fn idle(&self) {
        self.inner.driving.idle().await;
    }

    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.inner.journal.subscribe()
    }

    pub async fn create(&self, tenant: &str, req: CreateTpc) -> Result<Tpc, TpcError> {
        self.create_with_id(tenant, req, None, None).await
    }

    /// `create`, with the id's unique part given (derived from an `Idempotency-Key`, so a
    /// retried request finds what the first one created); `Conflict` if that id exists. Who
    /// `asked` is audited by the create's own write.
    pub async fn create_with_id(&self, tenant: &str, req: CreateTpc, id: Option<uuid::Uuid>, asked: Option<&Asked>) -> Result<Tpc, TpcError> {
        crate::text::check("transaction_name", &req.transaction_name, 256).map_err(TpcError::Invalid)?;
        let prepare_timeout_ms = req.prepare_timeout_ms.unwrap_or(DEFAULT_PREPARE_TIMEOUT_MS);
        if prepare_timeout_ms == 0 || prepare_timeout_ms > crate::txn::spec::MAX_CALL_TIMEOUT_MS {
            return Err(TpcError::Invalid("prepare_timeout_ms is out of range".into()));
        }
        if req.decision_max_attempts.is_some_and(|n| n == 0 || n > 1_000_000) {
            return Err(TpcError::Invalid("decision_max_attempts must be between 1 and 1000000".into()));
        }
        let retry_policy = req.retry_policy.unwrap_or_default();
        retry_policy.validate().map_err(TpcError::Invalid)?;
        let context = req.context.unwrap_or_default();
        crate::txn::spec::check_context(&context).map_err(TpcError::Invalid)?;
        let mut doc = TpcDoc {
            context,
            participants: vec![],
            decision: None,
            error: None,
            prepare_timeout_ms,
            retry_policy,
            decision_max_attempts: req.decision_max_attempts,
            started_at_ms: None,
            recoveries: 0,
            traceparent: req.traceparent.clone(),
        };
        let mut events = vec![NewEvent::new("transaction_created", None, json!({"transaction_name": req.transaction_name}))];
        for spec in req.participants.unwrap_or_default() {
            spec.validate().map_err(TpcError::Invalid)?;
            self.check_new_participant(tenant, &doc.participants, &spec).await?;
            events.push(NewEvent::new("participant_added", Some(&spec.participant_id), json!({})));
            doc.participants.push(ParticipantRecord::new(spec));
        }
        let id = format!("tpc-{}", id.unwrap_or_else(|| self.inner.new_id()));
        let mut tx = Tpc::create(tenant, KIND, id, &req.transaction_name, TpcState::Init, doc, self.inner.now());
        tx.asked_by(asked);
        self.inner.journal.insert(&mut tx, events).await?;
        Ok(tx)
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Tpc, TpcError> {
        self.inner.get(tenant, TRANSACTIONS, id).await
    }

    /// `tenant`'s 2PC transactions (in `state`), newest first, at most `limit`.
    pub async fn list(&self, tenant: &str, state: Option<TpcState>, limit: i64) -> Result<Vec<Tpc>, TpcError> {
        self.inner.list(tenant, TRANSACTIONS, state, limit).await
    }

    pub async fn history(&self, tenant: &str, id: &str) -> Result<Vec<EventRow>, TpcError> {
        self.inner.history(tenant, TRANSACTIONS, id).await
    }

    /// Adds a participant to a transaction that has not started; returns the count.
    pub async fn add_participant(&self, tenant: &str, id: &str, spec: ParticipantSpec) -> Result<usize, TpcError> {
        self.add_participant_asked(tenant, id, spec, None).await
    }

    /// `add_participant`, who `asked` audited by its own write.
    pub async fn add_participant_asked(&self, tenant: &str, id: &str, spec: ParticipantSpec, asked: Option<&Asked>) -> Result<usize, TpcError> {
        spec.validate().map_err(TpcError::Invalid)?;
        let added = from_remembered_row(|cached| self.add_participant_once(tenant, id, spec.clone(), cached, asked)).await;
        added.map_err(|e| e.busy_if_conflict(id))
    }

    /// A transaction to change (see `EngineCore::get_for_update`).
    async fn get_for_update(&self, tenant: &str, id: &str, cached: bool) -> Result<Tpc, TpcError> {
        self.inner.get_for_update(tenant, TRANSACTIONS, id, cached).await
    }

    /// Whether `spec` may join `participants`: room left, a new id, a plugin that exports
    /// `participant`.
    async fn check_new_participant(&self, tenant: &str, participants: &[ParticipantRecord], spec: &ParticipantSpec) -> Result<(), TpcError> {
        if participants.len() >= MAX_PARTICIPANTS {
            return Err(TpcError::Invalid(format!("a transaction has at most {MAX_PARTICIPANTS} participants")));
        }
        if participants.iter().any(|p| p.spec.participant_id == spec.participant_id) {
            return Err(TpcError::Invalid(format!("participant {:?} is already in the transaction", spec.participant_id)));
        }
        self.inner.check_endpoint(tenant, &spec.endpoint).map_err(TpcError::EndpointRefused)?;
        if let Some(plugin) = &spec.plugin {
            self.inner.check_plugin(tenant, plugin, Role::Participant).await?;
        }
        Ok(())
    }

    async fn add_participant_once(&self, tenant: &str, id: &str, spec: ParticipantSpec, cached: bool, asked: Option<&Asked>) -> Result<usize, TpcError> {
        let mut tx = self.get_for_update(tenant, id, cached).await?;
        tx.asked_by(asked);
        if tx.state != TpcState::Init {
            return Err(TpcError::WrongState { id: id.into(), state: tx.state.as_str(), action: "adding a participant" });
        }
        self.check_new_participant(tenant, &tx.doc.participants, &spec).await?;
        let pid = spec.participant_id.clone();
        tx.doc.participants.push(ParticipantRecord::new(spec));
        let total = tx.doc.participants.len();
        self.persist(&mut tx, vec![NewEvent::new("participant_added", Some(&pid), json!({}))]).await?;
        Ok(total)
    }

    /// Runs both phases to an end state (or to `committing`/`aborting` for as long as a
    /// participant does not acknowledge and no budget is set — then it keeps retrying in the
    /// background and the returned document says so).
    pub async fn execute(&self, tenant: &str, id: &str) -> Result<Tpc, TpcError> {
        self.execute_asked(tenant, id, None).await
    }

    /// `execute`, who `asked` audited by the start's own write.
    pub async fn execute_asked(&self, tenant: &str, id: &str, asked: Option<&Asked>) -> Result<Tpc, TpcError> {
        let started = from_remembered_row(|cached| self.start(tenant, id, cached, asked)).await;
        let tx = started.map_err(|e| match e {
            e if e.is_conflict() => TpcError::WrongState { id: id.into(), state: "preparing", action: "execute" },
            e => e,
        })?;
        self.spawn_drive(tx).await
    }

    /// Pins plugin versions, takes the lease and records that prepare begins.
    async fn start(&self, tenant: &str, id: &str, cached: bool, asked: Option<&Asked>) -> Result<Tpc, TpcError> {
        let mut tx = self.get_for_update(tenant, id, cached).await?;
        tx.asked_by(asked);
        if tx.state != TpcState::Init {
            return Err(TpcError::WrongState { id: id.into(), state: tx.state.as_str(), action: "execute" });
        }
        if tx.doc.participants.is_empty() {
            return Err(TpcError::Invalid(format!("transaction {id} has no participants")));
        }
        for p in tx.doc.participants.iter_mut() {
            if let Some(plugin) = &p.spec.plugin {
                p.plugin_version = Some(self.inner.pin(tenant, plugin).await?);
            }
        }
        tx.state.become_(TpcState::Preparing)?;
        tx.doc.started_at_ms = Some(self.inner.now());
        tx.row.owner = Some(self.node_id().into());
        self.persist(&mut tx, vec![NewEvent::new("prepare_started", None, json!({"owner": self.node_id()}))]).await?;
        Ok(tx)
    }

    /// Aborts a transaction that has not decided to commit.
    pub async fn abort(&self, tenant: &str, id: &str) -> Result<Tpc, TpcError> {
        let mut tx = self.get(tenant, id).await?;
        match tx.state {
            TpcState::Init => {
                tx.state.become_(TpcState::Aborted)?;
                tx.doc.decision = Some(Decision::Abort);
                tx.doc.error = Some("aborted before it started".into());
                self.persist(&mut tx, vec![NewEvent::new("decision", None, json!({"decision": "abort", "reason": "aborted by request"}))])
                    .await
                    .map_err(|_| TpcError::Busy(id.into()))?;
                Ok(tx)
            }
            TpcState::Aborting | TpcState::Aborted => self.recover(tenant, id).await,
            TpcState::Preparing => {
                let mut progress = self.subscribe();
                if self.inner.driving.request_stop(id) {
                    wait_for_end(&mut progress, id).await;
                    self.get(tenant, id).await
                } else {
                    self.recover(tenant, id).await
                }
            }
            TpcState::Failed if tx.doc.decision == Some(Decision::Abort) => self.recover(tenant, id).await,
            _ => Err(TpcError::DecidedCommit(id.into())),
        }
    }

    /// Drives a stopped transaction to its end: no decision → abort (presumed abort); a
    /// decision → finish it. An ended transaction is returned as it is.
    pub async fn recover(&self, tenant: &str, id: &str) -> Result<Tpc, TpcError> {
        let mut tx = self.get(tenant, id).await?;
        if tx.state.is_terminal() && tx.state != TpcState::Failed {
            return Ok(tx);
        }
        if tx.state == TpcState::Init {
            return Err(TpcError::WrongState { id: id.into(), state: "init", action: "recover" });
        }
        if self.inner.driving.contains(id) {
            let mut progress = self.subscribe();
            wait_for_end(&mut progress, id).await;
            return self.get(tenant, id).await;
        }
        let mine = tx.row.owner.as_deref() == Some(self.node_id());
        if !mine && tx.row.owner.is_some() && tx.row.lease_until_ms > self.inner.now() {
            return Err(TpcError::Busy(id.into()));
        }
        if tx.state == TpcState::Failed {
            // An operator asks to try the decision again, with a fresh budget.
            tx.state.become_(if tx.doc.decision == Some(Decision::Commit) { TpcState::Committing } else { TpcState::Aborting })?;
            for p in tx.doc.participants.iter_mut() {
                p.attempts = 0;
            }
        }
        tx.row.owner = Some(self.node_id().into());
        let mut events = vec![NewEvent::new("recovery_started", None, json!({"owner": self.node_id()}))];
        events.extend(presume_abort(&mut tx)?);
        self.persist(&mut tx, events).await.map_err(|_| TpcError::Busy(id.into()))?;
        self.spawn_drive(tx).await
    }

    /// Claims transactions whose lease expired and drives them in the background.
    pub async fn recover_expired(&self, own: bool) -> Result<usize, TpcError> {
        let states = ["preparing", "prepared", "committing", "aborting"];
        let resume = |tx: Tpc| async move {
            let engine = self.clone();
            tokio::spawn(async move {
                let _ = engine.spawn_drive(tx).await;
            });
        };
        self.inner.recover_expired(TRANSACTIONS, &states, own, "transaction_recovered", presume_abort_events, resume).await
    }

    /// Drives `tx` in its own task (see `Drivers::spawn`) and waits for its end.
    async fn spawn_drive(&self, tx: Tpc) -> Result<Tpc, TpcError> {
        let engine = self.clone();
        let span = tracing::info_span!("2pc", tenant = %tx.row.tenant, transaction_id = %tx.row.id);
        crate::trace::adopt(&span, tx.doc.traceparent.as_deref());
        let id = tx.id().to_string();
        self.inner.driving.spawn(&id, span, move |stop| async move { engine.drive(tx, &stop).await })?.join().await
    }

    async fn drive(&self, mut tx: Tpc, abort_requested: &AtomicBool) -> Result<Tpc, TpcError> {
        let _renewal = self.inner.keep_lease(tx.id());
        if tx.state == TpcState::Preparing {
            self.prepare_and_decide(&mut tx, abort_requested).instrument(tracing::info_span!("prepare")).await?;
        }
        let Some(decision) = tx.doc.decision else { return Ok(tx) };
        let phase = tracing::info_span!("decide", decision = if decision == Decision::Commit { "commit" } else { "abort" });
        let mut round: u32 = 0;
        while !tx.state.is_terminal() {
            // Shutting down: the decision is durable; the next owner sends it on, at once.
            if self.inner.driving.is_draining() {
                tx.row.owner = None;
                tx.row.lease_until_ms = 0;
                self.persist(&mut tx, vec![NewEvent::new("transaction_released", None, json!({"by": self.node_id()}))]).await?;
                return Ok(tx);
            }
            round += 1;
            self.decision_round(&mut tx, decision).instrument(phase.clone()).await?;
            if !tx.state.is_terminal() {
                let delay = tx.doc.retry_policy.delay(round, rand::random::<f64>());
                tokio::time::sleep(delay).await;
            }
        }
        Ok(tx)
    }

    /// Phase one: all prepares in parallel under the prepare timeout, then the durable
    /// decision. The timeout is each participant's own time to vote, as the invoker bounds
    /// every call (an HTTP exchange from its start, a plugin's from when the Wasm host admits
    /// it): a host busy with other tenants' calls delays the vote, never turns it into an
    /// abort — as it never fails a saga's step.
    async fn prepare_and_decide(&self, tx: &mut Tpc, abort_requested: &AtomicBool) -> Result<(), TpcError> {
        let timeout = Duration::from_millis(tx.doc.prepare_timeout_ms);
        let calls = (0..tx.doc.participants.len()).map(|i| {
            let target = self.target(tx, i);
            let ctx = self.context(tx, i, Phase::Prepare, 1, timeout);
            let invoker = self.inner.invoker.clone();
            async move {
                match target.await {
                    Ok(target) => invoker.prepare(&target, ctx, timeout).await,
                    Err(reason) => Vote::Abort(reason),
                }
            }
        });
        let votes: Vec<Vote> = join_all(calls).await;
        let events = tx.doc.apply_votes(&mut tx.state, votes, abort_requested.load(Ordering::SeqCst))?;
        self.persist(tx, events).await
    }

    /// Sends the decision to every participant that has not acknowledged it, in parallel,
    /// and commits the answers.
    async fn decision_round(&self, tx: &mut Tpc, decision: Decision) -> Result<(), TpcError> {
        let phase = match decision {
            Decision::Commit => Phase::Commit,
            Decision::Abort => Phase::Abort,
        };
        let pending = tx.doc.awaiting(decision);
        let calls = pending.iter().map(|&i| {
            let attempt = tx.doc.participants[i].attempts + 1;
            let timeout = Duration::from_millis(tx.doc.participants[i].spec.timeout_ms.unwrap_or(30_000));
            let target = self.target(tx, i);
            let ctx = self.context(tx, i, phase, attempt, timeout);
            let invoker = self.inner.invoker.clone();
            async move {
                match target.await {
                    Ok(target) => invoker.outcome(&target, phase, ctx, timeout).await,
                    Err(reason) => Outcome::Retry(reason),
                }
            }
        });
        let outcomes = join_all(calls).await;
        let events = tx.doc.apply_acks(&mut tx.state, decision, &pending, outcomes)?;
        if tx.state.is_terminal() {
            tx.row.owner = None;
            tx.row.lease_until_ms = 0;
        }
        self.persist(tx, events).await
    }

    fn target(&self, tx: &Tpc, i: usize) -> impl std::future::Future<Output = Result<Target, String>> + Send + use<> {
        let p = &tx.doc.participants[i];
        self.inner.target(&tx.row.tenant, p.plugin_version.clone(), p.spec.endpoint.clone(), "participant")
    }

    fn context(&self, tx: &Tpc, i: usize, phase: Phase, attempt: u32, timeout: Duration) -> CallContext {
        let pid = &tx.doc.participants[i].spec.participant_id;
        CallContext {
            tenant: tx.row.tenant.clone(),
            transaction_id: tx.row.id.clone(),
            step: pid.clone(),
            action: phase.as_str().into(),
            attempt,
            idempotency_key: format!("{}:{pid}:{}", tx.row.id, phase.as_str()),
            input: tx.doc.input(i).to_string(),
            deadline_ms: timeout.as_millis() as u64,
            traceparent: tx.doc.traceparent.clone(),
        }
    }

    async fn persist(&self, tx: &mut Tpc, events: Vec<NewEvent>) -> Result<(), TpcError> {
        Ok(self.inner.journal.persist(tx, events).await?)
    }
}
