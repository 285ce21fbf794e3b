//! The documents of API.md, rendered from typed records: a saga, a 2PC transaction, a managed
//! transaction with its delegate's progress. The engines own the records; how they read as
//! JSON for callers is decided here, once.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::manager::{Delegate, Managed, ManagedView, Manager, ManagerError, Requirements, Status};
use crate::model::{Pattern, Vote};
use crate::saga::{Saga, SagaState, StepRecord, StepState};
use crate::tpc::{Decision, ParticipantRecord, ParticipantState, Tpc, TpcState};
use crate::txn::{Record, TxState, rfc3339};

/// A saga's document as API.md gives it, borrowed from its record and serialised straight
/// from it (no JSON tree in between).
#[derive(Serialize)]
pub struct SagaDocument<'a> {
    status: &'static str,
    saga_id: &'a str,
    saga_name: &'a str,
    state: SagaState,
    context: &'a Map<String, Value>,
    steps: Vec<StepDocument<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    needs_attention: bool,
    #[serde(flatten)]
    lifetime: Lifetime,
}

impl Saga {
    /// The saga document of API.md.
    pub fn as_document(&self) -> SagaDocument<'_> {
        let status = match self.state {
            SagaState::Completed => "success",
            SagaState::Compensated => "failed",
            SagaState::Failed => "error",
            _ => "success",
        };
        SagaDocument {
            status,
            saga_id: &self.row.id,
            saga_name: &self.row.name,
            state: self.state,
            context: &self.doc.context,
            steps: self.doc.steps.iter().map(StepDocument::of).collect(),
            error: self.doc.error.as_deref(),
            needs_attention: self.doc.needs_attention(self.state),
            lifetime: Lifetime::of(self, self.doc.started_at_ms),
        }
    }

    /// The saga document of API.md, as a JSON value.
    pub fn document(&self) -> Value {
        to_json(self.as_document())
    }
}

/// A typed document as a JSON value.
fn to_json(doc: impl Serialize) -> Value {
    serde_json::to_value(doc).expect("documents serialise")
}

/// When a saga or 2PC transaction was created and last changed; when it started and ended,
/// and how long it took, where known (it ended when it was last changed in an end state).
#[derive(Serialize)]
struct Lifetime {
    created_at: String,
    updated_at: String,
    #[serde(flatten)]
    times: Times,
}

impl Lifetime {
    fn of<S: TxState, D>(rec: &Record<S, D>, started: Option<i64>) -> Lifetime {
        let ended = rec.state.is_terminal().then_some(rec.row.updated_at_ms);
        Lifetime { created_at: rfc3339(rec.row.created_at_ms), updated_at: rfc3339(rec.row.updated_at_ms), times: Times::of(started, ended) }
    }
}

/// When a transaction started and ended, and how long it took, where known.
#[derive(Serialize)]
struct Times {
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<i64>,
}

impl Times {
    fn of(started: Option<i64>, ended: Option<i64>) -> Times {
        Times { started_at: started.map(rfc3339), ended_at: ended.map(rfc3339), duration_ms: started.zip(ended).map(|(s, e)| e - s) }
    }
}

/// A saga step as its document shows it.
#[derive(Serialize)]
struct StepDocument<'a> {
    name: &'a str,
    state: StepState,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compensation_plugin_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compensation_endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    compensation_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward_outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    depends_on: Option<&'a [String]>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl<'a> StepDocument<'a> {
    fn of(s: &'a StepRecord) -> Self {
        StepDocument {
            name: &s.spec.name,
            state: s.state,
            attempts: s.attempts,
            output: s.output.as_ref(),
            error: s.error.as_deref(),
            plugin_version: s.plugin_version.as_deref(),
            compensation_plugin_version: s.compensation_plugin_version.as_deref(),
            compensation_endpoint: s.spec.compensation_endpoint.as_deref(),
            compensation_attempts: s.compensation_attempts,
            forward_outcome: s.outcome_unknown.then_some("unknown"),
            depends_on: s.spec.depends_on.as_deref(),
        }
    }
}

/// A 2PC transaction's document as API.md gives it, borrowed from its record.
#[derive(Serialize)]
pub struct TpcDocument<'a> {
    status: &'static str,
    transaction_id: &'a str,
    transaction_name: &'a str,
    state: TpcState,
    participants: Vec<ParticipantDocument<'a>>,
    context: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    needs_attention: bool,
    #[serde(flatten)]
    lifetime: Lifetime,
}

impl Tpc {
    /// The 2PC document of API.md.
    pub fn as_document(&self) -> TpcDocument<'_> {
        let status = match self.state {
            TpcState::Committed => "success",
            TpcState::Aborted | TpcState::Aborting => "aborted",
            TpcState::Failed => "error",
            _ => "success",
        };
        TpcDocument {
            status,
            transaction_id: &self.row.id,
            transaction_name: &self.row.name,
            state: self.state,
            participants: self.doc.participants.iter().map(ParticipantDocument::of).collect(),
            context: &self.doc.context,
            decision: self.doc.decision,
            error: self.doc.error.as_deref(),
            needs_attention: self.doc.needs_attention(self.state),
            lifetime: Lifetime::of(self, self.doc.started_at_ms),
        }
    }

    /// The 2PC document of API.md, as a JSON value.
    pub fn document(&self) -> Value {
        to_json(self.as_document())
    }
}

/// A 2PC participant as its document shows it.
#[derive(Serialize)]
struct ParticipantDocument<'a> {
    participant_id: &'a str,
    state: ParticipantState,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    vote: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vote_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_version: Option<&'a str>,
}

impl<'a> ParticipantDocument<'a> {
    fn of(p: &'a ParticipantRecord) -> Self {
        let (vote, vote_reason) = match &p.vote {
            Some(Vote::Prepared) => (Some("prepared"), None),
            Some(Vote::Abort(reason)) => (Some("abort"), Some(reason.as_str())),
            None => (None, None),
        };
        ParticipantDocument {
            participant_id: &p.spec.participant_id,
            state: p.state,
            attempts: p.attempts,
            vote,
            vote_reason,
            error: p.error.as_deref(),
            plugin_version: p.plugin_version.as_deref(),
        }
    }
}

impl Manager {
    /// The transaction document of API.md, with each participant's state from its delegate.
    pub async fn document(&self, tenant: &str, m: &Managed) -> Result<Value, ManagerError> {
        Ok(self.view(tenant, m).await?.document())
    }
}

/// A managed transaction's document as API.md gives it, borrowed from the transaction and its
/// delegate as viewed: its own fields, and each participant as its delegate's step or
/// participant of the same name shows it.
#[derive(Serialize)]
pub struct ManagedDocument<'a> {
    status: &'static str,
    transaction_id: &'a str,
    transaction_name: &'a str,
    selected_pattern: Option<Pattern>,
    transaction_status: Status,
    requirements: &'a Requirements,
    context: &'a Map<String, Value>,
    participants: Vec<ShownParticipant<'a>>,
    policy: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_time_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delegate_id: Option<&'a str>,
    /// The delegate, as its own engine has it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_status: Option<CoordinatorStatus<'a>>,
    /// Failed, or its delegate needs attention.
    needs_attention: bool,
    #[serde(flatten)]
    times: Times,
}

/// A managed transaction's participant: pending until its delegate shows it.
#[derive(Serialize)]
struct ShownParticipant<'a> {
    participant_id: &'a str,
    state: ShownState,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vote: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_version: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ShownState {
    Pending(&'static str),
    Step(StepState),
    Participant(ParticipantState),
}

impl<'a> ShownParticipant<'a> {
    fn pending(id: &'a str) -> Self {
        ShownParticipant { participant_id: id, state: ShownState::Pending("pending"), attempts: 0, output: None, vote: None, error: None, plugin_version: None }
    }

    /// Participant `id` as `delegate` shows it: the fields its step's or participant's own
    /// document shows, so both read the same.
    fn of(id: &'a str, delegate: Option<&'a Delegate>) -> Self {
        let shown = match delegate {
            Some(Delegate::Saga(saga)) => saga.doc.steps.iter().find(|s| s.spec.name == id).map(|s| {
                let step = StepDocument::of(s);
                ShownParticipant {
                    state: ShownState::Step(step.state),
                    attempts: step.attempts,
                    output: step.output,
                    error: step.error,
                    plugin_version: step.plugin_version,
                    ..ShownParticipant::pending(id)
                }
            }),
            Some(Delegate::Tpc(tx)) => tx.doc.participants.iter().find(|p| p.spec.participant_id == id).map(|p| {
                let participant = ParticipantDocument::of(p);
                ShownParticipant {
                    state: ShownState::Participant(participant.state),
                    attempts: participant.attempts,
                    vote: participant.vote,
                    error: participant.error,
                    plugin_version: participant.plugin_version,
                    ..ShownParticipant::pending(id)
                }
            }),
            None => None,
        };
        shown.unwrap_or_else(|| ShownParticipant::pending(id))
    }
}

#[derive(Serialize)]
struct CoordinatorStatus<'a> {
    kind: &'static str,
    id: &'a str,
    state: &'static str,
}

impl ManagedView {
    /// The transaction document of API.md, of the transaction and its delegate as viewed.
    pub fn as_document(&self) -> ManagedDocument<'_> {
        let m = &self.managed;
        let status = if m.doc.rejected {
            "error"
        } else {
            match self.status {
                Status::Committed => "success",
                Status::Aborted => "aborted",
                Status::Compensated | Status::Failed => "failed",
                _ => "success",
            }
        };
        let (coordinator_status, delegate_attention) = match &self.delegate {
            Some(Delegate::Saga(saga)) => {
                (Some(CoordinatorStatus { kind: "saga", id: &saga.row.id, state: saga.state.as_str() }), saga.doc.needs_attention(saga.state))
            }
            Some(Delegate::Tpc(tx)) => (Some(CoordinatorStatus { kind: "2pc", id: &tx.row.id, state: tx.state.as_str() }), tx.doc.needs_attention(tx.state)),
            None => (None, false),
        };
        let ended = self.status.is_terminal().then(|| m.doc.started_at_ms.zip(m.doc.execution_time_ms).map(|(s, d)| s + d)).flatten();
        ManagedDocument {
            status,
            transaction_id: &m.row.id,
            transaction_name: &m.row.name,
            selected_pattern: m.doc.selected_pattern,
            transaction_status: self.status,
            requirements: &m.doc.requirements,
            context: &m.doc.context,
            participants: m.doc.participants.iter().map(|p| ShownParticipant::of(&p.spec.participant_id, self.delegate.as_ref())).collect(),
            policy: m.doc.policy_used.as_deref().or(m.doc.policy.as_deref()).unwrap_or("builtin"),
            execution_time_ms: m.doc.execution_time_ms,
            error: m.doc.error.as_deref(),
            reason: m.doc.reason.as_deref(),
            delegate_id: m.doc.delegate_id.as_deref(),
            coordinator_status,
            needs_attention: self.status == Status::Failed || delegate_attention,
            times: Times::of(m.doc.started_at_ms, ended),
        }
    }

    /// The transaction document of API.md, as a JSON value.
    pub fn document(&self) -> Value {
        to_json(self.as_document())
    }
}
