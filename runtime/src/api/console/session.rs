//! Who is looking at the console: server-side sessions in this process's memory, named by a
//! random 256-bit id that only the browser holds (an HttpOnly, SameSite=Strict cookie on
//! `/ui`); the table keeps a SHA-256 of it, so a dump of memory names no usable cookie. Each
//! session carries its CSRF token, which every form posts back. Signing in checks a key
//! exactly as the API does (`auth::key_holder`); a signed-in session is checked against the
//! store on every request, so a revoked key ends it at once. Both kinds of session are
//! bounded in number and in time, and a flood of anonymous visits evicts only anonymous ones.
//!
//! Time comes in as an argument: the table never reads a clock itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::page::{self, Problem};
use super::{Console, Posted};
use crate::api::auth;

/// Name of the session cookie.
const COOKIE: &str = "wasmtx_console";
/// A signed-in session ends this long after sign-in, whatever happens.
const SIGNED_IN_FOR: Duration = Duration::from_secs(8 * 3600);
/// Any session ends after this long without a request.
const IDLE_FOR: Duration = Duration::from_secs(3600);
/// Most signed-in sessions kept; the next sign-in evicts the one closest to its end.
const MAX_SIGNED_IN: usize = 10_000;
/// Most anonymous sessions kept (they only carry a CSRF token for the sign-in form, or the
/// single-tenant console's forms).
const MAX_GUESTS: usize = 10_000;

/// Whom a session speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Not signed in: the single-tenant console while no tenant exists, else nobody.
    Guest,
    /// Signed in with a tenant's API key.
    Tenant { tenant: String, key_id: String },
    /// Signed in with the admin token.
    Admin,
}

#[derive(Debug, Clone)]
struct Session {
    who: Who,
    csrf: String,
    ends: Instant,
    last_seen: Instant,
}

/// The session a request carries, left in its extensions by [`ensure`].
#[derive(Debug, Clone)]
pub struct Current {
    id_hash: [u8; 32],
    pub who: Who,
    pub csrf: String,
}

/// The process's console sessions.
#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// Opens a session for `who`; answers its id (the cookie's value, never stored) and the
    /// session.
    fn open(&self, who: Who, now: Instant) -> (String, Current) {
        let id = random_hex();
        let csrf = random_hex();
        let ends = now + if who == Who::Guest { IDLE_FOR } else { SIGNED_IN_FOR };
        let mut table = self.table.lock().unwrap();
        let guest = who == Who::Guest;
        let (max, count) = (if guest { MAX_GUESTS } else { MAX_SIGNED_IN }, table.values().filter(|s| (s.who == Who::Guest) == guest).count());
        if count >= max {
            table.retain(|_, s| s.ends > now && now.duration_since(s.last_seen) < IDLE_FOR);
            let still = table.values().filter(|s| (s.who == Who::Guest) == guest).count();
            if still >= max {
                // The one of its kind that would end first makes room.
                let victim = table.iter().filter(|(_, s)| (s.who == Who::Guest) == guest).min_by_key(|(_, s)| s.ends.min(s.last_seen + IDLE_FOR)).map(|(k, _)| *k);
                if let Some(victim) = victim {
                    table.remove(&victim);
                }
            }
        }
        let id_hash = hash(&id);
        table.insert(id_hash, Session { who: who.clone(), csrf: csrf.clone(), ends, last_seen: now });
        (id, Current { id_hash, who, csrf })
    }

    /// The live session with cookie value `id`, marked as seen now.
    fn find(&self, id: &str, now: Instant) -> Option<Current> {
        let id_hash = hash(id);
        let mut table = self.table.lock().unwrap();
        let session = table.get_mut(&id_hash)?;
        if session.ends <= now || now.duration_since(session.last_seen) >= IDLE_FOR {
            table.remove(&id_hash);
            return None;
        }
        session.last_seen = now;
        Some(Current { id_hash, who: session.who.clone(), csrf: session.csrf.clone() })
    }

    fn close(&self, current: &Current) {
        self.table.lock().unwrap().remove(&current.id_hash);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

/// The session cookie's value in `headers`, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` for session `id` (`None`: the cookie removed). `Secure` when the request came
/// over https (as a proxy in front of the server says).
fn set_cookie(id: Option<&str>, headers: &HeaderMap) -> HeaderValue {
    let secure = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if secure { "; Secure" } else { "" };
    let value = match id {
        Some(id) => format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).expect("hex and ASCII")
}

/// Leaves the request's session in its extensions; a page asked for without one (a first
/// visit, or an ended session) gets a new anonymous session, so its forms carry a CSRF token.
pub async fn ensure(State(console): State<Console>, mut req: Request, next: Next) -> Response {
    let now = Instant::now();
    let found = cookie(req.headers()).and_then(|id| console.sessions.find(id, now));
    let mut opened = None;
    let current = match found {
        Some(current) => Some(current),
        None if req.method() == Method::GET && !req.uri().path().starts_with("/ui/assets/") => {
            let (id, current) = console.sessions.open(Who::Guest, now);
            opened = Some(id);
            Some(current)
        }
        None => None,
    };
    if let Some(current) = current {
        req.extensions_mut().insert(current);
    }
    let headers = req.headers().clone();
    let mut response = next.run(req).await;
    if let Some(id) = opened
        && !response.headers().contains_key(header::SET_COOKIE)
    {
        response.headers_mut().append(header::SET_COOKIE, set_cookie(Some(&id), &headers));
    }
    response
}

/// Who is asking, as the pages need it: the tenant whose data they show (none for the admin
/// once tenants exist, and for a visitor not signed in), the actor the audit trail names, and
/// the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub tenant: Option<String>,
    pub actor: String,
    pub admin: bool,
    pub signed_in: bool,
    pub csrf: String,
}

impl FromRequestParts<Console> for Viewer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Problem> {
        let Some(current) = parts.extensions.get::<Current>().cloned() else {
            return Err(Problem::new(StatusCode::FORBIDDEN, "no console session: reload the page"));
        };
        let app = &console.app;
        // As the API: while no tenant exists, a server in single-tenant mode serves `default`.
        let single = app.inner.single_tenant && !app.has_tenants().await?;
        let local = || single.then(|| crate::api_tenant().to_string());
        let viewer = match &current.who {
            Who::Guest => Viewer { tenant: local(), actor: "console".into(), admin: false, signed_in: false, csrf: current.csrf },
            Who::Admin if app.inner.admin_token.is_some() => {
                Viewer { tenant: local(), actor: "admin".into(), admin: true, signed_in: true, csrf: current.csrf }
            }
            Who::Tenant { tenant, key_id } => match app.inner.store.live_key(key_id).await? {
                Some(key) if &key.tenant_id == tenant => {
                    app.load_tenant_limits(tenant).await?;
                    Viewer { tenant: Some(tenant.clone()), actor: format!("console:key:{key_id}"), admin: false, signed_in: true, csrf: current.csrf }
                }
                _ => {
                    console.sessions.close(&current);
                    return Err(Problem::new(StatusCode::UNAUTHORIZED, "this session's key was revoked: sign in again"));
                }
            },
            Who::Admin => {
                console.sessions.close(&current);
                return Err(Problem::new(StatusCode::UNAUTHORIZED, "the admin token is no longer configured: sign in again"));
            }
        };
        Ok(viewer)
    }
}

/// A viewer who has a tenant's data to see; others are sent to sign in (or, the admin, to the
/// tenants).
pub struct Operator {
    pub tenant: String,
    pub viewer: Viewer,
}

impl FromRequestParts<Console> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let viewer = Viewer::from_request_parts(parts, console).await.map_err(IntoResponse::into_response)?;
        match viewer.tenant.clone() {
            Some(tenant) => Ok(Operator { tenant, viewer }),
            None if viewer.admin => Err(Redirect::to("/ui/settings").into_response()),
            None => Err(Redirect::to("/ui/sign-in").into_response()),
        }
    }
}

pub async fn sign_in_page(viewer: Viewer) -> Response {
    sign_in_form(&viewer, StatusCode::OK, None)
}

fn sign_in_form(viewer: &Viewer, status: StatusCode, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(error) = error {
            p.error role="alert" { (error) }
        }
        @if viewer.tenant.is_some() && !viewer.signed_in {
            p { "No tenant exists yet: this server is in single-tenant mode, and every page is open without signing in. Sign in with the admin token to manage tenants." }
        }
        form method="post" action="/ui/sign-in" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            label for="key" { "API key or admin token" }
            input #key type="password" name="key" required autocomplete="off" maxlength="512" autofocus;
            button type="submit" { "Sign in" }
        }
        p.hint { "A tenant's key (" code { "wtx_…" } ") shows that tenant's transactions, plugins and settings; the admin token manages tenants and their keys." }
    };
    (status, page::layout("Sign in", viewer, page::Nav::SignIn, body)).into_response()
}

#[derive(Deserialize)]
pub struct SignIn {
    key: String,
}

/// Checks the key as the API would and replaces the visitor's session with a signed-in one
/// (a new id, so a session id known before sign-in is worth nothing after).
pub async fn sign_in(State(console): State<Console>, viewer: Viewer, headers: HeaderMap, Posted(current, form): Posted<SignIn>) -> Response {
    let key = form.key.trim();
    if key.is_empty() || key.len() > 512 {
        return sign_in_form(&viewer, StatusCode::BAD_REQUEST, Some("enter an API key or the admin token (at most 512 characters)"));
    }
    let app = &console.app;
    let who = match &app.inner.admin_token {
        Some(expected) if auth::is_admin_token(expected, key) => Who::Admin,
        _ => match auth::key_holder(app, key).await {
            Ok(row) => Who::Tenant { tenant: row.tenant_id, key_id: row.key_id },
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                return sign_in_form(&viewer, StatusCode::UNAUTHORIZED, Some("That key is not valid: unknown, revoked or mistyped."));
            }
            Err(e) => return Problem::from(e).into_response(),
        },
    };
    tracing::info!(who = ?who, "console sign-in");
    console.sessions.close(&current);
    let (id, _) = console.sessions.open(who, Instant::now());
    let mut response = Redirect::to("/ui").into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(Some(&id), &headers));
    response
}

#[derive(Deserialize)]
pub struct Nothing {}

pub async fn sign_out(State(console): State<Console>, headers: HeaderMap, Posted(current, Nothing {}): Posted<Nothing>) -> Response {
    console.sessions.close(&current);
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(None, &headers));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_until_it_ends_or_idles() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (id, opened) = sessions.open(Who::Admin, t0);
        assert_eq!(sessions.find(&id, t0 + Duration::from_secs(60)).unwrap().csrf, opened.csrf);
        assert!(sessions.find(&random_hex(), t0).is_none(), "another id finds nothing");
        assert!(!sessions.table.lock().unwrap().keys().any(|k| hex::encode(k) == id), "the id itself is not stored");
        // Seen every 50 minutes it stays, until its eight hours are up.
        let mut now = t0;
        for _ in 0..9 {
            now += Duration::from_secs(50 * 60);
            assert!(sessions.find(&id, now).is_some());
        }
        assert!(sessions.find(&id, t0 + SIGNED_IN_FOR).is_none(), "ended");
        let (idle, _) = sessions.open(Who::Guest, t0);
        assert!(sessions.find(&idle, t0 + IDLE_FOR).is_none(), "idle for an hour");
    }

    #[test]
    fn a_flood_of_anonymous_sessions_never_evicts_a_signed_in_one() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (admin, _) = sessions.open(Who::Admin, t0);
        for i in 0..MAX_GUESTS + 50 {
            sessions.open(Who::Guest, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(sessions.len(), MAX_GUESTS + 1, "guests are bounded");
        assert!(sessions.find(&admin, t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn the_cookie_is_read_only_in_its_own_shape() {
        let mut headers = HeaderMap::new();
        let id = random_hex();
        headers.insert(header::COOKIE, format!("other=1; {COOKIE}={id}").parse().unwrap());
        assert_eq!(cookie(&headers), Some(id.as_str()));
        headers.insert(header::COOKIE, format!("{COOKIE}=abc").parse().unwrap());
        assert_eq!(cookie(&headers), None);
        let set = set_cookie(Some(&id), &HeaderMap::new());
        let set = set.to_str().unwrap();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ui") && !set.contains("Secure"), "{set}");
    }
}
