//! The operator console (`/ui`): server-rendered HTML over the very calls the JSON API makes —
//! the search, the operator actions (`operate::act`, audited), the plugin upload, the settings
//! and admin handlers — with the session's tenant in place of the API key's. It owns its
//! sessions ([`session`]), the per-tenant figures its charts draw ([`figures`]) and its pages;
//! it never reads a tenant from a form or a URL, never answers 500 for a caller's mistake, and
//! never loads an unbounded list.
//!
//! Every answer carries a strict Content-Security-Policy: scripts and styles come only from
//! `/ui/assets/` (embedded in the binary), nothing from another host, no framing. Pages work
//! without JavaScript; the script only adds an optional auto-refresh.
//!
//! | page | what it shows |
//! |---|---|
//! | `/ui` | needs attention, counts by kind and state, throughput and latency |
//! | `/ui/transactions` | the search, its filters, cursor paging |
//! | `/ui/transactions/{kind}/{id}` | one transaction: timeline, votes, selection, history, actions |
//! | `/ui/plugins` | versions, digests, exports, sizes, pins; upload a new version |
//! | `/ui/settings` | default policy, alerts; for the admin, tenants and keys |

mod assets;
mod figures;
mod overview;
mod page;
mod plugins;
mod session;
mod settings;
mod transactions;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::input::{JsonBody, MAX_COMPONENT_BODY};
use page::Problem;

/// What the console's handlers share: the API's state and the console's own.
#[derive(Clone)]
pub(super) struct Console {
    app: AppState,
    sessions: Arc<session::Sessions>,
    figures: Arc<figures::Figures>,
    sizes: Arc<plugins::Sizes>,
}

/// The console's routes, under `/ui`, with their own error pages (HTML, not the API's JSON)
/// and security headers.
pub(super) fn router(app: AppState) -> Router {
    let figures = figures::Figures::listen(&app);
    let console = Console { app, sessions: Default::default(), figures, sizes: Default::default() };
    Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/transactions", get(transactions::list))
        .route("/ui/transactions/{kind}/{id}", get(transactions::show))
        .route("/ui/transactions/{kind}/{id}/{action}", get(transactions::confirm).post(transactions::act))
        .route(
            "/ui/plugins",
            // The component travels inside a multipart form: its cap plus room for the form.
            get(plugins::page).post(plugins::upload).layer(DefaultBodyLimit::max(MAX_COMPONENT_BODY + (64 << 10))),
        )
        .route("/ui/settings", get(settings::page))
        .route("/ui/settings/default-policy", post(settings::set_policy))
        .route("/ui/settings/alerts", post(settings::set_alerts))
        .route("/ui/admin/tenants", post(settings::create_tenant))
        .route("/ui/admin/tenants/{id}", get(settings::tenant))
        .route("/ui/admin/tenants/{id}/keys", post(settings::add_key))
        .route("/ui/admin/tenants/{id}/keys/{key_id}/{change}", post(settings::change_key))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/{*rest}", any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(console.clone(), session::ensure))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
        .layer(middleware::from_fn(guard))
}

async fn not_found(viewer: Result<session::Viewer, Problem>) -> Response {
    Problem::new(StatusCode::NOT_FOUND, "There is no such page.").shown_to(viewer.ok()).into_response()
}

async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "This page does not answer that method.")
}

/// The policy every console answer is sent with: nothing from another host, no inline script
/// or style, no framing, forms only to this server.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let asset = req.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !asset {
        // Pages show one tenant's data: no cache keeps them.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A posted form (`application/x-www-form-urlencoded`, at most the API's JSON cap) whose CSRF
/// token is the session's, compared in constant time; with the session it came from.
pub(super) struct Posted<T>(pub session::Current, pub T);

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<T: DeserializeOwned> FromRequest<Console> for Posted<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, console: &Console) -> Result<Self, Problem> {
        let current = req.extensions().get::<session::Current>().cloned();
        let form = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
        if !form {
            return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "This address takes a form (application/x-www-form-urlencoded)."));
        }
        let JsonBody(bytes) = JsonBody::from_request(req, console).await?;
        let given: CsrfField = serde_urlencoded::from_bytes(&bytes).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("The form cannot be read: {e}")))?;
        check_csrf(current.as_ref(), &given.csrf)?;
        let value = serde_urlencoded::from_bytes(&bytes).map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("The form is not complete: {e}")))?;
        Ok(Posted(current.expect("checked"), value))
    }
}

/// 403 unless `given` is the session's CSRF token.
fn check_csrf(current: Option<&session::Current>, given: &str) -> Result<(), Problem> {
    match current {
        Some(c) if super::auth::constant_time_eq(c.csrf.as_bytes(), given.as_bytes()) => Ok(()),
        _ => Err(Problem::new(StatusCode::FORBIDDEN, "The form's security token is missing or stale: go back, reload the page and try again.")),
    }
}

/// The console's outermost layer: refuses oversized headers and URIs, counts the request.
async fn guard(req: axum::extract::Request, next: middleware::Next) -> axum::response::Response {
    if let Some(refused) = super::input::oversized(&req) {
        return refused;
    }
    super::count_request(req, next).await
}
