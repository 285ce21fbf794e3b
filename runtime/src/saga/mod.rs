//! The saga engine: steps in order or as a DAG (`depends_on`, up to `max_parallel` at once),
//! compensation in reverse dependency order of what completed or may have (`uncertain`),
//! retries with backoff, resume and recovery, on the durable store. `state.rs` decides (what
//! may start, what may be undone, what an answer means); `drive.rs` persists, then acts.
//!
//! Every call to a participant is preceded by a committed record that explains it
//! (`step_started`, `compensation_started`), and its answer is committed before anything acts
//! on it.
//! A saga is driven by exactly one coordinator: the one holding its lease; every write is
//! conditional on the revision it read, so a coordinator that lost its lease stops at its next
//! write. This module must never touch sqlx, wasmtime or reqwest directly.

mod drive;
pub mod state;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::txn::journal::{Asked, Record, wait_for_end};
use crate::txn::Transition;
use crate::txn::core::{EngineCore, Kind, from_remembered_row};
use crate::txn::EngineConfig;

pub use crate::model::Progress;
use crate::model::RetryPolicy;
use crate::participant::Invoker;
use crate::plugin::Catalog;
use crate::store::{EventRow, NewEvent, Store};
pub use state::{SagaDoc, SagaState, StepRecord, StepSpec, StepState};
use state::{MAX_STEPS, check_dag};

pub const KIND: &str = "saga";
const SAGAS: Kind = Kind { store: KIND, name: "saga" };
/// Longest saga-wide timeout: 7 days.
pub const MAX_SAGA_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;
/// Most bytes of step outputs one saga keeps; an output that would pass it is refused as
/// the step's answer (a retry), so a saga document stays storable.
pub const MAX_SAGA_OUTPUT_BYTES: usize = 2 << 20;

/// The saga engine's errors: the one error of the engines.
pub type SagaError = crate::txn::TxError;

/// The body of "create saga" (API.md).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSaga {
    pub saga_name: String,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Extension: the steps, in order, as `POST /v1/sagas/{id}/steps` would add them one by
    /// one — one durable write instead of one per step.
    #[serde(default)]
    pub steps: Option<Vec<StepSpec>>,
    /// Extension: start the saga at once, as `POST /v1/sagas/{id}/execute` (without `wait`)
    /// right after the create would — but in the create's own durable write.
    #[serde(default)]
    pub execute: bool,
    /// Extension: steps of a DAG saga running at once, at most (default 8).
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Extension, with `execute`: answer once the saga has ended, with its document (one
    /// request for the whole saga); `create_with_id` then returns the ended saga.
    #[serde(default)]
    pub wait: bool,
    /// The request's W3C `traceparent` (a header, not part of the body).
    #[serde(skip)]
    pub traceparent: Option<String>,
}

/// A saga as loaded from the store.
pub type Saga = Record<SagaState, SagaDoc>;



#[derive(Clone)]
pub struct SagaEngine {
    inner: Arc<EngineCore>,
}

impl SagaEngine {
    pub fn new(store: Store, catalog: Catalog, invoker: Invoker, config: EngineConfig) -> Self {
        SagaEngine { inner: EngineCore::new(store, catalog, invoker, config) }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The invoker its calls go through (the manager's policy calls too).
    pub(crate) fn invoker(&self) -> &Invoker {
        &self.inner.invoker
    }

    /// Refuses an HTTP endpoint `tenant` may not call (see `crate::outbound`).
    pub fn check_endpoint(&self, tenant: &str, endpoint: &Option<String>) -> Result<(), SagaError> {
        self.inner.check_endpoint(tenant, endpoint).map_err(SagaError::EndpointRefused)
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

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Every durable change this engine makes, as it is committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.inner.journal.subscribe()
    }

    pub async fn create(&self, tenant: &str, req: CreateSaga) -> Result<Saga, SagaError> {
        self.create_with_id(tenant, req, None, None).await
    }

    /// `create`, with the id's unique part given (derived from an `Idempotency-Key`, so a
    /// retried request finds what the first one created); `Conflict` if that id exists.
    /// With `req.execute`, the saga is running (in the background) when this returns. Who
    /// `asked` is audited by the create's own write.
    pub async fn create_with_id(&self, tenant: &str, req: CreateSaga, id: Option<uuid::Uuid>, asked: Option<&Asked>) -> Result<Saga, SagaError> {
        let wait = req.wait;
        self.create_inner(tenant, req, id, wait, asked).await
    }

    /// Creates a saga and runs it to its end state: one durable write creates and starts it
    /// (the first step's start included), then each step's outcome shares a write with the
    /// next step's start.
    pub async fn run(&self, tenant: &str, mut req: CreateSaga) -> Result<Saga, SagaError> {
        req.execute = true;
        self.create_inner(tenant, req, None, true, None).await
    }

    async fn create_inner(&self, tenant: &str, req: CreateSaga, id: Option<uuid::Uuid>, wait: bool, asked: Option<&Asked>) -> Result<Saga, SagaError> {
        crate::text::check("saga_name", &req.saga_name, 256).map_err(SagaError::Invalid)?;
        let context = req.context.unwrap_or_default();
        crate::txn::spec::check_context(&context).map_err(SagaError::Invalid)?;
        if req.timeout_ms.is_some_and(|t| t == 0 || t > MAX_SAGA_TIMEOUT_MS) {
            return Err(SagaError::Invalid(format!("timeout_ms must be between 1 and {MAX_SAGA_TIMEOUT_MS}")));
        }
        let retry_policy = req.retry_policy.unwrap_or_default();
        retry_policy.validate().map_err(SagaError::Invalid)?;
        if req.wait && !req.execute {
            return Err(SagaError::Invalid("wait needs execute: true (a saga that is not started has no end to wait for)".into()));
        }
        if req.max_parallel.is_some_and(|n| !(1..=MAX_STEPS).contains(&n)) {
            return Err(SagaError::Invalid(format!("max_parallel must be between 1 and {MAX_STEPS}")));
        }
        let mut doc = SagaDoc {
            context,
            steps: vec![],
            error: None,
            compensating_because: None,
            timeout_ms: req.timeout_ms,
            retry_policy,
            started_at_ms: None,
            max_parallel: req.max_parallel,
            initial_context: None,
            recoveries: 0,
            traceparent: req.traceparent.clone(),
        };
        let mut events = vec![NewEvent::new("saga_created", None, json!({ "saga_name": req.saga_name }))];
        let steps = req.steps.unwrap_or_default();
        if steps.len() > MAX_STEPS {
            return Err(SagaError::Invalid(format!("a saga has at most {MAX_STEPS} steps")));
        }
        // The steps given together may name each other in any order; check them as a whole.
        check_dag(&steps.iter().collect::<Vec<_>>()).map_err(SagaError::Invalid)?;
        for spec in steps {
            spec.validate().map_err(SagaError::Invalid)?;
            self.check_new_step(tenant, &doc.steps, &spec, false).await?;
            events.push(NewEvent::new("step_added", Some(&spec.name), json!({ "index": doc.steps.len() })));
            doc.steps.push(StepRecord::new(spec));
        }
        let id = format!("saga-{}", id.unwrap_or_else(|| self.inner.new_id()));
        let mut saga = Saga::create(tenant, KIND, id, &req.saga_name, SagaState::Pending, doc, self.inner.now());
        saga.asked_by(asked);
        if !req.execute {
            self.inner.journal.insert(&mut saga, events).await?;
            return Ok(saga);
        }
        events.extend(self.begin_run(tenant, &mut saga).await?);
        self.inner.journal.insert(&mut saga, events).await?;
        self.spawn_drive_from(saga, wait, true).await
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Saga, SagaError> {
        self.inner.get(tenant, SAGAS, id).await
    }

    pub async fn list(&self, tenant: &str, state: Option<SagaState>, limit: i64) -> Result<Vec<Saga>, SagaError> {
        self.inner.list(tenant, SAGAS, state, limit).await
    }

    pub async fn history(&self, tenant: &str, id: &str) -> Result<Vec<EventRow>, SagaError> {
        self.inner.history(tenant, SAGAS, id).await
    }

    /// A saga to change (see `EngineCore::get_for_update`).
    async fn get_for_update(&self, tenant: &str, id: &str, cached: bool) -> Result<Saga, SagaError> {
        self.inner.get_for_update(tenant, SAGAS, id, cached).await
    }

    /// Appends a step to a pending saga; returns (its index, the step count).
    pub async fn add_step(&self, tenant: &str, id: &str, spec: StepSpec) -> Result<(usize, usize), SagaError> {
        self.add_step_asked(tenant, id, spec, None).await
    }

    /// `add_step`, who `asked` audited by its own write.
    pub async fn add_step_asked(&self, tenant: &str, id: &str, spec: StepSpec, asked: Option<&Asked>) -> Result<(usize, usize), SagaError> {
        spec.validate().map_err(SagaError::Invalid)?;
        let added = from_remembered_row(|cached| self.add_step_once(tenant, id, spec.clone(), cached, asked)).await;
        added.map_err(|e| e.busy_if_conflict(id))
    }

    /// Whether `spec` may follow `steps`: room left, a new name, dependencies on steps that
    /// exist (with `dag`: checked here; a create checks its steps as a whole), an endpoint the
    /// tenant may call, a plugin that exports `step`.
    async fn check_new_step(&self, tenant: &str, steps: &[StepRecord], spec: &StepSpec, dag: bool) -> Result<(), SagaError> {
        if steps.len() >= MAX_STEPS {
            return Err(SagaError::Invalid(format!("a saga has at most {MAX_STEPS} steps")));
        }
        if steps.iter().any(|s| s.spec.name == spec.name) {
            return Err(SagaError::Invalid(format!("the saga already has a step named {:?}", spec.name)));
        }
        if dag {
            let all: Vec<&StepSpec> = steps.iter().map(|s| &s.spec).chain([spec]).collect();
            check_dag(&all).map_err(SagaError::Invalid)?;
        }
        for (plugin, endpoint) in [(&spec.plugin, &spec.endpoint), (&spec.compensation_plugin, &spec.compensation_endpoint)] {
            self.inner.check_endpoint(tenant, endpoint).map_err(SagaError::EndpointRefused)?;
            if let Some(plugin) = plugin {
                self.inner.check_plugin(tenant, plugin, crate::plugin::Role::Step).await?;
            }
        }
        Ok(())
    }

    async fn add_step_once(&self, tenant: &str, id: &str, spec: StepSpec, cached: bool, asked: Option<&Asked>) -> Result<(usize, usize), SagaError> {
        let mut saga = self.get_for_update(tenant, id, cached).await?;
        saga.asked_by(asked);
        if saga.state != SagaState::Pending {
            return Err(SagaError::WrongState { id: id.into(), state: saga.state.as_str(), action: "adding a step" });
        }
        self.check_new_step(tenant, &saga.doc.steps, &spec, true).await?;
        let name = spec.name.clone();
        saga.doc.steps.push(StepRecord::new(spec));
        let index = saga.doc.steps.len() - 1;
        let total = saga.doc.steps.len();
        self.persist(&mut saga, vec![NewEvent::new("step_added", Some(&name), json!({ "index": index }))]).await?;
        Ok((index, total))
    }

    /// Starts a pending saga: pins plugin versions, takes the lease, drives it. With `wait`
    /// the returned saga is at an end state; otherwise it is running in the background.
    pub async fn execute(&self, tenant: &str, id: &str, wait: bool) -> Result<Saga, SagaError> {
        self.execute_asked(tenant, id, wait, None).await
    }

    /// `execute`, who `asked` audited by the start's own write.
    pub async fn execute_asked(&self, tenant: &str, id: &str, wait: bool, asked: Option<&Asked>) -> Result<Saga, SagaError> {
        let started = from_remembered_row(|cached| self.start(tenant, id, cached, asked)).await;
        let saga = started.map_err(|e| match e.is_conflict() {
            true => SagaError::WrongState { id: id.into(), state: "running", action: "execute" },
            false => e,
        })?;
        self.spawn_drive_from(saga, wait, true).await
    }

    /// Pins plugin versions, takes the lease and records the start of a pending saga.
    async fn start(&self, tenant: &str, id: &str, cached: bool, asked: Option<&Asked>) -> Result<Saga, SagaError> {
        let mut saga = self.get_for_update(tenant, id, cached).await?;
        if saga.state != SagaState::Pending {
            return Err(SagaError::WrongState { id: id.into(), state: saga.state.as_str(), action: "execute" });
        }
        saga.asked_by(asked);
        let events = self.begin_run(tenant, &mut saga).await?;
        self.persist(&mut saga, events).await?;
        Ok(saga)
    }

    /// Starts a pending saga in memory: pins plugin versions, takes ownership, begins the first
    /// step; returns the events to write before anything runs.
    async fn begin_run(&self, tenant: &str, saga: &mut Saga) -> Result<Vec<NewEvent>, SagaError> {
        for step in saga.doc.steps.iter_mut() {
            if let Some(plugin) = &step.spec.plugin {
                step.plugin_version = Some(self.inner.pin(tenant, plugin).await?);
            }
            if let Some(plugin) = &step.spec.compensation_plugin {
                step.compensation_plugin_version = Some(self.inner.pin(tenant, plugin).await?);
            }
        }
        saga.state.become_(SagaState::Running)?;
        saga.doc.started_at_ms = Some(self.inner.now());
        saga.row.owner = Some(self.inner.config.node_id.clone());
        let pins: Vec<Value> = saga
            .doc
            .steps
            .iter()
            .flat_map(|s| [s.plugin_version.clone(), s.compensation_plugin_version.clone()])
            .flatten()
            .map(Value::String)
            .collect();
        if saga.doc.is_dag() {
            saga.doc.initial_context = Some(saga.doc.context.clone());
        }
        let mut events = vec![NewEvent::new("saga_started", None, json!({ "owner": self.node_id(), "plugins": pins }))];
        // The first steps start in the same write: nothing happens between the two.
        let first = saga.doc.startable(&Default::default(), saga.doc.max_parallel());
        events.extend(drive::begin_steps(saga, &first)?);
        Ok(events)
    }

    /// Continues a stopped saga where it stopped: one whose coordinator died (lease expired),
    /// or one that ended `failed` because a compensation ran out of attempts (its
    /// compensation gets a fresh budget). Completed steps are never re-run.
    pub async fn resume(&self, tenant: &str, id: &str) -> Result<Saga, SagaError> {
        let mut saga = self.get(tenant, id).await?;
        match saga.state {
            SagaState::Running | SagaState::Compensating => {
                if self.is_driving(id) {
                    return Err(SagaError::Busy(id.into()));
                }
                let mine = saga.row.owner.as_deref() == Some(self.node_id());
                if !mine && saga.row.lease_until_ms > self.inner.now() {
                    return Err(SagaError::Busy(id.into()));
                }
                saga.row.owner = Some(self.node_id().into());
                self.persist(&mut saga, vec![NewEvent::new("saga_resumed", None, json!({ "owner": self.node_id() }))])
                    .await
                    .map_err(|_| SagaError::Busy(id.into()))?;
            }
            SagaState::Failed => {
                for step in saga.doc.steps.iter_mut().filter(|s| s.state == StepState::CompensationFailed) {
                    step.state.become_(StepState::Compensating)?;
                    step.compensation_attempts = 0;
                }
                saga.state.become_(SagaState::Compensating)?;
                // Compensating again, for the reason it first did.
                saga.doc.error = saga.doc.compensating_because.take();
                saga.row.owner = Some(self.node_id().into());
                self.persist(&mut saga, vec![NewEvent::new("saga_resumed", None, json!({ "owner": self.node_id() }))])
                    .await
                    .map_err(|_| SagaError::Busy(id.into()))?;
            }
            state => return Err(SagaError::WrongState { id: id.into(), state: state.as_str(), action: "resume" }),
        }
        self.spawn_drive(saga, true).await
    }

    /// Compensates the completed steps. A pending saga ends `compensated` at once; a running
    /// one stops before its next step and compensates.
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<Saga, SagaError> {
        let mut saga = self.get(tenant, id).await?;
        match saga.state {
            SagaState::Pending => {
                saga.state.become_(SagaState::Compensated)?;
                saga.doc.error = Some("cancelled before it started".into());
                self.persist(&mut saga, vec![NewEvent::new("saga_cancelled", None, json!({}))])
                    .await
                    .map_err(|_| SagaError::Busy(id.into()))?;
                Ok(saga)
            }
            SagaState::Running => {
                let mut progress = self.subscribe();
                if self.inner.driving.request_stop(id) {
                    wait_for_end(&mut progress, id).await;
                    return self.get(tenant, id).await;
                }
                if saga.row.lease_until_ms > self.inner.now() && saga.row.owner.as_deref() != Some(self.node_id()) {
                    return Err(SagaError::Busy(id.into()));
                }
                saga.state.become_(SagaState::Compensating)?;
                saga.doc.error = Some("cancelled".into());
                saga.row.owner = Some(self.node_id().into());
                self.persist(&mut saga, vec![NewEvent::new("saga_cancelled", None, json!({}))])
                    .await
                    .map_err(|_| SagaError::Busy(id.into()))?;
                self.spawn_drive(saga, true).await
            }
            state => Err(SagaError::WrongState { id: id.into(), state: state.as_str(), action: "cancel" }),
        }
    }

    /// Claims running or compensating sagas whose lease expired (and, with `own`, those this
    /// node held before a restart) and drives them in the background. Returns how many.
    pub async fn recover_expired(&self, own: bool) -> Result<usize, SagaError> {
        let no_more = |_: &mut Saga| Ok(Vec::new());
        let resume = |saga: Saga| async move {
            let _ = self.spawn_drive(saga, false).await;
        };
        self.inner.recover_expired(SAGAS, &["running", "compensating"], own, "saga_recovered", no_more, resume).await
    }

    fn is_driving(&self, id: &str) -> bool {
        self.inner.driving.contains(id)
    }

    /// Drives `saga` in its own task, so a caller that goes away (an HTTP client hanging up)
    /// never stops a saga half-way.
    async fn spawn_drive(&self, saga: Saga, wait: bool) -> Result<Saga, SagaError> {
        self.spawn_drive_from(saga, wait, false).await
    }

    /// `spawn_drive`; with `started`, the next step was begun (and written) by `start`.
    async fn spawn_drive_from(&self, saga: Saga, wait: bool, started: bool) -> Result<Saga, SagaError> {
        let engine = self.clone();
        let snapshot = (!wait).then(|| saga.clone());
        let span = tracing::info_span!("saga", tenant = %saga.row.tenant, transaction_id = %saga.row.id);
        crate::trace::adopt(&span, saga.doc.traceparent.as_deref());
        let id = saga.id().to_string();
        let driver = self.inner.driving.spawn(&id, span, move |stop| async move { engine.drive(saga, &stop, started).await })?;
        match snapshot {
            Some(snapshot) => Ok(snapshot),
            None => driver.join().await,
        }
    }

    /// Commits the saga's new state with `events` (see `Journal::persist`).
    async fn persist(&self, saga: &mut Saga, events: Vec<NewEvent>) -> Result<(), SagaError> {
        Ok(self.inner.journal.persist(saga, events).await?)
    }
}

