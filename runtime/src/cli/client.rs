//! The commands that talk to a running server (API.md, "Command line"): `plugin push`,
//! `plugin list`, `status`, `recover`. They print the server's JSON answer; an error answer
//! goes to stderr and the exit code is 1.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

/// Where the server is and who we are to it.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "WASMTX_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    /// API key of the tenant (not needed in single-tenant mode).
    #[arg(long, env = "WASMTX_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

/// What `wasmtx search` (and `wasmtx list`) ask a server for.
#[derive(clap::Args, Clone, Default)]
pub struct SearchArgs {
    /// `saga`, `2pc` or `transaction` (managed); all kinds without it.
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    state: Option<String>,
    /// The transaction's name, exactly.
    #[arg(long)]
    name: Option<String>,
    /// Only those an operator should look at.
    #[arg(long)]
    needs_attention: bool,
    /// RFC 3339 or ms since the epoch.
    #[arg(long)]
    created_after: Option<String>,
    #[arg(long)]
    created_before: Option<String>,
    /// Rows per page (1-500).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Where the page before ended (printed under it).
    #[arg(long)]
    cursor: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl SearchArgs {
    /// The same search, of `kind` only (`wasmtx list KIND`).
    pub fn of_kind(self, kind: String) -> SearchArgs {
        SearchArgs { kind: Some(kind), ..self }
    }
}

/// A transaction's kind, from the prefix of its id.
fn path_of(id: &str) -> anyhow::Result<&'static str> {
    match id.split_once('-').map(|(prefix, _)| prefix) {
        Some("saga") => Ok("/v1/sagas"),
        Some("tpc") => Ok("/v1/2pc"),
        Some("tx") => Ok("/v1/transactions"),
        _ => anyhow::bail!("{id:?} is not a transaction id (saga-…, tpc-… or tx-…)"),
    }
}

impl ServerArgs {
    /// Prints a page of the server's search as a table (or its JSON).
    pub async fn search(&self, args: &SearchArgs) -> anyhow::Result<ExitCode> {
        let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
        let optional = [
            ("kind", &args.kind),
            ("state", &args.state),
            ("name", &args.name),
            ("created_after", &args.created_after),
            ("created_before", &args.created_before),
            ("cursor", &args.cursor),
        ];
        query.extend(optional.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))));
        if args.needs_attention {
            query.push(("needs_attention", "true".into()));
        }
        let url = format!("{}/v1/search", self.server.trim_end_matches('/'));
        let mut request = reqwest::Client::new().get(&url).query(&query);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.with_context(|| format!("no answer from {url} (is `wasmtx serve` running there?)"))?;
        let status = response.status();
        let page: Value = response.json().await.context("reading the answer")?;
        if !status.is_success() {
            eprintln!("{status}: {}", serde_json::to_string_pretty(&page).unwrap_or_default());
            return Ok(ExitCode::FAILURE);
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&page)?);
            return Ok(ExitCode::SUCCESS);
        }
        print!("{}", table(&page));
        Ok(ExitCode::SUCCESS)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<ExitCode> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let mut request = reqwest::Client::new().request(method, &url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/wasm").body(body);
        }
        let response = request.send().await.with_context(|| format!("no answer from {url} (is `wasmtx serve` running there?)"))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        let shown = serde_json::from_str::<Value>(&text).map_or(text, |v| serde_json::to_string_pretty(&v).unwrap_or_default());
        if status.is_success() {
            println!("{shown}");
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!("{status}: {shown}");
            Ok(ExitCode::FAILURE)
        }
    }

    pub async fn push(&self, name: &str, file: &Path) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        self.send(reqwest::Method::PUT, &format!("/v1/plugins/{name}"), Some(bytes)).await
    }

    pub async fn list(&self) -> anyhow::Result<ExitCode> {
        self.send(reqwest::Method::GET, "/v1/plugins", None).await
    }

    pub async fn status(&self, id: &str) -> anyhow::Result<ExitCode> {
        self.send(reqwest::Method::GET, &format!("{}/{id}", path_of(id)?), None).await
    }

    /// Resumes a saga, recovers a 2PC or managed transaction.
    pub async fn recover(&self, id: &str) -> anyhow::Result<ExitCode> {
        let action = if path_of(id)? == "/v1/sagas" { "resume" } else { "recover" };
        self.send(reqwest::Method::POST, &format!("{}/{id}/{action}", path_of(id)?), None).await
    }
}

/// A search page as a table: one row per transaction, then how to get the next page.
fn table(page: &Value) -> String {
    let items = page["items"].as_array().cloned().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|d| {
            let id = ["saga_id", "transaction_id"].iter().map(|k| text(&d[*k])).find(|v| !v.is_empty()).unwrap_or_default();
            let name = ["saga_name", "transaction_name"].iter().map(|k| text(&d[*k])).find(|v| !v.is_empty()).unwrap_or_default();
            let state = ["state", "transaction_status"].iter().map(|k| text(&d[*k])).find(|v| !v.is_empty()).unwrap_or_default();
            let attention = if d["needs_attention"] == true { "yes" } else { "" };
            [text(&d["kind"]), id, name, state, text(&d["created_at"]), attention.to_string()]
        })
        .collect();
    let header = ["KIND", "ID", "NAME", "STATE", "CREATED", "ATTENTION"].map(String::from);
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let line = |r: &[String; 6]| {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", cells.join("  ").trim_end())
    };
    let mut out = line(&header);
    for r in &rows {
        out += &line(r);
    }
    match page["next_cursor"].as_str() {
        Some(cursor) => out += &format!("{} shown; next page: --cursor {cursor}\n", rows.len()),
        None => out += &format!("{} shown; the last page\n", rows.len()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_prints_as_an_aligned_table_with_the_next_cursor() {
        let page = serde_json::json!({"items": [
            {"kind": "saga", "saga_id": "saga-1", "saga_name": "order", "state": "failed", "created_at": "2026-12-01T10:00:00.000Z", "needs_attention": true},
            {"kind": "transaction", "transaction_id": "tx-22", "transaction_name": "transfer", "transaction_status": "committed", "created_at": "2026-12-01T09:00:00.000Z"}
        ], "next_cursor": "abc"});
        let shown = table(&page);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], "KIND         ID      NAME      STATE      CREATED                   ATTENTION");
        assert_eq!(lines[1], "saga         saga-1  order     failed     2026-12-01T10:00:00.000Z  yes");
        assert!(lines[2].starts_with("transaction  tx-22   transfer  committed"));
        assert_eq!(lines[3], "2 shown; next page: --cursor abc");
    }
}
