//! The plugins: every name with its versions (digest, exports, size, upload time) and the
//! unfinished transactions pinned to each; and the upload of a new version — the hot swap —
//! through the API's own handler (`PUT /v1/plugins/{name}`: its caps, version limit, audit).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{self, Nav, Problem};
use super::session::Operator;
use super::{Console, check_csrf};
use crate::api::auth::Tenant;
use crate::api::input::{Id, UploadBody};
use crate::api::AppState;
use crate::store::{TxQuery, TxRow};
use crate::txn::Record;

/// Plugin names shown at most, and versions of each (the newest).
const NAMES_SHOWN: usize = 200;
const VERSIONS_SHOWN: usize = 20;
/// Unfinished transactions read at most per kind and state to find pins, and named per version.
const PINS_READ: i64 = 200;
const PINS_NAMED: usize = 20;
/// Component sizes remembered (by digest: a version's bytes never change).
const SIZES_KEPT: usize = 4_096;

/// The size of each component seen, so a page reads a component's bytes once per process.
#[derive(Default)]
pub struct Sizes(Mutex<HashMap<String, usize>>);

impl Sizes {
    async fn of(&self, app: &AppState, digest: &str) -> Result<Option<usize>, Problem> {
        if let Some(size) = self.0.lock().unwrap().get(digest) {
            return Ok(Some(*size));
        }
        let Some(bytes) = app.inner.store.component_bytes(digest).await? else { return Ok(None) };
        let mut sizes = self.0.lock().unwrap();
        if sizes.len() >= SIZES_KEPT {
            sizes.clear();
        }
        sizes.insert(digest.to_string(), bytes.len());
        Ok(Some(bytes.len()))
    }
}

/// The states in which a transaction still holds (or may use again) its pinned versions.
const UNFINISHED: &[(&str, &[&str])] = &[("saga", &["running", "compensating", "failed"]), ("2pc", &["preparing", "prepared", "committing", "aborting", "failed"])];

/// Which unfinished transactions of `tenant` are pinned to each `name@version`.
async fn pins(app: &AppState, tenant: &str) -> Result<BTreeMap<String, Vec<(String, String)>>, Problem> {
    let mut pins: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (kind, states) in UNFINISHED {
        for state in *states {
            let query = TxQuery { kind: Some(kind.to_string()), state: Some(state.to_string()), ..TxQuery::default() };
            for row in app.inner.store.search_tx(tenant, &query, PINS_READ).await? {
                let id = row.id.clone();
                for version in pinned(row) {
                    let holders = pins.entry(version).or_default();
                    if !holders.iter().any(|(_, i)| *i == id) {
                        holders.push((kind.to_string(), id.clone()));
                    }
                }
            }
        }
    }
    Ok(pins)
}

/// The versions a stored saga or 2PC transaction is pinned to (a row that does not decode pins
/// nothing here; its own page reports it).
fn pinned(row: TxRow) -> Vec<String> {
    match row.kind.as_str() {
        "saga" => Record::from_row(row)
            .map(|s: crate::saga::Saga| s.doc.steps.into_iter().flat_map(|st| [st.plugin_version, st.compensation_plugin_version]).flatten().collect())
            .unwrap_or_default(),
        _ => Record::from_row(row).map(|t: crate::tpc::Tpc| t.doc.participants.into_iter().filter_map(|p| p.plugin_version).collect()).unwrap_or_default(),
    }
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / f64::from(1 << 10)),
        b => format!("{b} B"),
    }
}

#[derive(Deserialize)]
pub struct Uploaded {
    name: Option<String>,
    version: Option<i64>,
    new: Option<bool>,
}

pub async fn page(
    State(console): State<Console>,
    Operator { tenant, viewer }: Operator,
    uploaded: Result<Query<Uploaded>, axum::extract::rejection::QueryRejection>,
) -> Result<Markup, Problem> {
    let app = &console.app;
    let latest = app.inner.store.latest_plugins(&tenant).await?;
    let pins = pins(app, &tenant).await?;
    let mut plugins = Vec::new();
    for plugin in latest.iter().take(NAMES_SHOWN) {
        let mut versions = app.inner.store.plugin_versions(&tenant, &plugin.name).await?;
        versions.reverse();
        versions.truncate(VERSIONS_SHOWN);
        let mut rows = Vec::new();
        for v in versions {
            let size = console.sizes.of(app, &v.digest).await?;
            rows.push((v, size));
        }
        plugins.push((plugin.name.clone(), plugin.version, rows));
    }
    let notice = uploaded.ok().and_then(|Query(u)| Some((u.name?, u.version?, u.new.unwrap_or(false))));
    let body = html! {
        h1 { "Plugins" }
        @if let Some((name, version, new)) = &notice {
            p.notice role="status" #uploaded {
                @if *new { (name) " version " (version) " uploaded: new transactions use it; unfinished ones keep the version they were pinned to." }
                @else { "These bytes already are " (name) " version " (version) "." }
            }
        }
        section aria-labelledby="upload-heading" {
            h2 #upload-heading { "Upload a version" }
            form.upload method="post" action="/ui/plugins" enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                div.field {
                    label for="plugin-name" { "Name" }
                    input #plugin-name name="name" required maxlength="64" pattern="[A-Za-z0-9_\\-]+" list="plugin-names";
                    datalist #plugin-names { @for (name, _, _) in &plugins { option value=(name) {} } }
                }
                div.field {
                    label for="plugin-file" { "Component (.wasm)" }
                    input #plugin-file type="file" name="component" required accept=".wasm,application/wasm";
                }
                div.field { button #upload type="submit" { "Upload" } }
            }
            p.hint { "A new version takes over for new transactions at once; a transaction already started keeps the version it was pinned to." }
        }
        @if plugins.is_empty() {
            p.quiet { "No plugin yet." }
        }
        @if latest.len() > NAMES_SHOWN {
            p.hint { "The first " (NAMES_SHOWN) " of " (latest.len()) " plugins." }
        }
        @for (name, newest, versions) in &plugins {
            section.plugin aria-labelledby={ "plugin-" (name) } {
                h2 id={ "plugin-" (name) } { (name) " " span.quiet { "(newest: version " (newest) ")" } }
                div.scroll {
                    table.list id={ "versions-" (name) } {
                        caption.visually-hidden { "Versions of " (name) ", newest first" }
                        thead {
                            tr {
                                th scope="col" { "Version" }
                                th scope="col" { "Digest" }
                                th scope="col" { "Exports" }
                                th scope="col" { "Size" }
                                th scope="col" { "Uploaded" }
                                th scope="col" { "Pinned by unfinished transactions" }
                            }
                        }
                        tbody {
                            @for (v, bytes) in versions {
                                @let pinned_by = pins.get(&format!("{}@{}", v.name, v.version));
                                tr data-version=(v.version) {
                                    td.number { (v.version) }
                                    td.mono { abbr title=(v.digest) { (v.digest.get(..19).unwrap_or(&v.digest)) "…" } }
                                    td { (v.exports.join(", ")) }
                                    td.number { (bytes.map_or("—".to_string(), size)) }
                                    td { (page::at(v.created_at_ms)) }
                                    td.pins {
                                        @match pinned_by {
                                            None => { "none" }
                                            Some(holders) => {
                                                ul.inline {
                                                    @for (kind, id) in holders.iter().take(PINS_NAMED) {
                                                        li { a.mono href=(page::tx_href(kind, id)) { (id) } }
                                                    }
                                                }
                                                @if holders.len() > PINS_NAMED { " and " (holders.len() - PINS_NAMED) " more" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.hint { "Pins are read from up to " (PINS_READ) " unfinished transactions per kind and state." }
    };
    Ok(page::layout("Plugins", &viewer, Nav::Plugins, body))
}

fn multipart_problem(e: axum::extract::multipart::MultipartError) -> Problem {
    let status = e.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE { "The component is larger than this server accepts.".to_string() } else { format!("The upload cannot be read: {}", e.body_text()) };
    Problem::new(status, message)
}

/// Uploads a version: the CSRF token first (checked before the component is read), then the
/// name, then the component, under one of the server's upload slots like the API's upload.
pub async fn upload(
    State(console): State<Console>,
    Operator { tenant, viewer }: Operator,
    request: Request,
) -> Result<Response, Problem> {
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    let current = request.extensions().get::<super::session::Current>().cloned();
    let mut form = Multipart::from_request(request, &()).await.map_err(|e: MultipartRejection| shown(Problem::new(e.status(), e.body_text())))?;
    let first = form.next_field().await.map_err(|e| shown(multipart_problem(e)))?;
    let csrf = match first {
        Some(field) if field.name() == Some("csrf") => field.text().await.map_err(|e| shown(multipart_problem(e)))?,
        _ => String::new(),
    };
    check_csrf(current.as_ref(), &csrf).map_err(shown)?;
    // Taken before the component is read, so uploads wait here rather than in memory.
    let slot = crate::api::input::upload_slot(Some(&tenant)).await;
    let (mut name, mut component) = (None, None);
    while let Some(field) = form.next_field().await.map_err(|e| shown(multipart_problem(e)))? {
        match field.name() {
            Some("name") => name = Some(field.text().await.map_err(|e| shown(multipart_problem(e)))?.trim().to_string()),
            Some("component") => component = Some(field.bytes().await.map_err(|e| shown(multipart_problem(e)))?),
            _ => {}
        }
    }
    let name = name.filter(|n| !n.is_empty() && n.len() <= 64).ok_or_else(|| shown(Problem::new(StatusCode::BAD_REQUEST, "Give the plugin a name (1-64 characters).")))?;
    let component = component.filter(|c| !c.is_empty()).ok_or_else(|| shown(Problem::new(StatusCode::BAD_REQUEST, "Choose a component file (.wasm) to upload.")))?;
    let answer = crate::api::put_plugin(State(console.app.clone()), Tenant(tenant, viewer.actor.clone()), Id(name.clone()), UploadBody(component, slot))
        .await
        .map_err(|e| shown(e.into()))?;
    let created = answer.status() == StatusCode::CREATED;
    let body = axum::body::to_bytes(answer.into_body(), 1 << 20).await.map_err(|e| shown(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())))?;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let version = doc["version"].as_i64().unwrap_or(0);
    Ok(Redirect::to(&format!("/ui/plugins?name={}&version={version}&new={created}", page::encode(&name))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(size(900), "900 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(3 << 20), "3.0 MiB");
    }
}
