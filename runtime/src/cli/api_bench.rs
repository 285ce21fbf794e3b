//! `wasmtx bench api`: transactions through the HTTP API, as users reach wasmtx. Starts a
//! `wasmtx serve` of its own (or targets `--server`), uploads the example plugins, and drives
//! it with keep-alive clients in one of the modes a user has; prints transactions/s, p50/p99,
//! and the server's CPU time per transaction and peak memory when it started the server.
//!
//! Then the baseline: the same requests, sent the same way to a path the server has no route
//! for, so it answers 404 at once — what the HTTP exchange alone costs on these cores (client,
//! kernel and server). With the engine's own figure it bounds what the API can reach here:
//! a transaction through the API costs at least the engine's work plus its requests'
//! exchanges, so it reaches at most 1 / (1/engine + 1/baseline) transactions/s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::http1::{Conn, Pool};
use super::report::{Report, cpu_ms_per, cpu_time_of, ms, peak_rss_of, percentile, round1, round2, run_load};

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
    /// In `http-saga` mode, how long the participant takes to answer each call, in ms (`bench
    /// fleet`'s participants take 2).
    #[arg(long, default_value_t = 0)]
    participant_delay_ms: u64,
    /// API key of the tenant to run as, with `--server` (not needed in single-tenant mode).
    #[arg(long, env = "WASMTX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Every create carries an `Idempotency-Key` of its own, as a client that retries safely
    /// sends it (the server remembers each create's answer).
    #[arg(long)]
    idempotency_keys: bool,
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

/// Longest answer delay `--participant-delay-ms` gives the HTTP participant.
const MAX_PARTICIPANT_DELAY_MS: u64 = 10_000;

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
    anyhow::ensure!(
        args.participant_delay_ms <= MAX_PARTICIPANT_DELAY_MS,
        "--participant-delay-ms must be at most {MAX_PARTICIPANT_DELAY_MS} (a step's default timeout is 30 s)"
    );
    anyhow::ensure!(args.api_key.is_none() || args.server.is_some(), "--api-key needs --server (the server started here serves one tenant, without keys)");
    let mut target = match &args.server {
        Some(url) => Target { url: url.trim_end_matches('/').to_string(), child: None, _scratch: None },
        None => start_server(args.database_url.as_deref()).await?,
    };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    for name in ["payment", "inventory", "shipping", "ledger"] {
        let path = args.plugin_dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (build the example plugins first: scripts/build-plugins)", path.display()))?;
        let mut upload = client.put(format!("{}/v1/plugins/{name}", target.url)).body(bytes);
        if let Some(key) = &args.api_key {
            upload = upload.bearer_auth(key);
        }
        let r = upload.send().await?;
        anyhow::ensure!(r.status().is_success(), "uploading {name}: {}", r.text().await?);
    }
    let participant = match args.mode {
        Mode::HttpSaga => Some(start_participant(Duration::from_millis(args.participant_delay_ms)).await?),
        _ => None,
    };
    report.add("mode", args.mode.name(), args.mode.name());
    if args.idempotency_keys {
        report.add("idempotency_keys", true, "every create carries its own Idempotency-Key");
    }
    eprintln!("running {} {}, {} clients…", args.count, args.mode.name(), args.concurrency);
    let server_pid = target.child.as_ref().and_then(|c| c.id()).map(|pid| pid.to_string());
    let (cpu_before, client_cpu_before) = (server_pid.as_deref().and_then(cpu_time_of), cpu_time_of("self"));
    let bodies = std::sync::Arc::new(Bodies::of(args.mode, participant.as_deref(), args.api_key.as_deref(), args.idempotency_keys));
    let pool = Pool::new(&target.url)?;
    let (latencies, wall) = drive(&pool, &bodies, Exchange::Whole, args.concurrency, args.count).await?;
    let rate = latencies.len() as f64 / wall.as_secs_f64();
    report.add("transactions", latencies.len(), latencies.len());
    report.add("tx_per_s", rate.round(), format!("{rate:.0}"));
    report.add("p50_ms", round2(ms(percentile(&latencies, 0.50))), format!("{:.2} ms (every request of one transaction)", ms(percentile(&latencies, 0.50))));
    report.add("p99_ms", round2(ms(percentile(&latencies, 0.99))), format!("{:.2} ms", ms(percentile(&latencies, 0.99))));
    report.add("wall_s", round1(wall.as_secs_f64()), format!("{:.2} s", wall.as_secs_f64()));
    // The client's own cost (and the HTTP participant's, in http-saga mode), on the same cores.
    if let Some(client_ms) = cpu_ms_per(client_cpu_before, cpu_time_of("self"), latencies.len()) {
        report.add("client_cpu_ms_per_tx", round2(client_ms), format!("{client_ms:.3} ms of this client's CPU per transaction"));
    }
    let mut server_cpu = None;
    if let Some(pid) = &server_pid {
        server_cpu = cpu_ms_per(cpu_before, cpu_time_of(pid), latencies.len());
        if let Some(per_tx_ms) = server_cpu {
            report.add("server_cpu_ms_per_tx", round2(per_tx_ms), format!("{per_tx_ms:.3} ms of server CPU per transaction"));
        }
        if let Some(kib) = peak_rss_of(pid) {
            report.add("server_peak_rss_mib", round1(kib as f64 / 1024.0), format!("{:.1} MiB", kib as f64 / 1024.0));
        }
    }
    eprintln!("baseline: the same requests to a path without a route ({BASELINE_PATH}, answered 404)…");
    let baseline = {
        let (answered, wall) = drive(&pool, &bodies, Exchange::Baseline, args.concurrency, args.count).await?;
        answered.len() as f64 / wall.as_secs_f64()
    };
    let requests = bodies.requests().count();
    report.add(
        "baseline_tx_per_s",
        baseline.round(),
        format!("{baseline:.0} (the same {requests} requests per transaction, answered 404 at once: the HTTP exchange alone)"),
    );
    if let Some(mut child) = target.child.take() {
        let _ = child.kill().await;
    }
    // The engine's own figure on the same store, in this process, for the ratio.
    let twin = match args.mode {
        Mode::Saga | Mode::SagaOne => Some(super::engine_bench::Scenario::Saga { steps: 3, shape: super::engine_bench::Shape::Sequence }),
        Mode::Tpc => Some(super::engine_bench::Scenario::Tpc { participants: 3 }),
        Mode::Managed => Some(super::engine_bench::Scenario::Managed),
        Mode::HttpSaga => None,
    };
    if let (Some(scenario), None) = (twin, &args.server) {
        let load = super::engine_bench::Load { concurrency: args.concurrency, count: args.count, database_url: args.database_url.clone(), plugin_dir: args.plugin_dir.clone() };
        let engine = super::engine_bench::measure(scenario, load).await?;
        report.add("engine_tx_per_s", engine.rate.round(), format!("{:.0} ({}, in process, same store and concurrency)", engine.rate, engine.what));
        report.add("engine_p50_ms", round2(ms(engine.p50)), format!("{:.2} ms", ms(engine.p50)));
        let ratio = rate / engine.rate;
        report.add("api_over_engine", round2(ratio), format!("{:.0}% of the engine's throughput", ratio * 100.0));
        let ceiling = baseline / (engine.rate + baseline);
        report.add(
            "ceiling_over_engine",
            round2(ceiling),
            format!("{:.0}%: the most the API can reach here, its requests costing no more than the baseline's", ceiling * 100.0),
        );
        // The machine time (both cores) per transaction that neither the engine's work nor
        // the exchange explains: what making the API faster can still win here.
        let beyond_us = (1.0 / rate - 1.0 / engine.rate - 1.0 / baseline) * 1e6;
        report.add(
            "api_beyond_us_per_tx",
            round1(beyond_us),
            format!("{beyond_us:.0} µs of machine time per transaction beyond the engine's work and the exchange"),
        );
        // What 80% of the engine's throughput would leave for the same: the bar,
        // in the same unit, so a run shows whether it can be met here at all.
        let room_us = (1.0 / (0.8 * engine.rate) - 1.0 / engine.rate - 1.0 / baseline) * 1e6;
        report.add(
            "room_at_80_us_per_tx",
            round1(room_us),
            format!("{room_us:.0} µs: what 80% of the engine's throughput would leave for that (the client's own CPU included in both)"),
        );
        if let Some(engine_cpu) = engine.cpu_ms_per_tx {
            report.add("engine_cpu_ms_per_tx", round2(engine_cpu), format!("{engine_cpu:.3} ms of CPU per transaction (in process)"));
            if let Some(server_cpu) = server_cpu.filter(|_| engine_cpu > 0.0) {
                let cost = server_cpu / engine_cpu;
                report.add("server_cpu_over_engine", round2(cost), format!("{cost:.2}× the engine's CPU per transaction (the client's own CPU not counted)"));
            }
        }
    }
    Ok(())
}

/// The request bodies of one mode, serialised once: what the client sends is the same for
/// every transaction but the id in the path.
struct Bodies {
    mode: Mode,
    create: bytes::Bytes,
    execute: bytes::Bytes,
    adds: Vec<bytes::Bytes>,
    /// `Bearer <key>`, when the client runs as a tenant.
    authorization: Option<String>,
    /// Where each create's `Idempotency-Key` comes from, when creates carry one.
    keys: Option<Keys>,
}

/// `Idempotency-Key`s: the run's prefix and a counter.
struct Keys {
    run: String,
    next: std::sync::atomic::AtomicU64,
}

impl Keys {
    fn next(&self) -> String {
        format!("bench-{}-{}", self.run, self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Bodies {
    fn of(mode: Mode, participant: Option<&str>, api_key: Option<&str>, keyed: bool) -> Bodies {
        let context = json!({"amount": 10, "quantity": 1});
        let steps: Vec<Value> = ["payment", "inventory", "shipping"]
            .iter()
            .map(|p| match participant {
                Some(endpoint) => json!({"name": p, "endpoint": endpoint}),
                None => json!({"name": p, "plugin": p}),
            })
            .collect();
        let (create, execute) = match mode {
            Mode::SagaOne => (json!({"saga_name": "bench", "context": context, "steps": steps, "execute": true, "wait": true}), json!({})),
            Mode::Saga | Mode::HttpSaga => (json!({"saga_name": "bench", "context": context, "steps": steps}), json!({"wait": true})),
            Mode::Tpc => {
                let participants: Vec<Value> = (0..3).map(|i| json!({"participant_id": format!("p{i}"), "plugin": "ledger"})).collect();
                (json!({"transaction_name": "bench", "context": context, "participants": participants}), json!({}))
            }
            Mode::Managed => (json!({"transaction_name": "bench", "context": context}), json!({})),
        };
        let adds = match mode {
            Mode::Managed => ["payment", "inventory", "shipping"].iter().map(|p| bytes_of(&json!({"participant_id": p, "plugin": p}))).collect(),
            _ => Vec::new(),
        };
        let authorization = api_key.map(|k| format!("Bearer {k}"));
        // Keys unique to this run, so a server that ran the bench before answers nothing old.
        let keys = keyed.then(|| Keys { run: uuid::Uuid::new_v4().simple().to_string(), next: Default::default() });
        Bodies { mode, create: bytes_of(&create), execute: bytes_of(&execute), adds, authorization, keys }
    }

    /// The bodies of one transaction's requests, in the order they are sent.
    fn requests(&self) -> impl Iterator<Item = &bytes::Bytes> {
        let execute = (self.mode != Mode::SagaOne).then_some(&self.execute);
        std::iter::once(&self.create).chain(&self.adds).chain(execute)
    }

    /// The headers every request carries.
    fn headers(&self) -> Vec<(&str, &str)> {
        self.authorization.as_deref().map(|a| ("authorization", a)).into_iter().collect()
    }
}

fn bytes_of(v: &Value) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(v).expect("JSON serialises"))
}

/// What the client reads of an answer: the id it was given, and the state reached.
#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    saga_id: Option<&'a str>,
    #[serde(borrow, default)]
    transaction_id: Option<&'a str>,
    #[serde(borrow, default)]
    state: Option<&'a str>,
    #[serde(borrow, default)]
    transaction_status: Option<&'a str>,
}

/// Where the baseline's requests go: no route, so the router answers 404 without any work.
const BASELINE_PATH: &str = "/v1/bench-baseline";

/// What each transaction of a run sends.
#[derive(Clone, Copy)]
enum Exchange {
    /// Its requests, to the API (`one`).
    Whole,
    /// The same requests to `BASELINE_PATH` (`exchange_only`).
    Baseline,
}

/// Runs `count` transactions, `concurrency` at a time, each over a pooled keep-alive
/// connection; their latencies (sorted) and the wall time.
async fn drive(pool: &Pool, bodies: &std::sync::Arc<Bodies>, exchange: Exchange, concurrency: usize, count: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let (pool, bodies) = (pool.clone(), bodies.clone());
    run_load(concurrency, count, move || {
        let (pool, bodies) = (pool.clone(), bodies.clone());
        async move {
            let mut conn = pool.take().await?;
            match exchange {
                Exchange::Whole => one(&mut conn, &bodies).await?,
                Exchange::Baseline => exchange_only(&mut conn, &bodies).await?,
            }
            pool.give_back(conn);
            anyhow::Ok(())
        }
    })
    .await
}

/// The requests of one transaction, as `one` sends them (create, adds, execute), each
/// answered 404 at once (see the module's doc).
async fn exchange_only(conn: &mut Conn, bodies: &Bodies) -> anyhow::Result<()> {
    let headers = bodies.headers();
    for body in bodies.requests() {
        let (status, answer) = conn.send(hyper::Method::POST, BASELINE_PATH, Some(body.clone()), &headers).await?;
        anyhow::ensure!(status == hyper::StatusCode::NOT_FOUND, "the baseline's request answered {status}: {}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// One transaction, every request of it; fails unless it ends successfully.
async fn one(conn: &mut Conn, bodies: &Bodies) -> anyhow::Result<()> {
    let base = match bodies.mode {
        Mode::Saga | Mode::SagaOne | Mode::HttpSaga => "/v1/sagas",
        Mode::Tpc => "/v1/2pc",
        Mode::Managed => "/v1/transactions",
    };
    let headers = bodies.headers();
    let key = bodies.keys.as_ref().map(Keys::next);
    let mut create_headers = headers.clone();
    create_headers.extend(key.as_deref().map(|k| ("idempotency-key", k)));
    let created = conn.post(base, bodies.create.clone(), &create_headers).await?;
    let answer: Answer = serde_json::from_slice(&created).context("reading the create's answer")?;
    if bodies.mode == Mode::SagaOne {
        anyhow::ensure!(answer.state == Some("completed"), "saga {:?} ended {:?}", answer.saga_id, answer.state);
        return Ok(());
    }
    let id = answer.saga_id.or(answer.transaction_id).context("the create answered no id")?.to_string();
    for add in &bodies.adds {
        conn.post(&format!("{base}/{id}/participants"), add.clone(), &headers).await?;
    }
    let ended = conn.post(&format!("{base}/{id}/execute"), bodies.execute.clone(), &headers).await?;
    let answer: Answer = serde_json::from_slice(&ended).context("reading the execute's answer")?;
    let (reached, wanted) = match bodies.mode {
        Mode::Tpc => (answer.state, "committed"),
        Mode::Managed => (answer.transaction_status, "committed"),
        _ => (answer.state, "completed"),
    };
    anyhow::ensure!(reached == Some(wanted), "{id} ended {reached:?}");
    Ok(())
}

/// Starts `wasmtx serve` on a scratch directory (and `database_url`) and waits until it listens.
async fn start_server(database_url: Option<&str>) -> anyhow::Result<Target> {
    let dir = std::env::temp_dir().join(format!("wasmtx-bench-api-{}", uuid::Uuid::new_v4().simple()));
    let scratch = tempdir::Scratch(dir.clone());
    let (child, url) = super::child::serve(&dir, &[], database_url).await?;
    Ok(Target { url, child: Some(child), _scratch: Some(scratch) })
}

/// An HTTP participant that answers every phase after `delay` (at once without one).
async fn start_participant(delay: Duration) -> anyhow::Result<String> {
    let answer = move || async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        axum::Json(json!({"ok": true}))
    };
    let app = axum::Router::new().route("/{action}", axum::routing::post(answer));
    super::http1::serve_on_loopback(app).await
}
