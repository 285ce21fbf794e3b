//! `wasmtx bench api`: transactions through the HTTP API, as users reach wasmtx. Starts a
//! `wasmtx serve` of its own (or targets `--server`), uploads the example plugins, and drives
//! it with keep-alive clients in one of the modes a user has; prints transactions/s, p50/p99,
//! and the server's CPU time per transaction and peak memory when it started the server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::report::{Report, ms, peak_rss_of, percentile, round1, round2, run_load};

#[derive(clap::Args)]
pub struct ApiArgs {
    /// What one transaction is: `saga` (create with 3 plugin steps, then execute and wait),
    /// `saga-one` (one request: create with its steps, `execute` and `wait`),
    /// `http-saga` (the same with 3 HTTP-participant steps served by this process), `2pc`
    /// (create with 3 plugin participants, then execute), `managed` (create, add 3
    /// participants, execute).
    #[arg(long, value_enum, default_value_t = Mode::Saga)]
    mode: Mode,
    /// Clients sending at once (each over its own keep-alive connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Transactions in all.
    #[arg(long, default_value_t = 5_000)]
    count: usize,
    /// A running server to drive instead of starting one (its plugins are uploaded).
    #[arg(long)]
    server: Option<String>,
    /// Store of the server started here (default: SQLite in a temporary directory).
    #[arg(long)]
    database_url: Option<String>,
    /// Where the built plugins are.
    #[arg(long, default_value = "target/plugins/wasm32-wasip2/plugin")]
    plugin_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Saga,
    SagaOne,
    HttpSaga,
    #[value(name = "2pc")]
    Tpc,
    Managed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Saga => "sagas of 3 plugin steps (create, then execute with wait)",
            Mode::SagaOne => "sagas of 3 plugin steps (one request: create with execute and wait)",
            Mode::HttpSaga => "sagas of 3 HTTP-participant steps (create, then execute with wait)",
            Mode::Tpc => "2PC transactions of 3 plugin participants (create, then execute)",
            Mode::Managed => "managed transactions of 3 participants (create, 3 adds, execute)",
        }
    }
}

/// The server a run drives, and the process when this run started it.
struct Target {
    url: String,
    child: Option<tokio::process::Child>,
    _scratch: Option<tempdir::Scratch>,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Scratch(pub std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub async fn bench_api(report: &mut Report, args: ApiArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1 && args.count >= 1, "--concurrency and --count must be positive");
    let mut target = match &args.server {
        Some(url) => Target { url: url.trim_end_matches('/').to_string(), child: None, _scratch: None },
        None => start_server(args.database_url.as_deref()).await?,
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).timeout(Duration::from_secs(120)).build()?;
    for name in ["payment", "inventory", "shipping", "ledger"] {
        let path = args.plugin_dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (build the example plugins first: scripts/build-plugins)", path.display()))?;
        let r = client.put(format!("{}/v1/plugins/{name}", target.url)).body(bytes).send().await?;
        anyhow::ensure!(r.status().is_success(), "uploading {name}: {}", r.text().await?);
    }
    let participant = match args.mode {
        Mode::HttpSaga => Some(fast_participant().await?),
        _ => None,
    };
    report.add("mode", args.mode.name(), args.mode.name());
    eprintln!("running {} {}, {} clients…", args.count, args.mode.name(), args.concurrency);
    let cpu_before = target.child.as_ref().and_then(|c| c.id()).and_then(cpu_ticks);
    let (client, url, mode) = (client.clone(), target.url.clone(), args.mode);
    let (latencies, wall) = run_load(args.concurrency, args.count, move || {
        let (client, url, participant) = (client.clone(), url.clone(), participant.clone());
        async move { one(&client, &url, mode, participant.as_deref()).await }
    })
    .await?;
    let rate = latencies.len() as f64 / wall.as_secs_f64();
    report.add("transactions", latencies.len(), latencies.len());
    report.add("tx_per_s", rate.round(), format!("{rate:.0}"));
    report.add("p50_ms", round2(ms(percentile(&latencies, 0.50))), format!("{:.2} ms (every request of one transaction)", ms(percentile(&latencies, 0.50))));
    report.add("p99_ms", round2(ms(percentile(&latencies, 0.99))), format!("{:.2} ms", ms(percentile(&latencies, 0.99))));
    report.add("wall_s", round1(wall.as_secs_f64()), format!("{:.2} s", wall.as_secs_f64()));
    if let Some(pid) = target.child.as_ref().and_then(|c| c.id()) {
        if let (Some(before), Some(after)) = (cpu_before, cpu_ticks(pid)) {
            let per_tx_ms = (after - before) as f64 * 1000.0 / ticks_per_second() / latencies.len() as f64;
            report.add("server_cpu_ms_per_tx", round2(per_tx_ms), format!("{per_tx_ms:.3} ms of server CPU per transaction"));
        }
        if let Some(kib) = peak_rss_of(&pid.to_string()) {
            report.add("server_peak_rss_mib", round1(kib as f64 / 1024.0), format!("{:.1} MiB", kib as f64 / 1024.0));
        }
    }
    if let Some(mut child) = target.child.take() {
        let _ = child.kill().await;
    }
    // The engine's own figure on the same store, in this process, for the ratio.
    let twin = match args.mode {
        Mode::Saga | Mode::SagaOne => Some(super::engine_bench::Scenario::Saga { steps: 3, shape: super::engine_bench::Shape::Sequence }),
        Mode::Tpc => Some(super::engine_bench::Scenario::Tpc { participants: 3 }),
        Mode::HttpSaga | Mode::Managed => None,
    };
    if let (Some(scenario), None) = (twin, &args.server) {
        let load = super::engine_bench::Load { concurrency: args.concurrency, count: args.count, database_url: args.database_url.clone(), plugin_dir: args.plugin_dir.clone() };
        let engine = super::engine_bench::measure(scenario, load).await?;
        report.add("engine_tx_per_s", engine.rate.round(), format!("{:.0} ({}, in process, same store and concurrency)", engine.rate, engine.what));
        report.add("engine_p50_ms", round2(ms(engine.p50)), format!("{:.2} ms", ms(engine.p50)));
        let ratio = rate / engine.rate;
        report.add("api_over_engine", round2(ratio), format!("{:.0}% of the engine's throughput", ratio * 100.0));
    }
    Ok(())
}

/// One transaction, every request of it; fails unless it ends successfully.
async fn one(client: &reqwest::Client, url: &str, mode: Mode, participant: Option<&str>) -> anyhow::Result<()> {
    let post = |path: String, body: Value| async move {
        let r = client.post(format!("{url}{path}")).json(&body).send().await?;
        let status = r.status();
        let doc: Value = r.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {doc}");
        anyhow::Ok(doc)
    };
    let context = json!({"amount": 10, "quantity": 1});
    match mode {
        Mode::SagaOne => {
            let steps: Vec<Value> = ["payment", "inventory", "shipping"].iter().map(|p| json!({"name": p, "plugin": p})).collect();
            let doc = post("/v1/sagas".into(), json!({"saga_name": "bench", "context": context, "steps": steps, "execute": true, "wait": true})).await?;
            anyhow::ensure!(doc["state"] == "completed", "saga {} ended {}", doc["saga_id"], doc["state"]);
        }
        Mode::Saga | Mode::HttpSaga => {
            let steps: Vec<Value> = ["payment", "inventory", "shipping"]
                .iter()
                .map(|p| match participant {
                    Some(endpoint) => json!({"name": p, "endpoint": endpoint}),
                    None => json!({"name": p, "plugin": p}),
                })
                .collect();
            let created = post("/v1/sagas".into(), json!({"saga_name": "bench", "context": context, "steps": steps})).await?;
            let id = created["saga_id"].as_str().context("no saga_id")?;
            let doc = post(format!("/v1/sagas/{id}/execute"), json!({"wait": true})).await?;
            anyhow::ensure!(doc["state"] == "completed", "saga {id} ended {}", doc["state"]);
        }
        Mode::Tpc => {
            let participants: Vec<Value> = (0..3).map(|i| json!({"participant_id": format!("p{i}"), "plugin": "ledger"})).collect();
            let created = post("/v1/2pc".into(), json!({"transaction_name": "bench", "context": context, "participants": participants})).await?;
            let id = created["transaction_id"].as_str().context("no transaction_id")?;
            let doc = post(format!("/v1/2pc/{id}/execute"), json!({})).await?;
            anyhow::ensure!(doc["state"] == "committed", "2PC {id} ended {}", doc["state"]);
        }
        Mode::Managed => {
            let created = post("/v1/transactions".into(), json!({"transaction_name": "bench", "context": context})).await?;
            let id = created["transaction_id"].as_str().context("no transaction_id")?.to_string();
            for p in ["payment", "inventory", "shipping"] {
                post(format!("/v1/transactions/{id}/participants"), json!({"participant_id": p, "plugin": p})).await?;
            }
            let doc = post(format!("/v1/transactions/{id}/execute"), json!({})).await?;
            anyhow::ensure!(doc["transaction_status"] == "committed", "managed {id} ended {}", doc["transaction_status"]);
        }
    }
    Ok(())
}

/// Starts `wasmtx serve` on a scratch directory (and `database_url`) and waits until it listens.
async fn start_server(database_url: Option<&str>) -> anyhow::Result<Target> {
    let dir = std::env::temp_dir().join(format!("wasmtx-bench-api-{}", uuid::Uuid::new_v4().simple()));
    let scratch = tempdir::Scratch(dir.clone());
    let (child, url) = super::child::serve(&dir, &[], database_url).await?;
    Ok(Target { url, child: Some(child), _scratch: Some(scratch) })
}

/// An HTTP participant that answers every phase at once.
async fn fast_participant() -> anyhow::Result<String> {
    let app = axum::Router::new().route("/{action}", axum::routing::post(|| async { axum::Json(json!({"ok": true})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// User plus system CPU ticks of process `pid` so far.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
