//! The HTTP server: the JSON contract of API.md over the engines. Bodies are size-limited and
//! parsed here; every error leaves as `{"error": {"code", "message"}}` with a 4xx status for
//! the caller's mistakes and 5xx only for the server's own faults. Handlers never touch SQL.

mod auth;
mod console;
mod error;
mod input;
mod operate;
pub mod openapi;
mod render;
mod search;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use error::ApiError;
pub use input::{BODY_READ_TIMEOUT, BodyTimeout, MAX_COMPONENT_BODY, MAX_HEADER_BYTES, MAX_JSON_BODY, MAX_URI_BYTES};
use input::{Id, JsonBody, UploadBody};

use crate::participant::Invoker;
use crate::plugin::Catalog;
use auth::Tenant;
use crate::saga::{CreateSaga, SagaEngine, SagaError, SagaState, StepSpec};
use crate::txn::{Asked, rfc3339};
use crate::tpc::{CreateTpc, ParticipantSpec, TpcEngine, TpcError};
use crate::manager::{CreateManaged, ManagedParticipant, Manager, ManagerError, Status};
use crate::model::Progress;
use crate::store::{IdempotentReply, Store, StoreError, now_ms};
use tokio::sync::broadcast;


#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    admin_token: Option<String>,
    single_tenant: bool,
    /// What the store said lately about tenants and keys.
    remembered: auth::Remembered,
    invoker: Invoker,
    /// Limits of the tenants seen so far (they do not change after creation).
    limits: std::sync::RwLock<std::collections::HashMap<String, auth::TenantLimits>>,
    /// Per tenant with a `max_concurrent`, held while an execution is admitted: counting the
    /// running transactions and starting one happen as one step in this process.
    admissions: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    store: Store,
    catalog: Catalog,
    sagas: SagaEngine,
    tpc: TpcEngine,
    manager: Manager,
    alerts: crate::alert::Alerts,
}

/// Everything the server serves.
pub struct Services {
    pub store: Store,
    pub catalog: Catalog,
    pub invoker: Invoker,
    pub sagas: SagaEngine,
    pub tpc: TpcEngine,
    pub manager: Manager,
    pub alerts: crate::alert::Alerts,
    /// The bearer token of the admin API (`WASMTX_ADMIN_TOKEN`); `None` turns it off.
    pub admin_token: Option<String>,
    /// Whether requests without a key are served as the implicit tenant while no tenant
    /// exists (single-tenant mode); otherwise they answer 401 until one does.
    pub single_tenant: bool,
}

impl AppState {
    pub fn new(s: Services) -> Self {
        AppState {
            inner: Arc::new(Shared {
                admin_token: s.admin_token.filter(|t| !t.is_empty()),
                single_tenant: s.single_tenant,
                remembered: Default::default(),
                invoker: s.invoker,
                limits: Default::default(),
                admissions: Default::default(),
                store: s.store,
                catalog: s.catalog,
                sagas: s.sagas,
                tpc: s.tpc,
                manager: s.manager,
                alerts: s.alerts,
            }),
        }
    }

    /// Loads a tenant's limits once and hands its plugin-call limits to the invoker.
    async fn load_tenant_limits(&self, tenant: &str) -> Result<auth::TenantLimits, ApiError> {
        if let Some(limits) = self.inner.limits.read().unwrap().get(tenant) {
            return Ok(limits.clone());
        }
        let Some(row) = self.inner.store.tenant(tenant).await? else {
            return Ok(auth::TenantLimits::default());
        };
        let hosts: Vec<String> = serde_json::from_value(row.allowed_hosts.clone()).unwrap_or_default();
        let rules = hosts.iter().filter_map(|h| match crate::outbound::HostRule::parse(h) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::warn!(tenant, "ignoring a stored allowed_hosts entry: {e}");
                None
            }
        });
        let limits: auth::TenantLimits = serde_json::from_value(row.limits).unwrap_or_default();
        self.inner.invoker.set_tenant(tenant, limits.grant(rules.collect()));
        self.inner.invoker.host().set_share(tenant, limits.share());
        self.inner.limits.write().unwrap().insert(tenant.to_string(), limits.clone());
        Ok(limits)
    }

    /// Whether any tenant exists (then every request needs a key): once yes, for good; a no
    /// is asked of the store again after `auth::REMEMBER_FOR`.
    async fn has_tenants(&self) -> Result<bool, ApiError> {
        if let Some(exist) = self.inner.remembered.has_tenants() {
            return Ok(exist);
        }
        let exist = self.inner.store.has_tenants().await?;
        self.inner.remembered.remember_tenants(exist);
        Ok(exist)
    }

    /// Loads the limits of every tenant not loaded yet, so work recovered here (at start-up,
    /// or from a coordinator that died) runs under its tenant's limits and outbound policy.
    pub async fn load_all_tenants(&self) -> Result<usize, ApiError> {
        let tenants = self.inner.store.tenant_ids().await?;
        for t in &tenants {
            if !self.inner.invoker.knows_tenant(t) {
                self.load_tenant_limits(t).await?;
            }
        }
        Ok(tenants.len())
    }

    /// Records what was done in the tenant's audit trail, once it was done. The write runs in
    /// its own task, so a client hanging up cannot lose it; a failure to record is logged, not
    /// answered (the action itself succeeded).
    async fn audit(&self, tenant: &str, actor: &str, action: &str, detail: Value) {
        let (store, tenant, actor, action) = (self.inner.store.clone(), tenant.to_string(), actor.to_string(), action.to_string());
        let write = tokio::spawn(async move {
            if let Err(e) = store.audit(&tenant, &actor, &action, &detail).await {
                tracing::error!(tenant, action, "recording an audit entry failed: {e}");
            }
        });
        let _ = write.await;
    }

    /// `tenant`'s `max_concurrent`, if it has one.
    fn max_concurrent(&self, tenant: &str) -> Option<usize> {
        self.inner.limits.read().unwrap().get(tenant).and_then(|l| l.max_concurrent)
    }

    /// Runs `run`, an execution that starts a transaction, under `tenant`'s `max_concurrent`,
    /// then records `audit` (actor, action, detail) once it succeeded. 429 when that many of
    /// the tenant's sagas and 2PC transactions run already (counted in the store, so whatever
    /// started them and whichever coordinator drives them). Counting and starting are one step
    /// per tenant in this process: the admission is held until the start is durable — `run`
    /// returned, or transaction `started` (or, for a managed transaction, its delegate) was
    /// announced in a running state. `run` is its own task, so a client hanging up never
    /// stops it half-way, nor loses its audit entry.
    async fn execution<T, F>(&self, tenant: &str, admit: Admit<'_>, audit: Option<(&str, &str, Value)>, run: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let _gauge = InFlight::count(self);
        let run = {
            let (state, tenant) = (self.clone(), tenant.to_string());
            let audit = audit.map(|(actor, action, detail)| (actor.to_string(), action.to_string(), detail));
            async move {
                let done = run.await?;
                if let Some((actor, action, detail)) = audit {
                    state.audit(&tenant, &actor, &action, detail).await;
                }
                Ok(done)
            }
        };
        let (Some(max), false) = (self.max_concurrent(tenant), matches!(admit, Admit::No)) else {
            return tokio::spawn(run).await.map_err(internal)?;
        };
        let gate = self.inner.admissions.lock().unwrap().entry(tenant.to_string()).or_default().clone();
        let admitted = gate.lock().await;
        let running = self.inner.store.count_active(tenant).await?;
        if running >= max as i64 {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_executions",
                format!("tenant {tenant} already runs its maximum of {max} transactions"),
            ));
        }
        // Subscribed before the run starts, so its first announcement cannot be missed. The
        // engines announce on one channel: subscribing to one hears all three.
        let watched = match admit {
            Admit::UntilRunning(id) => Some((id, self.inner.sagas.subscribe())),
            Admit::No | Admit::UntilDone => None,
        };
        let mut task = tokio::spawn(run);
        let done = match watched {
            Some((id, progress)) => tokio::select! {
                done = &mut task => Some(done),
                // Missed announcements (a lagging receiver): keep the admission to the end.
                true = running_announced(progress, id) => None,
            },
            None => Some((&mut task).await),
        };
        let done = match done {
            Some(done) => done,
            None => {
                drop(admitted);
                task.await
            }
        };
        done.map_err(internal)?
    }
}

/// How an execution is counted against `max_concurrent`.
enum Admit<'a> {
    /// It starts nothing that is not counted already (resuming a running saga).
    No,
    /// It has started what it starts when it returns (a create with `"execute": true`).
    UntilDone,
    /// Transaction `id` has started once it is announced running.
    UntilRunning(&'a str),
}

fn internal(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the execution failed: {e}"))
}

/// Waits until transaction `id` is announced in a running state (or ended); a managed
/// transaction's delegate, named when its pattern is selected, stands for it. `false` if
/// announcements were missed, so the wait proves nothing.
async fn running_announced(mut progress: broadcast::Receiver<Progress>, id: &str) -> bool {
    const RUNNING: &[&str] = &["running", "compensating", "preparing", "committing", "aborting"];
    let mut watched = vec![id.to_string()];
    loop {
        let p = match progress.recv().await {
            Ok(p) => p,
            Err(broadcast::error::RecvError::Lagged(_)) => return false,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if !watched.contains(&p.tx_id) {
            continue;
        }
        if let Some(delegate) = p.event.detail.get("delegate").and_then(Value::as_str) {
            watched.push(delegate.to_string());
            continue;
        }
        if p.terminal || RUNNING.contains(&p.state) {
            return true;
        }
    }
    std::future::pending().await
}

/// One execution in flight, for the metrics gauge.
struct InFlight(Arc<crate::metrics::Metrics>);

impl InFlight {
    fn count(state: &AppState) -> InFlight {
        let metrics = state.inner.invoker.metrics().clone();
        metrics.add_in_flight(1);
        InFlight(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.add_in_flight(-1);
    }
}

pub fn router(state: AppState) -> Router {
    // Every route comes with its OpenAPI description (`openapi::routes`).
    // The console (`/ui`, HTML, outside the JSON contract) brings its own error pages and layers.
    let (routes, _) = openapi::routes().split_for_parts();
    routes
        .fallback(not_found)
        .with_state(state.clone())
        .layer(axum::middleware::from_fn(guard))
        .merge(console::router(state))
}


/// How long a request may take in all, and its body to arrive (`serve --request-timeout-ms`,
/// `--body-timeout-ms`).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub request: std::time::Duration,
    pub body: std::time::Duration,
}

/// What the outermost layer holds: the deadlines, and what it needs to tell a browser acting
/// for another site from the operator.
#[derive(Clone)]
pub struct Edge {
    pub deadlines: Deadlines,
    pub app: AppState,
    /// The server listens on a loopback address.
    pub loopback: bool,
}

/// Leaves the body's deadline in every request (`BodyTimeout`) and answers 503
/// `request_timeout` for a request still running after its own (what it started keeps
/// running: engines drive transactions in their own tasks). Before that, `foreign_browser`.
pub async fn deadline(State(edge): State<Edge>, mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // Owned before any await: the request's body is not `Sync`, so no borrow of it may be held.
    let (origin, host, site) = {
        let named = |name: &str| req.headers().get(name).map(|v: &axum::http::HeaderValue| v.to_str().unwrap_or("null").to_string());
        (named("origin"), named("host"), named("sec-fetch-site"))
    };
    if let Some(refused) = foreign_browser(&edge, origin, host, site).await {
        return refused;
    }
    req.extensions_mut().insert(BodyTimeout(edge.deadlines.body));
    let limit = edge.deadlines.request;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!("the request took longer than {} ms; a transaction it started keeps running (GET it to follow it)", limit.as_millis()),
        )
        .into_response(),
    }
}

/// A server without API keys (single-tenant mode, before any tenant exists) serves whoever
/// reaches it, and a browser reaches loopback for any page it shows: a page may POST a
/// `text/plain` body without asking, or re-point its own name at 127.0.0.1. So while there
/// are no keys, a request is refused (403) when the browser says it comes from another site
/// (`Sec-Fetch-Site`, or an `Origin` other than the `Host` it names; an opaque `null` origin
/// only when the browser vouches for it as same-origin), or — listening on loopback — when
/// its `Host` is not a loopback name (which a page re-pointing its name cannot change). With
/// keys, a page holds none to send.
async fn foreign_browser(edge: &Edge, origin: Option<String>, host: Option<String>, site: Option<String>) -> Option<Response> {
    if origin.is_none() && site.is_none() && !edge.loopback {
        return None;
    }
    if edge.app.has_tenants().await.unwrap_or(true) {
        return None;
    }
    let host = host.unwrap_or_default();
    let refused = |code: &'static str, message: String| Some(ApiError::new(StatusCode::FORBIDDEN, code, message).into_response());
    if edge.loopback && !is_loopback_name(&host) {
        return refused("foreign_host", format!("this server without API keys answers only to a loopback name (localhost, 127.0.0.1, [::1]), not to Host {host:?}"));
    }
    let vouched = matches!(site.as_deref(), Some("same-origin" | "none"));
    let foreign = match (origin.as_deref(), site.as_deref()) {
        (_, Some("cross-site" | "same-site")) => true,
        (Some("null"), _) => !vouched,
        (Some(origin), _) => !same_origin(origin, &host),
        (None, _) => false,
    };
    if foreign {
        let from = origin.unwrap_or_else(|| "another site".into());
        return refused("cross_origin", format!("a page of {from} may not use this server without API keys"));
    }
    None
}

/// Whether `host` (a `Host` header: a name or address, and perhaps a port) names loopback.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `origin` (`scheme://authority`) names the same authority as `host`, a default
/// port written or not.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let bare = |a: &str| a.strip_suffix(default).unwrap_or(a).to_ascii_lowercase();
    !authority.is_empty() && bare(authority) == bare(host)
}

/// The one layer around every API route (one, not three: each layer boxes a future per
/// request): refuses oversized headers and URIs, counts the request, answers the router's own
/// errors as JSON, and a handler that panicked with a 500 rather than a dropped connection.
async fn guard(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use futures::FutureExt;
    if let Some(refused) = input::oversized(&req) {
        return refused;
    }
    match std::panic::AssertUnwindSafe(count_request(req, next)).catch_unwind().await {
        Ok(answer) => input::as_json(answer).await,
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed while answering this request").into_response(),
    }
}

/// Counts each request by method, route pattern (never the ids in its path) and status.
async fn count_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().as_str().to_string();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let answer = next.run(req).await;
    crate::metrics::Metrics::global().record_request(&method, &route, answer.status().as_u16(), started.elapsed());
    answer
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The caller's tenant's audit trail: who uploaded, created, configured what, and when.
#[utoipa::path(get, path = "/v1/audit", tag = "operations", params(("limit" = Option<u32>, Query)), responses((status = 200, description = "The tenant's own trail, newest first", body = openapi::AuditLog), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn audit_log(
    State(s): State<AppState>,
    Tenant(tenant, _actor): Tenant,
    query: Result<Query<ManagedListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = parse_limit(q.limit.as_deref())?;
    let entries: Vec<Value> = s
        .inner
        .store
        .audit_log(&tenant, limit)
        .await?
        .into_iter()
        .map(|(at, actor, action, detail)| json!({"at": rfc3339(at), "actor": actor, "action": action, "detail": detail}))
        .collect();
    Ok(Json(json!({ "entries": entries })))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String), (status = 500, description = "The server's own fault", body = openapi::ErrorBody)))]
async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.inner.invoker.metrics().render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The store answers", body = openapi::Health), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn healthz(State(s): State<AppState>) -> Response {
    match s.inner.store.ping().await {
        Ok(()) => Json(json!({"status": "ok", "store": s.inner.store.kind()})).into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()).into_response(),
    }
}

/// Parses a JSON body (read within its caps by `JsonBody`): bad syntax → 400, wrong shape
/// (an array where an object is expected included) → 422.
fn parse<T: DeserializeOwned>(body: JsonBody) -> Result<T, ApiError> {
    parse_bytes(&body.0)
}

fn parse_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde reads a struct from an array too; every body of the API is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "the body must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string()),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {e}")),
    })
}

/// Parses an optional JSON body (empty means `default`).
fn parse_optional<T: DeserializeOwned + Default>(body: JsonBody) -> Result<T, ApiError> {
    let bytes = body.0;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_bytes(&bytes)
}

// ---- plugins ----

#[utoipa::path(put, path = "/v1/plugins/{name}", tag = "plugins", params(("name" = String, Path, description = "The plugin's name")), request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component's bytes"), responses((status = 201, description = "A new version", body = openapi::PluginUploaded), (status = 200, description = "These bytes already are a version", body = openapi::PluginUploaded), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn put_plugin(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    Id(name): Id,
    UploadBody(bytes, _slot): UploadBody,
) -> Result<Response, ApiError> {
    let limits = s.inner.limits.read().unwrap().get(&tenant).cloned().unwrap_or_default();
    if let Some(max) = limits.max_component_bytes
        && bytes.len() > max
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the component is {} bytes; this tenant may upload at most {max}", bytes.len()),
        ));
    }
    if let Some(max) = limits.max_versions {
        let versions = s.inner.store.plugin_versions(&tenant, &name).await?;
        let digest = crate::plugin::digest_off_thread(&bytes).await;
        if versions.len() as i64 >= max && !versions.iter().any(|v| v.digest == digest) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "version_limit",
                format!("plugin {name} already has {max} versions, this tenant's limit"),
            ));
        }
    }
    let (row, created) = s.inner.catalog.publish(&tenant, &name, &bytes).await?;
    let detail = json!({"name": row.name, "version": row.version, "digest": row.digest, "new_version": created});
    s.audit(&tenant, &actor, "plugin_uploaded", detail).await;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let doc = json!({
        "name": row.name,
        "version": row.version,
        "digest": row.digest,
        "exports": row.exports,
        "created_at": rfc3339(row.created_at_ms),
    });
    Ok((status, Json(doc)).into_response())
}

#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", responses((status = 200, description = "The newest version of each plugin", body = openapi::PluginList), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn list_plugins(State(s): State<AppState>, Tenant(tenant, _actor): Tenant) -> Result<Json<Value>, ApiError> {
    let rows = s.inner.store.latest_plugins(&tenant).await?;
    let plugins: Vec<Value> =
        rows.iter().map(|r| json!({"name": r.name, "latest_version": r.version, "exports": r.exports})).collect();
    Ok(Json(json!({ "plugins": plugins })))
}

#[utoipa::path(get, path = "/v1/plugins/{name}", tag = "plugins", params(("name" = String, Path, description = "The plugin's name")), responses((status = 200, description = "Every version", body = openapi::PluginVersions), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn get_plugin(State(s): State<AppState>, Tenant(tenant, _actor): Tenant, Id(name): Id) -> Result<Json<Value>, ApiError> {
    let rows = s.inner.store.plugin_versions(&tenant, &name).await?;
    if rows.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no plugin named {name:?}")));
    }
    let versions: Vec<Value> = rows
        .iter()
        .map(|r| json!({"version": r.version, "digest": r.digest, "exports": r.exports, "created_at": rfc3339(r.created_at_ms)}))
        .collect();
    Ok(Json(json!({ "name": name, "versions": versions })))
}

// ---- sagas ----

#[utoipa::path(post, path = "/v1/sagas", tag = "sagas", params(("Idempotency-Key" = Option<String>, Header, description = "The same key and body answer the first response again")), request_body = crate::saga::CreateSaga, responses((status = 201, description = "Created (with execute and wait: its document at the end, 200)", body = openapi::SagaCreated), (status = 200, description = "Created, executed and awaited (execute + wait)", body = openapi::SagaDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 429, description = "The tenant's max_concurrent executions are running", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn create_saga(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let trace = traceparent(&headers, "saga");
    idempotent_create(&s, "sagas", &tenant, &actor, &headers, body, move |s, tenant, asked, bytes, id| async move {
        let mut req: CreateSaga = parse_bytes(&bytes)?;
        req.traceparent = trace;
        // A create that also starts the saga is an execution, counted like one; with `wait`
        // the answer is the ended saga's document. The engine waits for its own driver, unless
        // the tenant's executions are counted: then the wait is outside the admission.
        let (starts, waits) = (req.execute, req.execute && req.wait);
        let counted = s.max_concurrent(&tenant).is_some();
        let mut ended = (waits && counted).then(|| s.inner.sagas.subscribe());
        if counted {
            req.wait = false;
        }
        let create = {
            let (s, tenant) = (s.clone(), tenant.clone());
            async move {
                Ok(match s.inner.sagas.create_with_id(&tenant, req, id, Some(&asked)).await {
                    Err(SagaError::Store(StoreError::Conflict { id, .. })) => (s.inner.sagas.get(&tenant, &id).await?, false),
                    created => (created?, true),
                })
            }
        };
        let (saga, new) = if starts { s.execution(&tenant, Admit::UntilDone, None, create).await? } else { create.await? };
        if let Some(progress) = ended.as_mut() {
            let saga = until_ended(&s, progress, &tenant, saga).await?;
            return Ok(Created { body: saga.document(), new });
        }
        if waits {
            return Ok(Created { body: saga.document(), new });
        }
        Ok(Created { body: json!({"status": "success", "saga_id": saga.id(), "state": saga.state.as_str()}), new })
    })
    .await
}

/// `saga` once it has ended (announced on `progress`, subscribed before it started).
async fn until_ended(s: &AppState, progress: &mut broadcast::Receiver<Progress>, tenant: &str, saga: crate::saga::Saga) -> Result<crate::saga::Saga, ApiError> {
    if saga.state.is_terminal() {
        return Ok(saga);
    }
    loop {
        match progress.recv().await {
            Ok(p) if p.tx_id == saga.id() && p.terminal => break,
            Ok(_) => {}
            // Missed announcements: the store says whether it ended meanwhile.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if s.inner.sagas.get(tenant, saga.id()).await?.state.is_terminal() {
                    break;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    Ok(s.inner.sagas.get(tenant, saga.id()).await?)
}

/// The `traceparent` a transaction created by this request keeps (see
/// `trace::of_request`): the request's, if it has a valid one (an invalid one is ignored, as
/// the specification says), or its `create` span's when spans are exported.
fn traceparent(headers: &HeaderMap, kind: &'static str) -> Option<String> {
    let header = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(crate::trace::parse);
    crate::trace::of_request(header, kind)
}

/// What a create made of its request: the answer, and whether it created the resource
/// (`new: false`: the id was taken, by an earlier request with the same key, and the answer
/// shows what exists).
struct Created {
    body: Value,
    new: bool,
}

/// Runs `create` once per `Idempotency-Key`: the same key and body answer the first
/// response again; the same key with another body is refused.
///
/// The resource's id is derived from the tenant and the key, so the create itself finds an
/// earlier request's resource (`Conflict`): it goes first, and the stored answer is read only
/// when the id was taken or the create failed (a retry refused for the tenant's limit, say,
/// still gets the first answer). A new key, nearly every key, costs no read. The guarantee
/// holds across a crash between creating the resource and remembering the answer: the retry
/// finds the resource and no answer, and answers with the resource as it is. (Only then can a
/// retry with another body not be told apart: the first body's hash was never stored.)
async fn idempotent_create<F, Fut>(
    s: &AppState,
    scope: &str,
    tenant: &str,
    actor: &str,
    headers: &HeaderMap,
    body: JsonBody,
    create: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(AppState, String, Asked, axum::body::Bytes, Option<uuid::Uuid>) -> Fut,
    Fut: std::future::Future<Output = Result<Created, ApiError>>,
{
    let bytes = body.0;
    // Keys are scoped per endpoint: the same key on `POST /v1/sagas` and `POST /v1/2pc`
    // names two requests.
    let key = idempotency_key(headers)?.map(|k| format!("{scope}:{k}"));
    // Audited by the create's own write (a retry that finds it created records nothing more).
    let asked = Asked::new(actor, "created");
    let Some(key) = key else {
        let created = create(s.clone(), tenant.to_string(), asked, bytes, None).await?;
        return Ok((StatusCode::CREATED, Json(created.body)).into_response());
    };
    let request_hash = hex::encode(Sha256::digest(&bytes));
    let body = match create(s.clone(), tenant.to_string(), asked, bytes, Some(resource_id(tenant, &key))).await {
        Ok(Created { body, new: true }) => body,
        taken_or_failed => {
            if let Some(first) = s.inner.store.idempotent_reply(tenant, &key).await? {
                return replayed(first, &request_hash);
            }
            taken_or_failed?.body
        }
    };
    let reply = IdempotentReply { request_hash, status: 201, body };
    if s.inner.store.remember_reply(tenant, &key, &reply, now_ms()).await? {
        return Ok((StatusCode::CREATED, Json(reply.body)).into_response());
    }
    // A concurrent request with the same key won: answer what it stored.
    let first = s.inner.store.idempotent_reply(tenant, &key).await?.map_or(reply.body, |first| first.body);
    Ok((StatusCode::CREATED, Json(first)).into_response())
}

/// The answer stored for a key, to a request with the body hashed `request_hash`: the same
/// answer for the same body, a refusal for another.
fn replayed(first: IdempotentReply, request_hash: &str) -> Result<Response, ApiError> {
    if first.request_hash != request_hash {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "this Idempotency-Key was used with a different body"));
    }
    let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
    Ok((status, Json(first.body)).into_response())
}

/// The id part of a resource created under `key`: the same for the same tenant and key.
fn resource_id(tenant: &str, key: &str) -> uuid::Uuid {
    let digest = Sha256::new().chain_update(tenant).chain_update([0u8]).chain_update(key).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && !k.contains(char::is_control) => Ok(Some(k.to_string())),
        _ => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters")),
    }
}

#[utoipa::path(post, path = "/v1/sagas/{id}/steps", tag = "sagas", params(("id" = String, Path, description = "The transaction's id")), request_body = crate::saga::StepSpec, responses((status = 200, description = "Added", body = openapi::StepAdded), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn add_step(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    Id(id): Id,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let spec: StepSpec = parse(body)?;
    let (index, total) = s.inner.sagas.add_step_asked(&tenant, &id, spec, Some(&Asked::new(&actor, "step_added"))).await?;
    Ok(Json(json!({"status": "success", "step_index": index, "total_steps": total})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    #[serde(default = "yes")]
    wait: bool,
}

impl Default for ExecuteBody {
    fn default() -> Self {
        ExecuteBody { wait: true }
    }
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/v1/sagas/{id}/execute", tag = "sagas", params(("id" = String, Path, description = "The transaction's id")), request_body = Option<openapi::ExecuteSaga>, responses((status = 200, description = "Ran to its end", body = openapi::SagaDocument), (status = 202, description = "Started (wait: false)", body = openapi::SagaDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody), (status = 429, description = "The tenant's max_concurrent executions are running", body = openapi::ErrorBody)))]
async fn execute_saga(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    Id(id): Id,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: ExecuteBody = parse_optional(body)?;
    let run = {
        let (engine, tenant, id, asked) = (s.inner.sagas.clone(), tenant.clone(), id.clone(), Asked::new(&actor, "saga_execute"));
        async move { Ok(engine.execute_asked(&tenant, &id, req.wait, Some(&asked)).await?) }
    };
    let saga = s.execution(&tenant, Admit::UntilRunning(&id), None, run).await?;
    let status = if req.wait { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(saga.as_document())).into_response())
}

#[utoipa::path(get, path = "/v1/sagas/{id}", tag = "sagas", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "The saga", body = openapi::SagaDocument), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn get_saga(State(s): State<AppState>, Tenant(tenant, _actor): Tenant, Id(id): Id) -> Result<Response, ApiError> {
    let saga = s.inner.sagas.get(&tenant, &id).await?;
    Ok(Json(saga.as_document()).into_response())
}

#[utoipa::path(post, path = "/v1/sagas/{id}/resume", tag = "sagas", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Continued from where it stopped", body = openapi::SagaDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody), (status = 429, description = "The tenant's max_concurrent executions are running", body = openapi::ErrorBody)))]
async fn resume_saga(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    operate::act(&s, &tenant, &actor, "saga", operate::Action::Resume, &id).await.map(Json)
}

#[utoipa::path(post, path = "/v1/sagas/{id}/cancel", tag = "sagas", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Its completed steps compensated", body = openapi::SagaDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn cancel_saga(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    operate::act(&s, &tenant, &actor, "saga", operate::Action::Cancel, &id).await.map(Json)
}

#[utoipa::path(get, path = "/v1/sagas/{id}/history", tag = "sagas", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Every event, in order", body = openapi::History), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn saga_history(State(s): State<AppState>, Tenant(tenant, _actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    Ok(Json(history_document(s.inner.sagas.history(&tenant, &id).await?)))
}

fn history_document(events: Vec<crate::store::EventRow>) -> Value {
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let mut v = json!({"seq": e.seq, "at": rfc3339(e.at_ms), "kind": e.kind, "detail": e.detail});
            if let Some(step) = e.step {
                v["step"] = json!(step);
            }
            v
        })
        .collect();
    json!({ "events": events })
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
}

#[utoipa::path(get, path = "/v1/sagas", tag = "sagas", params(("state" = Option<String>, Query), ("limit" = Option<u32>, Query)), responses((status = 200, description = "Newest first", body = openapi::SagaList), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn list_sagas(
    State(s): State<AppState>,
    Tenant(tenant, _actor): Tenant,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let state = state_query::<SagaState>(q.state.as_deref())?;
    let limit = parse_limit(q.limit.as_deref())?;
    let sagas = s.inner.sagas.list(&tenant, state, limit).await?;
    Ok(Json(json!({ "sagas": sagas.iter().map(|s| s.document()).collect::<Vec<_>>() })))
}

/// `state` of a list query: none, or one of the protocol's states (400 otherwise).
fn state_query<S: crate::txn::TxState>(state: Option<&str>) -> Result<Option<S>, ApiError> {
    match state {
        None | Some("") => Ok(None),
        Some(s) => S::parse(s).map(Some).ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("unknown state {s:?}"))),
    }
}

// ---- two-phase commit ----

#[utoipa::path(get, path = "/v1/2pc", tag = "2pc", params(("state" = Option<String>, Query), ("limit" = Option<u32>, Query)), responses((status = 200, description = "Newest first", body = openapi::TpcList), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn list_tpc(
    State(s): State<AppState>,
    Tenant(tenant, _actor): Tenant,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let state = state_query::<crate::tpc::TpcState>(q.state.as_deref())?;
    let limit = parse_limit(q.limit.as_deref())?;
    let txs = s.inner.tpc.list(&tenant, state, limit).await?;
    Ok(Json(json!({ "transactions": txs.iter().map(|t| t.document()).collect::<Vec<_>>() })))
}

#[utoipa::path(post, path = "/v1/2pc", tag = "2pc", params(("Idempotency-Key" = Option<String>, Header, description = "The same key and body answer the first response again")), request_body = crate::tpc::CreateTpc, responses((status = 201, description = "Begun", body = openapi::TpcCreated), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn create_tpc(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let trace = traceparent(&headers, "2pc");
    idempotent_create(&s, "2pc", &tenant, &actor, &headers, body, move |s, tenant, asked, bytes, id| async move {
        let mut req: CreateTpc = parse_bytes(&bytes)?;
        req.traceparent = trace;
        let (tx, new) = match s.inner.tpc.create_with_id(&tenant, req, id, Some(&asked)).await {
            Err(TpcError::Store(StoreError::Conflict { id, .. })) => (s.inner.tpc.get(&tenant, &id).await?, false),
            created => (created?, true),
        };
        Ok(Created { body: json!({"status": "success", "transaction_id": tx.id(), "state": "init"}), new })
    })
    .await
}

#[utoipa::path(post, path = "/v1/2pc/{id}/participants", tag = "2pc", params(("id" = String, Path, description = "The transaction's id")), request_body = crate::tpc::ParticipantSpec, responses((status = 200, description = "Added", body = openapi::ParticipantAdded), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn add_participant(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    Id(id): Id,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let spec: ParticipantSpec = parse(body)?;
    let total = s.inner.tpc.add_participant_asked(&tenant, &id, spec, Some(&Asked::new(&actor, "participant_added"))).await?;
    Ok(Json(json!({"status": "success", "total_participants": total})))
}

#[utoipa::path(post, path = "/v1/2pc/{id}/execute", tag = "2pc", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Prepared, decided and told", body = openapi::TpcDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody), (status = 429, description = "The tenant's max_concurrent executions are running", body = openapi::ErrorBody)))]
async fn execute_tpc(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(id): Id) -> Result<Response, ApiError> {
    let run = {
        let (engine, tenant, id, asked) = (s.inner.tpc.clone(), tenant.clone(), id.clone(), Asked::new(&actor, "tpc_execute"));
        async move { Ok(engine.execute_asked(&tenant, &id, Some(&asked)).await?) }
    };
    let tx = s.execution(&tenant, Admit::UntilRunning(&id), None, run).await?;
    Ok(Json(tx.as_document()).into_response())
}

#[utoipa::path(post, path = "/v1/2pc/{id}/abort", tag = "2pc", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Aborted", body = openapi::TpcDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn abort_tpc(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    operate::act(&s, &tenant, &actor, "2pc", operate::Action::Abort, &id).await.map(Json)
}

#[utoipa::path(post, path = "/v1/2pc/{id}/recover", tag = "2pc", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Driven to its end from its durable state", body = openapi::TpcDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody), (status = 429, description = "The tenant's max_concurrent executions are running", body = openapi::ErrorBody)))]
async fn recover_tpc(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    operate::act(&s, &tenant, &actor, "2pc", operate::Action::Recover, &id).await.map(Json)
}

#[utoipa::path(get, path = "/v1/2pc/{id}", tag = "2pc", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "The transaction", body = openapi::TpcDocument), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn get_tpc(State(s): State<AppState>, Tenant(tenant, _actor): Tenant, Id(id): Id) -> Result<Response, ApiError> {
    let tx = s.inner.tpc.get(&tenant, &id).await?;
    Ok(Json(tx.as_document()).into_response())
}

#[utoipa::path(get, path = "/v1/2pc/{id}/history", tag = "2pc", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Every event, in order", body = openapi::History), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn tpc_history(State(s): State<AppState>, Tenant(tenant, _actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    Ok(Json(history_document(s.inner.tpc.history(&tenant, &id).await?)))
}

// ---- managed transactions ----

#[utoipa::path(post, path = "/v1/transactions", tag = "transactions", params(("Idempotency-Key" = Option<String>, Header, description = "The same key and body answer the first response again")), request_body = crate::manager::CreateManaged, responses((status = 201, description = "Created", body = openapi::TransactionCreated), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn create_managed(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let trace = traceparent(&headers, "managed");
    idempotent_create(&s, "transactions", &tenant, &actor, &headers, body, move |s, tenant, asked, bytes, id| async move {
        let mut req: CreateManaged = parse_bytes(&bytes)?;
        req.traceparent = trace;
        let (m, new) = match s.inner.manager.create_with_id(&tenant, req, id, Some(&asked)).await {
            Err(ManagerError::Store(StoreError::Conflict { id, .. })) => (s.inner.manager.get(&tenant, &id).await?, false),
            created => (created?, true),
        };
        Ok(Created { body: json!({"status": "success", "transaction_id": m.id(), "transaction_status": "pending"}), new })
    })
    .await
}

#[utoipa::path(post, path = "/v1/transactions/{id}/participants", tag = "transactions", params(("id" = String, Path, description = "The transaction's id")), request_body = crate::manager::ManagedParticipant, responses((status = 200, description = "Added", body = openapi::ParticipantAdded), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn add_managed_participant(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    Id(id): Id,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let spec: ManagedParticipant = parse(body)?;
    let total = s.inner.manager.add_participant_asked(&tenant, &id, spec, Some(&Asked::new(&actor, "participant_added"))).await?;
    Ok(Json(json!({"status": "success", "total_participants": total})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExecuteManaged {
    #[serde(default)]
    pattern: Option<String>,
}

async fn managed_document(s: &AppState, tenant: &str, m: crate::manager::Managed) -> Result<Response, ApiError> {
    let view = s.inner.manager.view(tenant, &m).await?;
    Ok(Json(view.as_document()).into_response())
}

#[utoipa::path(post, path = "/v1/transactions/{id}/execute", tag = "transactions", params(("id" = String, Path, description = "The transaction's id")), request_body = Option<openapi::ExecuteTransaction>, responses((status = 200, description = "Ran to its end under the pattern selected", body = openapi::TransactionDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody), (status = 429, description = "The tenant's max_concurrent executions are running", body = openapi::ErrorBody)))]
async fn execute_managed(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    Id(id): Id,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let req: ExecuteManaged = parse_optional(body)?;
    let run = {
        let (manager, tenant, id, asked) = (s.inner.manager.clone(), tenant.clone(), id.clone(), Asked::new(&actor, "transaction_execute"));
        async move { Ok(manager.execute_asked(&tenant, &id, req.pattern.as_deref(), Some(&asked)).await?) }
    };
    // The document of the transaction and its delegate as the execution ended them (no read).
    let ended = s.execution(&tenant, Admit::UntilRunning(&id), None, run).await?;
    Ok(Json(ended.as_document()).into_response())
}

#[utoipa::path(get, path = "/v1/transactions/{id}", tag = "transactions", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "The transaction (get_status)", body = openapi::TransactionDocument), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn get_managed(State(s): State<AppState>, Tenant(tenant, _actor): Tenant, Id(id): Id) -> Result<Response, ApiError> {
    let m = s.inner.manager.get(&tenant, &id).await?;
    managed_document(&s, &tenant, m).await
}

#[utoipa::path(post, path = "/v1/transactions/{id}/abort", tag = "transactions", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Aborted", body = openapi::TransactionDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn abort_managed(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    operate::act(&s, &tenant, &actor, "transaction", operate::Action::Abort, &id).await.map(Json)
}

#[utoipa::path(post, path = "/v1/transactions/{id}/recover", tag = "transactions", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Driven to its end", body = openapi::TransactionDocument), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 409, description = "Not in a state that allows this", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody), (status = 429, description = "The tenant's max_concurrent executions are running", body = openapi::ErrorBody)))]
async fn recover_managed(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    operate::act(&s, &tenant, &actor, "transaction", operate::Action::Recover, &id).await.map(Json)
}

#[utoipa::path(get, path = "/v1/transactions/{id}/history", tag = "transactions", params(("id" = String, Path, description = "The transaction's id")), responses((status = 200, description = "Every event, in order", body = openapi::History), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "Unknown, or another tenant's", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn managed_history(State(s): State<AppState>, Tenant(tenant, _actor): Tenant, Id(id): Id) -> Result<Json<Value>, ApiError> {
    Ok(Json(history_document(s.inner.manager.history(&tenant, &id).await?)))
}

#[derive(Deserialize)]
struct ManagedListQuery {
    status: Option<String>,
    limit: Option<String>,
}

#[utoipa::path(get, path = "/v1/transactions", tag = "transactions", params(("status" = Option<String>, Query), ("limit" = Option<u32>, Query)), responses((status = 200, description = "Newest first", body = openapi::TransactionList), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn list_managed(
    State(s): State<AppState>,
    Tenant(tenant, _actor): Tenant,
    query: Result<Query<ManagedListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(st) => Some(Status::parse(st).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("unknown status {st:?}"))
        })?),
    };
    let limit = parse_limit(q.limit.as_deref())?;
    let mut docs = Vec::new();
    for m in s.inner.manager.list(&tenant, status, limit).await? {
        docs.push(s.inner.manager.document(&tenant, &m).await?);
    }
    Ok(Json(json!({ "transactions": docs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultPolicy {
    policy: String,
}

#[utoipa::path(put, path = "/v1/settings/default-policy", tag = "operations", request_body = openapi::SetPolicy, responses((status = 200, description = "Set for the tenant", body = openapi::PolicySet), (status = 400, description = "Malformed request (bad JSON, bad query)", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content", body = openapi::ErrorBody), (status = 500, description = "The server's own fault", body = openapi::ErrorBody), (status = 503, description = "The store does not answer, or the request outlived the server's limit", body = openapi::ErrorBody)))]
async fn set_default_policy(
    State(s): State<AppState>,
    Tenant(tenant, actor): Tenant,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let req: DefaultPolicy = parse(body)?;
    s.inner.manager.set_default_policy(&tenant, &req.policy).await?;
    s.audit(&tenant, &actor, "default_policy_set", json!({"policy": req.policy})).await;
    Ok(Json(json!({"status": "success", "policy": req.policy})))
}

#[utoipa::path(put, path = "/v1/settings/alerts", tag = "operations", request_body = crate::alert::AlertSettings,
    responses((status = 200, description = "Set for the tenant (the secret is not shown again)", body = openapi::AlertsShown),
        (status = 400, description = "Malformed request", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody),
        (status = 413, description = "Body too large", body = openapi::ErrorBody), (status = 422, description = "Invalid content, or a URL the outbound policy refuses", body = openapi::ErrorBody),
        (status = 500, description = "The server's own fault", body = openapi::ErrorBody)))]
async fn set_alerts(State(s): State<AppState>, Tenant(tenant, actor): Tenant, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let req: crate::alert::AlertSettings = parse(body)?;
    req.validate().map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e))?;
    s.inner.invoker.check_endpoint(&tenant, &req.url).map_err(|e| ApiError::from(crate::txn::TxError::EndpointRefused(e.to_string())))?;
    s.inner.alerts.set_settings(&tenant, &req).await?;
    s.audit(&tenant, &actor, "alerts_set", json!({"url": req.url, "events": req.events})).await;
    Ok(Json(json!({"status": "success", "url": req.url, "events": req.events})))
}

#[utoipa::path(get, path = "/v1/settings/alerts", tag = "operations",
    responses((status = 200, description = "The tenant's webhook, without its secret", body = openapi::AlertsShown),
        (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody), (status = 404, description = "No webhook set", body = openapi::ErrorBody),
        (status = 500, description = "The server's own fault", body = openapi::ErrorBody)))]
async fn get_alerts(State(s): State<AppState>, Tenant(tenant, _actor): Tenant) -> Result<Json<Value>, ApiError> {
    let settings = s.inner.alerts.settings(&tenant).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no alert webhook is set"))?;
    Ok(Json(json!({"status": "success", "url": settings.url, "events": settings.events})))
}

fn parse_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    match limit {
        None | Some("") => Ok(50),
        Some(l) => l.parse::<i64>().ok().filter(|l| (1..=1000).contains(l)).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "limit must be a number from 1 to 1000")
        }),
    }
}

#[cfg(test)]
mod edge_tests {
    use super::{is_loopback_name, same_origin};

    #[test]
    fn loopback_names_and_origins_are_read_as_a_browser_writes_them() {
        for host in ["localhost", "localhost:8080", "LOCALHOST", "127.0.0.1", "127.0.0.1:8080", "127.9.9.9:1", "[::1]", "[::1]:8080"] {
            assert!(is_loopback_name(host), "{host}");
        }
        for host in ["", "evil.example", "evil.example:8080", "localhost.evil.example", "10.0.0.1:8080", "[::2]:80", "0.0.0.0:8080"] {
            assert!(!is_loopback_name(host), "{host}");
        }
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("http://Example.com", "example.com:80"));
        assert!(same_origin("https://example.com", "example.com"));
        for (origin, host) in [("https://evil.example", "127.0.0.1:8080"), ("null", "127.0.0.1:8080"), ("http://127.0.0.1:9", "127.0.0.1:8080"), ("file://", "")] {
            assert!(!same_origin(origin, host), "{origin} {host}");
        }
    }
}

#[cfg(test)]
mod guard_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_500_as_json() {
        async fn panics() -> &'static str {
            panic!("a bug in a handler")
        }
        let app = axum::Router::new().route("/p", axum::routing::get(panics)).layer(axum::middleware::from_fn(super::guard));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert!(answer.contains(r#""code":"internal""#), "{answer}");
    }
}
