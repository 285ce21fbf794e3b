//! The OpenAPI 3.1 document of the API (`GET /v1/openapi.json`), generated from the handlers:
//! every route is registered here, through `utoipa-axum`, together with its `#[utoipa::path]`
//! description, so a route cannot exist without its entry. Request bodies are the engines' own
//! types; the documents the API answers (rendered as JSON in `render`) are described by the
//! schema types below.

#![allow(dead_code)] // the schema types describe JSON; they are never built

use std::sync::OnceLock;

use serde_json::{Map, Value};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "wasmtx", description = "A distributed-transaction coordinator whose business logic is sandboxed WebAssembly. \
        Every error answers `{\"error\": {\"code\", \"message\"}}`; 4xx for the caller's mistakes, 5xx for the server's own faults. \
        Whenever tenants exist, every request needs `Authorization: Bearer <api key>`."),
    tags(
        (name = "plugins", description = "WebAssembly components: steps, participants, policies"),
        (name = "sagas"), (name = "2pc", description = "Two-phase commit"),
        (name = "transactions", description = "Managed transactions: the pattern picked automatically"),
        (name = "operations", description = "Tenants, settings, audit, health"),
    ),
    modifiers(&BearerAuth),
)]
struct Api;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        openapi.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// Every route of the API with its description.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    use super::auth;
    use super::*;
    OpenApiRouter::with_openapi(Api::openapi())
        .routes(routes!(list_plugins))
        .routes(routes!(get_plugin))
        .routes(routes!(put_plugin))
        .routes(routes!(create_saga, list_sagas))
        .routes(routes!(get_saga))
        .routes(routes!(add_step))
        .routes(routes!(execute_saga))
        .routes(routes!(resume_saga))
        .routes(routes!(cancel_saga))
        .routes(routes!(saga_history))
        .routes(routes!(create_tpc, list_tpc))
        .routes(routes!(get_tpc))
        .routes(routes!(add_participant))
        .routes(routes!(execute_tpc))
        .routes(routes!(abort_tpc))
        .routes(routes!(recover_tpc))
        .routes(routes!(tpc_history))
        .routes(routes!(create_managed, list_managed))
        .routes(routes!(get_managed))
        .routes(routes!(add_managed_participant))
        .routes(routes!(execute_managed))
        .routes(routes!(abort_managed))
        .routes(routes!(recover_managed))
        .routes(routes!(managed_history))
        .routes(routes!(set_default_policy))
        .routes(routes!(set_alerts, get_alerts))
        .routes(routes!(auth::create_tenant))
        .routes(routes!(auth::add_key))
        .routes(routes!(auth::revoke_key))
        .routes(routes!(super::search::search))
        .routes(routes!(super::operate::bulk))
        .routes(routes!(audit_log))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The document, as JSON text (built once).
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| routes().split_for_parts().1.to_pretty_json().expect("the document serialises"))
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
pub(super) async fn openapi_json() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document())
}

// The answers.

/// Every error.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// snake_case, stable: `not_found`, `wrong_state`, `invalid_request`, `endpoint_refused`, …
    code: String,
    message: String,
}

/// A plugin version as uploaded.
#[derive(ToSchema)]
pub struct PluginUploaded {
    name: String,
    version: i64,
    /// sha256 of the component's bytes.
    digest: String,
    /// Roles: `step`, `participant`, `policy`.
    exports: Vec<String>,
    created_at: String,
}

#[derive(ToSchema)]
pub struct PluginList {
    plugins: Vec<PluginSummary>,
}

#[derive(ToSchema)]
pub struct PluginSummary {
    name: String,
    latest_version: i64,
    exports: Vec<String>,
}

#[derive(ToSchema)]
pub struct PluginVersions {
    name: String,
    versions: Vec<PluginVersion>,
}

#[derive(ToSchema)]
pub struct PluginVersion {
    version: i64,
    digest: String,
    exports: Vec<String>,
    created_at: String,
}

/// `success`, `failed`, `aborted` or `error`, as in the Kailash transaction nodes.
#[derive(ToSchema)]
pub enum ResultStatus {
    #[schema(rename = "success")]
    Success,
    #[schema(rename = "failed")]
    Failed,
    #[schema(rename = "aborted")]
    Aborted,
    #[schema(rename = "error")]
    Error,
}

#[derive(ToSchema)]
pub struct SagaCreated {
    status: ResultStatus,
    saga_id: String,
    state: String,
}

#[derive(ToSchema)]
pub struct StepAdded {
    status: ResultStatus,
    step_index: usize,
    total_steps: usize,
}

/// A saga. `state` ∈ pending, running, completed, compensating, compensated, failed.
#[derive(ToSchema)]
pub struct SagaDocument {
    status: ResultStatus,
    saga_id: String,
    saga_name: String,
    state: String,
    context: Map<String, Value>,
    steps: Vec<StepDocument>,
    error: Option<String>,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    duration_ms: Option<i64>,
}

/// A step. `state` ∈ pending, running, completed, failed, uncertain, compensating,
/// compensated, compensation_failed.
#[derive(ToSchema)]
pub struct StepDocument {
    name: String,
    state: String,
    attempts: u32,
    output: Option<Value>,
    error: Option<String>,
    /// `name@version`, pinned when the saga started.
    plugin_version: Option<String>,
    compensation_plugin_version: Option<String>,
    compensation_endpoint: Option<String>,
    compensation_attempts: Option<u32>,
    /// `unknown` when the step was given up without a clear answer.
    forward_outcome: Option<String>,
    depends_on: Option<Vec<String>>,
}

#[derive(ToSchema)]
pub struct SagaList {
    sagas: Vec<SagaDocument>,
}

#[derive(ToSchema)]
pub struct TpcCreated {
    status: ResultStatus,
    transaction_id: String,
    state: String,
}

#[derive(ToSchema)]
pub struct ParticipantAdded {
    status: ResultStatus,
    total_participants: usize,
}

/// A 2PC transaction. `state` ∈ init, preparing, prepared, committing, committed, aborting,
/// aborted, failed.
#[derive(ToSchema)]
pub struct TpcDocument {
    status: ResultStatus,
    transaction_id: String,
    transaction_name: String,
    state: String,
    /// `commit` or `abort`, once taken.
    decision: Option<String>,
    participants: Vec<TpcParticipantDocument>,
    error: Option<String>,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    duration_ms: Option<i64>,
}

#[derive(ToSchema)]
pub struct TpcParticipantDocument {
    participant_id: String,
    /// `prepared` or `abort`.
    vote: Option<String>,
    state: String,
    plugin_version: Option<String>,
}

#[derive(ToSchema)]
pub struct TpcList {
    transactions: Vec<TpcDocument>,
}

#[derive(ToSchema)]
pub struct TransactionCreated {
    status: ResultStatus,
    transaction_id: String,
    transaction_status: String,
}

/// A managed transaction. `transaction_status` ∈ pending, running, committed, compensated,
/// aborted, failed.
#[derive(ToSchema)]
pub struct TransactionDocument {
    status: ResultStatus,
    transaction_id: String,
    transaction_name: String,
    /// `saga`, `two_phase_commit`, or null before it runs.
    selected_pattern: Option<String>,
    transaction_status: String,
    requirements: Value,
    context: Map<String, Value>,
    participants: Vec<Value>,
    policy: Value,
    /// The saga or 2PC transaction it runs as: its kind, id and state.
    coordinator_status: Option<Value>,
    delegate_id: Option<String>,
    execution_time_ms: Option<i64>,
    error: Option<String>,
    reason: Option<String>,
}

#[derive(ToSchema)]
pub struct TransactionList {
    transactions: Vec<TransactionDocument>,
}

#[derive(ToSchema)]
pub struct History {
    events: Vec<HistoryEvent>,
}

#[derive(ToSchema)]
pub struct HistoryEvent {
    seq: i64,
    at: String,
    kind: String,
    step: Option<String>,
    detail: Value,
}

#[derive(ToSchema)]
pub struct ExecuteSaga {
    /// Answer at the end (200) or at once (202). Default true.
    wait: Option<bool>,
}

#[derive(ToSchema)]
pub struct ExecuteTransaction {
    /// `auto`, `saga` or `two_phase_commit`.
    pattern: Option<String>,
}

#[derive(ToSchema)]
pub struct SetPolicy {
    /// A policy plugin's name, or `builtin`.
    policy: String,
}

#[derive(ToSchema)]
pub struct PolicySet {
    status: ResultStatus,
    policy: String,
}

#[derive(ToSchema)]
pub struct TenantCreated {
    tenant_id: String,
    key_id: String,
    /// Shown once.
    api_key: String,
}

#[derive(ToSchema)]
pub struct KeyAdded {
    tenant_id: String,
    key_id: String,
    /// Shown once.
    api_key: String,
}

#[derive(ToSchema)]
pub struct KeyRevoked {
    status: ResultStatus,
    tenant_id: String,
    key_id: String,
    revoked: bool,
}

#[derive(ToSchema)]
pub struct AuditLog {
    entries: Vec<AuditEntry>,
}

#[derive(ToSchema)]
pub struct AuditEntry {
    at: String,
    /// The key id, or `admin`.
    actor: String,
    action: String,
    detail: Value,
}

#[derive(ToSchema)]
pub struct Health {
    status: String,
    /// `sqlite`, `postgres`, `redis`, `redis-cluster` or `memory`.
    store: String,
}

/// A page of a search.
#[derive(ToSchema)]
pub struct SearchPage {
    /// Documents of their kinds (saga, 2PC, managed), each with `kind`, newest first.
    items: Vec<Value>,
    /// Give it as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct BulkResult {
    status: ResultStatus,
    action: String,
    results: Vec<BulkItemResult>,
}

#[derive(ToSchema)]
pub struct BulkItemResult {
    kind: String,
    id: String,
    /// `success` or `error`.
    status: String,
    /// The transaction's document after the action.
    document: Option<Value>,
    code: Option<String>,
    error: Option<String>,
}

/// A tenant's alert webhook as shown back (never its secret).
#[derive(ToSchema)]
pub struct AlertsShown {
    status: ResultStatus,
    url: String,
    events: Vec<String>,
}
