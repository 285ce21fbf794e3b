//! Tenants and keys: who is calling. API keys are `wtx_<key id>_<secret>`; the store keeps
//! only a salted SHA-256 of the secret, compared in constant time. With no tenant configured
//! every request is the implicit tenant `default` and needs no key.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::input::{Id, IdPair, JsonBody};
use super::{AppState, ApiError, parse};
use crate::outbound::{DEFAULT_MAX_ANSWER_BYTES, HostRule, MAX_ANSWER_BYTES_LIMIT};
use crate::participant::TenantGrant;
use crate::plugin::{CallLimits, HostShare, valid_name};
use crate::store::{KeyRow, TenantRow, now_ms};

/// The calling tenant, established from the request's API key, and who called: `key:<id>`,
/// or `anonymous` in single-tenant mode.
pub struct Tenant(pub String, pub String);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.has_tenants().await? {
            if !state.inner.single_tenant {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "no tenant exists yet: an operator creates one with the admin API (this server does not serve single-tenant mode beyond loopback)",
                ));
            }
            parts.extensions.insert(super::input::Uploader(crate::api_tenant().to_string()));
            return Ok(Tenant(crate::api_tenant().to_string(), "anonymous".into()));
        }
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "an API key is required: Authorization: Bearer <key>"))?;
        let key = key_holder(state, token).await?;
        let limits = state.load_tenant_limits(&key.tenant_id).await?;
        // JSON bodies are read under this cap, on the bytes read (uploads have their own).
        if let Some(max) = limits.max_body_bytes {
            parts.extensions.insert(super::input::TenantBodyCap(usize::try_from(max).unwrap_or(usize::MAX)));
        }
        if let Some(max) = limits.max_component_bytes {
            parts.extensions.insert(super::input::TenantUploadCap(max));
        }
        parts.extensions.insert(super::input::Uploader(key.tenant_id.clone()));
        Ok(Tenant(key.tenant_id, format!("key:{}", key.key_id)))
    }
}

/// The live key `token` is (`wtx_<key id>_<secret>`), its secret checked against the stored
/// salted hash in constant time; its tenant's limits are loaded. The API's `Tenant` and the
/// console's sign-in both ask here.
pub(super) async fn key_holder(state: &AppState, token: &str) -> Result<KeyRow, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m.to_string());
    let (key_id, secret) = split_key(token).ok_or_else(|| unauthorized("malformed API key"))?;
    let key = match state.inner.remembered.key(key_id) {
        Some(key) => key,
        None => {
            let key = state.inner.store.live_key(key_id).await?.ok_or_else(|| unauthorized("unknown or revoked API key"))?;
            state.inner.remembered.remember_key(&key);
            key
        }
    };
    if !constant_time_eq(hash_secret(&key.salt, secret).as_bytes(), key.hash.as_bytes()) {
        return Err(unauthorized("unknown or revoked API key"));
    }
    Ok(key)
}

/// How long what the store said about tenants and keys is believed without asking again: a
/// tenant created, or a key revoked, through another coordinator takes effect here within
/// this (through this one, at once).
pub const REMEMBER_FOR: Duration = Duration::from_secs(1);

/// Keys remembered at most; past this the memory is emptied (and filled again as asked).
const MAX_REMEMBERED_KEYS: usize = 10_000;

/// What every request would otherwise ask the store: whether any tenant exists (once yes, for
/// good: tenants are never deleted) and the live keys seen lately. Only answers the store
/// gave are kept — an unknown key is asked again every time — and each key is still checked
/// against its salted hash on every request.
#[derive(Default)]
pub(super) struct Remembered {
    tenants_exist: AtomicBool,
    no_tenants_at: Mutex<Option<Instant>>,
    keys: Mutex<HashMap<String, (KeyRow, Instant)>>,
}

impl Remembered {
    /// `Some(answer)` if the store answered lately (or tenants are known to exist).
    pub(super) fn has_tenants(&self) -> Option<bool> {
        if self.tenants_exist.load(Ordering::Relaxed) {
            return Some(true);
        }
        let asked = *self.no_tenants_at.lock().unwrap();
        asked.filter(|at| at.elapsed() < REMEMBER_FOR).map(|_| false)
    }

    /// The store's answer to "do tenants exist?".
    pub(super) fn remember_tenants(&self, exist: bool) {
        match exist {
            true => self.tenants_exist(),
            false => *self.no_tenants_at.lock().unwrap() = Some(Instant::now()),
        }
    }

    pub(super) fn tenants_exist(&self) {
        self.tenants_exist.store(true, Ordering::Relaxed);
    }

    fn key(&self, key_id: &str) -> Option<KeyRow> {
        let keys = self.keys.lock().unwrap();
        keys.get(key_id).filter(|(_, at)| at.elapsed() < REMEMBER_FOR).map(|(key, _)| key.clone())
    }

    fn remember_key(&self, key: &KeyRow) {
        let mut keys = self.keys.lock().unwrap();
        if keys.len() >= MAX_REMEMBERED_KEYS {
            keys.clear();
        }
        keys.insert(key.key_id.clone(), (key.clone(), Instant::now()));
    }

    fn forget_key(&self, key_id: &str) {
        self.keys.lock().unwrap().remove(key_id);
    }
}

/// The credentials of `Authorization: Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn split_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("wtx_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some((id, secret))
}

fn hash_secret(salt: &str, secret: &str) -> String {
    hex::encode(Sha256::new().chain_update(salt.as_bytes()).chain_update(secret.as_bytes()).finalize())
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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

/// Most running transactions a tenant may be allowed: a bound well past any real fleet's,
/// that keeps the count comparable with the store's (an `i64`).
pub const MAX_CONCURRENT_LIMIT: usize = 1_000_000;

/// Per-tenant limits (API.md "Tenants and operations").
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, utoipa::ToSchema)]
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
    /// Largest request body this tenant may send to JSON endpoints, counted on the bytes
    /// read; the server's own caps (1 MiB JSON, 64 MiB components) still apply.
    pub max_body_bytes: Option<u64>,
    /// Plugin instances this tenant's calls may hold at once (default: the host's pool).
    pub max_instances: Option<u32>,
    /// Sum of the memory caps of this tenant's concurrent plugin calls, in MiB (default: no
    /// bound but `max_instances` × `memory_mb`).
    pub max_plugin_memory_mb: Option<u64>,
    /// Largest answer accepted from this tenant's HTTP participants and plugins, in bytes
    /// (default 1 MiB, at most 16 MiB).
    pub max_answer_bytes: Option<usize>,
    /// How long this tenant's ended transactions and idempotency replies are kept, in ms;
    /// `0` keeps them forever (default: the server's `--retention-ms`, 7 days).
    pub retention_ms: Option<u64>,
}

impl TenantLimits {
    fn validate(&self) -> Result<(), String> {
        if self.memory_mb.is_some_and(|m| !(1..=1024).contains(&m)) {
            return Err("limits.memory_mb must be between 1 and 1024".into());
        }
        if self.call_timeout_ms.is_some_and(|t| !(1..=3_600_000).contains(&t)) {
            return Err("limits.call_timeout_ms must be between 1 and 3600000".into());
        }
        if self.max_concurrent.is_some_and(|c| !(1..=MAX_CONCURRENT_LIMIT).contains(&c)) {
            return Err(format!("limits.max_concurrent must be between 1 and {MAX_CONCURRENT_LIMIT}"));
        }
        if self.max_versions.is_some_and(|v| v < 1) || self.max_component_bytes.is_some_and(|b| b == 0) {
            return Err("limits.max_versions and limits.max_component_bytes must be positive".into());
        }
        if self.retention_ms.is_some_and(|r| r > 10 * 365 * 86_400_000) {
            return Err("limits.retention_ms must be at most ten years (0 keeps forever)".into());
        }
        if self.max_instances.is_some_and(|n| n == 0) {
            return Err("limits.max_instances must be at least 1".into());
        }
        if self.max_plugin_memory_mb.is_some_and(|m| !(1..=1 << 20).contains(&m)) {
            return Err("limits.max_plugin_memory_mb must be between 1 and 1048576".into());
        }
        if self.max_answer_bytes.is_some_and(|b| !(1..=MAX_ANSWER_BYTES_LIMIT).contains(&b)) {
            return Err(format!("limits.max_answer_bytes must be between 1 and {MAX_ANSWER_BYTES_LIMIT}"));
        }
        if self.max_body_bytes.is_some_and(|b| b == 0) {
            return Err("limits.max_body_bytes must be positive".into());
        }
        Ok(())
    }

    /// What the invoker applies to this tenant's calls.
    pub fn grant(&self, allowed_hosts: Vec<HostRule>) -> TenantGrant {
        TenantGrant {
            limits: self.call_limits(),
            allowed_hosts: allowed_hosts.into(),
            max_answer_bytes: self.max_answer_bytes.unwrap_or(DEFAULT_MAX_ANSWER_BYTES),
        }
    }

    /// This tenant's share of the Wasm host.
    pub fn share(&self) -> HostShare {
        HostShare {
            max_instances: self.max_instances,
            max_memory_bytes: self.max_plugin_memory_mb.map(|m| usize::try_from(m << 20).unwrap_or(usize::MAX)),
        }
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

#[derive(Deserialize, utoipa::ToSchema)]
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
        Some(given) if is_admin_token(expected, given) => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the admin token is missing or wrong")),
    }
}

/// Whether `given` is the admin token: compared as digests, so neither the token's content
/// nor its length shows in the timing.
pub(super) fn is_admin_token(expected: &str, given: &str) -> bool {
    let digest = |t: &str| Sha256::digest(t.as_bytes());
    constant_time_eq(&digest(given), &digest(expected))
}

#[utoipa::path(post, path = "/v1/admin/tenants", tag = "operations", request_body = CreateTenant, responses((status = 201, description = "Created, with its first key (shown once)", body = super::openapi::TenantCreated), (status = 400, description = "Malformed request (bad JSON, bad query)", body = super::openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = super::openapi::ErrorBody), (status = 413, description = "Body too large", body = super::openapi::ErrorBody), (status = 422, description = "Invalid content", body = super::openapi::ErrorBody), (status = 500, description = "The server's own fault", body = super::openapi::ErrorBody), (status = 503, description = "The store does not answer", body = super::openapi::ErrorBody)))]
pub(super) async fn create_tenant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    require_admin(&s, &headers)?;
    let req: CreateTenant = parse(body)?;
    if !valid_name(&req.tenant_id) || req.tenant_id.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "tenant_id must be 1-64 of a-z, 0-9, '-', '_'"));
    }
    // Everything made in single-tenant mode belongs to `default`: a tenant of that name would
    // silently take it over.
    if req.tenant_id == crate::api_tenant() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reserved_tenant_id",
            "tenant_id `default` is reserved: it owns what was created in single-tenant mode",
        ));
    }
    let limits = req.limits.unwrap_or_default();
    limits.validate().map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m))?;
    let hosts = req.allowed_hosts.unwrap_or_default();
    crate::outbound::parse_rules(&hosts).map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m))?;
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
    s.inner.remembered.tenants_exist();
    s.audit(&req.tenant_id, "admin", "tenant_created", json!({"limits": row.limits, "key_id": key.key_id})).await;
    let body = json!({"tenant_id": req.tenant_id, "api_key": api_key, "key_id": key.key_id});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(post, path = "/v1/admin/tenants/{id}/keys", tag = "operations", params(("id" = String, Path, description = "The tenant")), responses((status = 201, description = "A new key (rotation), shown once", body = super::openapi::KeyAdded), (status = 401, description = "Missing or wrong admin token", body = super::openapi::ErrorBody), (status = 404, description = "No such tenant or key", body = super::openapi::ErrorBody), (status = 500, description = "The server's own fault", body = super::openapi::ErrorBody), (status = 503, description = "The store does not answer", body = super::openapi::ErrorBody)))]
pub(super) async fn add_key(State(s): State<AppState>, headers: HeaderMap, Id(tenant): Id) -> Result<Response, ApiError> {
    require_admin(&s, &headers)?;
    if s.inner.store.tenant(&tenant).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no tenant {tenant:?}")));
    }
    let (key, api_key) = new_key(&tenant);
    s.inner.store.add_key(&key).await?;
    s.audit(&tenant, "admin", "key_added", json!({"key_id": key.key_id})).await;
    Ok((StatusCode::CREATED, Json(json!({"tenant_id": tenant, "api_key": api_key, "key_id": key.key_id}))).into_response())
}

#[utoipa::path(delete, path = "/v1/admin/tenants/{id}/keys/{key_id}", tag = "operations", params(("id" = String, Path, description = "The tenant"), ("key_id" = String, Path)), responses((status = 200, description = "Revoked", body = super::openapi::KeyRevoked), (status = 401, description = "Missing or wrong admin token", body = super::openapi::ErrorBody), (status = 404, description = "No such tenant or key", body = super::openapi::ErrorBody), (status = 500, description = "The server's own fault", body = super::openapi::ErrorBody), (status = 503, description = "The store does not answer", body = super::openapi::ErrorBody)))]
pub(super) async fn revoke_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    IdPair(tenant, key_id): IdPair,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers)?;
    let revoked = s.inner.store.revoke_key(&tenant, &key_id, now_ms()).await;
    s.inner.remembered.forget_key(&key_id);
    if !revoked? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("tenant {tenant:?} has no live key {key_id:?}")));
    }
    s.audit(&tenant, "admin", "key_revoked", json!({"key_id": key_id})).await;
    Ok(Json(json!({"status": "success", "tenant_id": tenant, "key_id": key_id, "revoked": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_answers_a_yes_for_good_and_forgets_a_revoked_key_at_once() {
        let remembered = Remembered::default();
        assert_eq!(remembered.has_tenants(), None, "nothing asked yet: ask the store");
        remembered.remember_tenants(false);
        assert_eq!(remembered.has_tenants(), Some(false));
        remembered.remember_tenants(true);
        assert_eq!(remembered.has_tenants(), Some(true));
        let (key, _) = new_key("acme");
        assert!(remembered.key(&key.key_id).is_none(), "unknown keys are asked every time");
        remembered.remember_key(&key);
        assert_eq!(remembered.key(&key.key_id).map(|k| k.tenant_id), Some("acme".to_string()));
        remembered.forget_key(&key.key_id);
        assert!(remembered.key(&key.key_id).is_none(), "a key revoked here is asked again at once");
    }

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
