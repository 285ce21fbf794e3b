//! What every console page shares: the document around its content (head, navigation, who is
//! signed in), the error page, and the small pieces pages render alike (a state, a time, a
//! JSON value cut to size). Text reaches the HTML only through maud, which escapes it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::session::Viewer;
use crate::api::ApiError;

/// Which part of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Transactions,
    Plugins,
    Settings,
    SignIn,
    Nothing,
}

const SECTIONS: &[(Nav, &str, &str)] = &[
    (Nav::Overview, "/ui", "Overview"),
    (Nav::Transactions, "/ui/transactions", "Transactions"),
    (Nav::Plugins, "/ui/plugins", "Plugins"),
    (Nav::Settings, "/ui/settings", "Settings"),
];

/// A whole page: `body` inside the navigation, for `viewer` (`None` on an error page that
/// could not tell who asks).
pub fn layout(title: &str, viewer: &Viewer, nav: Nav, body: Markup) -> Markup {
    document(title, Some(viewer), nav, None, body)
}

/// A page that reloads itself every `seconds` while JavaScript runs (the console script reads
/// `data-refresh`); without it, the page stays as it is.
pub fn refreshing(title: &str, viewer: &Viewer, nav: Nav, seconds: u32, body: Markup) -> Markup {
    document(title, Some(viewer), nav, Some(seconds), body)
}

fn document(title: &str, viewer: Option<&Viewer>, nav: Nav, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wasmtx" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body data-refresh=[refresh] {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        a.brand href="/ui" { "wasmtx" }
                        ul {
                            @for (section, href, label) in SECTIONS {
                                li {
                                    @if *section == nav {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                        @if let Some(viewer) = viewer {
                            div.who {
                                @if viewer.admin {
                                    span { "admin" }
                                } @else if let Some(tenant) = &viewer.tenant {
                                    span { "tenant " strong { (tenant) } }
                                }
                                @if viewer.signed_in {
                                    form method="post" action="/ui/sign-out" {
                                        input type="hidden" name="csrf" value=(viewer.csrf);
                                        button.link type="submit" { "Sign out" }
                                    }
                                } @else if nav != Nav::SignIn {
                                    a href="/ui/sign-in" { "Sign in" }
                                }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// A refusal or failure shown as a page: its status, and a sentence that says what went wrong.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
    viewer: Option<Viewer>,
}

impl Problem {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Problem { status, message: message.into(), viewer: None }
    }

    /// The page shows `viewer`'s navigation (their sign-out button).
    pub fn shown_to(mut self, viewer: Option<Viewer>) -> Self {
        self.viewer = viewer;
        self
    }

    pub fn not_found() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "There is no such transaction, or it is not this tenant's.")
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Self {
        Problem::new(e.status, e.message)
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), "console: {}", self.message);
        }
        let heading = match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::UNAUTHORIZED => "Not signed in",
            StatusCode::FORBIDDEN => "Refused",
            StatusCode::CONFLICT => "Not possible now",
            s if s.is_server_error() => "The server failed",
            _ => "That did not work",
        };
        let body = html! {
            h1 { (heading) }
            p.error role="alert" { (self.message) }
            p { a href="/ui" { "Back to the overview" } }
        };
        (self.status, document(heading, self.viewer.as_ref(), Nav::Nothing, None, body)).into_response()
    }
}

/// A state as a badge (its class colours it; the word says it).
pub fn state(state: &str) -> Markup {
    let class = format!("state state-{}", state.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    html! { span class=(class) { (state) } }
}

/// Milliseconds since the epoch as an RFC 3339 time in a `<time>`.
pub fn at(ms: i64) -> Markup {
    time(&crate::txn::rfc3339(ms))
}

/// An RFC 3339 time in a `<time>`, shown without its `T` and milliseconds.
pub fn time(rfc3339: &str) -> Markup {
    let shown = rfc3339.replacen('T', " ", 1);
    let shown = match shown.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => shown,
    };
    html! { time datetime=(rfc3339) { (shown) } }
}

/// `value` as indented JSON, cut after `max` bytes (saying so).
pub fn json(value: &Value, max: usize) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (cut(&text, max)) } }
}

/// `text`, cut after `max` bytes at a character boundary, ending in "…" when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", &text[..end], text.len() - end)
}

/// The link to a transaction's page.
pub fn tx_href(kind: &str, id: &str) -> String {
    format!("/ui/transactions/{}/{}", encode(kind), encode(id))
}

/// `text` percent-encoded for a path segment or query value.
pub fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A kind as people say it.
pub fn kind_name(kind: &str) -> &'static str {
    match kind {
        "saga" => "saga",
        "2pc" => "2PC",
        "transaction" => "managed",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_and_says_how_much_is_left() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é… (4 bytes more)");
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn text_is_escaped_in_every_page() {
        let markup = html! { p { (cut("<script>alert(1)</script>", 100)) } };
        assert!(!markup.into_string().contains("<script>"));
    }
}
