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
