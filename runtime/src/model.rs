//! Plain data shared by the engines and the plugin host: what a call is told and what it answers.
//! Nothing here performs I/O.

use serde::{Deserialize, Serialize};

/// What the runtime tells a participant about the call it serves (the WIT `call-context`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallContext {
    pub tenant: String,
    pub transaction_id: String,
    pub step: String,
    pub action: String,
    pub attempt: u32,
    pub idempotency_key: String,
    /// A JSON object serialised as text.
    pub input: String,
    pub deadline_ms: u64,
}

/// What a step, compensation, commit or abort reports (the WIT `outcome`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Success(String),
    Failure(String),
    Retry(String),
}

/// A two-phase-commit participant's answer to prepare (the WIT `vote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "vote", content = "reason", rename_all = "snake_case")]
pub enum Vote {
    Prepared,
    Abort(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Eventual,
    Strong,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    #[default]
    High,
    Medium,
    Low,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Saga,
    TwoPhaseCommit,
}

/// One participant as a selection policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub participant_id: String,
    pub supports_two_phase_commit: bool,
    pub supports_saga: bool,
}

/// What a selection policy is asked about (the WIT `profile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub tenant: String,
    pub transaction_name: String,
    pub consistency: Consistency,
    pub availability: Availability,
    pub timeout_ms: u64,
    pub participants: Vec<Candidate>,
    pub context: String,
}

/// A selection policy's answer (the WIT `decision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Choose(Pattern),
    Reject(String),
}
