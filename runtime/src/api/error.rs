//! API errors: a status, a stable snake_case code and a sentence, rendered as API.md says.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::plugin::{CatalogError, LookupError};
use crate::txn::TxError;
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

/// Each kind of engine error, mapped once.
impl From<TxError> for ApiError {
    fn from(e: TxError) -> Self {
        let (status, code) = match &e {
            TxError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            TxError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state"),
            TxError::DecidedCommit(_) => (StatusCode::CONFLICT, "decided_commit"),
            TxError::Busy(_) => (StatusCode::CONFLICT, "busy"),
            TxError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            TxError::EndpointRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "endpoint_refused"),
            TxError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            TxError::Plugin(_) | TxError::Store(_) => {
                return match e {
                    TxError::Plugin(e) => e.into(),
                    TxError::Store(e) => e.into(),
                    _ => unreachable!("matched above"),
                };
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(e: TxError) -> (u16, &'static str) {
        let api: ApiError = e.into();
        (api.status.as_u16(), api.code)
    }

    #[test]
    fn each_kind_of_engine_error_has_its_status_and_code() {
        let id = || "t-1".to_string();
        assert_eq!(mapped(TxError::NotFound { kind: "saga", id: id() }), (404, "not_found"));
        assert_eq!(mapped(TxError::WrongState { id: id(), state: "running", action: "execute" }), (409, "wrong_state"));
        assert_eq!(mapped(TxError::DecidedCommit(id())), (409, "decided_commit"));
        assert_eq!(mapped(TxError::Busy(id())), (409, "busy"));
        assert_eq!(mapped(TxError::Invalid("no".into())), (422, "invalid_request"));
        assert_eq!(mapped(TxError::EndpointRefused("no".into())), (422, "endpoint_refused"));
        assert_eq!(mapped(TxError::Internal("saga driver failed".into())), (500, "internal"), "a driver failure is the server's");
        assert_eq!(mapped(TxError::Store(StoreError::Closed)), (500, "store_error"));
        let unknown = CatalogError::Lookup(LookupError::UnknownPlugin("p".into()));
        assert_eq!(mapped(TxError::Plugin(unknown)), (422, "unknown_plugin"));
        assert_eq!(mapped(crate::txn::IllegalTransition { from: "Completed".into(), to: "Running".into() }.into()), (500, "internal"));
    }
}
