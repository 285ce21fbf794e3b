//! `wasmtx bench …`: measurements that print their figures and the machine they ran on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;

use crate::model::{CallContext, Outcome};
use crate::plugin::{CallLimits, CallTags, HostConfig, PluginHost, Registry};

/// Where `scripts/build-plugins` leaves the Rust example plugins.
const DEFAULT_STEP_PLUGIN: &str = "target/plugins/wasm32-wasip2/plugin/payment.wasm";

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Per-call cost of a step plugin: instantiate + `execute` + teardown, on one core.
    Plugin {
        /// A component exporting `step` (default: the Rust `payment` plugin).
        #[arg(long, default_value = DEFAULT_STEP_PLUGIN)]
        component: PathBuf,
        /// Measured calls.
        #[arg(long, default_value_t = 100_000)]
        calls: u32,
        /// Unmeasured calls first, to warm caches.
        #[arg(long, default_value_t = 2_000)]
        warmup: u32,
        /// JSON input of every call.
        #[arg(long, default_value = r#"{"amount": 42, "order_id": "bench"}"#)]
        input: String,
    },
    /// Durable 2PC transactions of Rust `ledger` participants end to end, on a store.
    #[command(name = "2pc")]
    Tpc {
        /// Participants per transaction.
        #[arg(long, default_value_t = 3)]
        participants: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Durable sagas of Rust step plugins end to end: create, add steps, execute, on a store.
    Saga {
        /// Steps per saga (cycling payment, inventory, shipping).
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[command(flatten)]
        load: Load,
    },
}

/// How many transactions a durable benchmark runs, how, and where.
#[derive(clap::Args)]
pub struct Load {
    /// Transactions in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Transactions in all.
    #[arg(long, default_value_t = 2_000)]
    count: usize,
    /// Store to use (default: a fresh SQLite file in a temporary directory).
    #[arg(long)]
    database_url: Option<String>,
    /// Where the built plugins are.
    #[arg(long, default_value = "target/plugins/wasm32-wasip2/plugin")]
    plugin_dir: PathBuf,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<std::process::ExitCode> {
    match cmd {
        BenchCommand::Plugin { component, calls, warmup, input } => {
            bench_plugin(component, calls, warmup, input).await
        }
        BenchCommand::Saga { steps, load } => bench_transactions(Scenario::Saga { steps }, load).await,
        BenchCommand::Tpc { participants, load } => bench_transactions(Scenario::Tpc { participants }, load).await,
    }
}

/// The step plugins a benchmark saga cycles through.
const SAGA_PLUGINS: [&str; 3] = ["payment", "inventory", "shipping"];

#[derive(Clone, Copy)]
enum Scenario {
    Saga { steps: usize },
    Tpc { participants: usize },
}

impl Scenario {
    fn plugins(self) -> &'static [&'static str] {
        match self {
            Scenario::Saga { .. } => &SAGA_PLUGINS,
            Scenario::Tpc { .. } => &["ledger"],
        }
    }

    fn size(self) -> usize {
        match self {
            Scenario::Saga { steps } => steps,
            Scenario::Tpc { participants } => participants,
        }
    }

    /// Creates, fills and executes one transaction; fails unless it ends successfully.
    async fn run_one(self, node: &super::serve::Node, tenant: &str) -> anyhow::Result<()> {
        use serde_json::json;
        match self {
            Scenario::Saga { steps } => {
                let req = crate::saga::CreateSaga {
                    saga_name: "bench".into(),
                    context: json!({"amount": 10, "quantity": 1}).as_object().cloned(),
                    timeout_ms: None,
                    retry_policy: None,
                };
                let saga = node.sagas.create(tenant, req).await?;
                for i in 0..steps {
                    let spec = serde_json::from_value(json!({"name": format!("step{i}"), "plugin": SAGA_PLUGINS[i % 3]}))?;
                    node.sagas.add_step(tenant, saga.id(), spec).await?;
                }
                let end = node.sagas.execute(tenant, saga.id(), true).await?;
                anyhow::ensure!(end.state == crate::saga::SagaState::Completed, "saga {} ended {:?}", end.id(), end.state);
            }
            Scenario::Tpc { participants } => {
                let req = crate::tpc::CreateTpc {
                    transaction_name: "bench".into(),
                    context: json!({"amount": 10}).as_object().cloned(),
                    prepare_timeout_ms: None,
                    retry_policy: None,
                    decision_max_attempts: None,
                };
                let tx = node.tpc.create(tenant, req).await?;
                for i in 0..participants {
                    let spec = serde_json::from_value(json!({"participant_id": format!("p{i}"), "plugin": "ledger"}))?;
                    node.tpc.add_participant(tenant, tx.id(), spec).await?;
                }
                let end = node.tpc.execute(tenant, tx.id()).await?;
                anyhow::ensure!(end.state == crate::tpc::TpcState::Committed, "2PC {} ended {:?}", end.id(), end.state);
            }
        }
        Ok(())
    }
}

async fn bench_transactions(scenario: Scenario, load: Load) -> anyhow::Result<std::process::ExitCode> {
    let Load { concurrency, count, database_url, plugin_dir } = load;
    anyhow::ensure!((1..=100).contains(&scenario.size()), "--steps / --participants must be 1-100");
    anyhow::ensure!(concurrency >= 1 && count >= 1, "--concurrency and --count must be positive");
    print_machine();
    let scratch = std::env::temp_dir().join(format!("wasmtx-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch)?;
    let url = database_url.unwrap_or_else(|| format!("sqlite://{}", scratch.join("bench.db").display()));
    let backend = if url.starts_with("sqlite") { "sqlite" } else { "postgres" };
    println!("store:        {backend}");
    let node = super::serve::NodeArgs {
        database_url: Some(url),
        data_dir: scratch.clone(),
        node_id: None,
        lease_ms: 10_000,
        fuel_metering: false,
    }
        .start()
        .await?;
    let tenant = format!("bench-{}", uuid::Uuid::new_v4().simple());
    for name in scenario.plugins() {
        let path = plugin_dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (build the example plugins first: scripts/build-plugins)", path.display()))?;
        node.catalog.publish(&tenant, name, &bytes).await?;
    }
    let (what, unit) = match scenario {
        Scenario::Saga { steps } => (format!("sagas of {steps} steps"), "sagas"),
        Scenario::Tpc { participants } => (format!("2PC transactions of {participants} participants"), "tx"),
    };
    eprintln!("running {count} {what}, {concurrency} at a time…");

    let node = std::sync::Arc::new(node);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (node, tenant, next, done) = (node.clone(), tenant.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let progress_every = (count / 10).max(1);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let t = Instant::now();
                scenario.run_one(&node, &tenant).await?;
                latencies.push(t.elapsed());
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % progress_every == 0 {
                    eprintln!("  {n}/{count} ({:.1} s)", started.elapsed().as_secs_f64());
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for w in workers {
        latencies.extend(w.await??);
    }
    let wall = started.elapsed();
    latencies.sort_unstable();
    println!("{unit}:{:>width$}{} {what}, concurrency {concurrency}", "", latencies.len(), width = 13 - unit.len());
    println!("{unit}/s:{:>width$}{:.0}", "", latencies.len() as f64 / wall.as_secs_f64(), width = 11 - unit.len());
    println!("p50:          {:.2} ms (create + add + execute to the end, each durable)", ms(percentile(&latencies, 0.50)));
    println!("p99:          {:.2} ms", ms(percentile(&latencies, 0.99)));
    println!("wall:         {:.2} s", wall.as_secs_f64());
    println!("peak RSS:     {}", peak_rss().map_or("unknown".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(std::process::ExitCode::SUCCESS)
}

async fn bench_plugin(
    path: PathBuf,
    calls: u32,
    warmup: u32,
    input: String,
) -> anyhow::Result<std::process::ExitCode> {
    let bytes = std::fs::read(&path).with_context(|| {
        format!("reading {} (build the example plugins first: scripts/build-plugins)", path.display())
    })?;
    print_machine();
    eprintln!("loading {} ({} bytes)…", path.display(), bytes.len());
    let host = PluginHost::new(HostConfig::default()).map_err(anyhow::Error::from)?;
    let registry = Registry::new(host.clone());
    let started = Instant::now();
    let (plugin, _) = registry.add("bench", "bench", &bytes).await?;
    println!("load (validate + compile): {:.1} ms", ms(started.elapsed()));

    // One core: the calls run one after another on a current-thread runtime.
    let component = plugin.component.clone();
    let handle = std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let limits = CallLimits::default();
            let mut latencies = Vec::with_capacity(calls as usize);
            let total = warmup + calls;
            let progress_every = (total / 10).max(1);
            for i in 0..total {
                let ctx = CallContext {
                    tenant: "bench".into(),
                    transaction_id: "bench-tx".into(),
                    step: "charge".into(),
                    action: "charge".into(),
                    attempt: 1,
                    idempotency_key: format!("bench-tx/charge/{i}"),
                    input: input.clone(),
                    deadline_ms: limits.timeout.as_millis() as u64,
                };
                let t = Instant::now();
                let outcome = host.execute(&component, ctx, &limits, CallTags::default()).await?;
                let elapsed = t.elapsed();
                if !matches!(outcome, Outcome::Success(_)) {
                    anyhow::bail!("call {i} did not succeed: {outcome:?}");
                }
                if i >= warmup {
                    latencies.push(elapsed);
                }
                if (i + 1) % progress_every == 0 {
                    eprintln!("  {}/{} calls", i + 1, total);
                }
            }
            Ok(latencies)
        })
    });
    let started = Instant::now();
    let mut latencies = handle.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
    let wall = started.elapsed();
    latencies.sort_unstable();
    let measured: Duration = latencies.iter().sum();
    println!("calls:        {}", latencies.len());
    println!("calls/s:      {:.0} (one core)", latencies.len() as f64 / measured.as_secs_f64());
    println!("p50:          {:.1} µs", us(percentile(&latencies, 0.50)));
    println!("p99:          {:.1} µs", us(percentile(&latencies, 0.99)));
    println!("max:          {:.1} µs", us(*latencies.last().unwrap_or(&Duration::ZERO)));
    println!("wall:         {:.2} s (including warm-up)", wall.as_secs_f64());
    println!("peak RSS:     {}", peak_rss().map_or("unknown".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)));
    Ok(std::process::ExitCode::SUCCESS)
}

pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Peak resident set size in KiB, from /proc (Linux).
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn print_machine() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string()))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("unknown".to_string(), |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    println!("machine:      {cores} cores ({cpu}), {mem} memory");
    println!("versions:     wasmtx {}, wasmtime 48", env!("CARGO_PKG_VERSION"));
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("build:        {profile}");
}
