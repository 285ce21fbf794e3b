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
    /// The W3C `traceparent` of the request that created the transaction, if it had one:
    /// HTTP participants are sent a child of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Eventual,
    Strong,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
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

/// A durable change of a transaction, announced after it is committed (progress output,
/// waiting for an end state, alerts, metrics, the console's charts, tests). Every observer
/// receives every announcement, so a copy is one reference count, not the change itself.
#[derive(Debug, Clone)]
pub struct Progress(std::sync::Arc<Change>);

impl Progress {
    pub fn new(change: Change) -> Self {
        Progress(std::sync::Arc::new(change))
    }
}

impl std::ops::Deref for Progress {
    type Target = Change;

    fn deref(&self) -> &Change {
        &self.0
    }
}

/// What a `Progress` announces.
#[derive(Debug, Clone)]
pub struct Change {
    pub tenant: String,
    pub tx_id: String,
    /// The transaction's state after the change.
    pub state: &'static str,
    /// Whether that state is an end state.
    pub terminal: bool,
    /// When the transaction was created (ms since the epoch).
    pub created_at_ms: i64,
    /// The transaction's revision after the change.
    pub rev: i64,
    pub event: crate::store::NewEvent,
}

/// How a transaction retries its steps and participants (API.md "Retries").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    Exponential,
    Fixed,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, backoff: Backoff::Exponential, base_delay_ms: 100, max_delay_ms: 30_000 }
    }
}

impl RetryPolicy {
    /// The wait before try `attempt + 1` after try `attempt` (1-based) failed: the base
    /// delay, doubled per try when exponential, capped, then jittered to 50-100 % of that so
    /// many transactions failing together do not retry in lockstep. `unit` ∈ [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> std::time::Duration {
        let exp = match self.backoff {
            Backoff::Exponential => attempt.saturating_sub(1).min(32),
            Backoff::Fixed => 0,
        };
        let raw = self.base_delay_ms.saturating_mul(1u64 << exp).min(self.max_delay_ms);
        let jittered = raw as f64 * (0.5 + 0.5 * unit.clamp(0.0, 1.0));
        std::time::Duration::from_millis(jittered as u64)
    }

    /// Refuses values that would make retries meaningless or unbounded.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err("retry_policy.max_attempts must be between 1 and 100".into());
        }
        if self.max_delay_ms > 3_600_000 || self.base_delay_ms > self.max_delay_ms {
            return Err("retry_policy delays must satisfy base_delay_ms <= max_delay_ms <= 3600000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exponential_backoff_doubles_and_caps_with_jitter_within_half() {
        let p = RetryPolicy { max_delay_ms: 1000, ..RetryPolicy::default() };
        assert_eq!(p.delay(1, 0.999_999), Duration::from_millis(99));
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(30, 0.0), Duration::from_millis(500), "capped at max_delay_ms before jitter");
        let fixed = RetryPolicy { backoff: Backoff::Fixed, ..RetryPolicy::default() };
        assert_eq!(fixed.delay(5, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn retry_policy_bounds_are_checked() {
        assert!(RetryPolicy::default().validate().is_ok());
        assert!(RetryPolicy { max_attempts: 0, ..RetryPolicy::default() }.validate().is_err());
        assert!(RetryPolicy { base_delay_ms: 5, max_delay_ms: 1, ..RetryPolicy::default() }.validate().is_err());
    }
}
