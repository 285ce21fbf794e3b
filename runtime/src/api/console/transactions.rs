//! The transactions: the search (the API's own, `GET /v1/search`, with its filters and
//! cursor), one transaction's page — a saga's steps as a timeline with each compensation
//! beside the step it undoes, a 2PC transaction's votes and decision, a managed one's
//! selection and delegate, the history below — and the operator's actions on it, each behind
//! a confirmation and done through `operate::act` like the API's.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::page::{self, Nav, Problem};
use super::session::Operator;
use super::{Console, Posted};
use crate::api::auth::Tenant;
use crate::api::operate::{self, Action};
use crate::api::{AppState, ApiError};
use crate::store::{EventRow, KINDS};

/// History events a transaction page shows at most.
const EVENTS_SHOWN: usize = 500;
/// Bytes of an output, error or detail shown before it is cut.
const SHOWN_BYTES: usize = 2_000;

/// A page of `GET /v1/search` for `tenant`, asked with `query` (its query string).
pub async fn search(app: &AppState, tenant: &str, query: &str) -> Result<Value, Problem> {
    let uri: Uri = format!("/?{query}").parse().map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "The filters cannot be read."))?;
    let query = Query::try_from_uri(&uri).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let axum::Json(page) = crate::api::search::search(State(app.clone()), Tenant(tenant.to_string(), String::new()), Ok(query)).await?;
    Ok(page)
}

/// The id, name and state of a search item or a kind's document.
pub fn doc_id(doc: &Value) -> &str {
    doc["saga_id"].as_str().or(doc["transaction_id"].as_str()).unwrap_or("")
}

fn doc_name(doc: &Value) -> &str {
    doc["saga_name"].as_str().or(doc["transaction_name"].as_str()).unwrap_or("")
}

fn doc_state(doc: &Value) -> &str {
    doc["transaction_status"].as_str().or(doc["state"].as_str()).unwrap_or("")
}

/// Search items as a table, each linked to its page.
pub fn table(id: &str, caption: &str, items: &[Value]) -> Markup {
    html! {
        div.scroll {
            table.list id=(id) {
                caption.visually-hidden { (caption) }
                thead {
                    tr {
                        th scope="col" { "Transaction" }
                        th scope="col" { "Kind" }
                        th scope="col" { "Name" }
                        th scope="col" { "State" }
                        th scope="col" { "Started" }
                        th scope="col" { "Error" }
                    }
                }
                tbody {
                    @for item in items {
                        @let kind = item["kind"].as_str().unwrap_or("");
                        tr {
                            td { a.mono href=(page::tx_href(kind, doc_id(item))) { (doc_id(item)) } }
                            td { (page::kind_name(kind)) }
                            td { (doc_name(item)) }
                            td { (page::state(doc_state(item))) @if item["needs_attention"] == true { " " span.flag { "needs attention" } } }
                            td { @if let Some(t) = item["started_at"].as_str().or(item["created_at"].as_str()) { (page::time(t)) } @else { "—" } }
                            td.error-text { @if let Some(e) = item["error"].as_str() { (page::cut(e, 160)) } }
                        }
                    }
                }
            }
        }
    }
}

/// The search's filters as the form sends them (empty fields are no filter).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    kind: Option<String>,
    state: Option<String>,
    name: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    needs_attention: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

impl Filters {
    fn given(field: &Option<String>) -> Option<&str> {
        field.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    /// The query string of `/v1/search` these filters ask (with `cursor`, if any).
    fn to_query(&self, cursor: Option<&str>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [("kind", &self.kind), ("state", &self.state), ("name", &self.name)] {
            if let Some(v) = Self::given(value) {
                q.append_pair(key, v);
            }
        }
        // A `datetime-local` field says no zone; the form says it is UTC.
        for (key, value) in [("created_after", &self.created_after), ("created_before", &self.created_before)] {
            if let Some(v) = Self::given(value) {
                let utc = if v.len() == 16 { format!("{v}:00Z") } else if v.len() == 19 { format!("{v}Z") } else { v.to_string() };
                q.append_pair(key, &utc);
            }
        }
        if Self::given(&self.needs_attention).is_some() {
            q.append_pair("needs_attention", "true");
        }
        q.append_pair("limit", Self::given(&self.limit).unwrap_or("50"));
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        q.finish()
    }

    /// The console's own query string for these filters (the next page's link).
    fn to_console_query(&self, cursor: &str) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        let fields = [
            ("kind", &self.kind),
            ("state", &self.state),
            ("name", &self.name),
            ("created_after", &self.created_after),
            ("created_before", &self.created_before),
            ("needs_attention", &self.needs_attention),
            ("limit", &self.limit),
        ];
        for (key, value) in fields {
            if let Some(v) = Self::given(value) {
                q.append_pair(key, v);
            }
        }
        q.append_pair("cursor", cursor);
        q.finish()
    }
}

/// Every state of every kind, for the filter's suggestions.
fn all_states() -> Vec<&'static str> {
    use crate::manager::Status;
    use crate::saga::SagaState;
    use crate::tpc::TpcState;
    let mut states: Vec<&str> = [SagaState::Pending, SagaState::Running, SagaState::Completed, SagaState::Compensating, SagaState::Compensated, SagaState::Failed]
        .iter()
        .map(|s| s.as_str())
        .chain([TpcState::Init, TpcState::Preparing, TpcState::Prepared, TpcState::Committing, TpcState::Committed, TpcState::Aborting, TpcState::Aborted].iter().map(|s| s.as_str()))
        .chain([Status::Pending, Status::Running, Status::Committed, Status::Compensated, Status::Aborted, Status::Failed].iter().map(|s| s.as_str()))
        .collect();
    states.sort_unstable();
    states.dedup();
    states
}

pub async fn list(
    State(console): State<Console>,
    Operator { tenant, viewer }: Operator,
    filters: Result<Query<Filters>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(filters) = filters.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let found = search(&console.app, &tenant, &filters.to_query(Filters::given(&filters.cursor))).await;
    let (items, next, error) = match found {
        Ok(page) => (page["items"].as_array().cloned().unwrap_or_default(), page["next_cursor"].as_str().map(str::to_string), None),
        // A filter the search refuses: the form again, with the reason.
        Err(p) if p.status.is_client_error() => (Vec::new(), None, Some(p)),
        Err(p) => return Err(p),
    };
    let value = |f: &Option<String>| f.clone().unwrap_or_default();
    let kind = Filters::given(&filters.kind).unwrap_or("");
    let limit = Filters::given(&filters.limit).unwrap_or("50");
    let body = html! {
        h1 { "Transactions" }
        form.filters method="get" action="/ui/transactions" role="search" aria-label="Filter transactions" {
            div.field {
                label for="f-kind" { "Kind" }
                select #f-kind name="kind" {
                    option value="" selected[kind.is_empty()] { "any" }
                    @for k in KINDS {
                        option value=(k) selected[kind == *k] { (page::kind_name(k)) }
                    }
                }
            }
            div.field {
                label for="f-state" { "State" }
                input #f-state name="state" list="states" maxlength="64" value=(value(&filters.state));
                datalist #states { @for s in all_states() { option value=(s) {} } }
            }
            div.field {
                label for="f-name" { "Name" }
                input #f-name name="name" maxlength="256" value=(value(&filters.name));
            }
            div.field {
                label for="f-after" { "Created after (UTC)" }
                input #f-after type="datetime-local" name="created_after" value=(value(&filters.created_after));
            }
            div.field {
                label for="f-before" { "Created before (UTC)" }
                input #f-before type="datetime-local" name="created_before" value=(value(&filters.created_before));
            }
            div.field {
                label for="f-limit" { "Per page" }
                select #f-limit name="limit" {
                    @for n in ["25", "50", "100", "200"] {
                        option value=(n) selected[limit == n] { (n) }
                    }
                }
            }
            div.field.check {
                input #f-attention type="checkbox" name="needs_attention" value="true" checked[Filters::given(&filters.needs_attention).is_some()];
                label for="f-attention" { "Needs attention only" }
            }
            div.field { button type="submit" { "Search" } }
        }
        @if let Some(p) = &error {
            p.error role="alert" { (p.message) }
        }
        @if items.is_empty() && error.is_none() {
            p.quiet #no-results { "No transaction matches." }
        } @else if !items.is_empty() {
            (table("results", "Transactions found, newest first", &items))
        }
        nav.pages aria-label="Pages" {
            @if Filters::given(&filters.cursor).is_some() {
                a href="/ui/transactions" { "First page" }
            }
            @if let Some(next) = &next {
                a #next-page rel="next" href={ "/ui/transactions?" (filters.to_console_query(next)) } { "Next page" }
            }
        }
    };
    let status = error.as_ref().map_or(StatusCode::OK, |p| p.status);
    Ok((status, page::layout("Transactions", &viewer, Nav::Transactions, body)).into_response())
}

/// A kind and id from the path; anything else is a page that does not exist.
fn transaction_ref(kind: &str, id: &str) -> Result<(), Problem> {
    if !KINDS.contains(&kind) || crate::text::check("id", id, crate::text::MAX_ID_LEN).is_err() {
        return Err(Problem::not_found());
    }
    Ok(())
}

/// A failure of the engines, with "not found" said the console's way (the same page for an
/// unknown id and another tenant's).
fn engine(e: impl Into<ApiError>) -> Problem {
    let e = e.into();
    if e.status == StatusCode::NOT_FOUND { Problem::not_found() } else { e.into() }
}

/// The document and history of `kind` `id` of `tenant`.
async fn load(app: &AppState, tenant: &str, kind: &str, id: &str) -> Result<(Value, Vec<EventRow>), Problem> {
    let inner = &app.inner;
    Ok(match kind {
        "saga" => (inner.sagas.get(tenant, id).await.map_err(engine)?.document(), inner.sagas.history(tenant, id).await.map_err(engine)?),
        "2pc" => (inner.tpc.get(tenant, id).await.map_err(engine)?.document(), inner.tpc.history(tenant, id).await.map_err(engine)?),
        _ => {
            let m = inner.manager.get(tenant, id).await.map_err(engine)?;
            (inner.manager.document(tenant, &m).await.map_err(engine)?, inner.manager.history(tenant, id).await.map_err(engine)?)
        }
    })
}

/// The actions `kind` in `state` may take (the engine still decides: it refuses with the
/// reason when the transaction moved on meanwhile).
fn actions(kind: &str, state: &str) -> &'static [Action] {
    use Action::*;
    match (kind, state) {
        ("saga", "pending") => &[Cancel],
        ("saga", "running") => &[Resume, Cancel],
        ("saga", "compensating" | "failed") => &[Resume],
        ("2pc", "init") => &[Abort],
        ("2pc", "preparing" | "aborting") => &[Recover, Abort],
        ("2pc", "prepared" | "committing" | "failed") => &[Recover],
        ("transaction", "pending") => &[Abort],
        ("transaction", "running") => &[Recover, Abort],
        _ => &[],
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Resume => "resume",
        Action::Cancel => "cancel",
        Action::Recover => "recover",
        Action::Abort => "abort",
    }
}

/// What an action will do, said before it is confirmed.
fn action_means(kind: &str, action: Action) -> &'static str {
    match (kind, action) {
        ("saga", Action::Resume | Action::Recover) => "The saga continues from where it stopped: a failed compensation is tried again with a fresh budget; completed steps are never run again.",
        ("saga", _) => "The saga stops before its next step, and its completed steps are compensated in reverse order.",
        (_, Action::Resume | Action::Recover) => "The transaction is driven to its end from its durable state: a decision already taken is carried out.",
        _ => "The transaction is aborted: every participant is told to abort (refused once COMMIT is decided).",
    }
}

#[derive(Deserialize)]
pub struct Shown {
    done: Option<String>,
}

pub async fn show(
    State(console): State<Console>,
    Operator { tenant, viewer }: Operator,
    path: Result<Path<(String, String)>, PathRejection>,
    shown: Result<Query<Shown>, axum::extract::rejection::QueryRejection>,
) -> Result<Markup, Problem> {
    let Ok(Path((kind, id))) = path else { return Err(Problem::not_found().shown_to(Some(viewer))) };
    transaction_ref(&kind, &id).map_err(|p| p.shown_to(Some(viewer.clone())))?;
    let (doc, history) = load(&console.app, &tenant, &kind, &id).await.map_err(|p| p.shown_to(Some(viewer.clone())))?;
    let state = doc_state(&doc).to_string();
    let done = shown.ok().and_then(|Query(s)| s.done).filter(|d| d.len() <= 16);
    let body = html! {
        p.crumbs { a href="/ui/transactions" { "Transactions" } " / " (page::kind_name(&kind)) }
        h1 { span.mono { (id) } }
        @if let Some(done) = done {
            p.notice role="status" { "Done: " (done) "." }
        }
        dl.facts {
            dt { "Name" } dd { (doc_name(&doc)) }
            dt { "Kind" } dd { (page::kind_name(&kind)) }
            dt { "State" } dd #tx-state { (page::state(&state)) @if doc["needs_attention"] == true { " " span.flag { "needs attention" } } }
            @if let Some(t) = doc["created_at"].as_str() { dt { "Created" } dd { (page::time(t)) } }
            @if let Some(t) = doc["started_at"].as_str() { dt { "Started" } dd { (page::time(t)) } }
            @if let Some(t) = doc["ended_at"].as_str() { dt { "Ended" } dd { (page::time(t)) } }
            @if let Some(d) = doc["duration_ms"].as_i64().or(doc["execution_time_ms"].as_i64()) { dt { "Duration" } dd { (d) " ms" } }
            @if let Some(e) = doc["error"].as_str() { dt { "Error" } dd.error-text #tx-error { (page::cut(e, SHOWN_BYTES)) } }
        }
        @let possible = actions(&kind, &state);
        @if !possible.is_empty() {
            section aria-labelledby="actions-heading" {
                h2 #actions-heading { "Actions" }
                div.actions {
                    @for action in possible {
                        a.button id={ "action-" (action_name(*action)) } href={ (page::tx_href(&kind, &id)) "/" (action_name(*action)) } { (capitalised(action_name(*action))) "…" }
                    }
                }
            }
        }
        @match kind.as_str() {
            "saga" => (saga_timeline(&doc, &history)),
            "2pc" => (tpc_votes(&doc)),
            _ => (managed_selection(&doc, &history)),
        }
        section aria-labelledby="context-heading" {
            h2 #context-heading { "Context" }
            (page::json(&doc["context"], SHOWN_BYTES))
        }
        (history_table(&history))
    };
    let title = format!("{} {id}", page::kind_name(&kind));
    let status = doc["transaction_status"].as_str().or(doc["state"].as_str()).unwrap_or("");
    let ended = match kind.as_str() {
        "saga" => crate::saga::SagaState::parse(status).is_some_and(|s| s.is_terminal()),
        "2pc" => crate::tpc::TpcState::parse(status).is_some_and(|s| s.is_terminal()),
        _ => crate::manager::Status::parse(status).is_some_and(|s| s.is_terminal()),
    };
    Ok(if ended { page::layout(&title, &viewer, Nav::Transactions, body) } else { page::refreshing(&title, &viewer, Nav::Transactions, 2, body) })
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// When each step's forward run and compensation began and ended, from the history; and the
/// order the compensations ran in.
#[derive(Default)]
struct Spans {
    forward: HashMap<String, (i64, Option<i64>)>,
    undo: HashMap<String, (i64, Option<i64>)>,
    undo_order: Vec<String>,
    undo_output: HashMap<String, Value>,
    undo_error: HashMap<String, String>,
}

fn spans(history: &[EventRow]) -> Spans {
    let mut s = Spans::default();
    for e in history {
        let Some(step) = e.step.clone() else { continue };
        match e.kind.as_str() {
            "step_started" => {
                s.forward.entry(step).or_insert((e.at_ms, None));
            }
            "step_completed" | "step_failed" | "step_uncertain" => {
                if let Some(span) = s.forward.get_mut(&step) {
                    span.1 = Some(e.at_ms);
                }
            }
            "compensation_started" => {
                if !s.undo.contains_key(&step) {
                    s.undo_order.push(step.clone());
                }
                // A compensation begun again after it ended (a resume) is timed from then.
                let span = s.undo.entry(step).or_insert((e.at_ms, None));
                if span.1.is_some() {
                    *span = (e.at_ms, None);
                }
            }
            "step_compensated" | "compensation_failed" => {
                if let Some(span) = s.undo.get_mut(&step) {
                    span.1 = Some(e.at_ms);
                }
                if let Some(out) = e.detail.get("output") {
                    s.undo_output.insert(step.clone(), out.clone());
                }
                if let Some(reason) = e.detail.get("reason").and_then(Value::as_str) {
                    s.undo_error.insert(step, reason.to_string());
                } else if e.kind == "step_compensated" {
                    s.undo_error.remove(&step);
                }
            }
            "compensation_retry" => {
                if let Some(reason) = e.detail.get("reason").and_then(Value::as_str) {
                    s.undo_error.insert(step, reason.to_string());
                }
            }
            _ => {}
        }
    }
    s
}

fn took((start, end): (i64, Option<i64>)) -> String {
    match end {
        Some(end) => format!("{} ms", end - start),
        None => "running".into(),
    }
}

/// A saga's steps in order, each compensation on its own row right under the step it undoes.
fn saga_timeline(doc: &Value, history: &[EventRow]) -> Markup {
    let steps = doc["steps"].as_array().cloned().unwrap_or_default();
    let spans = spans(history);
    html! {
        section aria-labelledby="steps-heading" {
            h2 #steps-heading { "Steps" }
            @if steps.is_empty() { p.quiet { "No steps." } }
            ol.timeline #timeline {
                @for step in &steps {
                    @let name = step["name"].as_str().unwrap_or("");
                    @let state = step["state"].as_str().unwrap_or("");
                    li.step data-step=(name) {
                        div.row {
                            span.what { "Step " strong { (name) } }
                            (page::state(state))
                            span { "attempts " (step["attempts"]) }
                            span { @if let Some(span) = spans.forward.get(name) { (took(*span)) } @else { "not run" } }
                            span.mono { (step["plugin_version"].as_str().unwrap_or("HTTP participant")) }
                        }
                        @if let Some(out) = step.get("output") {
                            details { summary { "Output" } (page::json(out, SHOWN_BYTES)) }
                        }
                        @let undoing = matches!(state, "compensating" | "compensated" | "compensation_failed");
                        @if !undoing && let Some(e) = step["error"].as_str() {
                            p.error-text { (page::cut(e, SHOWN_BYTES)) }
                        }
                        @if let Some(span) = spans.undo.get(name) {
                            @let order = spans.undo_order.iter().position(|s| s == name).map_or(0, |i| i + 1);
                            @let undone = state == "compensated";
                            div.compensation data-undoes=(name) {
                                div.row {
                                    span.what { "↩ Compensation " (order) " undoes " strong { (name) } }
                                    (page::state(match state { "compensated" => "compensated", "compensation_failed" => "compensation_failed", _ => "compensating" }))
                                    span { "attempts " (step["compensation_attempts"].as_u64().unwrap_or(0)) }
                                    span { (took(*span)) }
                                    span.mono { (undone_by(step)) }
                                }
                                @if let Some(out) = spans.undo_output.get(name) {
                                    details { summary { "Output" } (page::json(out, SHOWN_BYTES)) }
                                }
                                @if !undone && let Some(e) = spans.undo_error.get(name).map(String::as_str).or(step["error"].as_str()) {
                                    p.error-text { (page::cut(e, SHOWN_BYTES)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What undoes a step: its own compensation plugin or participant, else the step's own.
fn undone_by(step: &Value) -> String {
    if let Some(version) = step["compensation_plugin_version"].as_str() {
        return version.to_string();
    }
    if let Some(endpoint) = step["compensation_endpoint"].as_str() {
        return format!("HTTP {}", page::cut(endpoint, 200));
    }
    step["plugin_version"].as_str().unwrap_or("HTTP participant").to_string()
}

/// A 2PC transaction's decision, and each participant's vote and state.
fn tpc_votes(doc: &Value) -> Markup {
    let participants = doc["participants"].as_array().cloned().unwrap_or_default();
    let decision = doc["decision"].as_str().map(str::to_string).or_else(|| doc["decision"].as_object().map(|_| doc["decision"].to_string()));
    html! {
        section aria-labelledby="votes-heading" {
            h2 #votes-heading { "Votes and decision" }
            p #decision { "Decision: " @if let Some(d) = &decision { strong { (d) } } @else { "not taken yet" } }
            (participants_table(&participants, true))
        }
    }
}

fn participants_table(participants: &[Value], votes: bool) -> Markup {
    html! {
        div.scroll {
            table.list #participants {
                caption.visually-hidden { "Participants" }
                thead {
                    tr {
                        th scope="col" { "Participant" }
                        @if votes { th scope="col" { "Vote" } }
                        th scope="col" { "State" }
                        th scope="col" { "Attempts" }
                        th scope="col" { "Plugin version" }
                        th scope="col" { "Error" }
                    }
                }
                tbody {
                    @for p in participants {
                        tr {
                            td { (p["participant_id"].as_str().unwrap_or("")) }
                            @if votes {
                                td { (p["vote"].as_str().unwrap_or("—")) @if let Some(r) = p["vote_reason"].as_str() { ": " (page::cut(r, 200)) } }
                            }
                            td { (page::state(p["state"].as_str().unwrap_or(""))) }
                            td.number { (p["attempts"]) }
                            td.mono { (p["plugin_version"].as_str().unwrap_or("—")) }
                            td.error-text { @if let Some(e) = p["error"].as_str() { (page::cut(e, 300)) } }
                        }
                    }
                }
            }
        }
    }
}

/// A managed transaction's selected pattern, why, its fallbacks and its delegate.
fn managed_selection(doc: &Value, history: &[EventRow]) -> Markup {
    let fallbacks: Vec<&EventRow> = history.iter().filter(|e| e.kind == "policy_fallback").collect();
    let delegate = doc["coordinator_status"].as_object();
    html! {
        section aria-labelledby="selection-heading" {
            h2 #selection-heading { "Selection" }
            dl.facts {
                dt { "Pattern" } dd #pattern { (doc["selected_pattern"].as_str().unwrap_or("not selected yet")) }
                dt { "Policy" } dd { (doc["policy"].as_str().unwrap_or("builtin")) }
                @if let Some(r) = doc["reason"].as_str() { dt { "Why" } dd { (page::cut(r, SHOWN_BYTES)) } }
                dt { "Requirements" } dd { (page::json(&doc["requirements"], 500)) }
                @if let Some(d) = delegate {
                    @let (kind, id) = (d["kind"].as_str().unwrap_or(""), d["id"].as_str().unwrap_or(""));
                    dt { "Delegate" } dd { a #delegate.mono href=(page::tx_href(kind, id)) { (id) } " (" (page::kind_name(kind)) ", " (page::state(d["state"].as_str().unwrap_or(""))) ")" }
                }
            }
            @if !fallbacks.is_empty() {
                h3 { "Fallbacks" }
                ul { @for f in &fallbacks { li { (page::at(f.at_ms)) " " (page::cut(&f.detail.to_string(), 500)) } } }
            }
            h3 { "Participants" }
            (participants_table(doc["participants"].as_array().map_or(&[][..], Vec::as_slice), false))
        }
    }
}

fn history_table(history: &[EventRow]) -> Markup {
    html! {
        section aria-labelledby="history-heading" {
            h2 #history-heading { "History" }
            @if history.len() > EVENTS_SHOWN {
                p.hint { "The first " (EVENTS_SHOWN) " of " (history.len()) " events." }
            }
            div.scroll {
                table.list #history {
                    caption.visually-hidden { "Every event, in order" }
                    thead { tr { th scope="col" { "#" } th scope="col" { "At" } th scope="col" { "Event" } th scope="col" { "Step" } th scope="col" { "Detail" } } }
                    tbody {
                        @for e in history.iter().take(EVENTS_SHOWN) {
                            tr {
                                td.number { (e.seq) }
                                td { (page::at(e.at_ms)) }
                                td { (e.kind) }
                                td { (e.step.as_deref().unwrap_or("")) }
                                td.mono.detail { @if e.detail != json!({}) && !e.detail.is_null() { (page::cut(&e.detail.to_string(), 500)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An action named in the path.
fn parse_action(text: &str) -> Result<Action, Problem> {
    serde_json::from_value(json!(text)).map_err(|_| Problem::new(StatusCode::NOT_FOUND, "There is no such action: resume, cancel, recover or abort."))
}

/// The confirmation step before an action.
pub async fn confirm(
    State(console): State<Console>,
    Operator { tenant, viewer }: Operator,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Markup, Problem> {
    let Ok(Path((kind, id, action))) = path else { return Err(Problem::not_found().shown_to(Some(viewer))) };
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    transaction_ref(&kind, &id).map_err(shown)?;
    let action = parse_action(&action).map_err(shown)?;
    let (doc, _) = load(&console.app, &tenant, &kind, &id).await.map_err(shown)?;
    let name = action_name(action);
    let body = html! {
        h1 { (capitalised(name)) " " (page::kind_name(&kind)) " " span.mono { (id) } "?" }
        p { "It is " (page::state(doc_state(&doc))) " now. " (action_means(&kind, action)) }
        p { "The action is recorded in the tenant's audit trail." }
        form method="post" action={ (page::tx_href(&kind, &id)) "/" (name) } {
            input type="hidden" name="csrf" value=(viewer.csrf);
            button #confirm type="submit" { "Yes, " (name) }
            " "
            a href=(page::tx_href(&kind, &id)) { "No, go back" }
        }
    };
    Ok(page::layout(&format!("{} {id}?", capitalised(name)), &viewer, Nav::Transactions, body))
}

#[derive(Deserialize)]
pub struct Confirmed {}

/// Does a confirmed action as the API does (`operate::act`: admitted, audited), then shows
/// the transaction.
pub async fn act(
    State(console): State<Console>,
    Operator { tenant, viewer }: Operator,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Posted(_, Confirmed {}): Posted<Confirmed>,
) -> Result<Response, Problem> {
    let Ok(Path((kind, id, action))) = path else { return Err(Problem::not_found().shown_to(Some(viewer))) };
    let shown = |p: Problem| p.shown_to(Some(viewer.clone()));
    transaction_ref(&kind, &id).map_err(shown)?;
    let action = parse_action(&action).map_err(shown)?;
    operate::act(&console.app, &tenant, &viewer.actor, &kind, action, &id).await.map_err(|e| shown(engine(e)))?;
    Ok(Redirect::to(&format!("{}?done={}", page::tx_href(&kind, &id), action_name(action))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filters_ask_nothing_and_local_times_are_utc() {
        let f = Filters { kind: Some("".into()), state: Some(" failed ".into()), created_after: Some("2026-12-01T10:00".into()), needs_attention: Some("true".into()), ..Filters::default() };
        assert_eq!(f.to_query(Some("ab")), "state=failed&created_after=2026-12-01T10%3A00%3A00Z&needs_attention=true&limit=50&cursor=ab");
        assert_eq!(Filters::default().to_console_query("c1"), "cursor=c1");
    }

    #[test]
    fn actions_follow_the_state() {
        assert_eq!(actions("saga", "failed"), &[Action::Resume]);
        assert!(actions("saga", "completed").is_empty());
        assert_eq!(actions("2pc", "init"), &[Action::Abort]);
        assert!(actions("transaction", "committed").is_empty());
    }

    #[test]
    fn each_compensation_is_matched_to_its_step_in_the_order_it_ran() {
        let e = |seq, kind: &str, step: &str, detail: Value| EventRow { seq, at_ms: seq * 10, kind: kind.into(), step: Some(step.into()), detail };
        let history = [
            e(1, "step_started", "a", json!({})),
            e(2, "step_completed", "a", json!({})),
            e(3, "step_started", "b", json!({})),
            e(4, "step_completed", "b", json!({})),
            e(5, "compensation_started", "b", json!({})),
            e(6, "step_compensated", "b", json!({"output": {"ok": 1}})),
            e(7, "compensation_started", "a", json!({})),
            e(8, "compensation_retry", "a", json!({"reason": "busy"})),
            e(9, "compensation_failed", "a", json!({"reason": "refused"})),
            e(10, "compensation_started", "b", json!({})),
        ];
        let s = spans(&history);
        assert_eq!(s.undo_order, ["b", "a"]);
        assert_eq!(s.forward["a"], (10, Some(20)));
        assert_eq!(s.undo["a"], (70, Some(90)));
        assert_eq!(s.undo_error["a"], "refused");
        assert_eq!(s.undo_output["b"], json!({"ok": 1}));
        assert_eq!(s.undo["b"], (100, None), "begun again: timed from the new start");
    }
}
