//! The documents of API.md, rendered from typed records: a saga, a 2PC transaction, a managed
//! transaction with its delegate's progress. The engines own the records; how they read as
//! JSON for callers is decided here, once.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::manager::{Delegate, Managed, ManagedView, Manager, ManagerError, Status};
use crate::model::Vote;
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

/// A saga step's or 2PC participant's document as a JSON value, for the managed document to
/// pick its fields from.
fn step(s: &StepRecord) -> Value {
    to_json(StepDocument::of(s))
}

fn participant(p: &ParticipantRecord) -> Value {
    to_json(ParticipantDocument::of(p))
}

impl Manager {
    /// The transaction document of API.md, with each participant's state from its delegate.
    pub async fn document(&self, tenant: &str, m: &Managed) -> Result<Value, ManagerError> {
        Ok(self.view(tenant, m).await?.document())
    }
}

impl ManagedView {
    /// The transaction document of API.md, of the transaction and its delegate as viewed.
    pub fn document(&self) -> Value {
        managed(self)
    }
}

/// A managed transaction's document: its own fields, and each participant as its delegate's
/// step or participant of the same name shows it.
fn managed(view: &ManagedView) -> Value {
    let m = &view.managed;
    let shown = |id: &str, keys: &[&str]| -> Option<Value> {
        let delegate = match &view.delegate {
            Some(Delegate::Saga(saga)) => saga.doc.steps.iter().find(|s| s.spec.name == id).map(step),
            Some(Delegate::Tpc(tx)) => tx.doc.participants.iter().find(|p| p.spec.participant_id == id).map(participant),
            None => None,
        }?;
        let mut v = json!({"participant_id": id, "state": "pending", "attempts": 0});
        for k in keys {
            if let Some(x) = delegate.get(*k) {
                v[*k] = x.clone();
            }
        }
        Some(v)
    };
    let keys: &[&str] = match view.delegate {
        Some(Delegate::Saga(_)) => &["state", "attempts", "output", "error", "plugin_version"],
        _ => &["state", "attempts", "vote", "error", "plugin_version"],
    };
    let participants: Vec<Value> = m
        .doc
        .participants
        .iter()
        .map(|p| {
            let id = &p.spec.participant_id;
            shown(id, keys).unwrap_or_else(|| json!({"participant_id": id, "state": "pending", "attempts": 0}))
        })
        .collect();
    let status = if m.doc.rejected {
        "error"
    } else {
        match view.status {
            Status::Committed => "success",
            Status::Aborted => "aborted",
            Status::Compensated | Status::Failed => "failed",
            _ => "success",
        }
    };
    let mut doc = json!({
        "status": status,
        "transaction_id": m.row.id,
        "transaction_name": m.row.name,
        "selected_pattern": m.doc.selected_pattern,
        "transaction_status": view.status,
        "requirements": m.doc.requirements,
        "context": m.doc.context,
        "participants": participants,
        "policy": m.doc.policy_used.clone().or(m.doc.policy.clone()).unwrap_or_else(|| "builtin".into()),
    });
    let optional = [
        ("execution_time_ms", m.doc.execution_time_ms.map(Value::from)),
        ("error", m.doc.error.clone().map(Value::from)),
        ("reason", m.doc.reason.clone().map(Value::from)),
        ("delegate_id", m.doc.delegate_id.clone().map(Value::from)),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            doc[k] = v;
        }
    }
    // The delegate, as its own engine has it now.
    let delegate = match &view.delegate {
        Some(Delegate::Saga(saga)) => Some(("saga", saga.row.id.as_str(), saga.state.as_str())),
        Some(Delegate::Tpc(tx)) => Some(("2pc", tx.row.id.as_str(), tx.state.as_str())),
        None => None,
    };
    if let Some((kind, id, state)) = delegate {
        doc["coordinator_status"] = json!({"kind": kind, "id": id, "state": state});
    }
    // Failed, or its delegate needs attention.
    let delegate_attention = match &view.delegate {
        Some(Delegate::Saga(saga)) => saga.doc.needs_attention(saga.state),
        Some(Delegate::Tpc(tx)) => tx.doc.needs_attention(tx.state),
        None => false,
    };
    doc["needs_attention"] = json!(view.status == Status::Failed || delegate_attention);
    let ended = view.status.is_terminal().then(|| m.doc.started_at_ms.zip(m.doc.execution_time_ms).map(|(s, d)| s + d)).flatten();
    if let (Value::Object(doc), Value::Object(times)) = (&mut doc, to_json(Times::of(m.doc.started_at_ms, ended))) {
        doc.extend(times);
    }
    doc
}
