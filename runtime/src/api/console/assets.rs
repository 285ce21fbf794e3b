//! The console's stylesheet and script, compiled into the binary (nothing is fetched from
//! another host, and the Content-Security-Policy allows no other source).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::page::Problem;

const FILES: &[(&str, &str, &str)] = &[
    ("console.css", "text/css; charset=utf-8", include_str!("assets/console.css")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("assets/console.js")),
];

pub async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            let mut response = (StatusCode::OK, *body).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // The assets change with the binary only; an hour keeps pages quick without
            // keeping an old script past an upgrade for long.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            response
        }
        None => Problem::new(StatusCode::NOT_FOUND, "There is no such file.").into_response(),
    }
}
