//! Tenants and keys: who is calling. API keys are `wtx_<key id>_<secret>`; the store keeps
//! only a salted SHA-256 of the secret, compared in constant time. With no tenant configured
//! every request is the implicit tenant `default` and needs no key.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{AppState, ApiError, parse};
use crate::plugin::{CallLimits, valid_name};
use crate::store::{KeyRow, TenantRow, now_ms};

/// The calling tenant, established from the request's API key, and who called: `key:<id>`,
/// or `anonymous` in single-tenant mode.
pub struct Tenant(pub String, pub String);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let store = &state.inner.store;
        if !store.has_tenants().await? {
            return Ok(Tenant(crate::api_tenant().to_string(), "anonymous".into()));
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m.to_string());
        let token = bearer(&parts.headers).ok_or_else(|| unauthorized("an API key is required: Authorization: Bearer <key>"))?;
        let (key_id, secret) = split_key(token).ok_or_else(|| unauthorized("malformed API key"))?;
        let key = store.live_key(key_id).await?.ok_or_else(|| unauthorized("unknown or revoked API key"))?;
        if !constant_time_eq(hash_secret(&key.salt, secret).as_bytes(), key.hash.as_bytes()) {
            return Err(unauthorized("unknown or revoked API key"));
        }
        let limits = state.load_tenant_limits(&key.tenant_id).await?;
        let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let is_upload = parts.uri.path().starts_with("/v1/plugins/");
        if let (Some(max), Some(length), false) = (limits.max_body_bytes, length, is_upload)
            && length > max
        {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is {length} bytes; this tenant may send at most {max}"),
            ));
        }
        Ok(Tenant(key.tenant_id, format!("key:{}", key.key_id)))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn split_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("wtx_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some((id, secret))
}

fn hash_secret(salt: &str, secret: &str) -> String {
    hex::encode(Sha256::new().chain_update(salt.as_bytes()).chain_update(secret.as_bytes()).finalize())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new key for `tenant`: the row to store and the key to show once.
fn new_key(tenant: &str) -> (KeyRow, String) {
    let key_id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let salt = hex::encode(rand::random::<[u8; 16]>());
    let row = KeyRow { key_id: key_id.clone(), tenant_id: tenant.into(), hash: hash_secret(&salt, &secret), salt, created_at_ms: now_ms() };
    (row, format!("wtx_{key_id}_{secret}"))
}

/// Per-tenant limits (API.md "Tenants and operations").
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub memory_mb: Option<u64>,
    pub call_timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub max_concurrent: Option<usize>,
    /// Largest component this tenant may upload, in bytes (the server's own cap still applies).
    pub max_component_bytes: Option<usize>,
    /// Versions a plugin name of this tenant may have.
    pub max_versions: Option<i64>,
    /// Largest request body (by Content-Length) this tenant may send to JSON endpoints; the
    /// server's own caps (1 MiB JSON, 64 MiB components) still apply.
    pub max_body_bytes: Option<u64>,
}

impl TenantLimits {
    fn validate(&self) -> Result<(), String> {
        if self.memory_mb.is_some_and(|m| !(1..=1024).contains(&m)) {
            return Err("limits.memory_mb must be between 1 and 1024".into());
        }
        if self.call_timeout_ms.is_some_and(|t| !(1..=3_600_000).contains(&t)) {
            return Err("limits.call_timeout_ms must be between 1 and 3600000".into());
        }
        if self.max_concurrent.is_some_and(|c| c == 0) {
            return Err("limits.max_concurrent must be at least 1".into());
        }
        if self.max_versions.is_some_and(|v| v < 1) || self.max_component_bytes.is_some_and(|b| b == 0) {
            return Err("limits.max_versions and limits.max_component_bytes must be positive".into());
        }
        Ok(())
    }

    pub fn call_limits(&self) -> CallLimits {
        let default = CallLimits::default();
        CallLimits {
            timeout: self.call_timeout_ms.map_or(default.timeout, std::time::Duration::from_millis),
            memory_bytes: self.memory_mb.map_or(default.memory_bytes, |m| (m as usize) << 20),
            fuel: self.fuel,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    tenant_id: String,
    #[serde(default)]
    limits: Option<TenantLimits>,
    #[serde(default)]
    allowed_hosts: Option<Vec<String>>,
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.inner.admin_token else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "admin_disabled", "the admin API is off: start the server with WASMTX_ADMIN_TOKEN set"));
    };
    match bearer(headers) {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the admin token is missing or wrong")),
    }
}

pub(super) async fn create_tenant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_admin(&s, &headers)?;
    let req: CreateTenant = parse(body)?;
    if !valid_name(&req.tenant_id) {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "tenant_id must be 1-64 of a-z, 0-9, '-', '_'"));
    }
    let limits = req.limits.unwrap_or_default();
    limits.validate().map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m))?;
    let hosts = req.allowed_hosts.unwrap_or_default();
    if hosts.len() > 100 || hosts.iter().any(|h| h.is_empty() || h.len() > 255 || h.contains(['/', ' ', '@'])) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "allowed_hosts must be at most 100 entries of `host` or `host:port`",
        ));
    }
    let row = TenantRow {
        tenant_id: req.tenant_id.clone(),
        limits: serde_json::to_value(&limits).expect("limits serialise"),
        allowed_hosts: json!(hosts),
        created_at_ms: now_ms(),
    };
    let (key, api_key) = new_key(&req.tenant_id);
    if !s.inner.store.create_tenant(&row, &key).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, "tenant_exists", format!("tenant {} already exists", req.tenant_id)));
    }
    tracing::info!(tenant = %req.tenant_id, "tenant created");
    s.inner.store.audit(&req.tenant_id, "admin", "tenant_created", &json!({"limits": row.limits, "key_id": key.key_id})).await?;
    let body = json!({"tenant_id": req.tenant_id, "api_key": api_key, "key_id": key.key_id});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) async fn add_key(State(s): State<AppState>, headers: HeaderMap, Path(tenant): Path<String>) -> Result<Response, ApiError> {
    require_admin(&s, &headers)?;
    if s.inner.store.tenant(&tenant).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no tenant {tenant:?}")));
    }
    let (key, api_key) = new_key(&tenant);
    s.inner.store.add_key(&key).await?;
    s.inner.store.audit(&tenant, "admin", "key_added", &json!({"key_id": key.key_id})).await?;
    Ok((StatusCode::CREATED, Json(json!({"tenant_id": tenant, "api_key": api_key, "key_id": key.key_id}))).into_response())
}

pub(super) async fn revoke_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    if !s.inner.store.revoke_key(&tenant, &key_id, now_ms()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("tenant {tenant:?} has no live key {key_id:?}")));
    }
    s.inner.store.audit(&tenant, "admin", "key_revoked", &json!({"key_id": key_id})).await?;
    Ok(Json(json!({"status": "success", "tenant_id": tenant, "key_id": key_id, "revoked": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_against_their_salted_hash_only() {
        let (row, key) = new_key("acme");
        let (id, secret) = split_key(&key).unwrap();
        assert_eq!(id, row.key_id);
        assert!(!row.hash.contains(secret), "the secret is not stored");
        assert!(constant_time_eq(hash_secret(&row.salt, secret).as_bytes(), row.hash.as_bytes()));
        let mut wrong = secret.to_string();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        assert!(!constant_time_eq(hash_secret(&row.salt, &wrong).as_bytes(), row.hash.as_bytes()));
        assert!(split_key("wtx_short_x").is_none());
        assert!(split_key("Bearer nonsense").is_none());
    }
}
