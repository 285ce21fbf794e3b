//! The saga's document and its legal transitions, with no I/O: what the engine persists and
//! the pure decisions it takes (which step next, what input a step sees, what an answer means).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{Outcome, RetryPolicy};
use crate::txn::Transition;
use crate::txn::spec::{MAX_CALL_TIMEOUT_MS, check_size, validate_target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Pending,
    Running,
    Completed,
    Compensating,
    Compensated,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Completed,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
    /// Its last attempt ended without a clear answer (a timeout, a lost connection, a trap, or
    /// the budget spent on `retry` answers): it may have done its work, so it is compensated
    /// like a completed step, its compensation told that the outcome is unknown.
    Uncertain,
}

crate::txn::tx_state!(SagaState);

impl SagaState {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Pending => "pending",
            SagaState::Running => "running",
            SagaState::Completed => "completed",
            SagaState::Compensating => "compensating",
            SagaState::Compensated => "compensated",
            SagaState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<SagaState> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, SagaState::Completed | SagaState::Compensated | SagaState::Failed)
    }

}

impl Transition for SagaState {
    /// The transitions DESIGN.md allows, written once.
    fn can_become(self, to: SagaState) -> bool {
        use SagaState::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Pending, Compensated)
                | (Running, Completed)
                | (Running, Compensating)
                | (Compensating, Compensated)
                | (Compensating, Failed)
                | (Failed, Compensating)
        )
    }

}

impl Transition for StepState {
    fn can_become(self, to: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Running, Running)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, Uncertain)
                | (Completed, Compensating)
                | (Uncertain, Compensating)
                | (Compensating, Compensating)
                | (Compensating, Compensated)
                | (Compensating, CompensationFailed)
                | (CompensationFailed, Compensating)
        )
    }

}

/// A step as the caller described it (API.md "Step").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_parameters: Option<Map<String, Value>>,
    /// The plugin that undoes this step, when it is not the step's own (at most one of this
    /// and `compensation_endpoint`); pinned when the saga starts, like the step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_plugin: Option<String>,
    /// The HTTP participant that undoes this step, when it is not the step's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    /// The steps this one follows (by name). When no step of a saga has any, each step
    /// follows the one before it; once one has, the steps form a DAG and a step without
    /// `depends_on` starts at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
}

pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 30_000;
/// Steps of a DAG saga running at once unless the saga says otherwise (`max_parallel`).
pub const DEFAULT_MAX_PARALLEL: usize = 8;
pub const MAX_STEPS: usize = 100;
pub const MAX_RETRY_COUNT: u32 = 100;

impl StepSpec {
    /// Checks what can be checked without the store; the plugin's existence is checked by
    /// the engine.
    pub fn validate(&self) -> Result<(), String> {
        crate::text::check("step name", &self.name, 128)?;
        check_size(&format!("step {:?}", self.name), self)?;
        validate_target(&format!("step {:?}", self.name), &self.plugin, &self.endpoint)?;
        if self.compensation_plugin.is_some() || self.compensation_endpoint.is_some() {
            let what = format!("step {:?}'s compensation", self.name);
            validate_target(&what, &self.compensation_plugin, &self.compensation_endpoint)?;
        }
        if self.timeout_ms.is_some_and(|t| t == 0 || t > MAX_CALL_TIMEOUT_MS) {
            return Err(format!("step {:?}: timeout_ms must be between 1 and {MAX_CALL_TIMEOUT_MS}", self.name));
        }
        if self.retry_count.is_some_and(|r| r > MAX_RETRY_COUNT) {
            return Err(format!("step {:?}: retry_count must be at most {MAX_RETRY_COUNT}", self.name));
        }
        for (what, name) in [("action", &self.action), ("compensation", &self.compensation), ("output_key", &self.output_key)] {
            if let Some(n) = name
                && (n.is_empty() || n.len() > 128 || n.contains('/') || n.contains(char::is_whitespace) || n.contains(char::is_control))
            {
                return Err(format!("step {:?}: {what} must be 1-128 characters without '/' or spaces", self.name));
            }
        }
        Ok(())
    }

    pub fn action(&self) -> &str {
        self.action.as_deref().unwrap_or(&self.name)
    }

    pub fn compensation(&self) -> String {
        self.compensation.clone().unwrap_or_else(|| format!("compensate_{}", self.action()))
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_STEP_TIMEOUT_MS))
    }

    /// Tries the step gets in all: its own `retry_count` + 1, or the saga's policy.
    pub fn attempts_allowed(&self, policy: &RetryPolicy) -> u32 {
        self.retry_count.map_or(policy.max_attempts, |r| r + 1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub spec: StepSpec,
    pub state: StepState,
    pub attempts: u32,
    pub compensation_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `name@version`, pinned when the saga starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    /// `name@version` of `compensation_plugin`, pinned when the saga starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_plugin_version: Option<String>,
    /// The forward call's outcome was not known when the step was given up (it was
    /// `Uncertain`); its compensation is told so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outcome_unknown: bool,
}

impl StepRecord {
    pub fn new(spec: StepSpec) -> Self {
        StepRecord {
            spec,
            state: StepState::Pending,
            attempts: 0,
            compensation_attempts: 0,
            output: None,
            error: None,
            plugin_version: None,
            compensation_plugin_version: None,
            outcome_unknown: false,
        }
    }
}

/// Everything the engine persists about a saga beyond the row's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDoc {
    pub context: Map<String, Value>,
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// While `failed`: why it was compensating (what `error` said before a compensation
    /// failed), so a resume that undoes everything ends with that reason again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensating_because: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// When execution started (ms since epoch), for the saga-wide timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// Steps running at once, at most (DAG sagas; default `DEFAULT_MAX_PARALLEL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<usize>,
    /// A DAG saga's context as it started, before any output was merged into `context`:
    /// what its steps' inputs are built from, so they do not depend on which branch ended first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_context: Option<Map<String, Value>>,
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

/// Checks that `steps` form a DAG: every `depends_on` names another step of the saga, and no
/// step depends on itself, directly or through others. The error names what is wrong.
pub fn check_dag(steps: &[&StepSpec]) -> Result<(), String> {
    let index: std::collections::HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for d in s.depends_on.iter().flatten() {
            match index.get(d.as_str()) {
                None => return Err(format!("step {:?} depends on {d:?}, which is not a step of this saga", s.name)),
                Some(&j) if j == i => return Err(format!("step {:?} depends on itself", s.name)),
                Some(&j) => edges[i].push(j),
            }
        }
    }
    // Depth-first search, on a stack of its own (a chain of dependencies as long as a body
    // allows must not exhaust the thread's): a node met again while on the path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; steps.len()];
    for root in 0..steps.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // The path from `root`, each node with the next of its edges to follow.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::OnPath;
        while let Some((i, next)) = path.last_mut() {
            let Some(&j) = edges[*i].get(*next) else {
                marks[*i] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match marks[j] {
                Mark::OnPath => {
                    let start = path.iter().position(|&(p, _)| p == j).expect("on the path");
                    let mut cycle: Vec<usize> = path[start..].iter().map(|&(p, _)| p).collect();
                    cycle.push(j);
                    let names: Vec<&str> = cycle.iter().rev().map(|&k| steps[k].name.as_str()).collect();
                    return Err(format!("the steps' dependencies form a cycle: {}", names.join(" → ")));
                }
                Mark::New => {
                    marks[j] = Mark::OnPath;
                    path.push((j, 0));
                }
                Mark::Done => {}
            }
        }
    }
    Ok(())
}


impl crate::txn::Recovers for SagaDoc {
    fn count_recovery(&mut self) -> u32 {
        self.recoveries += 1;
        self.recoveries
    }
}

impl SagaDoc {
    /// Whether an operator should look at it: it `failed`, a compensation is still being
    /// retried after `ATTENTION_ATTEMPTS` tries, or its leases keep expiring.
    pub fn needs_attention(&self, state: SagaState) -> bool {
        use crate::txn::{ATTENTION_ATTEMPTS, ATTENTION_RECOVERIES};
        state == SagaState::Failed
            || (state == SagaState::Compensating && self.steps.iter().any(|s| s.compensation_attempts >= ATTENTION_ATTEMPTS))
            || self.recoveries >= ATTENTION_RECOVERIES
    }

    /// Whether any step declares `depends_on` (the steps form a DAG rather than a sequence).
    pub fn is_dag(&self) -> bool {
        self.steps.iter().any(|s| s.spec.depends_on.is_some())
    }

    /// The steps step `i` follows directly: the one before it in a sequence, its `depends_on`
    /// in a DAG.
    pub fn deps(&self, i: usize) -> Vec<usize> {
        if !self.is_dag() {
            return if i == 0 { Vec::new() } else { vec![i - 1] };
        }
        let names = self.steps[i].spec.depends_on.iter().flatten();
        names.filter_map(|n| self.steps.iter().position(|s| &s.spec.name == n)).collect()
    }

    /// Everything step `i` follows, directly or through others, in ascending order.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = self.deps(i);
        while let Some(j) = todo.pop() {
            if seen.insert(j) {
                todo.extend(self.deps(j));
            }
        }
        seen.into_iter().collect()
    }

    pub fn max_parallel(&self) -> usize {
        self.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL).max(1)
    }

    /// Steps to start now, in order, at most `room`: not yet completed, not `busy` (called or
    /// waiting to retry), every step they follow completed. A step found running but not
    /// busy lost its coordinator mid-call and is started again.
    pub fn startable(&self, busy: &std::collections::HashSet<usize>, room: usize) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|i| !busy.contains(i) && matches!(self.steps[*i].state, StepState::Pending | StepState::Running))
            .filter(|&i| self.deps(i).iter().all(|&d| self.steps[d].state == StepState::Completed))
            .take(room)
            .collect()
    }

    /// Whether a step failed (or was given up) in the forward phase: nothing new starts then.
    pub fn has_failed_step(&self) -> bool {
        self.steps.iter().any(|s| matches!(s.state, StepState::Failed | StepState::Uncertain))
    }

    /// Steps to compensate now, last first, at most `room`: done or possibly done (completed,
    /// uncertain, or with a compensation under way), not `busy`, and every step that follows
    /// them undone already (compensated) or never done (pending, failed). A step behind a
    /// compensation that failed stays as it is.
    pub fn compensable(&self, busy: &std::collections::HashSet<usize>, room: usize) -> Vec<usize> {
        let undone = |j: usize| matches!(self.steps[j].state, StepState::Compensated | StepState::Pending | StepState::Failed);
        (0..self.steps.len())
            .rev()
            .filter(|i| !busy.contains(i) && matches!(self.steps[*i].state, StepState::Completed | StepState::Uncertain | StepState::Compensating))
            .filter(|&i| (0..self.steps.len()).filter(|&j| self.deps(j).contains(&i)).all(undone))
            .take(room)
            .collect()
    }


    /// Step input: the context (holding earlier outputs under their `output_key`) overlaid
    /// by the step's own parameters. In a DAG, the context as it started overlaid with the
    /// outputs of the steps this one follows, directly or not, in step order.
    pub fn execute_input(&self, i: usize) -> Value {
        let mut input = match (&self.initial_context, self.is_dag()) {
            (Some(initial), true) => {
                let mut input = initial.clone();
                for j in self.ancestors(i) {
                    if let (Some(key), Some(output)) = (&self.steps[j].spec.output_key, &self.steps[j].output) {
                        input.insert(key.clone(), output.clone());
                    }
                }
                input
            }
            _ => self.context.clone(),
        };
        if let Some(params) = &self.steps[i].spec.parameters {
            input.extend(params.clone());
        }
        Value::Object(input)
    }

    /// Compensation input: the execute input, overlaid by `compensation_parameters`, with the
    /// step's own output under `step_output` and whether the forward call's outcome is known
    /// under `forward_outcome` (`success`, or `unknown`: the step may never have happened, and
    /// its compensation must then do nothing and succeed — a null compensation).
    pub fn compensate_input(&self, i: usize) -> Value {
        let Value::Object(mut input) = self.execute_input(i) else { unreachable!() };
        let step = &self.steps[i];
        if let Some(params) = &step.spec.compensation_parameters {
            input.extend(params.clone());
        }
        input.insert("step_output".into(), step.output.clone().unwrap_or(Value::Null));
        input.insert("forward_outcome".into(), Value::from(if step.outcome_unknown { "unknown" } else { "success" }));
        Value::Object(input)
    }
}

/// What a forward answer means once the retry budget is taken into account.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Completed(Value),
    RetryLater(String),
    /// A definite no (`failure`, 409/422): nothing to undo.
    Failed(String),
    /// Given up without a clear answer: the step may have done its work.
    Uncertain(String),
}

/// Judges an answer of try `attempt` out of `allowed`. A success whose payload is not JSON
/// is a broken plugin or participant, not a transient fault: the step is not retried, but it
/// said it succeeded, so it may have done its work and is undone as uncertain.
pub fn judge(outcome: Outcome, attempt: u32, allowed: u32) -> Verdict {
    match outcome {
        Outcome::Success(payload) => match serde_json::from_str::<Value>(&payload) {
            Ok(v) => Verdict::Completed(v),
            Err(e) => Verdict::Uncertain(format!("the output is not valid JSON ({e}): {}", preview(&payload))),
        },
        Outcome::Failure(reason) => Verdict::Failed(reason),
        Outcome::Retry(reason) if attempt < allowed => Verdict::RetryLater(reason),
        Outcome::Retry(reason) => Verdict::Uncertain(format!("gave up after {attempt} attempts: {reason}")),
    }
}

/// What a compensation's answer means once its retry budget is taken into account.
#[derive(Debug, Clone, PartialEq)]
pub enum Undo {
    /// Undone; what the compensation reported (a payload that is not JSON is kept as the
    /// string it is: it goes to the history only).
    Compensated(Value),
    RetryLater(String),
    /// The budget is spent: an operator must act.
    Failed(String),
}

/// Judges a compensation's answer of try `attempt` out of `allowed`. A compensation must
/// succeed in the end, so a definite failure is retried like a transient one.
pub fn judge_undo(outcome: Outcome, attempt: u32, allowed: u32) -> Undo {
    match outcome {
        Outcome::Success(payload) => Undo::Compensated(serde_json::from_str::<Value>(&payload).unwrap_or(Value::String(payload))),
        Outcome::Failure(reason) | Outcome::Retry(reason) if attempt < allowed => Undo::RetryLater(reason),
        Outcome::Failure(reason) | Outcome::Retry(reason) => Undo::Failed(reason),
    }
}

fn preview(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_states_move_only_as_the_table_says() {
        use SagaState::*;
        crate::txn::transition::assert_table(
            &[Pending, Running, Completed, Compensating, Compensated, Failed],
            &[
                (Pending, Running),
                (Pending, Compensated),
                (Running, Completed),
                (Running, Compensating),
                (Compensating, Compensated),
                (Compensating, Failed),
                (Failed, Compensating),
            ],
        );
    }

    #[test]
    fn step_states_move_only_as_the_table_says() {
        use StepState::*;
        crate::txn::transition::assert_table(
            &[Pending, Running, Completed, Failed, Compensating, Compensated, CompensationFailed, Uncertain],
            &[
                (Pending, Running),
                (Running, Running),
                (Running, Completed),
                (Running, Failed),
                (Running, Uncertain),
                (Completed, Compensating),
                (Uncertain, Compensating),
                (Compensating, Compensating),
                (Compensating, Compensated),
                (Compensating, CompensationFailed),
                (CompensationFailed, Compensating),
            ],
        );
    }
    use serde_json::json;

    fn spec(name: &str) -> StepSpec {
        serde_json::from_value(json!({"name": name, "plugin": "p"})).unwrap()
    }

    fn doc(states: &[StepState]) -> SagaDoc {
        SagaDoc {
            context: Map::new(),
            steps: states
                .iter()
                .enumerate()
                .map(|(i, s)| StepRecord { state: *s, ..StepRecord::new(spec(&format!("s{i}"))) })
                .collect(),
            error: None,
            compensating_because: None,
            timeout_ms: None,
            retry_policy: RetryPolicy::default(),
            started_at_ms: None,
            recoveries: 0,
            traceparent: None,
            max_parallel: None,
            initial_context: None,
        }
    }

    /// `doc`, its steps following `deps` (step i depends on the steps named by index).
    fn dag(states: &[StepState], deps: &[&[usize]]) -> SagaDoc {
        let mut d = doc(states);
        for (i, ds) in deps.iter().enumerate() {
            d.steps[i].spec.depends_on = Some(ds.iter().map(|j| format!("s{j}")).collect());
        }
        d
    }

    fn none() -> std::collections::HashSet<usize> {
        Default::default()
    }

    #[test]
    fn a_sequence_runs_the_first_step_that_is_not_completed() {
        use StepState::*;
        assert_eq!(doc(&[Completed, Running, Pending]).startable(&none(), 8), vec![1]);
        assert_eq!(doc(&[Completed, Pending, Pending]).startable(&none(), 8), vec![1], "one at a time");
        assert!(doc(&[Completed, Running]).startable(&[1].into(), 8).is_empty(), "a busy step is not started twice");
        assert!(doc(&[Completed, Completed]).startable(&none(), 8).is_empty());
    }

    #[test]
    fn a_sequence_compensates_completed_steps_in_reverse_order() {
        use StepState::*;
        let mut d = doc(&[Completed, Completed, Failed]);
        assert_eq!(d.compensable(&none(), 8), vec![1]);
        d.steps[1].state = Compensated;
        assert_eq!(d.compensable(&none(), 8), vec![0]);
        d.steps[0].state = Compensated;
        assert!(d.compensable(&none(), 8).is_empty());
        let blocked = doc(&[Completed, CompensationFailed]);
        assert!(blocked.compensable(&none(), 8).is_empty(), "nothing is undone behind a compensation that failed");
    }

    #[test]
    fn a_dag_starts_every_step_whose_dependencies_completed() {
        use StepState::*;
        // s0 → (s1, s2, s3) → s4
        let fan = |states: &[StepState]| dag(states, &[&[], &[0], &[0], &[0], &[1, 2, 3]]);
        assert_eq!(fan(&[Pending; 5]).startable(&none(), 8), vec![0]);
        assert_eq!(fan(&[Completed, Pending, Pending, Pending, Pending]).startable(&none(), 8), vec![1, 2, 3]);
        assert_eq!(fan(&[Completed, Pending, Pending, Pending, Pending]).startable(&none(), 2), vec![1, 2], "max_parallel");
        assert!(fan(&[Completed, Completed, Running, Completed, Pending]).startable(&[2].into(), 8).is_empty(), "s4 waits for s2");
        assert_eq!(fan(&[Completed, Completed, Completed, Completed, Pending]).startable(&none(), 8), vec![4]);
    }

    #[test]
    fn a_dag_undoes_a_step_only_after_every_step_that_follows_it() {
        use StepState::*;
        // s0 → (s1, s2) → s3; s1 and s2 done, s3 failed: s1 and s2 together, then s0.
        let mut d = dag(&[Completed, Completed, Uncertain, Failed], &[&[], &[0], &[0], &[1, 2]]);
        assert_eq!(d.compensable(&none(), 8), vec![2, 1]);
        d.steps[2].state = Compensated;
        assert_eq!(d.compensable(&[1].into(), 8), Vec::<usize>::new(), "s0 waits for s1's compensation");
        d.steps[1].state = Compensated;
        assert_eq!(d.compensable(&none(), 8), vec![0]);
    }

    #[test]
    fn a_dag_step_sees_the_outputs_of_what_it_follows_only() {
        let mut d = dag(&[StepState::Completed, StepState::Completed, StepState::Completed, StepState::Pending], &[&[], &[0], &[0], &[1]]);
        d.initial_context = Some(json!({"order": 7}).as_object().cloned().unwrap());
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            d.steps[i].spec.output_key = Some(key.to_string());
            d.steps[i].output = Some(json!(i));
            d.context.insert(key.to_string(), json!(i));
        }
        assert_eq!(d.ancestors(3), vec![0, 1]);
        assert_eq!(d.execute_input(3), json!({"order": 7, "a": 0, "b": 1}), "not c: s3 does not follow s2");
    }

    #[test]
    fn dependencies_must_name_steps_and_form_no_cycle() {
        let with = |name: &str, deps: &[&str]| {
            let mut s = spec(name);
            s.depends_on = Some(deps.iter().map(|d| d.to_string()).collect());
            s
        };
        let ok = [with("a", &[]), with("b", &["a"]), with("c", &["a", "b"])];
        assert!(check_dag(&ok.iter().collect::<Vec<_>>()).is_ok());
        let unknown = [with("a", &["ghost"])];
        assert!(check_dag(&unknown.iter().collect::<Vec<_>>()).unwrap_err().contains("\"ghost\""));
        let selfish = [with("a", &["a"])];
        assert!(check_dag(&selfish.iter().collect::<Vec<_>>()).unwrap_err().contains("depends on itself"));
        let cycle = [with("a", &["c"]), with("b", &["a"]), with("c", &["b"])];
        let err = check_dag(&cycle.iter().collect::<Vec<_>>()).unwrap_err();
        assert!(err.contains("cycle") && err.contains("a") && err.contains("b") && err.contains("c"), "{err}");
    }

    #[test]
    fn a_chain_of_dependencies_as_long_as_a_body_allows_is_checked_without_deep_recursion() {
        // 20,000 steps each depending on the next fit in a 1 MiB body; checked on a thread with
        // a small stack, which a recursive search would overflow (aborting the process).
        let chain = |closed: bool| -> Vec<StepSpec> {
            let n = 20_000;
            (0..n)
                .map(|i| {
                    let mut s = spec(&format!("s{i}"));
                    s.depends_on = (i + 1 < n || closed).then(|| vec![format!("s{}", (i + 1) % n)]);
                    s
                })
                .collect()
        };
        let checked = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let (open, closed) = (chain(false), chain(true));
                (check_dag(&open.iter().collect::<Vec<_>>()), check_dag(&closed.iter().collect::<Vec<_>>()))
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(checked.0, Ok(()));
        let err = checked.1.unwrap_err();
        assert!(err.contains("cycle") && err.starts_with("the steps' dependencies form a cycle: s0 → s19999 → s19998"), "{}", err.chars().take(200).collect::<String>());
    }

    #[test]
    fn illegal_transitions_are_errors() {
        let mut s = SagaState::Completed;
        assert!(s.become_(SagaState::Running).is_err());
        assert_eq!(s, SagaState::Completed);
        let mut s = SagaState::Pending;
        s.become_(SagaState::Running).unwrap();
        assert!(StepState::Completed.can_become(StepState::Compensating));
        assert!(!StepState::Compensated.can_become(StepState::Running));
        assert!(!StepState::Pending.can_become(StepState::Compensating));
    }

    #[test]
    fn parameters_overlay_the_context_and_outputs() {
        let mut d = doc(&[StepState::Completed, StepState::Pending]);
        d.context.insert("order".into(), json!("o-1"));
        d.context.insert("amount".into(), json!(5));
        d.context.insert("payment".into(), json!({"charge_id": "c"}));
        d.steps[1].spec.parameters = Some(json!({"amount": 7}).as_object().unwrap().clone());
        assert_eq!(d.execute_input(1), json!({"order": "o-1", "amount": 7, "payment": {"charge_id": "c"}}));
        d.steps[1].output = Some(json!({"x": 1}));
        d.steps[1].spec.compensation_parameters = Some(json!({"reason": "undo"}).as_object().unwrap().clone());
        assert_eq!(d.compensate_input(1)["reason"], "undo");
        assert_eq!(d.compensate_input(1)["step_output"], json!({"x": 1}));
    }

    #[test]
    fn judges_answers_against_the_budget() {
        assert_eq!(judge(Outcome::Success("{\"a\":1}".into()), 1, 3), Verdict::Completed(json!({"a": 1})));
        assert!(matches!(judge(Outcome::Success("{nope".into()), 1, 3), Verdict::Uncertain(m) if m.contains("not valid JSON")));
        assert_eq!(judge(Outcome::Retry("busy".into()), 2, 3), Verdict::RetryLater("busy".into()));
        assert!(matches!(judge(Outcome::Retry("busy".into()), 3, 3), Verdict::Uncertain(m) if m.contains("after 3 attempts")));
        assert_eq!(judge(Outcome::Failure("no".into()), 1, 3), Verdict::Failed("no".into()));
    }

    #[test]
    fn judges_compensation_answers_against_the_budget() {
        assert_eq!(judge_undo(Outcome::Success("{\"refund\":7}".into()), 1, 2), Undo::Compensated(json!({"refund": 7})));
        assert_eq!(judge_undo(Outcome::Success("done".into()), 1, 2), Undo::Compensated(json!("done")));
        assert_eq!(judge_undo(Outcome::Failure("no".into()), 1, 2), Undo::RetryLater("no".into()));
        assert_eq!(judge_undo(Outcome::Retry("busy".into()), 1, 2), Undo::RetryLater("busy".into()));
        assert_eq!(judge_undo(Outcome::Failure("no".into()), 2, 2), Undo::Failed("no".into()));
        assert_eq!(judge_undo(Outcome::Retry("busy".into()), 2, 2), Undo::Failed("busy".into()));
    }

    #[test]
    fn step_specs_need_exactly_one_target() {
        let both: StepSpec = serde_json::from_value(json!({"name": "a", "plugin": "p", "endpoint": "http://x"})).unwrap();
        assert!(both.validate().unwrap_err().contains("not both"));
        let neither: StepSpec = serde_json::from_value(json!({"name": "a"})).unwrap();
        assert!(neither.validate().is_err());
        let ftp: StepSpec = serde_json::from_value(json!({"name": "a", "endpoint": "ftp://x"})).unwrap();
        assert!(ftp.validate().is_err());
        assert!(spec("ok").validate().is_ok());
        assert!(serde_json::from_value::<StepSpec>(json!({"name": "a", "plugin": "p", "bogus": 1})).is_err());
    }

    #[test]
    fn attention_is_for_failures_stuck_compensations_and_repeated_takeovers() {
        let mut d = doc(&[StepState::Compensating]);
        assert!(d.needs_attention(SagaState::Failed));
        assert!(!d.needs_attention(SagaState::Compensating));
        d.steps[0].compensation_attempts = crate::txn::ATTENTION_ATTEMPTS;
        assert!(d.needs_attention(SagaState::Compensating), "still retried after the attempts");
        assert!(!d.needs_attention(SagaState::Compensated), "an end reached is no concern");
        let mut d = doc(&[StepState::Running]);
        d.recoveries = crate::txn::ATTENTION_RECOVERIES - 1;
        assert!(!d.needs_attention(SagaState::Running));
        d.recoveries += 1;
        assert!(d.needs_attention(SagaState::Running), "its leases keep expiring");
    }
}
