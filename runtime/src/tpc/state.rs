//! The 2PC document and its legal transitions, with no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{RetryPolicy, Vote};

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

impl crate::txn::journal::TxState for TpcState {
    fn as_str(self) -> &'static str {
        TpcState::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        TpcState::parse(s)
    }
    fn is_terminal(self) -> bool {
        TpcState::is_terminal(self)
    }
}

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

/// A participant as the caller described it (API.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl TpcDoc {
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
}

#[cfg(test)]
mod tests {
    use crate::txn::Transition;
    use super::*;

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
    fn a_decision_once_taken_never_changes() {
        assert!(!TpcState::Committing.can_become(TpcState::Aborting));
        assert!(!TpcState::Prepared.can_become(TpcState::Aborting));
        assert!(!TpcState::Aborting.can_become(TpcState::Committing));
        assert!(!TpcState::Committed.can_become(TpcState::Aborted));
        assert!(TpcState::Preparing.can_become(TpcState::Aborting));
    }
}
