//! The settings: the tenant's default policy and alert webhook; for the admin, the tenants,
//! their limits and keys — create, rotate, revoke, a new key shown once. Each change goes
//! through the API's own handler (validation, audit), with the session's tenant, or the
//! server's admin token for a session that signed in with it.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::page::{self, Nav, Problem};
use super::session::{Operator, Viewer};
use super::{Console, Posted};
use crate::api::auth::{self, Tenant};
use crate::api::input::{Id, IdPair, JsonBody};
use crate::api::{ApiError, AppState};

/// Tenants the admin's list shows at most.
const TENANTS_SHOWN: usize = 200;
/// A tenant's keys shown at most.
const KEYS_SHOWN: usize = 50;

/// The body of a handler's JSON answer.
async fn answer_body(response: Response) -> Result<Value, Problem> {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

fn json_body(value: Value) -> JsonBody {
    JsonBody(Bytes::from(value.to_string()))
}

pub async fn page(State(console): State<Console>, viewer: Viewer) -> Result<Response, Problem> {
    let app = &console.app;
    if viewer.tenant.is_none() && !viewer.admin {
        return Ok(Redirect::to("/ui/sign-in").into_response());
    }
    let mut tenant_part = None;
    if let Some(tenant) = &viewer.tenant {
        let policy = app.inner.store.setting(tenant, crate::manager::DEFAULT_POLICY_SETTING).await?.unwrap_or_else(|| "builtin".into());
        let alerts = app.inner.alerts.settings(tenant).await.map_err(ApiError::from)?;
        tenant_part = Some(tenant_settings(&viewer, &policy, alerts.as_ref().map(|a| (a.url.as_str(), a.events.as_slice()))));
    }
    let admin_part = if viewer.admin { Some(tenants(app, &viewer).await?) } else { None };
    let body = html! {
        h1 { "Settings" }
        @if let Some(part) = tenant_part { (part) }
        @if let Some(part) = admin_part { (part) }
    };
    Ok(page::layout("Settings", &viewer, Nav::Settings, body).into_response())
}

fn tenant_settings(viewer: &Viewer, policy: &str, alerts: Option<(&str, &[String])>) -> Markup {
    html! {
        section aria-labelledby="policy-heading" {
            h2 #policy-heading { "Default policy" }
            p { "Managed transactions without a policy of their own are placed by " strong #current-policy { (policy) } "." }
            form method="post" action="/ui/settings/default-policy" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                div.field {
                    label for="policy" { "Policy plugin (or builtin)" }
                    input #policy name="policy" required maxlength="128" value=(policy);
                }
                button type="submit" { "Set default policy" }
            }
        }
        section aria-labelledby="alerts-heading" {
            h2 #alerts-heading { "Alerts" }
            @match alerts {
                Some((url, events)) => p { "Deliveries go to " span.mono { (url) } " for " (events.join(", ")) "." },
                None => p { "No alert webhook is set." },
            }
            form method="post" action="/ui/settings/alerts" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                div.field {
                    label for="alert-url" { "Webhook URL" }
                    input #alert-url type="url" name="url" required maxlength="2048" value=(alerts.map_or("", |a| a.0));
                }
                fieldset {
                    legend { "Events" }
                    @for event in crate::alert::EVENTS {
                        @let id = format!("event-{event}");
                        div.field.check {
                            input id=(id) type="checkbox" name="events" value=(event) checked[alerts.is_none_or(|a| a.1.iter().any(|e| e == event))];
                            label for=(id) { (event) }
                        }
                    }
                }
                div.field {
                    label for="alert-secret" { "Signing secret (16-256 characters; not shown again)" }
                    input #alert-secret type="password" name="secret" required minlength="16" maxlength="256" autocomplete="off";
                }
                button type="submit" { "Set alerts" }
            }
        }
    }
}

async fn tenants(app: &AppState, viewer: &Viewer) -> Result<Markup, Problem> {
    let ids = app.inner.store.tenant_ids().await?;
    let mut rows = Vec::new();
    for id in ids.iter().take(TENANTS_SHOWN) {
        if let Some(row) = app.inner.store.tenant(id).await? {
            rows.push(row);
        }
    }
    Ok(html! {
        section aria-labelledby="tenants-heading" {
            h2 #tenants-heading { "Tenants" }
            @if ids.is_empty() { p { "No tenant exists: the server serves everyone as " code { "default" } " while it listens on loopback." } }
            @if ids.len() > TENANTS_SHOWN { p.hint { "The first " (TENANTS_SHOWN) " of " (ids.len()) " tenants." } }
            @if !rows.is_empty() {
                div.scroll {
                    table.list #tenants {
                        caption.visually-hidden { "Tenants" }
                        thead { tr { th scope="col" { "Tenant" } th scope="col" { "Limits" } th scope="col" { "Allowed hosts" } th scope="col" { "Created" } } }
                        tbody {
                            @for row in &rows {
                                tr {
                                    td { a href={ "/ui/admin/tenants/" (page::encode(&row.tenant_id)) } { (row.tenant_id) } }
                                    td.mono { (page::cut(&row.limits.to_string(), 300)) }
                                    td.mono { (page::cut(&row.allowed_hosts.to_string(), 300)) }
                                    td { (page::at(row.created_at_ms)) }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Create a tenant" }
            form method="post" action="/ui/admin/tenants" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                div.field {
                    label for="tenant-id" { "Tenant id (a-z, 0-9, - and _)" }
                    input #tenant-id name="tenant_id" required maxlength="64" pattern="[a-z0-9_\\-]+";
                }
                div.field {
                    label for="tenant-limits" { "Limits (JSON, optional)" }
                    textarea #tenant-limits name="limits" rows="3" maxlength="4096" placeholder="{\"max_concurrent\": 100}" {}
                }
                div.field {
                    label for="tenant-hosts" { "Allowed hosts (one per line, optional)" }
                    textarea #tenant-hosts name="allowed_hosts" rows="3" maxlength="8192" {}
                }
                button #create-tenant type="submit" { "Create tenant" }
            }
        }
    })
}

/// The admin's token as the admin API wants it: a session that signed in with it acts as if
/// it sent it.
fn admin_headers(app: &AppState, viewer: &Viewer) -> Result<HeaderMap, Problem> {
    let token = app.inner.admin_token.as_deref().filter(|_| viewer.admin).ok_or_else(|| Problem::new(StatusCode::FORBIDDEN, "Only the admin manages tenants: sign in with the admin token."))?;
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the admin token is not a valid header"))?;
    headers.insert(header::AUTHORIZATION, value);
    Ok(headers)
}

/// The tenant's live keys, newest first, at most `KEYS_SHOWN`: (key id, created, live).
async fn keys(app: &AppState, tenant: &str) -> Result<Vec<(String, i64, bool)>, Problem> {
    let live = app.inner.store.live_keys(tenant).await?;
    Ok(live.into_iter().take(KEYS_SHOWN).map(|k| (k.key_id, k.created_at_ms, true)).collect())
}

pub async fn tenant(State(console): State<Console>, viewer: Viewer, path: Result<Path<String>, PathRejection>) -> Result<Markup, Problem> {
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    admin_headers(&console.app, &viewer).map_err(shown)?;
    let Ok(Path(id)) = path else { return Err(shown(Problem::new(StatusCode::NOT_FOUND, "There is no such tenant."))) };
    let row = console.app.inner.store.tenant(&id).await.map_err(|e| shown(e.into()))?.ok_or_else(|| shown(Problem::new(StatusCode::NOT_FOUND, "There is no such tenant.")))?;
    let keys = keys(&console.app, &id).await.map_err(shown)?;
    Ok(tenant_page(&viewer, &row, &keys, None))
}

fn tenant_page(viewer: &Viewer, row: &crate::store::TenantRow, keys: &[(String, i64, bool)], new_key: Option<&str>) -> Markup {
    let id = &row.tenant_id;
    let base = format!("/ui/admin/tenants/{}", page::encode(id));
    let body = html! {
        p.crumbs { a href="/ui/settings" { "Settings" } " / tenants" }
        h1 { "Tenant " (id) }
        @if let Some(key) = new_key {
            div.notice role="status" {
                p { strong { "The new API key, shown only now:" } }
                p { code #new-key { (key) } }
                p { "Copy it to where it is needed; the server keeps only a hash of it." }
            }
        }
        h2 { "Limits" }
        (page::json(&row.limits, 4_000))
        h2 { "Allowed hosts" }
        (page::json(&row.allowed_hosts, 4_000))
        h2 { "Keys" }
        @if keys.is_empty() { p.quiet { "No live key." } }
        div.scroll {
            table.list #keys {
                caption.visually-hidden { "Keys of " (id) }
                thead { tr { th scope="col" { "Key id" } th scope="col" { "Created" } th scope="col" { "State" } th scope="col" { "Change" } } }
                tbody {
                    @for (key_id, at, live) in keys {
                        tr {
                            td.mono { (key_id) }
                            td { (page::at(*at)) }
                            td { @if *live { (page::state("live")) } @else { (page::state("revoked")) } }
                            td {
                                @if *live {
                                    form.inline method="post" action={ (base) "/keys/" (page::encode(key_id)) "/rotate" } data-confirm={ "Rotate key " (key_id) "? A new key replaces it, and it stops working." } {
                                        input type="hidden" name="csrf" value=(viewer.csrf);
                                        button type="submit" { "Rotate" }
                                    }
                                    form.inline method="post" action={ (base) "/keys/" (page::encode(key_id)) "/revoke" } data-confirm={ "Revoke key " (key_id) "? It stops working at once." } {
                                        input type="hidden" name="csrf" value=(viewer.csrf);
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        form method="post" action={ (base) "/keys" } {
            input type="hidden" name="csrf" value=(viewer.csrf);
            button #add-key type="submit" { "Add a key" }
        }
    };
    page::layout(&format!("Tenant {id}"), viewer, Nav::Settings, body)
}

#[derive(Deserialize)]
pub struct PolicyForm {
    policy: String,
}

pub async fn set_policy(State(console): State<Console>, Operator { tenant, viewer }: Operator, Posted(_, form): Posted<PolicyForm>) -> Result<Response, Problem> {
    let _policy = crate::api::set_default_policy(State(console.app.clone()), Tenant(tenant, viewer.actor.clone()), json_body(json!({"policy": form.policy.trim()})))
        .await
        .map_err(|e| Problem::from(e).shown_to(Some(viewer)))?;
    Ok(Redirect::to("/ui/settings").into_response())
}

/// The alert form: `events` repeats, once per box ticked.
struct AlertsForm {
    url: String,
    secret: String,
    events: Vec<String>,
}

pub async fn set_alerts(State(console): State<Console>, Operator { tenant, viewer }: Operator, body: Posted<Vec<(String, String)>>) -> Result<Response, Problem> {
    let Posted(_, pairs) = body;
    let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let form = AlertsForm { url: field("url"), secret: field("secret"), events: pairs.iter().filter(|(k, _)| k == "events").map(|(_, v)| v.clone()).collect() };
    let settings = json!({"url": form.url, "secret": form.secret, "events": form.events});
    let _alerts = crate::api::set_alerts(State(console.app.clone()), Tenant(tenant, viewer.actor.clone()), json_body(settings)).await.map_err(|e| Problem::from(e).shown_to(Some(viewer)))?;
    Ok(Redirect::to("/ui/settings").into_response())
}

#[derive(Deserialize)]
pub struct TenantForm {
    tenant_id: String,
    #[serde(default)]
    limits: String,
    #[serde(default)]
    allowed_hosts: String,
}

pub async fn create_tenant(State(console): State<Console>, viewer: Viewer, Posted(_, form): Posted<TenantForm>) -> Result<Response, Problem> {
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    let app = &console.app;
    let headers = admin_headers(app, &viewer).map_err(shown)?;
    let mut request = json!({"tenant_id": form.tenant_id.trim()});
    if !form.limits.trim().is_empty() {
        let limits: Value = serde_json::from_str(&form.limits).map_err(|e| shown(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("The limits are not JSON: {e}"))))?;
        request["limits"] = limits;
    }
    let hosts: Vec<&str> = form.allowed_hosts.lines().map(str::trim).filter(|h| !h.is_empty()).collect();
    if !hosts.is_empty() {
        request["allowed_hosts"] = json!(hosts);
    }
    let answer = auth::create_tenant(State(app.clone()), headers, json_body(request)).await.map_err(|e| shown(e.into()))?;
    let created = answer_body(answer).await.map_err(shown)?;
    let id = created["tenant_id"].as_str().unwrap_or_default().to_string();
    show_new_key(app, &viewer, &id, created["api_key"].as_str()).await
}

/// The tenant's page with a key just made, shown this once.
async fn show_new_key(app: &AppState, viewer: &Viewer, tenant: &str, key: Option<&str>) -> Result<Response, Problem> {
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    let row = app.inner.store.tenant(tenant).await.map_err(|e| shown(e.into()))?.ok_or_else(|| shown(Problem::new(StatusCode::NOT_FOUND, "There is no such tenant.")))?;
    let keys = keys(app, tenant).await.map_err(shown)?;
    Ok((StatusCode::CREATED, tenant_page(viewer, &row, &keys, key)).into_response())
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn add_key(State(console): State<Console>, viewer: Viewer, path: Result<Path<String>, PathRejection>, Posted(_, Empty {}): Posted<Empty>) -> Result<Response, Problem> {
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    let app = &console.app;
    let headers = admin_headers(app, &viewer).map_err(shown)?;
    let Ok(Path(tenant)) = path else { return Err(shown(Problem::new(StatusCode::NOT_FOUND, "There is no such tenant."))) };
    let answer = auth::add_key(State(app.clone()), headers, Id(tenant.clone())).await.map_err(|e| shown(e.into()))?;
    let added = answer_body(answer).await.map_err(shown)?;
    show_new_key(app, &viewer, &tenant, added["api_key"].as_str()).await
}

/// Rotates (a new key, then the old one revoked) or revokes a key.
pub async fn change_key(
    State(console): State<Console>,
    viewer: Viewer,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Posted(_, Empty {}): Posted<Empty>,
) -> Result<Response, Problem> {
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    let app = &console.app;
    let headers = admin_headers(app, &viewer).map_err(shown)?;
    let Ok(Path((tenant, key_id, change))) = path else { return Err(shown(Problem::new(StatusCode::NOT_FOUND, "There is no such key."))) };
    let new_key = match change.as_str() {
        "rotate" => {
            let answer = auth::add_key(State(app.clone()), headers.clone(), Id(tenant.clone())).await.map_err(|e| shown(e.into()))?;
            answer_body(answer).await.map_err(shown)?["api_key"].as_str().map(str::to_string)
        }
        "revoke" => None,
        _ => return Err(shown(Problem::new(StatusCode::NOT_FOUND, "A key is rotated or revoked."))),
    };
    let _revoked = auth::revoke_key(State(app.clone()), headers, IdPair(tenant.clone(), key_id)).await.map_err(|e| shown(e.into()))?;
    match new_key {
        Some(key) => show_new_key(app, &viewer, &tenant, Some(&key)).await,
        None => Ok(Redirect::to(&format!("/ui/admin/tenants/{}", page::encode(&tenant))).into_response()),
    }
}
