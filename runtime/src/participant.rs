//! One way to run a phase, whatever runs it: a Wasm plugin version or an HTTP endpoint
//! (the HTTP-participant protocol of API.md). Everything that is not a clear answer is mapped
//! here, once: a trap, timeout or transport error becomes `Retry` for an outcome and `Abort`
//! for a vote, so the engines only ever see the contract's answers.
//!
//! It owns the per-tenant grants (limits, allowlists, answer caps) every call runs under and
//! opens each call's span; it never decides what an answer means for a transaction (the
//! engines' `state.rs` do) and never writes to the store.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::Instrument;

use crate::model::{CallContext, Outcome, Vote};
use crate::outbound::{DEFAULT_MAX_ANSWER_BYTES, HostRule, NoAnswer, Outbound, Reach, Scope};
use crate::plugin::{CallLimits, CallTags, Component, PluginHost};

/// Who makes an outbound request: the coordinator calling an HTTP participant, or a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaching {
    Participant,
    Plugin,
}

/// The phases a participant can be asked to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Execute,
    Compensate,
    Prepare,
    Commit,
    Abort,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Execute => "execute",
            Phase::Compensate => "compensate",
            Phase::Prepare => "prepare",
            Phase::Commit => "commit",
            Phase::Abort => "abort",
        }
    }
}

/// What runs a phase.
#[derive(Debug, Clone)]
pub enum Target {
    Plugin(Arc<Component>),
    Http { endpoint: String },
}

/// What the invoker knows of one tenant: its plugin-call limits, what its calls may reach
/// and how large an answer it accepts.
#[derive(Debug, Clone)]
pub struct TenantGrant {
    pub limits: CallLimits,
    /// Hosts its HTTP participants and plugins may reach (`allowed_hosts`).
    pub allowed_hosts: Arc<[HostRule]>,
    /// Largest answer (an HTTP participant's body, a plugin's output) accepted, in bytes.
    pub max_answer_bytes: usize,
}

/// What one call runs under: the plugin limits, what it may reach, the answer cap.
struct Plan {
    limits: CallLimits,
    scope: Scope,
    max_answer: usize,
}

/// Calls participants. Cheap to clone.
#[derive(Clone)]
pub struct Invoker {
    host: PluginHost,
    outbound: Outbound,
    /// Whether the operator lets calls reach private addresses (`--allow-private-endpoints`).
    allow_private: bool,
    /// Memory cap and fuel of plugin calls; the deadline comes per call.
    limits: CallLimits,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Tenants' own limits and outbound-HTTP allowlists, where they have any.
    tenants: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, TenantGrant>>>,
    /// Sent to HTTP participants as `Wasmtx-Node`, so they (and the fleet check) can tell
    /// which coordinator called.
    node_id: Option<Arc<str>>,
}

impl Invoker {
    pub fn new(host: PluginHost, limits: CallLimits) -> Self {
        Invoker {
            host,
            outbound: Outbound::new(),
            allow_private: false,
            limits,
            metrics: crate::metrics::Metrics::global(),
            tenants: Default::default(),
            node_id: None,
        }
    }

    /// Names the coordinator in the `Wasmtx-Node` header of HTTP participant calls.
    pub fn with_node_id(mut self, node_id: &str) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// Lets every tenant's calls reach private, loopback and link-local addresses.
    pub fn allow_private_endpoints(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// This process's metrics (calls are recorded here; the server adds the rest).
    pub fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Sets `tenant`'s plugin-call limits (its memory cap and fuel, and a deadline that caps
    /// each call's own), the hosts it may reach and its answer cap.
    pub fn set_tenant(&self, tenant: &str, grant: TenantGrant) {
        self.tenants.write().unwrap().insert(tenant.to_string(), grant);
    }

    /// Whether `tenant`'s grant is known here.
    pub fn knows_tenant(&self, tenant: &str) -> bool {
        self.tenants.read().unwrap().contains_key(tenant)
    }

    /// What `tenant`'s calls may reach. The implicit tenant of single-tenant mode may reach
    /// any host and loopback (local development); a configured tenant only its allowed hosts
    /// and public addresses; a tenant this process has not loaded, nothing.
    pub fn scope(&self, tenant: &str, role: Reaching) -> Scope {
        self.scope_of(self.tenants.read().unwrap().get(tenant), tenant, role)
    }

    fn scope_of(&self, grant: Option<&TenantGrant>, tenant: &str, role: Reaching) -> Scope {
        let any = |fallback| if self.allow_private { Reach::Any } else { fallback };
        match grant {
            Some(grant) => Scope { reach: any(Reach::Public), hosts: Some(grant.allowed_hosts.clone()) },
            None if tenant == crate::api_tenant() => Scope {
                reach: any(Reach::Loopback),
                hosts: match role {
                    Reaching::Participant => None,
                    Reaching::Plugin => Some(Arc::from(Vec::new())),
                },
            },
            None => Scope { reach: any(Reach::Public), hosts: Some(Arc::from(Vec::new())) },
        }
    }

    /// Refuses an HTTP participant endpoint `tenant` may not call (when it is added; the
    /// call itself is checked again).
    /// POSTs JSON on `tenant`'s behalf under its outbound policy (alert deliveries).
    pub async fn post_json_as(
        &self,
        tenant: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
        timeout: Duration,
        max_answer: usize,
    ) -> Result<(u16, String), crate::outbound::NoAnswer> {
        self.outbound.post_json(&self.scope(tenant, Reaching::Participant), url, headers, body, timeout, max_answer).await
    }

    pub fn check_endpoint(&self, tenant: &str, endpoint: &str) -> Result<(), crate::outbound::Refusal> {
        self.outbound.check(&self.scope(tenant, Reaching::Participant), endpoint).map(drop)
    }

    /// Everything one call of `tenant`'s runs under, read with one look at its grant.
    fn plan(&self, tenant: &str, timeout: Duration, role: Reaching) -> Plan {
        let tenants = self.tenants.read().unwrap();
        let grant = tenants.get(tenant);
        let limits = match grant {
            Some(g) => CallLimits { timeout: timeout.min(g.limits.timeout), ..g.limits.clone() },
            None => CallLimits { timeout, ..self.limits.clone() },
        };
        let max_answer = grant.map_or(DEFAULT_MAX_ANSWER_BYTES, |g| g.max_answer_bytes);
        Plan { limits, scope: self.scope_of(grant, tenant, role), max_answer }
    }

    /// A plugin call's tags, its outbound HTTP under `scope`.
    fn tags_of(&self, ctx: &CallContext, scope: Scope) -> CallTags {
        CallTags {
            tenant: ctx.tenant.clone(),
            transaction_id: ctx.transaction_id.clone(),
            step: ctx.step.clone(),
            http: Some(crate::plugin::HttpGrant { outbound: self.outbound.clone(), scope }),
            traceparent: crate::trace::outgoing(&tracing::Span::current(), ctx.traceparent.as_deref()),
        }
    }

    /// Asks a selection policy to choose a pattern, under the tenant's plugin limits and with
    /// no outbound HTTP: a policy decides from the profile alone.
    pub async fn select(
        &self,
        component: &Component,
        profile: crate::model::Profile,
        transaction_id: &str,
        timeout: Duration,
    ) -> Result<crate::model::Decision, crate::plugin::CallError> {
        let plan = self.plan(&profile.tenant, timeout, Reaching::Plugin);
        let tags = CallTags { tenant: profile.tenant.clone(), transaction_id: transaction_id.into(), step: "policy".into(), ..CallTags::default() };
        self.host.select(component, profile, &plan.limits, tags).await
    }

    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// Runs execute, compensate, commit or abort. Never fails: anything that is not a clear
    /// answer is a `Retry` naming what happened.
    pub async fn outcome(&self, target: &Target, phase: Phase, ctx: CallContext, timeout: Duration) -> Outcome {
        let started = std::time::Instant::now();
        let span = call_span(target, phase, &ctx);
        let outcome = bounded(self.outcome_uncounted(target, phase, ctx, timeout).instrument(span.clone()).await);
        let kind = match &outcome {
            Outcome::Success(_) => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Retry(_) => "retry",
        };
        span.record("outcome", kind);
        self.metrics.record_call(phase.as_str(), kind, started.elapsed());
        outcome
    }

    async fn outcome_uncounted(&self, target: &Target, phase: Phase, ctx: CallContext, timeout: Duration) -> Outcome {
        debug_assert!(phase != Phase::Prepare);
        match target {
            Target::Plugin(component) => {
                let plan = self.plan(&ctx.tenant, timeout, Reaching::Plugin);
                let (limits, cap) = (plan.limits, plan.max_answer);
                let tags = self.tags_of(&ctx, plan.scope);
                let result = match phase {
                    Phase::Execute => self.host.execute(component, ctx, &limits, tags).await,
                    Phase::Compensate => self.host.compensate(component, ctx, &limits, tags).await,
                    Phase::Commit => self.host.commit(component, ctx, &limits, tags).await,
                    Phase::Abort | Phase::Prepare => self.host.abort(component, ctx, &limits, tags).await,
                };
                // An HTTP answer is capped while it is read; a plugin's output here.
                match result {
                    Ok(Outcome::Success(output)) if output.len() > cap => {
                        Outcome::Retry(format!("the answer is {} bytes, more than the {cap} accepted", output.len()))
                    }
                    Ok(outcome) => outcome,
                    Err(e) => Outcome::Retry(e.to_string()),
                }
            }
            Target::Http { endpoint } => {
                let path = match phase {
                    Phase::Execute | Phase::Compensate => ctx.action.clone(),
                    other => other.as_str().to_string(),
                };
                match self.post(endpoint, &path, phase, &ctx, timeout).await {
                    // Refused by the outbound policy: nothing was sent this time, a definite no —
                    // unless an earlier attempt at the step (unanswered, or cut short by a crash)
                    // may have done its work: then its outcome stays unknown, and a step that
                    // runs out of attempts so is compensated.
                    Err(NoAnswer::Refused(e)) if phase == Phase::Execute && ctx.attempt > 1 => {
                        Outcome::Retry(format!("{e} (an earlier attempt may have reached it)"))
                    }
                    Err(NoAnswer::Refused(e)) => Outcome::Failure(e),
                    Err(NoAnswer::Unclear(e)) => Outcome::Retry(e),
                    Ok((status, body)) if (200..300).contains(&status) => {
                        Outcome::Success(if body.trim().is_empty() { "null".into() } else { body })
                    }
                    Ok((status @ (409 | 422), body)) if matches!(phase, Phase::Execute | Phase::Compensate) => {
                        Outcome::Failure(format!("HTTP {status}: {body}"))
                    }
                    Ok((status, body)) => Outcome::Retry(format!("HTTP {status}: {body}")),
                }
            }
        }
    }

    /// Asks for a vote. Only an explicit `prepared` is a yes.
    pub async fn prepare(&self, target: &Target, ctx: CallContext, timeout: Duration) -> Vote {
        let started = std::time::Instant::now();
        let span = call_span(target, Phase::Prepare, &ctx);
        let vote = match self.prepare_uncounted(target, ctx, timeout).instrument(span.clone()).await {
            Vote::Abort(reason) => Vote::Abort(truncate(&reason)),
            prepared => prepared,
        };
        let kind = if vote == Vote::Prepared { "prepared" } else { "abort" };
        span.record("outcome", kind);
        self.metrics.record_call("prepare", kind, started.elapsed());
        vote
    }

    async fn prepare_uncounted(&self, target: &Target, ctx: CallContext, timeout: Duration) -> Vote {
        match target {
            Target::Plugin(component) => {
                let plan = self.plan(&ctx.tenant, timeout, Reaching::Plugin);
                let tags = self.tags_of(&ctx, plan.scope);
                self.host.prepare(component, ctx, &plan.limits, tags).await.unwrap_or_else(|e| Vote::Abort(e.to_string()))
            }
            Target::Http { endpoint } => match self.post(endpoint, "prepare", Phase::Prepare, &ctx, timeout).await {
                Err(e) => Vote::Abort(e.to_string()),
                Ok((status, body)) if (200..300).contains(&status) => {
                    match serde_json::from_str::<Value>(&body).ok().as_ref().and_then(|v| v.get("vote")).and_then(Value::as_str) {
                        Some("prepared") => Vote::Prepared,
                        _ => Vote::Abort(format!("no prepared vote in answer: {body}")),
                    }
                }
                Ok((status, body)) => Vote::Abort(format!("HTTP {status}: {body}")),
            },
        }
    }

    async fn post(
        &self,
        endpoint: &str,
        path: &str,
        phase: Phase,
        ctx: &CallContext,
        timeout: Duration,
    ) -> Result<(u16, String), NoAnswer> {
        let url = format!("{}/{}", endpoint.trim_end_matches('/'), path.trim_start_matches('/'));
        // The input may hold stored outputs as deep as they were accepted.
        let input: Value = crate::store::parse_stored(&ctx.input).unwrap_or(Value::Null);
        let mut body = json!({
            "transaction_id": ctx.transaction_id,
            "step": ctx.step,
            "action": ctx.action,
            "phase": phase.as_str(),
            "attempt": ctx.attempt,
            "idempotency_key": ctx.idempotency_key,
            "input": input,
        });
        // A compensation is told whether the forward call's outcome was known (see
        // `SagaDoc::compensate_input`).
        if phase == Phase::Compensate
            && let Some(outcome) = body["input"].get("forward_outcome").cloned()
        {
            body["forward_outcome"] = outcome;
        }
        let mut headers = vec![("Idempotency-Key", ctx.idempotency_key.as_str())];
        if let Some(node) = &self.node_id {
            headers.push(("Wasmtx-Node", node));
        }
        let traceparent = crate::trace::outgoing(&tracing::Span::current(), ctx.traceparent.as_deref());
        if let Some(tp) = &traceparent {
            headers.push(("traceparent", tp));
        }
        let plan = self.plan(&ctx.tenant, timeout, Reaching::Participant);
        self.outbound.post_json(&plan.scope, &url, &headers, &body, timeout, plan.max_answer).await
    }
}

/// `outcome` with its reason cut by [`truncate`].
fn bounded(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Failure(reason) => Outcome::Failure(truncate(&reason)),
        Outcome::Retry(reason) => Outcome::Retry(truncate(&reason)),
        success => success,
    }
}

/// A reason as it is kept: a failure, retry or abort vote — whether a plugin said it, an HTTP
/// participant answered it or a trap produced it — lands in the step's error, the journal
/// and the document, so it is cut to its first 500 characters.
/// The span of one call (a child of the phase it is made in).
fn call_span(target: &Target, phase: Phase, ctx: &CallContext) -> tracing::Span {
    let to = match target {
        Target::Plugin(_) => "plugin",
        Target::Http { .. } => "http",
    };
    tracing::info_span!("call", phase = phase.as_str(), step = %ctx.step, attempt = ctx.attempt, to, outcome = tracing::field::Empty)
}

fn truncate(s: &str) -> String {
    const MAX: usize = 500;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
