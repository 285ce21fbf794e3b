//! What an operator does to a transaction — resume, cancel, recover, abort — written once:
//! the single endpoints (`POST /v1/sagas/{id}/resume`, …) and the bulk one
//! (`POST /v1/bulk/{action}` on a search's items) both act through [`act`], each action
//! admitted against the tenant's limits and audited.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Tenant;
use super::error::ApiError;
use super::input::{Id, JsonBody};
use super::{Admit, AppState, openapi, parse};
use crate::saga::SagaState;
use crate::text::{self, MAX_ID_LEN};
use crate::tpc::TpcState;

/// Items one bulk request may name.
pub const MAX_BULK: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A stopped saga continues; a 2PC or managed transaction is recovered.
    Resume,
    /// A saga's completed steps are compensated; a 2PC or managed transaction is aborted.
    Cancel,
    /// Driven to its end from its durable state (a saga: resumed).
    Recover,
    /// A 2PC or managed transaction is aborted (a saga: cancelled).
    Abort,
}

impl Action {
    fn parse(text: &str) -> Option<Action> {
        serde_json::from_value(json!(text)).ok()
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Recover => "recover",
            Action::Abort => "abort",
        }
    }

    /// Continue (`true`) or undo (`false`).
    fn continues(self) -> bool {
        matches!(self, Action::Resume | Action::Recover)
    }
}

/// Applies `action` to transaction `id` of `kind` (`saga`, `2pc`, `transaction`), audited;
/// answers its document.
pub(super) async fn act(s: &AppState, tenant: &str, actor: &str, kind: &str, action: Action, id: &str) -> Result<Value, ApiError> {
    let detail = json!({"id": id, "action": action.as_str()});
    match (kind, action.continues()) {
        ("saga", true) => {
            let run = {
                let (engine, tenant, id) = (s.inner.sagas.clone(), tenant.to_string(), id.to_string());
                async move { Ok(engine.resume(&tenant, &id).await?) }
            };
            // A running saga was counted when it started; one that failed runs again when resumed.
            let runs_again = s.inner.sagas.get(tenant, id).await?.state == SagaState::Failed;
            let admit = if runs_again { Admit::UntilRunning(id) } else { Admit::No };
            Ok(s.execution(tenant, admit, Some((actor, "saga_resume", detail)), run).await?.document())
        }
        ("saga", false) => {
            let saga = s.inner.sagas.cancel(tenant, id).await?;
            s.audit(tenant, actor, "saga_cancel", detail).await;
            Ok(saga.document())
        }
        ("2pc", true) => {
            let run = {
                let (engine, tenant, id) = (s.inner.tpc.clone(), tenant.to_string(), id.to_string());
                async move { Ok(engine.recover(&tenant, &id).await?) }
            };
            // A running transaction was counted when it started; a failed one runs again.
            let runs_again = s.inner.tpc.get(tenant, id).await?.state == TpcState::Failed;
            let admit = if runs_again { Admit::UntilRunning(id) } else { Admit::No };
            Ok(s.execution(tenant, admit, Some((actor, "tpc_recover", detail)), run).await?.document())
        }
        ("2pc", false) => {
            let tx = s.inner.tpc.abort(tenant, id).await?;
            s.audit(tenant, actor, "tpc_abort", detail).await;
            Ok(tx.document())
        }
        ("transaction", true) => {
            let run = {
                let (manager, tenant, id) = (s.inner.manager.clone(), tenant.to_string(), id.to_string());
                async move { Ok(manager.recover(&tenant, &id).await?) }
            };
            let m = s.execution(tenant, Admit::No, Some((actor, "transaction_recover", detail)), run).await?;
            Ok(s.inner.manager.document(tenant, &m).await?)
        }
        ("transaction", false) => {
            let m = s.inner.manager.abort(tenant, id).await?;
            s.audit(tenant, actor, "transaction_abort", detail).await;
            Ok(s.inner.manager.document(tenant, &m).await?)
        }
        (other, _) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", format!("unknown kind {other:?}: saga, 2pc or transaction"))),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Bulk {
    /// At most 100: `{kind, id}`, as a search's items carry them (`kind` and the id field of
    /// the kind's document, or `id`).
    items: Vec<BulkItem>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct BulkItem {
    /// `saga`, `2pc` or `transaction`.
    kind: String,
    #[serde(alias = "saga_id", alias = "transaction_id")]
    id: String,
}

/// One action on many transactions (a search's result): each item acted on and audited on
/// its own; one that cannot be (wrong state, unknown) says why without stopping the others.
#[utoipa::path(post, path = "/v1/bulk/{action}", tag = "operations",
    params(("action" = String, Path, description = "resume, cancel, recover or abort")),
    request_body = Bulk,
    responses(
        (status = 200, description = "Each item's outcome, in order", body = openapi::BulkResult),
        (status = 400, description = "Malformed request", body = openapi::ErrorBody),
        (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody),
        (status = 404, description = "No such action", body = openapi::ErrorBody),
        (status = 413, description = "Body too large", body = openapi::ErrorBody),
        (status = 422, description = "More than 100 items, or a bad item", body = openapi::ErrorBody),
        (status = 500, description = "The server's own fault", body = openapi::ErrorBody)))]
pub(super) async fn bulk(State(s): State<AppState>, Tenant(tenant, actor): Tenant, Id(action): Id, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let action = Action::parse(&action)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no bulk action {action:?}: resume, cancel, recover or abort")))?;
    let req: Bulk = parse(body)?;
    if req.items.len() > MAX_BULK {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", format!("at most {MAX_BULK} items per request")));
    }
    // Checked as a path id is, all before any is acted on: a request with an id no store can
    // hold (NUL) is malformed, not an item that cannot be acted on.
    for (i, item) in req.items.iter().enumerate() {
        text::check(&format!("items[{i}].id"), &item.id, MAX_ID_LEN)
            .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m))?;
    }
    let mut results = Vec::with_capacity(req.items.len());
    for item in &req.items {
        let mut result = json!({"kind": item.kind, "id": item.id});
        match act(&s, &tenant, &actor, &item.kind, action, &item.id).await {
            Ok(doc) => {
                result["status"] = json!("success");
                result["document"] = doc;
            }
            Err(e) => {
                result["status"] = json!("error");
                result["code"] = json!(e.code);
                result["error"] = json!(e.message);
            }
        }
        results.push(result);
    }
    Ok(Json(json!({"status": "success", "action": action.as_str(), "results": results})))
}
