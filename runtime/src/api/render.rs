//! The documents of API.md, rendered from typed records: a saga, a 2PC transaction, a managed
//! transaction with its delegate's progress. The engines own the records; how they read as
//! JSON for callers is decided here, once.

use serde_json::{Value, json};

use crate::manager::{Delegate, Managed, ManagedView, Manager, ManagerError, Status};
use crate::model::Vote;
use crate::saga::{Saga, SagaState, StepRecord};
use crate::tpc::{ParticipantRecord, Tpc, TpcState};
use crate::txn::rfc3339;

impl Saga {
    /// The saga document of API.md.
    pub fn document(&self) -> Value {
        let status = match self.state {
            SagaState::Completed => "success",
            SagaState::Compensated => "failed",
            SagaState::Failed => "error",
            _ => "success",
        };
        let steps: Vec<Value> = self.doc.steps.iter().map(step).collect();
        let mut doc = json!({
            "status": status,
            "saga_id": self.row.id,
            "saga_name": self.row.name,
            "state": self.state,
            "context": self.doc.context,
            "steps": steps,
            "created_at": rfc3339(self.row.created_at_ms),
            "updated_at": rfc3339(self.row.updated_at_ms),
        });
        if let Some(e) = &self.doc.error {
            doc["error"] = json!(e);
        }
        doc["needs_attention"] = json!(self.doc.needs_attention(self.state));
        times(&mut doc, self.doc.started_at_ms, self.state.is_terminal().then_some(self.row.updated_at_ms));
        doc
    }
}

/// When a transaction started and ended, and how long it took, where known.
fn times(doc: &mut Value, started: Option<i64>, ended: Option<i64>) {
    if let Some(s) = started {
        doc["started_at"] = json!(rfc3339(s));
    }
    if let Some(e) = ended {
        doc["ended_at"] = json!(rfc3339(e));
    }
    if let (Some(s), Some(e)) = (started, ended) {
        doc["duration_ms"] = json!(e - s);
    }
}

/// A saga step as its document shows it.
fn step(s: &StepRecord) -> Value {
    let mut v = json!({ "name": s.spec.name, "state": s.state, "attempts": s.attempts });
    if let Some(out) = &s.output {
        v["output"] = out.clone();
    }
    if let Some(e) = &s.error {
        v["error"] = json!(e);
    }
    if let Some(p) = &s.plugin_version {
        v["plugin_version"] = json!(p);
    }
    if let Some(p) = &s.compensation_plugin_version {
        v["compensation_plugin_version"] = json!(p);
    }
    if let Some(e) = &s.spec.compensation_endpoint {
        v["compensation_endpoint"] = json!(e);
    }
    if s.compensation_attempts > 0 {
        v["compensation_attempts"] = json!(s.compensation_attempts);
    }
    if s.outcome_unknown {
        v["forward_outcome"] = json!("unknown");
    }
    if let Some(deps) = &s.spec.depends_on {
        v["depends_on"] = json!(deps);
    }
    v
}

impl Tpc {
    /// The 2PC document of API.md.
    pub fn document(&self) -> Value {
        let status = match self.state {
            TpcState::Committed => "success",
            TpcState::Aborted | TpcState::Aborting => "aborted",
            TpcState::Failed => "error",
            _ => "success",
        };
        let participants: Vec<Value> = self.doc.participants.iter().map(participant).collect();
        let mut doc = json!({
            "status": status,
            "transaction_id": self.row.id,
            "transaction_name": self.row.name,
            "state": self.state,
            "participants": participants,
            "context": self.doc.context,
            "created_at": rfc3339(self.row.created_at_ms),
            "updated_at": rfc3339(self.row.updated_at_ms),
        });
        if let Some(d) = self.doc.decision {
            doc["decision"] = json!(d);
        }
        if let Some(e) = &self.doc.error {
            doc["error"] = json!(e);
        }
        doc["needs_attention"] = json!(self.doc.needs_attention(self.state));
        times(&mut doc, self.doc.started_at_ms, self.state.is_terminal().then_some(self.row.updated_at_ms));
        doc
    }
}

/// A 2PC participant as its document shows it.
fn participant(p: &ParticipantRecord) -> Value {
    let mut v = json!({"participant_id": p.spec.participant_id, "state": p.state, "attempts": p.attempts});
    if let Some(vote) = &p.vote {
        v["vote"] = match vote {
            Vote::Prepared => json!("prepared"),
            Vote::Abort(_) => json!("abort"),
        };
        if let Vote::Abort(reason) = vote {
            v["vote_reason"] = json!(reason);
        }
    }
    if let Some(e) = &p.error {
        v["error"] = json!(e);
    }
    if let Some(pv) = &p.plugin_version {
        v["plugin_version"] = json!(pv);
    }
    v
}

impl Manager {
    /// The transaction document of API.md, with each participant's state from its delegate.
    pub async fn document(&self, tenant: &str, m: &Managed) -> Result<Value, ManagerError> {
        Ok(managed(&self.view(tenant, m).await?))
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
    times(&mut doc, m.doc.started_at_ms, ended);
    doc
}
