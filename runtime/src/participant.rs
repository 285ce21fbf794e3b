//! One way to run a phase, whatever runs it: a Wasm plugin version or an HTTP endpoint
//! (the HTTP-participant protocol of API.md). Everything that is not a clear answer is mapped
//! here, once: a trap, timeout or transport error becomes `Retry` for an outcome and `Abort`
//! for a vote, so the engines only ever see the contract's answers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::model::{CallContext, Outcome, Vote};
use crate::plugin::{CallLimits, CallTags, Component, PluginHost};

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

/// Calls participants. Cheap to clone.
#[derive(Clone)]
pub struct Invoker {
    host: PluginHost,
    http: reqwest::Client,
    /// Memory cap and fuel of plugin calls; the deadline comes per call.
    limits: CallLimits,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Tenants' own limits and outbound-HTTP allowlists, where they have any.
    tenant_limits: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, (CallLimits, Arc<[String]>)>>>,
    /// Sent to HTTP participants as `Wasmtx-Node`, so they (and the fleet check) can tell
    /// which coordinator called.
    node_id: Option<Arc<str>>,
}

impl Invoker {
    pub fn new(host: PluginHost, limits: CallLimits) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("building the HTTP client");
        Invoker { host, http, limits, metrics: Default::default(), tenant_limits: Default::default(), node_id: None }
    }

    /// Names the coordinator in the `Wasmtx-Node` header of HTTP participant calls.
    pub fn with_node_id(mut self, node_id: &str) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// This process's metrics (calls are recorded here; the server adds the rest).
    pub fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Sets the plugin-call limits of `tenant`'s calls (its memory cap and fuel, and a deadline
    /// that caps each call's own) and the hosts its plugins may reach over HTTP.
    pub fn set_tenant_limits(&self, tenant: &str, limits: CallLimits, allowed_hosts: Vec<String>) {
        self.tenant_limits.write().unwrap().insert(tenant.to_string(), (limits, allowed_hosts.into()));
    }

    fn limits_for(&self, tenant: &str, timeout: Duration) -> CallLimits {
        match self.tenant_limits.read().unwrap().get(tenant) {
            Some((l, _)) => CallLimits { timeout: timeout.min(l.timeout), ..l.clone() },
            None => CallLimits { timeout, ..self.limits.clone() },
        }
    }

    fn tags_of(&self, ctx: &CallContext) -> CallTags {
        let allowed_hosts = self.tenant_limits.read().unwrap().get(&ctx.tenant).map(|(_, h)| h.clone()).unwrap_or_default();
        CallTags {
            tenant: ctx.tenant.clone(),
            transaction_id: ctx.transaction_id.clone(),
            step: ctx.step.clone(),
            allowed_hosts,
        }
    }

    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// Runs execute, compensate, commit or abort. Never fails: anything that is not a clear
    /// answer is a `Retry` naming what happened.
    pub async fn outcome(&self, target: &Target, phase: Phase, ctx: CallContext, timeout: Duration) -> Outcome {
        let started = std::time::Instant::now();
        let outcome = self.outcome_uncounted(target, phase, ctx, timeout).await;
        let kind = match &outcome {
            Outcome::Success(_) => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Retry(_) => "retry",
        };
        self.metrics.record_call(phase.as_str(), kind, started.elapsed());
        outcome
    }

    async fn outcome_uncounted(&self, target: &Target, phase: Phase, ctx: CallContext, timeout: Duration) -> Outcome {
        debug_assert!(phase != Phase::Prepare);
        match target {
            Target::Plugin(component) => {
                let limits = self.limits_for(&ctx.tenant, timeout);
                let tags = self.tags_of(&ctx);
                let result = match phase {
                    Phase::Execute => self.host.execute(component, ctx, &limits, tags).await,
                    Phase::Compensate => self.host.compensate(component, ctx, &limits, tags).await,
                    Phase::Commit => self.host.commit(component, ctx, &limits, tags).await,
                    Phase::Abort | Phase::Prepare => self.host.abort(component, ctx, &limits, tags).await,
                };
                result.unwrap_or_else(|e| Outcome::Retry(e.to_string()))
            }
            Target::Http { endpoint } => {
                let path = match phase {
                    Phase::Execute | Phase::Compensate => ctx.action.clone(),
                    other => other.as_str().to_string(),
                };
                match self.post(endpoint, &path, phase, &ctx, timeout).await {
                    Err(e) => Outcome::Retry(e),
                    Ok((status, body)) if (200..300).contains(&status) => {
                        Outcome::Success(if body.trim().is_empty() { "null".into() } else { body })
                    }
                    Ok((status @ (409 | 422), body)) if matches!(phase, Phase::Execute | Phase::Compensate) => {
                        Outcome::Failure(format!("HTTP {status}: {}", truncate(&body)))
                    }
                    Ok((status, body)) => Outcome::Retry(format!("HTTP {status}: {}", truncate(&body))),
                }
            }
        }
    }

    /// Asks for a vote. Only an explicit `prepared` is a yes.
    pub async fn prepare(&self, target: &Target, ctx: CallContext, timeout: Duration) -> Vote {
        let started = std::time::Instant::now();
        let vote = self.prepare_uncounted(target, ctx, timeout).await;
        let kind = if vote == Vote::Prepared { "prepared" } else { "abort" };
        self.metrics.record_call("prepare", kind, started.elapsed());
        vote
    }

    async fn prepare_uncounted(&self, target: &Target, ctx: CallContext, timeout: Duration) -> Vote {
        match target {
            Target::Plugin(component) => {
                let limits = self.limits_for(&ctx.tenant, timeout);
                let tags = self.tags_of(&ctx);
                self.host.prepare(component, ctx, &limits, tags).await.unwrap_or_else(|e| Vote::Abort(e.to_string()))
            }
            Target::Http { endpoint } => match self.post(endpoint, "prepare", Phase::Prepare, &ctx, timeout).await {
                Err(e) => Vote::Abort(e),
                Ok((status, body)) if (200..300).contains(&status) => {
                    match serde_json::from_str::<Value>(&body).ok().as_ref().and_then(|v| v.get("vote")).and_then(Value::as_str) {
                        Some("prepared") => Vote::Prepared,
                        _ => Vote::Abort(format!("no prepared vote in answer: {}", truncate(&body))),
                    }
                }
                Ok((status, body)) => Vote::Abort(format!("HTTP {status}: {}", truncate(&body))),
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
    ) -> Result<(u16, String), String> {
        let url = format!("{}/{}", endpoint.trim_end_matches('/'), path.trim_start_matches('/'));
        let input: Value = serde_json::from_str(&ctx.input).unwrap_or(Value::Null);
        let body = json!({
            "transaction_id": ctx.transaction_id,
            "step": ctx.step,
            "action": ctx.action,
            "phase": phase.as_str(),
            "attempt": ctx.attempt,
            "idempotency_key": ctx.idempotency_key,
            "input": input,
        });
        let mut request = self.http.post(&url).header("Idempotency-Key", &ctx.idempotency_key);
        if let Some(node) = &self.node_id {
            request = request.header("Wasmtx-Node", &**node);
        }
        let response = request
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| if e.is_timeout() { format!("POST {url}: no answer within {timeout:?}") } else { format!("POST {url}: {e}") })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
        Ok((status, text))
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 500;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
