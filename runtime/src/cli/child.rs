//! A `wasmtx serve` child process, as the benchmarks that drive servers start them.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `wasmtx serve --listen 127.0.0.1:0 --data-dir DIR ARGS` on `database_url` (or the
/// SQLite file in DIR), its log in DIR/serve.log; returns it and its URL once it listens.
pub(crate) async fn serve(dir: &Path, args: &[&str], database_url: Option<&str>) -> anyhow::Result<(tokio::process::Child, String)> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir).args(args).env_remove("WASMTX_ADMIN_TOKEN");
    match database_url {
        Some(url) => cmd.env("DATABASE_URL", url),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).kill_on_drop(true).spawn().context("starting wasmtx serve")?;
    let mut lines = BufReader::new(child.stdout.take().context("piped")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("wasmtx serve did not start within 60 s")??
        .with_context(|| format!("wasmtx serve exited; see {}", dir.join("serve.log").display()))?;
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).context("no URL in the listening line")?.to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}
