//! `wasmtx bench …`: measurements that print their figures and the machine they ran on.

use super::engine_bench::{Load, Scenario, Shape, measure};
use super::report::{Report, ms, percentile, round1, round2};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::model::{CallContext, Outcome, Vote};
use crate::plugin::{CallLimits, CallTags, Catalog, Component, HostConfig, PluginHost, Role};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Print the figures as one JSON object on stdout (for tracking) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: BenchCommand,
}

/// Where `scripts/build-plugins` leaves the Rust example plugins.
const DEFAULT_STEP_PLUGIN: &str = "target/plugins/wasm32-wasip2/plugin/payment.wasm";

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Per-call cost of a plugin: instantiate + `execute` (a step) or `prepare` (a participant)
    /// + teardown, on one core; and its load time, compiling and from the disk cache.
    Plugin {
        /// A component exporting `step` or `participant` (default: the Rust `payment` plugin).
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
    /// Several coordinators on one PostgreSQL under load, one SIGKILLed mid-run and restarted;
    /// then checks that every transaction ended, decisions were taken once, no two coordinators
    /// drove one transaction at a time and no completed step ran again. Exits 1 if a check fails.
    Fleet(super::fleet::FleetArgs),
    /// Transactions through the HTTP API of a `wasmtx serve` (started here, or `--server`),
    /// as users send them; with the server's CPU time per transaction.
    Api(super::api_bench::ApiArgs),
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
        /// Steps per saga (cycling payment, inventory, shipping); with `--shape fan-out`, the
        /// steps that run at once between a first and a last step.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// `sequence` (each step after the one before) or `fan-out` (one step, then `--steps`
        /// at once, then one after them).
        #[arg(long, value_enum, default_value_t = Shape::Sequence)]
        shape: Shape,
        #[command(flatten)]
        load: Load,
    },
}

pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut report = Report::new(args.json);
    match args.command {
        BenchCommand::Plugin { component, calls, warmup, input } => {
            bench_plugin(&mut report, component, calls, warmup, input).await?
        }
        BenchCommand::Saga { steps, shape, load } => bench_transactions(&mut report, Scenario::Saga { steps, shape }, load).await?,
        BenchCommand::Tpc { participants, load } => {
            bench_transactions(&mut report, Scenario::Tpc { participants }, load).await?
        }
        BenchCommand::Api(args) => super::api_bench::bench_api(&mut report, args).await?,
        BenchCommand::Fleet(args) => {
            let passed = super::fleet::bench_fleet(&mut report, args).await?;
            report.finish()?;
            return Ok(if passed { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE });
        }
    }
    report.finish()?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn bench_transactions(report: &mut Report, scenario: Scenario, load: Load) -> anyhow::Result<()> {
    let m = measure(scenario, load).await?;
    report.add("store", m.store, m.store);
    report.add("scenario", json!({"what": m.what, "concurrency": m.concurrency}), format!("{}, concurrency {}", m.what, m.concurrency));
    report.add(m.unit, m.done, m.done);
    report.add(&format!("{}_per_s", m.unit), m.rate.round(), format!("{:.0}", m.rate));
    report.add("p50_ms", round2(ms(m.p50)), format!("{:.2} ms (create with its members + execute to the end, each write durable)", ms(m.p50)));
    report.add("p99_ms", round2(ms(m.p99)), format!("{:.2} ms", ms(m.p99)));
    report.add("wall_s", round1(m.wall.as_secs_f64()), format!("{:.2} s", m.wall.as_secs_f64()));
    if let Some(cpu) = m.cpu_ms_per_tx {
        report.add("cpu_ms_per_tx", round2(cpu), format!("{cpu:.3} ms of CPU per transaction (this process)"));
    }
    report.add_peak_rss();
    Ok(())
}

async fn bench_plugin(
    report: &mut Report,
    path: PathBuf,
    calls: u32,
    warmup: u32,
    input: String,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(&path).with_context(|| {
        format!("reading {} (build the example plugins first: scripts/build-plugins)", path.display())
    })?;
    anyhow::ensure!(calls >= 1, "--calls must be at least 1");
    report.add("component", json!({"path": path.display().to_string(), "bytes": bytes.len()}), format!("{} ({} bytes)", path.display(), bytes.len()));

    // Two hosts on one fresh compiled-code cache: the first compiles (and writes the cache),
    // the second is what a restarted server sees.
    let cache = std::env::temp_dir().join(format!("wasmtx-bench-cache-{}", uuid::Uuid::new_v4().simple()));
    let config = HostConfig { cache_dir: Some(cache.clone()), ..HostConfig::default() };
    eprintln!("loading {} (validate + compile)…", path.display());
    let first = PluginHost::new(config.clone()).map_err(anyhow::Error::from)?;
    let started = Instant::now();
    Catalog::in_memory(first.clone()).add("bench", "bench", &bytes).await?;
    let first_load = started.elapsed();
    report.add("first_load_ms", round1(ms(first_load)), format!("{:.1} ms (validate + compile + write the cache)", ms(first_load)));
    drop(first);

    let host = PluginHost::new(config).map_err(anyhow::Error::from)?;
    let started = Instant::now();
    let (plugin, _) = Catalog::in_memory(host.clone()).add("bench", "bench", &bytes).await?;
    let cached_load = started.elapsed();
    let _ = std::fs::remove_dir_all(&cache);
    report.add("cached_load_ms", round1(ms(cached_load)), format!("{:.1} ms (validate + load compiled code from the cache)", ms(cached_load)));

    let component = plugin.component.clone();
    let phase = if component.exports(Role::Step) {
        "execute"
    } else if component.exports(Role::Participant) {
        "prepare"
    } else {
        anyhow::bail!("{} exports neither `step` nor `participant`; nothing to call", path.display());
    };
    report.add("phase", phase, phase);

    // One core: the calls run one after another on a current-thread runtime.
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
                    step: "bench".into(),
                    action: "bench".into(),
                    attempt: 1,
                    idempotency_key: format!("bench-tx/bench/{i}"),
                    input: input.clone(),
                    deadline_ms: limits.timeout.as_millis() as u64,
                    traceparent: None,
                };
                let t = Instant::now();
                call_once(&host, &component, ctx, &limits).await.with_context(|| format!("call {i}"))?;
                let elapsed = t.elapsed();
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
    let rate = latencies.len() as f64 / measured.as_secs_f64();
    let (p50, p99, max) =
        (percentile(&latencies, 0.50), percentile(&latencies, 0.99), *latencies.last().unwrap_or(&Duration::ZERO));
    report.add("calls", latencies.len(), latencies.len());
    report.add("calls_per_s", rate.round(), format!("{rate:.0} (one core)"));
    report.add("p50_us", round1(us(p50)), format!("{:.1} µs", us(p50)));
    report.add("p99_us", round1(us(p99)), format!("{:.1} µs", us(p99)));
    report.add("max_us", round1(us(max)), format!("{:.1} µs", us(max)));
    report.add("wall_s", round1(wall.as_secs_f64()), format!("{:.2} s (including warm-up)", wall.as_secs_f64()));
    report.add_peak_rss();
    Ok(())
}

/// One measured call: a step's `execute` or a participant's `prepare`, which must succeed.
async fn call_once(
    host: &PluginHost,
    component: &Component,
    ctx: CallContext,
    limits: &CallLimits,
) -> anyhow::Result<()> {
    if component.exports(Role::Step) {
        let outcome = host.execute(component, ctx, limits, CallTags::default()).await?;
        anyhow::ensure!(matches!(outcome, Outcome::Success(_)), "execute did not succeed: {outcome:?}");
    } else {
        let vote = host.prepare(component, ctx, limits, CallTags::default()).await?;
        anyhow::ensure!(vote == Vote::Prepared, "prepare did not vote prepared: {vote:?}");
    }
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}


