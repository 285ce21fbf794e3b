//! Managed transactions: the caller states requirements and participants; the manager picks
//! Saga or 2PC (built-in rules, or a policy plugin with a recorded fallback to them), runs the
//! transaction on that engine, and reports it in one document.
//!
//! The manager owns only the choice and the mapping; the engines own execution and its
//! guarantees. Its record names the delegate (saga or 2PC transaction) before that delegate is
//! executed, so recovery always knows what to finish.
//!
//! It drives its delegates only through their engines' public methods and reads them as typed
//! records; it never renders API documents and never touches a store driver, wasmtime or HTTP.

pub mod select;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::Instrument;
use serde_json::{Map, Value, json};

use crate::model::{Availability, Consistency, Decision as PolicyDecision, Pattern, Profile, RetryPolicy};
use crate::plugin::{Catalog, Role};
use crate::saga::{CreateSaga, SagaEngine, SagaError, SagaState, StepSpec};
use crate::txn::Transition;
use crate::txn::core::{EngineCore, Kind, from_remembered_row};
use crate::txn::journal::{Asked, Record};
use crate::store::{NewEvent, Store, StoreError};
use crate::tpc::{CreateTpc, ParticipantSpec, TpcEngine, TpcError, TpcState};
use select::{Capability, Selection};

pub const KIND: &str = "transaction";
const MANAGED: Kind = Kind { store: KIND, name: "transaction" };
/// The tenant setting naming the default policy plugin.
pub const DEFAULT_POLICY_SETTING: &str = "default_policy";
/// How long a policy may think.
const POLICY_TIMEOUT: Duration = Duration::from_secs(2);

/// The manager's errors: the one error of the engines.
pub type ManagerError = crate::txn::TxError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    #[serde(default)]
    pub consistency: Consistency,
    #[serde(default)]
    pub availability: Availability,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    300_000
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements { consistency: Consistency::Eventual, availability: Availability::High, timeout_ms: default_timeout_ms() }
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateManaged {
    pub transaction_name: String,
    #[serde(default)]
    pub requirements: Option<Requirements>,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// With the saga pattern, participants of the same `priority` run at once (each group
    /// after the one before) instead of one after another.
    #[serde(default)]
    pub parallel: bool,
    /// The request's W3C `traceparent` (a header, not part of the body).
    #[serde(skip)]
    pub traceparent: Option<String>,
}

/// A participant as the caller described it (API.md, managed transactions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagedParticipant {
    pub participant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supports_2pc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supports_saga: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<u32>,
    #[serde(default)]
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub spec: ManagedParticipant,
    pub supports_2pc: bool,
    pub supports_saga: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Committed,
    Compensated,
    Aborted,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Committed => "committed",
            Status::Compensated => "compensated",
            Status::Aborted => "aborted",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        serde_json::from_value(Value::String(s.into())).ok()
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }
}

impl crate::txn::Transition for Status {
    /// A managed transaction starts (or is rejected, or aborted before it starts), then
    /// follows its delegate: the delegate's end is its end, and a failed delegate that an
    /// operator resumes or recovers takes it back to running, or straight to the end it
    /// reached meanwhile.
    fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Running | Failed | Aborted) | (Running, Committed | Compensated | Aborted | Failed) | (Failed, Running | Committed | Compensated | Aborted)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagedDoc {
    pub requirements: Requirements,
    pub context: Map<String, Value>,
    /// The policy asked for at creation (`None`: the tenant's default at execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What decided: `builtin` or `name@version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_used: Option<String>,
    pub participants: Vec<ParticipantRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pattern: Option<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Participants of the same priority run at once under the saga pattern.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel: bool,
    /// Set when the transaction was refused (status `error`).
    #[serde(default)]
    pub rejected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time_ms: Option<i64>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// The W3C `traceparent` of the request that created it; its delegate carries it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A managed transaction as loaded from the store.
pub type Managed = Record<Status, ManagedDoc>;

/// What a managed transaction's document shows: the record, its delegate and its status now.
#[derive(Debug, Clone)]
pub struct ManagedView {
    pub managed: Managed,
    pub delegate: Option<Delegate>,
    /// The delegate's progress while the record says `running`; the record's status otherwise.
    pub status: Status,
}

impl ManagedView {
    /// `managed` with `delegate` as it is now: while the record says `running`, its status is
    /// the delegate's progress.
    fn of(managed: Managed, delegate: Option<Delegate>) -> ManagedView {
        let status = match (&delegate, managed.state) {
            (Some(d), Status::Running) => d.status(),
            (_, recorded) => recorded,
        };
        ManagedView { managed, delegate, status }
    }
}

/// The saga or 2PC transaction a managed transaction runs as.
#[derive(Debug, Clone)]
pub enum Delegate {
    Saga(crate::saga::Saga),
    Tpc(crate::tpc::Tpc),
}

impl Delegate {
    /// The managed transaction's status its state stands for.
    fn status(&self) -> Status {
        match self {
            Delegate::Saga(saga) => saga_status(saga.state),
            Delegate::Tpc(tx) => tpc_status(tx.state),
        }
    }

    fn error(&self) -> Option<String> {
        match self {
            Delegate::Saga(saga) => saga.doc.error.clone(),
            Delegate::Tpc(tx) => tx.doc.error.clone(),
        }
    }
}

crate::txn::tx_state!(Status);

impl Managed {
    fn caps(&self) -> Vec<Capability> {
        self.doc
            .participants
            .iter()
            .map(|p| Capability { participant_id: p.spec.participant_id.clone(), two_phase_commit: p.supports_2pc, saga: p.supports_saga })
            .collect()
    }
}

#[derive(Clone)]
pub struct Manager {
    inner: std::sync::Arc<EngineCore>,
    sagas: SagaEngine,
    tpc: TpcEngine,
}

impl Manager {
    pub fn new(store: Store, catalog: Catalog, sagas: SagaEngine, tpc: TpcEngine) -> Self {
        let inner = EngineCore::new(store, catalog, sagas.invoker().clone(), sagas.config().clone());
        Manager { inner, sagas, tpc }
    }

    /// Every durable change of a managed transaction, as it is committed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::model::Progress> {
        self.inner.journal.subscribe()
    }

    pub async fn create(&self, tenant: &str, req: CreateManaged) -> Result<Managed, ManagerError> {
        self.create_with_id(tenant, req, None, None).await
    }

    /// `create`, with the id's unique part given (derived from an `Idempotency-Key`, so a
    /// retried request finds what the first one created); `Conflict` if that id exists. Who
    /// `asked` is audited by the create's own write.
    pub async fn create_with_id(&self, tenant: &str, req: CreateManaged, id: Option<uuid::Uuid>, asked: Option<&Asked>) -> Result<Managed, ManagerError> {
        crate::text::check("transaction_name", &req.transaction_name, 256).map_err(ManagerError::Invalid)?;
        let requirements = req.requirements.unwrap_or_default();
        if requirements.timeout_ms == 0 || requirements.timeout_ms > 86_400_000 {
            return Err(ManagerError::Invalid("requirements.timeout_ms must be between 1 and 86400000".into()));
        }
        if let Some(p) = &req.retry_policy {
            p.validate().map_err(ManagerError::Invalid)?;
        }
        let context = req.context.unwrap_or_default();
        crate::txn::spec::check_context(&context).map_err(ManagerError::Invalid)?;
        if let Some(policy) = &req.policy
            && policy != "builtin"
        {
            self.policy_component(tenant, policy).await?;
        }
        let doc = ManagedDoc {
            requirements,
            context,
            policy: req.policy,
            policy_used: None,
            participants: vec![],
            selected_pattern: None,
            delegate_id: None,
            reason: None,
            error: None,
            parallel: req.parallel,
            rejected: false,
            started_at_ms: None,
            execution_time_ms: None,
            retry_policy: req.retry_policy,
            traceparent: req.traceparent.clone(),
        };
        let id = format!("tx-{}", id.unwrap_or_else(|| self.inner.new_id()));
        let mut m = Managed::create(tenant, KIND, id, &req.transaction_name, Status::Pending, doc, self.inner.now());
        let event = NewEvent::new("transaction_created", None, json!({"transaction_name": req.transaction_name}));
        m.asked_by(asked);
        self.inner.journal.insert(&mut m, vec![event]).await?;
        Ok(m)
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Managed, ManagerError> {
        self.inner.get(tenant, MANAGED, id).await
    }

    pub async fn list(&self, tenant: &str, status: Option<Status>, limit: i64) -> Result<Vec<Managed>, ManagerError> {
        let rows = self.inner.store.list_tx(tenant, KIND, status.map(Status::as_str), limit).await?;
        Ok(rows.into_iter().map(Managed::from_row).collect::<Result<_, _>>()?)
    }

    pub async fn add_participant(&self, tenant: &str, id: &str, spec: ManagedParticipant) -> Result<usize, ManagerError> {
        self.add_participant_asked(tenant, id, spec, None).await
    }

    /// `add_participant`, who `asked` audited by its own write.
    pub async fn add_participant_asked(&self, tenant: &str, id: &str, spec: ManagedParticipant, asked: Option<&Asked>) -> Result<usize, ManagerError> {
        let added = from_remembered_row(|cached| self.add_participant_once(tenant, id, spec.clone(), cached, asked)).await;
        added.map_err(|e| e.busy_if_conflict(id))
    }

    async fn add_participant_once(&self, tenant: &str, id: &str, spec: ManagedParticipant, cached: bool, asked: Option<&Asked>) -> Result<usize, ManagerError> {
        let mut m: Managed = self.inner.get_for_update(tenant, MANAGED, id, cached).await?;
        m.asked_by(asked);
        if m.state != Status::Pending {
            return Err(ManagerError::WrongState { id: id.into(), state: m.state.as_str(), action: "adding a participant" });
        }
        let pid = spec.participant_id.clone();
        // The same checks the engines make, before anything is stored.
        as_step(&spec).validate().map_err(ManagerError::Invalid)?;
        self.sagas.check_endpoint(tenant, &spec.endpoint)?;
        if m.doc.participants.len() >= 100 {
            return Err(ManagerError::Invalid("a transaction has at most 100 participants".into()));
        }
        if m.doc.participants.iter().any(|p| p.spec.participant_id == pid) {
            return Err(ManagerError::Invalid(format!("participant {pid:?} is already in {id}")));
        }
        let (exports_2pc, exports_saga) = match &spec.plugin {
            Some(plugin) => {
                let (_, c) = self.inner.catalog.resolve(tenant, plugin).await?;
                (c.exports(Role::Participant), c.exports(Role::Step))
            }
            None => (false, true),
        };
        let claims_beyond = |flag: Option<bool>, exported: bool| spec.plugin.is_some() && flag == Some(true) && !exported;
        if claims_beyond(spec.supports_2pc, exports_2pc) || claims_beyond(spec.supports_saga, exports_saga) {
            return Err(ManagerError::Invalid(format!(
                "participant {pid:?}: plugin {} does not export what supports_2pc/supports_saga claim",
                spec.plugin.as_deref().unwrap_or_default()
            )));
        }
        let supports_2pc = spec.supports_2pc.unwrap_or(exports_2pc);
        let supports_saga = spec.supports_saga.unwrap_or(exports_saga);
        if !supports_2pc && !supports_saga {
            return Err(ManagerError::Invalid(format!("participant {pid:?} supports neither saga nor 2PC")));
        }
        // One that two-phase commit may run must also pass as a 2PC participant.
        if supports_2pc {
            as_participant(&spec).validate().map_err(ManagerError::Invalid)?;
        }
        m.doc.participants.push(ParticipantRecord { spec, supports_2pc, supports_saga });
        let total = m.doc.participants.len();
        self.persist(&mut m, vec![NewEvent::new("participant_added", Some(&pid), json!({"supports_2pc": supports_2pc, "supports_saga": supports_saga}))])
            .await?;
        Ok(total)
    }

    /// Selects the pattern (or honours a forced one), then runs the transaction to its end.
    pub async fn execute(&self, tenant: &str, id: &str, pattern: Option<&str>) -> Result<Managed, ManagerError> {
        Ok(self.execute_asked(tenant, id, pattern, None).await?.managed)
    }

    /// `execute`, who `asked` audited by the write that selects the pattern (or rejects); the
    /// transaction with its delegate as they ended (what its document shows).
    pub async fn execute_asked(&self, tenant: &str, id: &str, pattern: Option<&str>, asked: Option<&Asked>) -> Result<ManagedView, ManagerError> {
        // Read from the store, not from memory: the delegate is created before this
        // transaction's write, so that write must not fail for a stale starting point.
        let mut m = self.get(tenant, id).await?;
        m.asked_by(asked);
        if m.state != Status::Pending {
            return Err(ManagerError::WrongState { id: id.into(), state: m.state.as_str(), action: "execute" });
        }
        let caps = m.caps();
        let mut events = Vec::new();
        let selection = match pattern.unwrap_or("auto") {
            "auto" => self.select(tenant, &mut m, &caps, &mut events).await?,
            forced => {
                let p = match forced {
                    "saga" => Pattern::Saga,
                    "two_phase_commit" => Pattern::TwoPhaseCommit,
                    other => {
                        return Err(ManagerError::Invalid(format!("pattern must be auto, saga or two_phase_commit, not {other:?}")));
                    }
                };
                let lacking = select::incapable(p, &caps);
                if !lacking.is_empty() {
                    return Err(ManagerError::Invalid(format!("forced pattern {forced} is not supported by: {}", lacking.join(", "))));
                }
                m.doc.policy_used = Some("forced".into());
                Selection::Choose(p, "pattern forced by the caller")
            }
        };
        m.doc.started_at_ms = Some(self.inner.now());
        let pattern = match selection {
            Selection::Reject(reason) => {
                m.state.become_(Status::Failed)?;
                m.doc.rejected = true;
                m.doc.error = Some(reason.clone());
                m.doc.reason = Some(reason.clone());
                events.push(NewEvent::new("rejected", None, json!({"reason": reason})));
                self.persist(&mut m, events).await.map_err(|e| e.busy_if_conflict(id))?;
                return Ok(ManagedView::of(m, None));
            }
            Selection::Choose(p, why) => {
                m.doc.reason = Some(why.to_string());
                p
            }
        };
        let delegate_id = self.create_delegate(tenant, &m, pattern).await?;
        m.doc.selected_pattern = Some(pattern);
        m.doc.delegate_id = Some(delegate_id.clone());
        m.state.become_(Status::Running)?;
        m.row.owner = Some(self.sagas.node_id().to_string());
        events.push(NewEvent::new(
            "pattern_selected",
            None,
            json!({"pattern": pattern, "reason": m.doc.reason, "policy": m.doc.policy_used, "delegate": delegate_id}),
        ));
        // Another execute of the same transaction got here first (it runs the delegate both
        // made): this one is too late, the caller's race and not the server's fault.
        self.persist(&mut m, events).await.map_err(|e| e.busy_if_conflict(id))?;
        let _renewal = self.inner.keep_lease(&m.row.id);
        let ended = match pattern {
            Pattern::Saga => Delegate::Saga(self.sagas.execute(tenant, &delegate_id, true).await?),
            Pattern::TwoPhaseCommit => Delegate::Tpc(self.tpc.execute(tenant, &delegate_id).await?),
        };
        self.settle(tenant, m, Some(ended)).await
    }

    /// Chooses by policy plugin, falling back to the built-in rules (recorded) when the
    /// policy traps, times out, or chooses what the participants cannot do.
    async fn select(
        &self,
        tenant: &str,
        m: &mut Managed,
        caps: &[Capability],
        events: &mut Vec<NewEvent>,
    ) -> Result<Selection, ManagerError> {
        let req = &m.doc.requirements;
        let builtin = select::builtin(req.consistency, req.availability, caps);
        let policy = match &m.doc.policy {
            Some(p) => Some(p.clone()),
            None => self.inner.store.setting(tenant, DEFAULT_POLICY_SETTING).await?,
        };
        let Some(policy) = policy.filter(|p| p != "builtin") else {
            m.doc.policy_used = Some("builtin".into());
            return Ok(builtin);
        };
        let fallback = |events: &mut Vec<NewEvent>, m: &mut Managed, reason: String| {
            events.push(NewEvent::new("policy_fallback", None, json!({"policy": policy, "reason": reason})));
            m.doc.policy_used = Some("builtin".into());
            builtin.clone()
        };
        let (name, component) = match self.policy_component(tenant, &policy).await {
            Ok(found) => found,
            Err(e) => return Ok(fallback(events, m, e.to_string())),
        };
        let profile = Profile {
            tenant: tenant.into(),
            transaction_name: m.row.name.clone(),
            consistency: req.consistency,
            availability: req.availability,
            timeout_ms: req.timeout_ms,
            participants: caps
                .iter()
                .map(|c| crate::model::Candidate {
                    participant_id: c.participant_id.clone(),
                    supports_two_phase_commit: c.two_phase_commit,
                    supports_saga: c.saga,
                })
                .collect(),
            context: Value::Object(m.doc.context.clone()).to_string(),
        };
        let span = tracing::info_span!("select", transaction_id = %m.row.id, policy = %name);
        crate::trace::adopt(&span, m.doc.traceparent.as_deref());
        let answer = self.sagas.invoker().select(&component, profile, &m.row.id, POLICY_TIMEOUT).instrument(span).await;
        Ok(match answer {
            Err(e) => fallback(events, m, format!("policy {name} failed: {e}")),
            Ok(PolicyDecision::Reject(reason)) => {
                m.doc.policy_used = Some(name.clone());
                Selection::Reject(format!("policy {name} rejected the transaction: {reason}"))
            }
            Ok(PolicyDecision::Choose(p)) => {
                let lacking = select::incapable(p, caps);
                if lacking.is_empty() {
                    m.doc.policy_used = Some(name.clone());
                    Selection::Choose(p, "chosen by policy")
                } else {
                    fallback(events, m, format!("policy {name} chose {p:?}, which {} cannot do", lacking.join(", ")))
                }
            }
        })
    }

    /// Resolves a policy reference to `name@version` and its component; it must export `policy`.
    async fn policy_component(&self, tenant: &str, reference: &str) -> Result<(String, std::sync::Arc<crate::plugin::Component>), ManagerError> {
        let (row, component) = self.inner.catalog.resolve(tenant, reference).await?;
        if !component.exports(Role::Policy) {
            return Err(ManagerError::Invalid(format!("plugin {reference} does not export `policy`")));
        }
        Ok((format!("{}@{}", row.name, row.version), component))
    }

    /// Creates the transaction that runs `m` by `pattern`, pending. Its id follows from `m`'s id
    /// and revision, so executes that race for one revision of `m` (or one that a crash cut
    /// short before `m` recorded it) make one delegate, not one each: the first creates it, the
    /// others name it, and only the execute whose write of `m` wins runs it.
    async fn create_delegate(&self, tenant: &str, m: &Managed, pattern: Pattern) -> Result<String, ManagerError> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("delegate of {} at revision {}", m.row.id, m.row.rev));
        let id = Some(uuid::Uuid::from_bytes(digest[..16].try_into().expect("16 bytes")));
        // One that exists already is named only while it is pending: one the tenant started or
        // cancelled meanwhile (it is a transaction of theirs) makes this execute too late.
        let made = async |created: Result<String, ManagerError>| match created {
            Err(ManagerError::Store(StoreError::Conflict { id: made, .. })) => {
                let pending = match pattern {
                    Pattern::Saga => self.sagas.get(tenant, &made).await?.state == SagaState::Pending,
                    Pattern::TwoPhaseCommit => self.tpc.get(tenant, &made).await?.state == TpcState::Init,
                };
                if pending { Ok(made) } else { Err(ManagerError::Busy(m.row.id.clone())) }
            }
            created => created,
        };
        let mut participants: Vec<&ParticipantRecord> = m.doc.participants.iter().collect();
        match pattern {
            Pattern::Saga => {
                // Ascending priority; equal priorities keep the order they were added in, or
                // (`parallel`) run at once, each group after the one before.
                participants.sort_by_key(|p| p.spec.priority);
                let mut steps: Vec<StepSpec> = participants.iter().map(|p| as_step(&p.spec)).collect();
                if m.doc.parallel {
                    for (i, step) in steps.iter_mut().enumerate() {
                        let priority = participants[i].spec.priority;
                        let before = participants.iter().map(|p| p.spec.priority).filter(|&q| q < priority).max();
                        let group = participants.iter().filter(|p| Some(p.spec.priority) == before);
                        step.depends_on = Some(group.map(|p| p.spec.participant_id.clone()).collect());
                    }
                }
                let req = CreateSaga {
                    saga_name: m.row.name.clone(),
                    context: Some(m.doc.context.clone()),
                    timeout_ms: Some(m.doc.requirements.timeout_ms),
                    retry_policy: m.doc.retry_policy.clone(),
                    steps: Some(steps),
                    execute: false,
                    max_parallel: None,
                    wait: false,
                    traceparent: m.doc.traceparent.clone(),
                };
                made(self.sagas.create_with_id(tenant, req, id, None).await.map(|saga| saga.id().to_string())).await
            }
            Pattern::TwoPhaseCommit => {
                let specs = participants.iter().map(|p| as_participant(&p.spec)).collect();
                let req = CreateTpc {
                    transaction_name: m.row.name.clone(),
                    context: Some(m.doc.context.clone()),
                    prepare_timeout_ms: Some(m.doc.requirements.timeout_ms.min(crate::txn::spec::MAX_CALL_TIMEOUT_MS)),
                    retry_policy: m.doc.retry_policy.clone(),
                    decision_max_attempts: None,
                    participants: Some(specs),
                    traceparent: m.doc.traceparent.clone(),
                };
                made(self.tpc.create_with_id(tenant, req, id, None).await.map(|tx| tx.id().to_string())).await
            }
        }
    }

    /// Aborts: a pending transaction at once; a running one through its engine (saga:
    /// compensate; 2PC: abort unless commit was decided).
    pub async fn abort(&self, tenant: &str, id: &str) -> Result<Managed, ManagerError> {
        let mut m = self.get(tenant, id).await?;
        match (m.state, m.doc.selected_pattern, m.doc.delegate_id.clone()) {
            (Status::Pending, _, _) => {
                m.state.become_(Status::Aborted)?;
                m.doc.error = Some("aborted before it started".into());
                self.persist(&mut m, vec![NewEvent::new("aborted", None, json!({}))]).await?;
                Ok(m)
            }
            (Status::Running, Some(Pattern::Saga), Some(d)) => {
                self.sagas.cancel(tenant, &d).await?;
                Ok(self.settle(tenant, m, None).await?.managed)
            }
            (Status::Running, Some(Pattern::TwoPhaseCommit), Some(d)) => {
                self.tpc.abort(tenant, &d).await?;
                Ok(self.settle(tenant, m, None).await?.managed)
            }
            (Status::Committed, _, _) => {
                Err(ManagerError::WrongState { id: id.into(), state: "committed", action: "abort" })
            }
            _ => Ok(m),
        }
    }

    /// Drives a running transaction's delegate to its end and records the outcome.
    pub async fn recover(&self, tenant: &str, id: &str) -> Result<Managed, ManagerError> {
        let m = self.get(tenant, id).await?;
        let (Status::Running, Some(pattern), Some(d)) = (m.state, m.doc.selected_pattern, m.doc.delegate_id.clone()) else {
            return match m.state {
                Status::Pending => Err(ManagerError::WrongState { id: id.into(), state: "pending", action: "recover" }),
                _ => Ok(m),
            };
        };
        match pattern {
            Pattern::Saga => match self.sagas.get(tenant, &d).await?.state {
                SagaState::Pending => drop(self.sagas.execute(tenant, &d, true).await?),
                s if s.is_terminal() => {}
                _ => match self.sagas.resume(tenant, &d).await {
                    Ok(_) | Err(SagaError::Busy(_)) => {}
                    Err(e) => return Err(e.into()),
                },
            },
            Pattern::TwoPhaseCommit => match self.tpc.get(tenant, &d).await?.state {
                TpcState::Init => drop(self.tpc.execute(tenant, &d).await?),
                _ => match self.tpc.recover(tenant, &d).await {
                    Ok(_) | Err(TpcError::Busy(_)) => {}
                    Err(e) => return Err(e.into()),
                },
            },
        }
        Ok(self.settle(tenant, m, None).await?.managed)
    }

    /// Records the delegate's end state as the transaction's status, when it has one; returns
    /// the transaction with its delegate. Several callers may settle one transaction at once
    /// (an abort racing the execution that it interrupts): whoever loses the write re-reads and
    /// finds the work done. With `ended` (the delegate as its engine just returned it), the
    /// first try starts from what the caller has in hand, `m` as it last wrote it; only a lost
    /// write reads both from the store.
    async fn settle(&self, tenant: &str, m: Managed, ended: Option<Delegate>) -> Result<ManagedView, ManagerError> {
        let (Some(pattern), Some(d)) = (m.doc.selected_pattern, m.doc.delegate_id.clone()) else { return Ok(ManagedView::of(m, None)) };
        let id = m.row.id.clone();
        let mut in_hand = ended.map(|delegate| (m, delegate));
        loop {
            let (mut m, delegate) = match in_hand.take() {
                Some(known) => known,
                None => (self.get(tenant, &id).await?, self.delegate(tenant, pattern, &d).await?),
            };
            let status = delegate.status();
            if status == m.state {
                return Ok(ManagedView::of(m, Some(delegate)));
            }
            m.state.become_(status)?;
            m.doc.error = delegate.error();
            if status.is_terminal() {
                m.row.owner = None;
            }
            if let Some(started) = m.doc.started_at_ms {
                m.doc.execution_time_ms = Some(self.inner.now() - started);
            }
            let event = NewEvent::new(&format!("transaction_{}", status.as_str()), None, json!({}));
            match self.persist(&mut m, vec![event]).await {
                Ok(()) => return Ok(ManagedView::of(m, Some(delegate))),
                Err(ManagerError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Delegate `id`, run as `pattern`, as stored.
    async fn delegate(&self, tenant: &str, pattern: Pattern, id: &str) -> Result<Delegate, ManagerError> {
        Ok(match pattern {
            Pattern::Saga => Delegate::Saga(self.sagas.get(tenant, id).await?),
            Pattern::TwoPhaseCommit => Delegate::Tpc(self.tpc.get(tenant, id).await?),
        })
    }

    /// The transaction with its delegate as stored now, and its status as the delegate says
    /// it is: what its document shows.
    pub async fn view(&self, tenant: &str, m: &Managed) -> Result<ManagedView, ManagerError> {
        let delegate = match (m.doc.selected_pattern, &m.doc.delegate_id) {
            (Some(pattern), Some(d)) => Some(self.delegate(tenant, pattern, d).await?),
            _ => None,
        };
        Ok(ManagedView::of(m.clone(), delegate))
    }

    /// Sets (or, with `builtin`, clears) the tenant's default policy; it must export `policy`.
    pub async fn set_default_policy(&self, tenant: &str, policy: &str) -> Result<(), ManagerError> {
        if policy != "builtin" {
            self.policy_component(tenant, policy).await?;
        }
        self.inner.store.put_setting(tenant, DEFAULT_POLICY_SETTING, policy).await?;
        Ok(())
    }

    pub async fn history(&self, tenant: &str, id: &str) -> Result<Vec<crate::store::EventRow>, ManagerError> {
        self.inner.history(tenant, MANAGED, id).await
    }

    /// Claims running managed transactions whose coordinator stopped renewing their lease
    /// and finishes them in the background. Returns how many.
    pub async fn recover_expired(&self, own: bool) -> Result<usize, ManagerError> {
        let (n, claimed) = self.inner.claim_expired::<Status, ManagedDoc>(MANAGED, &["running"], own).await?;
        for m in claimed {
            let manager = self.clone();
            tokio::spawn(async move {
                if let Err(e) = manager.recover(&m.row.tenant, m.id()).await {
                    tracing::warn!(transaction_id = %m.row.id, "recovering managed transaction failed: {e}");
                }
            });
        }
        Ok(n)
    }

    /// At shutdown, once the engines have handed back their sagas and 2PC transactions:
    /// hands back every running managed record this node holds (no owner, no lease), so
    /// another coordinator takes them over at its next recovery pass instead of after the
    /// lease. Records this process is still following are taken too: it is exiting, and
    /// their followers' next writes fail on the revision. Returns how many.
    pub async fn release_owned(&self) -> Result<usize, ManagerError> {
        let now = self.inner.now();
        let lease = crate::store::Lease { owner: self.inner.config.node_id.clone(), until_ms: now + self.inner.config.lease.as_millis() as i64 };
        let rows = self.inner.store.claim_expired(KIND, &["running"], &lease, now, 1000, true).await?;
        let n = rows.len();
        for row in rows {
            let mut m: Managed = crate::txn::Record::from_row(row)?;
            m.row.owner = None;
            m.row.lease_until_ms = 0;
            self.persist(&mut m, vec![NewEvent::new("transaction_released", None, json!({"by": self.inner.config.node_id}))]).await?;
        }
        Ok(n)
    }

    async fn persist(&self, m: &mut Managed, events: Vec<NewEvent>) -> Result<(), ManagerError> {
        Ok(self.inner.journal.persist(m, events).await?)
    }
}

/// What a saga's state means for the managed transaction (a completed saga is committed).
fn saga_status(state: SagaState) -> Status {
    match state {
        SagaState::Completed => Status::Committed,
        SagaState::Compensated => Status::Compensated,
        SagaState::Failed => Status::Failed,
        _ => Status::Running,
    }
}

fn tpc_status(state: TpcState) -> Status {
    match state {
        TpcState::Committed => Status::Committed,
        TpcState::Aborted => Status::Aborted,
        TpcState::Failed => Status::Failed,
        _ => Status::Running,
    }
}

/// A managed participant as a saga step.
/// The 2PC participant a managed one becomes when two-phase commit is selected.
fn as_participant(p: &ManagedParticipant) -> ParticipantSpec {
    ParticipantSpec {
        participant_id: p.participant_id.clone(),
        plugin: p.plugin.clone(),
        endpoint: p.endpoint.clone(),
        parameters: p.parameters.clone(),
        timeout_ms: p.timeout_ms,
    }
}

fn as_step(p: &ManagedParticipant) -> StepSpec {
    StepSpec {
        name: p.participant_id.clone(),
        plugin: p.plugin.clone(),
        endpoint: p.endpoint.clone(),
        action: p.action.clone(),
        compensation: p.compensation_action.clone(),
        parameters: p.parameters.clone(),
        compensation_parameters: None,
        compensation_plugin: None,
        compensation_endpoint: None,
        timeout_ms: p.timeout_ms,
        retry_count: p.retry_count,
        output_key: None,
        depends_on: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_statuses_move_only_as_the_table_says() {
        use Status::*;
        crate::txn::transition::assert_table(
            &[Pending, Running, Committed, Compensated, Aborted, Failed],
            &[
                (Pending, Running),
                (Pending, Failed),
                (Pending, Aborted),
                (Running, Committed),
                (Running, Compensated),
                (Running, Aborted),
                (Running, Failed),
                (Failed, Running),
                (Failed, Committed),
                (Failed, Compensated),
                (Failed, Aborted),
            ],
        );
    }
}
