//! The saga driver: it keeps the record, decides from its pure state (`state.rs`: which steps
//! may start, which may be undone, what an answer means), persists each decision, and only
//! then acts — starts calls, which run concurrently, up to the saga's `max_parallel`.
//!
//! One task owns the record and makes every write, so writes stay ordered; the calls run as
//! futures beside it and come back as answers. Steps of a sequence follow each other (each
//! depends on the one before), so a sequential saga makes exactly the writes it always made: a
//! step's completion is written with the next step's start. In a DAG every step whose
//! dependencies completed starts, the starts of one moment share one write; an answer that no
//! start follows at once is written before the driver waits for the others. A failure stops
//! new starts, waits for the calls in flight, then undoes what was (or may have been) done,
//! each compensation after those of the steps that follow it, independent ones in parallel.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde_json::json;
use tracing::Instrument;

use super::state::{StepState, Undo, Verdict, judge, judge_undo};
use super::{MAX_SAGA_OUTPUT_BYTES, Saga, SagaEngine, SagaError, SagaState};
use crate::model::{CallContext, Outcome};
use crate::participant::Phase;
use crate::store::NewEvent;
use crate::txn::Transition;

/// What comes back to the driver: an answer, or the end of a retry's wait.
enum Done {
    Answer { i: usize, attempt: u32, outcome: Outcome },
    Waited { i: usize },
}

/// The calls and retry waits in flight, the steps they belong to, and the span of the phase
/// they are made in.
#[derive(Default)]
struct Flight {
    futures: FuturesUnordered<BoxFuture<'static, Done>>,
    busy: HashSet<usize>,
    phase: Option<(Phase, tracing::Span)>,
}

impl Flight {
    /// The span of `phase` (`execute` or `compensate`), a child of the driver's; the first
    /// call of the next phase ends the previous one's.
    fn span_of(&mut self, phase: Phase) -> tracing::Span {
        match &self.phase {
            Some((current, span)) if *current == phase => span.clone(),
            _ => {
                let span = tracing::info_span!("phase", otel.name = phase.as_str());
                self.phase = Some((phase, span.clone()));
                span
            }
        }
    }

    fn add(&mut self, i: usize, future: BoxFuture<'static, Done>) {
        self.busy.insert(i);
        self.futures.push(future);
    }

    async fn next(&mut self) -> Done {
        let done = self.futures.next().await.expect("something is in flight");
        let (Done::Answer { i, .. } | Done::Waited { i }) = &done;
        self.busy.remove(i);
        done
    }
}

/// Marks steps `steps` running, one more attempt each; returns the events to write before
/// calling them.
pub(super) fn begin_steps(saga: &mut Saga, steps: &[usize]) -> Result<Vec<NewEvent>, SagaError> {
    begin(saga, steps, Phase::Execute)
}

/// Marks steps `steps` compensating, one more compensation attempt each; returns the events to
/// write before calling their compensations.
fn begin_compensations(saga: &mut Saga, steps: &[usize]) -> Result<Vec<NewEvent>, SagaError> {
    begin(saga, steps, Phase::Compensate)
}

/// Begins `steps` in `phase`. Steps begun together name each other (`with`): the history shows
/// what ran at once, forward and backward.
fn begin(saga: &mut Saga, steps: &[usize], phase: Phase) -> Result<Vec<NewEvent>, SagaError> {
    let names: Vec<String> = steps.iter().map(|&i| saga.doc.steps[i].spec.name.clone()).collect();
    let mut events = Vec::with_capacity(steps.len());
    for &i in steps {
        let step = &mut saga.doc.steps[i];
        let (kind, attempt) = match phase {
            Phase::Compensate => {
                step.state.become_(StepState::Compensating)?;
                step.compensation_attempts += 1;
                ("compensation_started", step.compensation_attempts)
            }
            _ => {
                step.state.become_(StepState::Running)?;
                step.attempts += 1;
                ("step_started", step.attempts)
            }
        };
        let mut detail = json!({ "attempt": attempt });
        let with: Vec<&String> = names.iter().filter(|n| **n != step.spec.name).collect();
        if !with.is_empty() {
            detail["with"] = json!(with);
        }
        events.push(NewEvent::new(kind, Some(&step.spec.name), detail));
    }
    Ok(events)
}

impl SagaEngine {
    /// Drives `saga` to an end state (or until another coordinator takes it). With `started`,
    /// its running steps were begun (and written) by `start` a moment ago and are called at
    /// once; otherwise a running step lost its call and starts again, one attempt more.
    pub(super) async fn drive(&self, mut saga: Saga, cancel: &AtomicBool, started: bool) -> Result<Saga, SagaError> {
        let _renewal = self.inner.keep_lease(saga.id());
        let mut flight = Flight::default();
        if started && saga.state == SagaState::Running {
            let begun: Vec<usize> = (0..saga.doc.steps.len()).filter(|&i| saga.doc.steps[i].state == StepState::Running).collect();
            for i in begun {
                self.launch(&saga, i, Phase::Execute, &mut flight);
            }
        }
        loop {
            let room = saga.doc.max_parallel().saturating_sub(flight.busy.len());
            // Shutting down: nothing new starts; once the calls in flight are answered (and
            // their outcomes written), the saga is handed back for another coordinator.
            let draining = self.inner.driving.is_draining();
            if draining && flight.busy.is_empty() && matches!(saga.state, SagaState::Running | SagaState::Compensating)
                && !(saga.state == SagaState::Running && saga.doc.steps.iter().all(|s| s.state == StepState::Completed))
            {
                self.release(&mut saga).await?;
                break;
            }
            match saga.state {
                SagaState::Running => {
                    let stop = self.should_stop(&saga, cancel);
                    if !draining && stop.is_none() && !saga.doc.has_failed_step() {
                        let ready = saga.doc.startable(&flight.busy, room);
                        if !ready.is_empty() {
                            let events = begin_steps(&mut saga, &ready)?;
                            self.persist(&mut saga, events).await?;
                            for i in ready {
                                self.launch(&saga, i, Phase::Execute, &mut flight);
                            }
                            continue;
                        }
                    }
                    if flight.busy.is_empty() {
                        // Every step done wins over a stop that came during the last call.
                        if saga.doc.steps.iter().all(|s| s.state == StepState::Completed) {
                            saga.state.become_(SagaState::Completed)?;
                            self.finish(&mut saga, "saga_completed").await?;
                            break;
                        }
                        // A step failed, or the saga was cancelled or timed out: undo.
                        saga.state.become_(SagaState::Compensating)?;
                        let failed = saga.doc.steps.iter().find(|s| matches!(s.state, StepState::Failed | StepState::Uncertain));
                        let mut detail = json!({});
                        if let Some(failed) = failed {
                            detail["failed_step"] = json!(failed.spec.name);
                        }
                        if let Some(reason) = &stop {
                            detail["reason"] = json!(reason);
                            saga.doc.error.get_or_insert_with(|| reason.clone());
                        }
                        self.persist(&mut saga, vec![NewEvent::new("saga_compensating", None, detail)]).await?;
                        continue;
                    }
                    let done = self.next_answer(&mut saga, &mut flight).await?;
                    self.absorb_forward(&mut saga, done, cancel, &mut flight).await?;
                }
                SagaState::Compensating => {
                    // A step started but not answered when the saga turned (its coordinator
                    // died, or it was stopped): it may have done its work.
                    let lost: Vec<usize> = (0..saga.doc.steps.len())
                        .filter(|i| !flight.busy.contains(i) && saga.doc.steps[*i].state == StepState::Running)
                        .collect();
                    for i in lost {
                        let step = &mut saga.doc.steps[i];
                        step.state.become_(StepState::Uncertain)?;
                        step.outcome_unknown = true;
                        let detail = json!({ "attempt": step.attempts, "reason": "its call was not answered before the saga turned to compensating" });
                        let event = NewEvent::new("step_uncertain", Some(&step.spec.name), detail);
                        saga.defer(vec![event]);
                    }
                    let ready = if draining { Vec::new() } else { saga.doc.compensable(&flight.busy, room) };
                    if !ready.is_empty() {
                        let events = begin_compensations(&mut saga, &ready)?;
                        self.persist(&mut saga, events).await?;
                        for i in ready {
                            self.launch(&saga, i, Phase::Compensate, &mut flight);
                        }
                        continue;
                    }
                    if flight.busy.is_empty() {
                        self.end_compensation(&mut saga).await?;
                        break;
                    }
                    let done = self.next_answer(&mut saga, &mut flight).await?;
                    self.absorb_compensation(&mut saga, done, &mut flight).await?;
                }
                _ => break,
            }
        }
        self.write_pending(&mut saga).await?;
        Ok(saga)
    }

    /// Waits for the next answer in flight. What was decided but only deferred (a completion,
    /// a failure) is written first: it rides with the next start when one follows at once,
    /// but must not wait in memory for a slower branch — a crash meanwhile would run a
    /// completed step again, and readers would see it still running.
    async fn next_answer(&self, saga: &mut Saga, flight: &mut Flight) -> Result<Done, SagaError> {
        self.write_pending(saga).await?;
        Ok(flight.next().await)
    }

    async fn write_pending(&self, saga: &mut Saga) -> Result<(), SagaError> {
        match saga.pending.is_empty() {
            true => Ok(()),
            false => self.persist(saga, Vec::new()).await,
        }
    }

    /// Records a forward answer (or the end of a retry's wait). Once the saga is stopping
    /// (cancelled, timed out, a step failed), nothing new starts: a step due to retry is given
    /// up instead, as `uncertain` — its last answer was unclear.
    async fn absorb_forward(&self, saga: &mut Saga, done: Done, cancel: &AtomicBool, flight: &mut Flight) -> Result<(), SagaError> {
        let stopping = self.should_stop(saga, cancel).is_some() || saga.doc.has_failed_step();
        let (i, attempt, outcome) = match done {
            // Shutting down: the next attempt is the next owner's.
            Done::Waited { .. } if self.inner.driving.is_draining() => return Ok(()),
            Done::Waited { i } if stopping => {
                let step = &mut saga.doc.steps[i];
                step.state.become_(StepState::Uncertain)?;
                step.outcome_unknown = true;
                let detail = json!({ "attempt": step.attempts, "reason": step.error.clone().unwrap_or_default() });
                let event = NewEvent::new("step_uncertain", Some(&step.spec.name), detail);
                saga.defer(vec![event]);
                return Ok(());
            }
            Done::Waited { i } => {
                let events = begin_steps(saga, &[i])?;
                self.persist(saga, events).await?;
                self.launch(saga, i, Phase::Execute, flight);
                return Ok(());
            }
            Done::Answer { i, attempt, outcome } => (i, attempt, outcome),
        };
        let outcome = match outcome {
            Outcome::Success(payload) if payload.len() > 64 << 10 && {
                let kept: usize = saga.doc.steps.iter().filter_map(|s| s.output.as_ref()).map(|o| o.to_string().len()).sum();
                kept + payload.len() > MAX_SAGA_OUTPUT_BYTES
            } => Outcome::Retry(format!(
                "the step's output ({} bytes) would take the saga's outputs past {MAX_SAGA_OUTPUT_BYTES} bytes",
                payload.len()
            )),
            other => other,
        };
        let allowed = saga.doc.steps[i].spec.attempts_allowed(&saga.doc.retry_policy);
        let policy = saga.doc.retry_policy.clone();
        let name = saga.doc.steps[i].spec.name.clone();
        let step = &mut saga.doc.steps[i];
        let verdict = match judge(outcome, attempt, allowed) {
            Verdict::RetryLater(reason) if stopping => Verdict::Uncertain(format!("not retried, the saga is stopping: {reason}")),
            verdict => verdict,
        };
        match verdict {
            Verdict::Completed(output) => {
                step.state.become_(StepState::Completed)?;
                step.error = None;
                if let Some(key) = step.spec.output_key.clone() {
                    saga.doc.context.insert(key, output.clone());
                }
                saga.doc.steps[i].output = Some(output);
                // Written with the next step's start, the saga's end, or before the driver
                // waits for another answer, whichever comes first: nothing acts between.
                saga.defer(vec![NewEvent::new("step_completed", Some(&name), json!({ "attempt": attempt }))]);
            }
            Verdict::RetryLater(reason) => {
                step.error = Some(reason.clone());
                let delay = policy.delay(attempt, rand::random::<f64>());
                let detail = json!({ "attempt": attempt, "reason": reason, "delay_ms": delay.as_millis() as u64 });
                self.persist(saga, vec![NewEvent::new("step_retry", Some(&name), detail)]).await?;
                flight.add(i, Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    Done::Waited { i }
                }));
            }
            verdict @ (Verdict::Failed(_) | Verdict::Uncertain(_)) => {
                let (reason, state, kind, what) = match verdict {
                    Verdict::Uncertain(reason) => (reason, StepState::Uncertain, "step_uncertain", "failed with an unknown outcome"),
                    Verdict::Failed(reason) => (reason, StepState::Failed, "step_failed", "failed"),
                    _ => unreachable!("matched above"),
                };
                step.state.become_(state)?;
                step.outcome_unknown = state == StepState::Uncertain;
                step.error = Some(reason.clone());
                if saga.doc.error.is_none() {
                    saga.doc.error = Some(format!("step {name} {what}: {reason}"));
                }
                // Written with the saga's turn to compensating (or before the driver waits for
                // the branches still in flight), before anything is undone.
                saga.defer(vec![NewEvent::new(kind, Some(&name), json!({ "attempt": attempt, "reason": reason }))]);
            }
        }
        Ok(())
    }

    /// Records a compensation's answer (or the end of its retry's wait).
    async fn absorb_compensation(&self, saga: &mut Saga, done: Done, flight: &mut Flight) -> Result<(), SagaError> {
        let (i, attempt, outcome) = match done {
            Done::Waited { .. } if self.inner.driving.is_draining() => return Ok(()),
            Done::Waited { i } => {
                let events = begin_compensations(saga, &[i])?;
                self.persist(saga, events).await?;
                self.launch(saga, i, Phase::Compensate, flight);
                return Ok(());
            }
            Done::Answer { i, attempt, outcome } => (i, attempt, outcome),
        };
        let allowed = saga.doc.steps[i].spec.attempts_allowed(&saga.doc.retry_policy);
        let policy = saga.doc.retry_policy.clone();
        let step = &mut saga.doc.steps[i];
        let name = step.spec.name.clone();
        match judge_undo(outcome, attempt, allowed) {
            Undo::Compensated(output) => {
                step.state.become_(StepState::Compensated)?;
                // What the compensation reported goes to the history (a refund id, say).
                // Written with the next compensation's start, the saga's end, or before the
                // driver waits for the compensations still in flight.
                saga.defer(vec![NewEvent::new("step_compensated", Some(&name), json!({ "attempt": attempt, "output": output }))]);
            }
            Undo::RetryLater(reason) => {
                let delay = policy.delay(attempt, rand::random::<f64>());
                let detail = json!({ "attempt": attempt, "reason": reason, "delay_ms": delay.as_millis() as u64 });
                self.persist(saga, vec![NewEvent::new("compensation_retry", Some(&name), detail)]).await?;
                flight.add(i, Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    Done::Waited { i }
                }));
            }
            Undo::Failed(reason) => {
                step.state.become_(StepState::CompensationFailed)?;
                step.error = Some(reason.clone());
                saga.defer(vec![NewEvent::new("compensation_failed", Some(&name), json!({ "attempt": attempt, "reason": reason }))]);
            }
        }
        Ok(())
    }

    /// Nothing is left to undo: the saga is compensated, or failed naming every step whose
    /// compensation failed (and, behind them, the steps that could not be undone first).
    async fn end_compensation(&self, saga: &mut Saga) -> Result<(), SagaError> {
        let failed: Vec<&super::StepRecord> = saga.doc.steps.iter().filter(|s| s.state == StepState::CompensationFailed).collect();
        if failed.is_empty() {
            saga.state.become_(SagaState::Compensated)?;
            return self.finish(saga, "saga_compensated").await;
        }
        let said: Vec<String> = failed
            .iter()
            .map(|s| format!("step {} failed after {} attempts: {}", s.spec.name, s.compensation_attempts, s.error.as_deref().unwrap_or("")))
            .collect();
        let names: Vec<String> = failed.iter().map(|s| s.spec.name.clone()).collect();
        let blocked: Vec<String> = saga
            .doc
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Completed | StepState::Uncertain))
            .map(|s| s.spec.name.clone())
            .collect();
        let mut error = format!("compensation of {}; an operator must act (resume retries it)", said.join("; "));
        if !blocked.is_empty() {
            error.push_str(&format!("; not undone behind it: {}", blocked.join(", ")));
        }
        saga.state.become_(SagaState::Failed)?;
        saga.doc.compensating_because = saga.doc.error.replace(error);
        saga.row.owner = None;
        saga.row.lease_until_ms = 0;
        let detail = json!({ "step": names[0], "steps": names, "not_undone": blocked });
        self.persist(saga, vec![NewEvent::new("saga_failed", None, detail)]).await
    }

    fn should_stop(&self, saga: &Saga, cancel: &AtomicBool) -> Option<String> {
        if cancel.load(Ordering::SeqCst) {
            return Some("cancelled".into());
        }
        let (Some(timeout), Some(started)) = (saga.doc.timeout_ms, saga.doc.started_at_ms) else { return None };
        (self.inner.now() - started > timeout as i64).then(|| format!("saga timed out after {timeout} ms"))
    }

    /// Hands the saga back (this process is shutting down): no owner, no lease, so another
    /// coordinator claims it at once instead of after the lease would have expired.
    async fn release(&self, saga: &mut Saga) -> Result<(), SagaError> {
        saga.row.owner = None;
        saga.row.lease_until_ms = 0;
        self.persist(saga, vec![NewEvent::new("saga_released", None, json!({ "by": self.node_id() }))]).await
    }

    async fn finish(&self, saga: &mut Saga, kind: &str) -> Result<(), SagaError> {
        saga.row.owner = None;
        saga.row.lease_until_ms = 0;
        self.persist(saga, vec![NewEvent::new(kind, None, json!({}))]).await
    }

    /// Starts the call of step `i`'s `phase` (begun and written), in flight beside the driver.
    fn launch(&self, saga: &Saga, i: usize, phase: Phase, flight: &mut Flight) {
        let step = &saga.doc.steps[i];
        let (attempt, input, action) = match phase {
            Phase::Compensate => (step.compensation_attempts, saga.doc.compensate_input(i), step.spec.compensation()),
            _ => (step.attempts, saga.doc.execute_input(i), step.spec.action().to_string()),
        };
        // A compensation by another plugin or participant than the step's own goes there.
        let (pinned, endpoint) = match phase {
            Phase::Compensate if step.spec.compensation_plugin.is_some() || step.spec.compensation_endpoint.is_some() => {
                (step.compensation_plugin_version.clone(), step.spec.compensation_endpoint.clone())
            }
            _ => (step.plugin_version.clone(), step.spec.endpoint.clone()),
        };
        let target = self.inner.target(&saga.row.tenant, pinned, endpoint, "step");
        let timeout = step.spec.timeout();
        let ctx = CallContext {
            tenant: saga.row.tenant.clone(),
            transaction_id: saga.row.id.clone(),
            step: step.spec.name.clone(),
            action,
            attempt,
            idempotency_key: format!("{}:{}:{}", saga.row.id, i, phase.as_str()),
            input: input.to_string(),
            deadline_ms: timeout.as_millis() as u64,
            traceparent: saga.doc.traceparent.clone(),
        };
        let span = flight.span_of(phase);
        let invoker = self.inner.invoker.clone();
        flight.add(i, Box::pin(async move {
            let outcome = match target.await {
                Ok(target) => invoker.outcome(&target, phase, ctx, timeout).instrument(span).await,
                Err(e) => Outcome::Retry(e),
            };
            Done::Answer { i, attempt, outcome }
        }));
    }
}
