//! API errors: a status, a stable snake_case code and a sentence, rendered as API.md says.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::plugin::{CatalogError, LookupError};
use crate::saga::SagaError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn from_body_rejection(r: BytesRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "body_too_large", "the request body is larger than this endpoint accepts")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", r.body_text())
        }
    }
}

/// The code of an error answer the router or HTTP layer made itself (405, 413, 414, …).
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = json!({"error": {"code": self.code, "message": self.message}});
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            return (self.status, [(axum::http::header::RETRY_AFTER, "1")], Json(body)).into_response();
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", e.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Load(crate::plugin::LoadError::BadName(_)) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_plugin_name", e.to_string())
            }
            CatalogError::Load(crate::plugin::LoadError::TooLarge { .. }) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.to_string())
            }
            CatalogError::Load(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_component", e.to_string()),
            CatalogError::Lookup(LookupError::BadReference(_)) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin_reference", e.to_string())
            }
            CatalogError::Lookup(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_plugin", e.to_string()),
            CatalogError::Store(e) => e.into(),
            CatalogError::MissingBytes(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", e.to_string()),
        }
    }
}

impl From<SagaError> for ApiError {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            SagaError::WrongState { .. } => ApiError::new(StatusCode::CONFLICT, "wrong_state", e.to_string()),
            SagaError::Busy(_) => ApiError::new(StatusCode::CONFLICT, "busy", e.to_string()),
            SagaError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string()),
            SagaError::EndpointRefused(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "endpoint_refused", e.to_string()),
            SagaError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
            SagaError::Plugin(e) => e.into(),
            SagaError::Store(e) => e.into(),
        }
    }
}

impl From<crate::tpc::TpcError> for ApiError {
    fn from(e: crate::tpc::TpcError) -> Self {
        use crate::tpc::TpcError;
        match e {
            TpcError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            TpcError::WrongState { .. } => ApiError::new(StatusCode::CONFLICT, "wrong_state", e.to_string()),
            TpcError::DecidedCommit(_) => ApiError::new(StatusCode::CONFLICT, "decided_commit", e.to_string()),
            TpcError::Busy(_) => ApiError::new(StatusCode::CONFLICT, "busy", e.to_string()),
            TpcError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string()),
            TpcError::EndpointRefused(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "endpoint_refused", e.to_string()),
            TpcError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
            TpcError::Plugin(e) => e.into(),
            TpcError::Store(e) => e.into(),
        }
    }
}

impl From<crate::manager::ManagerError> for ApiError {
    fn from(e: crate::manager::ManagerError) -> Self {
        use crate::manager::ManagerError;
        match e {
            ManagerError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            ManagerError::WrongState { .. } => ApiError::new(StatusCode::CONFLICT, "wrong_state", e.to_string()),
            ManagerError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string()),
            ManagerError::Plugin(e) => e.into(),
            ManagerError::Store(e) => e.into(),
            ManagerError::Saga(e) => e.into(),
            ManagerError::Tpc(e) => e.into(),
        }
    }
}
