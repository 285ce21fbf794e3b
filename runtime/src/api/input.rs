//! What a request brings, read defensively: bodies within their caps (the route's and the
//! tenant's, on the bytes actually read, chunked or not) and a deadline, ids in the path as
//! checked text, headers and URIs of bounded size, and every error the router makes itself
//! answered as the JSON error document.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::ApiError;
use super::error::code_for;
use crate::text::{self, MAX_ID_LEN};

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Largest component upload accepted.
pub const MAX_COMPONENT_BODY: usize = 64 << 20;
/// How long a client may take to send its body once its headers arrived.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest sum of header names and values accepted.
pub const MAX_HEADER_BYTES: usize = 32 << 10;
/// Longest request URI accepted.
pub const MAX_URI_BYTES: usize = 8 << 10;

/// How long a body may take to arrive, when the server sets another than
/// `BODY_READ_TIMEOUT` (`serve --body-timeout-ms`).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);


/// The tenant's own cap on JSON bodies, left in the request by the `Tenant` extractor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TenantBodyCap(pub usize);

/// A JSON endpoint's body: at most 1 MiB, and at most the tenant's `max_body_bytes`.
pub(crate) struct JsonBody(pub Bytes);

/// The tenant's own cap on component uploads, left in the request by the `Tenant` extractor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TenantUploadCap(pub usize);

/// Uploads read and compiled at once, server-wide: each holds up to 64 MiB (and its copies
/// while it is hashed and compiled), so a flood of uploads waits here instead of in memory.
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Per tenant, one upload read and compiled at a time: a tenant trickling its uploads holds
/// one of the server's slots at most, and every other tenant has the other.
static UPLOADERS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>> =
    std::sync::LazyLock::new(Default::default);

/// Whose upload a request carries, left in the request by the `Tenant` extractor.
#[derive(Debug, Clone)]
pub(crate) struct Uploader(pub String);

/// A component upload: at most 64 MiB, and at most the tenant's `max_component_bytes`; held
/// with one of the server's upload slots (and its tenant's one) until the request is answered.
pub(crate) struct UploadBody(pub Bytes, pub UploadSlot);

/// The slots an upload holds.
pub(crate) struct UploadSlot {
    _tenant: Option<tokio::sync::OwnedSemaphorePermit>,
    _server: tokio::sync::SemaphorePermit<'static>,
}

/// Waits for `tenant`'s upload slot, then for one of the server's.
pub(crate) async fn upload_slot(tenant: Option<&str>) -> UploadSlot {
    let own = tenant.map(|t| UPLOADERS.lock().unwrap().entry(t.to_string()).or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(1))).clone());
    let _tenant = match own {
        Some(gate) => Some(gate.acquire_owned().await.expect("never closed")),
        None => None,
    };
    UploadSlot { _tenant, _server: UPLOADS.acquire().await.expect("never closed") }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let cap = req.extensions().get::<TenantBodyCap>().map_or(MAX_JSON_BODY, |c| c.0.min(MAX_JSON_BODY));
        read_body(req, cap).await.map(JsonBody)
    }
}

impl<S: Send + Sync> FromRequest<S> for UploadBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let permit = upload_slot(req.extensions().get::<Uploader>().map(|u| u.0.as_str())).await;
        let cap = req.extensions().get::<TenantUploadCap>().map_or(MAX_COMPONENT_BODY, |c| c.0.min(MAX_COMPONENT_BODY));
        Ok(UploadBody(read_body(req, cap).await?, permit))
    }
}

/// How much of a body beyond its cap is read (and dropped) before answering 413, so a
/// client that writes its whole body before reading sees the answer, not a broken pipe.
const DRAIN_BEYOND_CAP: usize = 4 << 20;

async fn read_body(req: Request, cap: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body is larger than the {cap} bytes this endpoint accepts"))
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > (cap + DRAIN_BEYOND_CAP) as u64) {
        return Err(too_large());
    }
    let timeout = req.extensions().get::<BodyTimeout>().map_or(BODY_READ_TIMEOUT, |t| t.0);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut body = req.into_body();
    let mut kept = bytes::BytesMut::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the body did not arrive within {} ms", timeout.as_millis()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("reading the body failed: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total <= cap {
            kept.extend_from_slice(&data);
        } else if total > cap + DRAIN_BEYOND_CAP {
            break;
        }
    }
    if total > cap {
        return Err(too_large());
    }
    Ok(kept.freeze())
}

/// An id from the path, checked as text (no NUL or other control characters, at most 200
/// bytes); a malformed one (not UTF-8 once decoded) is a 400 like any other.
pub(crate) struct Id(pub String);

/// Two ids from the path (`/v1/admin/tenants/{id}/keys/{key_id}`).
pub(crate) struct IdPair(pub String, pub String);

fn checked(id: String) -> Result<String, ApiError> {
    text::check("an id in the path", &id, MAX_ID_LEN).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", m))?;
    Ok(id)
}

fn path_error(e: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text())
}

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(path_error)?;
        Ok(Id(checked(id)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdPair {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((a, b)) = Path::<(String, String)>::from_request_parts(parts, state).await.map_err(path_error)?;
        Ok(IdPair(checked(a)?, checked(b)?))
    }
}

/// The refusal of a request whose headers (431) or URI (414) are too large, before anything
/// reads them.
pub(crate) fn oversized(req: &Request) -> Option<Response> {
    let header_bytes: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("the request's headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"),
            )
            .into_response(),
        );
    }
    // Measured as sent (origin form, or absolute form with its scheme and authority), without
    // writing it out again.
    let uri = req.uri();
    let uri_bytes = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return Some(
            ApiError::new(StatusCode::URI_TOO_LONG, "uri_too_long", format!("the request URI is {uri_bytes} bytes; at most {MAX_URI_BYTES} are accepted"))
                .into_response(),
        );
    }
    None
}

/// `response`, or, when it is an error the router made itself (405, a rejected extractor's
/// text), the JSON error document every other error is; `Allow` and `Retry-After` are kept.
pub(crate) async fn as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let keep: Vec<(header::HeaderName, HeaderValue)> = [header::ALLOW, header::RETRY_AFTER]
        .into_iter()
        .filter_map(|h| response.headers().get(&h).cloned().map(|v| (h, v)))
        .collect();
    let text = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()[..]).chars().take(500).collect::<String>(),
        Err(_) => String::new(),
    };
    let message = if text.trim().is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let mut rewritten = ApiError::new(status, code_for(status), message).into_response();
    for (name, value) in keep {
        rewritten.headers_mut().insert(name, value);
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::upload_slot;

    #[tokio::test(flavor = "current_thread")]
    async fn a_tenant_holds_one_of_the_servers_upload_slots_at_most() {
        let first = upload_slot(Some("slots-a")).await;
        // The same tenant's second upload runs until it waits: for its tenant's slot, not
        // the server's second one...
        let second = tokio::spawn(async { upload_slot(Some("slots-a")).await });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "a tenant's second upload waits for its first");
        // ...which another tenant's upload takes at once.
        let other = tokio::time::timeout(std::time::Duration::from_secs(30), upload_slot(Some("slots-b"))).await;
        assert!(other.is_ok(), "another tenant's upload waited for the first tenant's");
        drop((first, other));
        second.await.unwrap();
    }
}
