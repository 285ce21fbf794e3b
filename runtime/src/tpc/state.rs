//! The 2PC document and its legal transitions, with no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{Outcome, RetryPolicy, Vote};
use crate::store::NewEvent;
use crate::txn::{IllegalTransition, Transition};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TpcState {
    Init,
    Preparing,
    /// Every vote was yes and the COMMIT decision is durable; commits not yet acknowledged.
    Prepared,
    Committing,
    Committed,
    Aborting,
    Aborted,
    /// A participant never acknowledged the decision within the configured budget.
    Failed,
}

crate::txn::tx_state!(TpcState);

impl TpcState {
    pub fn as_str(self) -> &'static str {
        match self {
            TpcState::Init => "init",
            TpcState::Preparing => "preparing",
            TpcState::Prepared => "prepared",
            TpcState::Committing => "committing",
            TpcState::Committed => "committed",
            TpcState::Aborting => "aborting",
            TpcState::Aborted => "aborted",
            TpcState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<TpcState> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TpcState::Committed | TpcState::Aborted | TpcState::Failed)
    }

}

impl crate::txn::Transition for TpcState {
    fn can_become(self, to: TpcState) -> bool {
        use TpcState::*;
        matches!(
            (self, to),
            (Init, Preparing)
                | (Init, Aborted)
                | (Preparing, Prepared)
                | (Preparing, Aborting)
                | (Prepared, Committing)
                | (Prepared, Committed)
                | (Prepared, Failed)
                | (Committing, Committing)
                | (Committing, Committed)
                | (Committing, Failed)
                | (Aborting, Aborting)
                | (Aborting, Aborted)
                | (Aborting, Failed)
                // `recover` tries a failed decision again, with a fresh budget.
                | (Failed, Committing)
                | (Failed, Aborting)
        )
    }

}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Commit,
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    Pending,
    Prepared,
    VotedAbort,
    Committed,
    Aborted,
}

impl crate::txn::Transition for ParticipantState {
    fn can_become(self, to: ParticipantState) -> bool {
        use ParticipantState::*;
        matches!(
            (self, to),
            (Pending, Prepared)
                | (Pending, VotedAbort)
                // Aborted without having voted: presumed abort, or an abort during prepare.
                | (Pending, Aborted)
                | (Prepared, Committed)
                | (Prepared, Aborted)
                | (VotedAbort, Aborted)
        )
    }
}

/// A participant as the caller described it (API.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantSpec {
    pub participant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Overlaid on the transaction context as this participant's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// Deadline of each commit/abort call (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl ParticipantSpec {
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.participant_id;
        if id.trim().is_empty() || id.len() > 128 || id.contains(char::is_whitespace) || id.contains(char::is_control) {
            return Err("participant_id must be 1-128 characters without spaces".into());
        }
        crate::txn::spec::validate_target(&format!("participant {id:?}"), &self.plugin, &self.endpoint)?;
        crate::txn::spec::check_size(&format!("participant {id:?}"), self)?;
        if self.timeout_ms.is_some_and(|t| t == 0 || t > crate::txn::spec::MAX_CALL_TIMEOUT_MS) {
            return Err(format!("participant {id:?}: timeout_ms is out of range"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub spec: ParticipantSpec,
    pub state: ParticipantState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<Vote>,
    /// Tries of the decision (commit or abort) so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
}

impl ParticipantRecord {
    pub fn new(spec: ParticipantSpec) -> Self {
        ParticipantRecord { spec, state: ParticipantState::Pending, vote: None, attempts: 0, error: None, plugin_version: None }
    }

    /// Whether this participant still has to acknowledge `decision`.
    pub fn awaits(&self, decision: Decision) -> bool {
        match decision {
            Decision::Commit => self.state != ParticipantState::Committed,
            Decision::Abort => self.state != ParticipantState::Aborted,
        }
    }
}

pub const DEFAULT_PREPARE_TIMEOUT_MS: u64 = 30_000;
pub const MAX_PARTICIPANTS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TpcDoc {
    pub context: Map<String, Value>,
    pub participants: Vec<ParticipantRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub prepare_timeout_ms: u64,
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// Tries of the decision per participant before the transaction is `failed` with an
    /// alert; `None`: retry until acknowledged (the transaction stays committing/aborting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_max_attempts: Option<u32>,
    /// When prepare began (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// How often another coordinator took it over after its lease expired.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recoveries: u32,
    /// The W3C `traceparent` of the request that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl crate::txn::Recovers for TpcDoc {
    fn count_recovery(&mut self) -> u32 {
        self.recoveries += 1;
        self.recoveries
    }
}

impl TpcDoc {
    /// Whether an operator should look at it: it `failed`, a decision is still being retried
    /// after `ATTENTION_ATTEMPTS` tries, or its leases keep expiring.
    pub fn needs_attention(&self, state: TpcState) -> bool {
        use crate::txn::{ATTENTION_ATTEMPTS, ATTENTION_RECOVERIES};
        state == TpcState::Failed
            || (matches!(state, TpcState::Committing | TpcState::Aborting) && self.participants.iter().any(|p| p.attempts >= ATTENTION_ATTEMPTS))
            || self.recoveries >= ATTENTION_RECOVERIES
    }

    /// The decision the votes imply: commit only if every participant explicitly prepared.
    pub fn decide(votes: &[Vote]) -> Decision {
        if !votes.is_empty() && votes.iter().all(|v| *v == Vote::Prepared) { Decision::Commit } else { Decision::Abort }
    }

    pub fn input(&self, i: usize) -> Value {
        let mut input = self.context.clone();
        if let Some(p) = &self.participants[i].spec.parameters {
            input.extend(p.clone());
        }
        Value::Object(input)
    }

    /// Phase one's end, pure: records every participant's vote and the decision they imply
    /// (abort when `abort_requested`), moves `state` on, and returns the events to write —
    /// before anyone hears the decision.
    pub fn apply_votes(&mut self, state: &mut TpcState, votes: Vec<Vote>, abort_requested: bool) -> Result<Vec<NewEvent>, IllegalTransition> {
        let mut decision = TpcDoc::decide(&votes);
        let mut reason = None;
        if abort_requested && decision == Decision::Commit {
            decision = Decision::Abort;
            reason = Some("aborted by request during prepare".to_string());
        }
        let mut events = Vec::new();
        for (p, vote) in self.participants.iter_mut().zip(votes) {
            p.state.become_(if vote == Vote::Prepared { ParticipantState::Prepared } else { ParticipantState::VotedAbort })?;
            let detail = match &vote {
                Vote::Prepared => serde_json::json!({"vote": "prepared"}),
                Vote::Abort(r) => {
                    reason.get_or_insert_with(|| format!("participant {} voted abort: {r}", p.spec.participant_id));
                    serde_json::json!({"vote": "abort", "reason": r})
                }
            };
            events.push(NewEvent::new("vote", Some(&p.spec.participant_id), detail));
            p.vote = Some(vote);
        }
        state.become_(match decision {
            Decision::Commit => TpcState::Prepared,
            Decision::Abort => TpcState::Aborting,
        })?;
        self.decision = Some(decision);
        self.error = reason.clone();
        events.push(NewEvent::new("decision", None, serde_json::json!({"decision": decision, "reason": reason})));
        Ok(events)
    }

    /// The participants still to hear `decision`.
    pub fn awaiting(&self, decision: Decision) -> Vec<usize> {
        (0..self.participants.len()).filter(|&i| self.participants[i].awaits(decision)).collect()
    }

    /// A decision round's end, pure: records the answers of participants `asked` (in order),
    /// moves `state` on — ended when all acknowledged, `failed` with an alert when one ran out
    /// of `decision_max_attempts`, else another round — and returns the events to write.
    pub fn apply_acks(
        &mut self,
        state: &mut TpcState,
        decision: Decision,
        asked: &[usize],
        answers: Vec<Outcome>,
    ) -> Result<Vec<NewEvent>, IllegalTransition> {
        let mut events = Vec::new();
        let mut exhausted = Vec::new();
        for (&i, outcome) in asked.iter().zip(answers) {
            let p = &mut self.participants[i];
            p.attempts += 1;
            let pid = p.spec.participant_id.clone();
            match outcome {
                Outcome::Success(_) => {
                    p.state.become_(match decision {
                        Decision::Commit => ParticipantState::Committed,
                        Decision::Abort => ParticipantState::Aborted,
                    })?;
                    p.error = None;
                    events.push(NewEvent::new("acknowledged", Some(&pid), serde_json::json!({"decision": decision, "attempt": p.attempts})));
                }
                Outcome::Failure(reason) | Outcome::Retry(reason) => {
                    let detail = serde_json::json!({"decision": decision, "attempt": p.attempts, "reason": reason});
                    events.push(NewEvent::new("decision_retry", Some(&pid), detail));
                    p.error = Some(reason);
                    if self.decision_max_attempts.is_some_and(|max| p.attempts >= max) {
                        exhausted.push(pid);
                    }
                }
            }
        }
        let next = if self.participants.iter().all(|p| !p.awaits(decision)) {
            match decision {
                Decision::Commit => TpcState::Committed,
                Decision::Abort => TpcState::Aborted,
            }
        } else if !exhausted.is_empty() {
            let what = if decision == Decision::Commit { "commit" } else { "abort" };
            self.error = Some(format!(
                "participant(s) {} did not acknowledge {what}; the decision stands and an operator must act (recover retries)",
                exhausted.join(", ")
            ));
            events.push(NewEvent::new("alert", None, serde_json::json!({"unacknowledged": exhausted, "decision": decision})));
            TpcState::Failed
        } else {
            match decision {
                Decision::Commit => TpcState::Committing,
                Decision::Abort => TpcState::Aborting,
            }
        };
        state.become_(next)?;
        if next.is_terminal() {
            events.push(NewEvent::new(&format!("transaction_{}", next.as_str()), None, serde_json::json!({})));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use crate::txn::Transition;
    use super::*;

    fn doc_of(n: usize, max: Option<u32>) -> TpcDoc {
        let participants = (0..n)
            .map(|i| ParticipantRecord::new(serde_json::from_value(serde_json::json!({"participant_id": format!("p{i}"), "plugin": "ledger"})).unwrap()))
            .collect();
        TpcDoc {
            context: Map::new(),
            participants,
            prepare_timeout_ms: DEFAULT_PREPARE_TIMEOUT_MS,
            decision: None,
            error: None,
            retry_policy: RetryPolicy::default(),
            decision_max_attempts: max,
            started_at_ms: None,
            recoveries: 0,
            traceparent: None,
        }
    }

    fn kinds(events: &[NewEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn votes_decide_commit_only_when_all_prepared_and_nobody_asked_to_abort() {
        let mut d = doc_of(2, None);
        let mut state = TpcState::Preparing;
        let events = d.apply_votes(&mut state, vec![Vote::Prepared, Vote::Prepared], false).unwrap();
        assert_eq!((state, d.decision), (TpcState::Prepared, Some(Decision::Commit)));
        assert_eq!(kinds(&events), ["vote", "vote", "decision"]);

        let mut d = doc_of(2, None);
        let mut state = TpcState::Preparing;
        d.apply_votes(&mut state, vec![Vote::Prepared, Vote::Abort("no funds".into())], false).unwrap();
        assert_eq!((state, d.decision), (TpcState::Aborting, Some(Decision::Abort)));
        assert!(d.error.as_deref().unwrap().contains("p1 voted abort: no funds"));
        assert_eq!(d.participants[1].state, ParticipantState::VotedAbort);

        let mut d = doc_of(1, None);
        let mut state = TpcState::Preparing;
        d.apply_votes(&mut state, vec![Vote::Prepared], true).unwrap();
        assert_eq!((state, d.decision), (TpcState::Aborting, Some(Decision::Abort)), "an abort request wins over unanimous votes");
        let mut done = TpcState::Committed;
        assert!(doc_of(1, None).apply_votes(&mut done, vec![Vote::Prepared], false).is_err(), "votes after the end are refused");
    }

    #[test]
    fn acknowledgements_end_the_transaction_or_ask_again_or_fail_it() {
        let mut d = doc_of(2, Some(2));
        let mut state = TpcState::Preparing;
        d.apply_votes(&mut state, vec![Vote::Prepared, Vote::Prepared], false).unwrap();
        let asked = d.awaiting(Decision::Commit);
        let events = d.apply_acks(&mut state, Decision::Commit, &asked, vec![Outcome::Success("{}".into()), Outcome::Retry("down".into())]).unwrap();
        assert_eq!(state, TpcState::Committing, "one acknowledged, one to ask again");
        assert_eq!(kinds(&events), ["acknowledged", "decision_retry"]);
        assert_eq!(d.awaiting(Decision::Commit), vec![1]);
        let events = d.apply_acks(&mut state, Decision::Commit, &[1], vec![Outcome::Retry("down".into())]).unwrap();
        assert_eq!(state, TpcState::Failed, "decision_max_attempts 2 spent");
        assert_eq!(kinds(&events), ["decision_retry", "alert", "transaction_failed"]);
        assert!(d.error.as_deref().unwrap().contains("p1 did not acknowledge commit"));

        let mut d = doc_of(1, None);
        let mut state = TpcState::Aborting;
        let events = d.apply_acks(&mut state, Decision::Abort, &[0], vec![Outcome::Success("{}".into())]).unwrap();
        assert_eq!((state, d.participants[0].state), (TpcState::Aborted, ParticipantState::Aborted));
        assert_eq!(kinds(&events), ["acknowledged", "transaction_aborted"]);
    }

    #[test]
    fn tpc_states_move_only_as_the_table_says() {
        use TpcState::*;
        crate::txn::transition::assert_table(
            &[Init, Preparing, Prepared, Committing, Committed, Aborting, Aborted, Failed],
            &[
                (Init, Preparing),
                (Init, Aborted),
                (Preparing, Prepared),
                (Preparing, Aborting),
                (Prepared, Committing),
                (Prepared, Committed),
                (Prepared, Failed),
                (Committing, Committing),
                (Committing, Committed),
                (Committing, Failed),
                (Aborting, Aborting),
                (Aborting, Aborted),
                (Aborting, Failed),
                (Failed, Committing),
                (Failed, Aborting),
            ],
        );
    }

    #[test]
    fn only_unanimous_prepared_votes_commit() {
        assert_eq!(TpcDoc::decide(&[Vote::Prepared, Vote::Prepared]), Decision::Commit);
        assert_eq!(TpcDoc::decide(&[Vote::Prepared, Vote::Abort("no".into())]), Decision::Abort);
        assert_eq!(TpcDoc::decide(&[]), Decision::Abort, "nobody to commit: presumed abort");
    }

    #[test]
    fn participant_states_move_only_as_the_table_says() {
        use ParticipantState::*;
        crate::txn::transition::assert_table(
            &[Pending, Prepared, VotedAbort, Committed, Aborted],
            &[(Pending, Prepared), (Pending, VotedAbort), (Pending, Aborted), (Prepared, Committed), (Prepared, Aborted), (VotedAbort, Aborted)],
        );
    }

    #[test]
    fn a_decision_once_taken_never_changes() {
        assert!(!TpcState::Committing.can_become(TpcState::Aborting));
        assert!(!TpcState::Prepared.can_become(TpcState::Aborting));
        assert!(!TpcState::Aborting.can_become(TpcState::Committing));
        assert!(!TpcState::Committed.can_become(TpcState::Aborted));
        assert!(TpcState::Preparing.can_become(TpcState::Aborting));
    }

    #[test]
    fn attention_is_for_failures_unacknowledged_decisions_and_repeated_takeovers() {
        let mut d = doc_of(2, None);
        assert!(d.needs_attention(TpcState::Failed));
        assert!(!d.needs_attention(TpcState::Committing));
        d.participants[1].attempts = crate::txn::ATTENTION_ATTEMPTS;
        assert!(d.needs_attention(TpcState::Committing) && d.needs_attention(TpcState::Aborting));
        assert!(!d.needs_attention(TpcState::Committed));
        let mut d = doc_of(1, None);
        d.recoveries = crate::txn::ATTENTION_RECOVERIES;
        assert!(d.needs_attention(TpcState::Preparing));
    }
}
