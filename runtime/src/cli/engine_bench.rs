//! The engines measured in this process: the sagas and 2PC transactions `wasmtx bench saga`,
//! `bench 2pc` and (for its ratio) `bench api` run, on a fresh tenant of a store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::report::{cpu_ms_per, cpu_time_of, percentile, run_load};

/// How many transactions a durable benchmark runs, how, and where.
#[derive(clap::Args)]
pub struct Load {
    /// Transactions in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Transactions in all.
    #[arg(long, default_value_t = 2_000)]
    pub count: usize,
    /// Store to use (default: a fresh SQLite file in a temporary directory).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Where the built plugins are.
    #[arg(long, default_value = "target/plugins/wasm32-wasip2/plugin")]
    pub plugin_dir: PathBuf,
}

/// The step plugins a benchmark saga cycles through.
const SAGA_PLUGINS: [&str; 3] = ["payment", "inventory", "shipping"];

/// How a benchmark saga's steps follow each other.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Sequence,
    FanOut,
}

#[derive(Clone, Copy)]
pub enum Scenario {
    Saga { steps: usize, shape: Shape },
    Tpc { participants: usize },
    /// Managed transactions of 3 step participants, each added on its own, the pattern chosen
    /// by the built-in rules (as `bench api --mode managed` sends them).
    Managed,
}

impl Scenario {
    fn plugins(self) -> &'static [&'static str] {
        match self {
            Scenario::Saga { .. } => &SAGA_PLUGINS,
            Scenario::Tpc { .. } => &["ledger"],
            Scenario::Managed => &SAGA_PLUGINS,
        }
    }

    fn size(self) -> usize {
        match self {
            Scenario::Saga { steps, .. } => steps,
            Scenario::Tpc { participants } => participants,
            Scenario::Managed => SAGA_PLUGINS.len(),
        }
    }

    /// Creates, fills and executes one transaction; fails unless it ends successfully.
    async fn run_one(self, node: &super::serve::Node, tenant: &str) -> anyhow::Result<()> {
        use serde_json::json;
        match self {
            Scenario::Saga { steps, shape } => {
                // The steps come with the create (an extension of API.md): one durable write
                // where one per `POST …/steps` would be `steps` more, and the start with it.
                let specs: Vec<serde_json::Value> = match shape {
                    Shape::Sequence => (0..steps).map(|i| json!({"name": format!("step{i}"), "plugin": SAGA_PLUGINS[i % 3]})).collect(),
                    Shape::FanOut => {
                        let middle: Vec<String> = (0..steps).map(|i| format!("branch{i}")).collect();
                        std::iter::once(json!({"name": "first", "plugin": "payment", "depends_on": []}))
                            .chain(middle.iter().enumerate().map(|(i, n)| json!({"name": n, "plugin": SAGA_PLUGINS[i % 3], "depends_on": ["first"]})))
                            .chain(std::iter::once(json!({"name": "last", "plugin": "shipping", "depends_on": middle})))
                            .collect()
                    }
                };
                let steps = specs.into_iter().map(serde_json::from_value).collect::<Result<Vec<_>, _>>()?;
                let req = crate::saga::CreateSaga {
                    saga_name: "bench".into(),
                    context: json!({"amount": 10, "quantity": 1}).as_object().cloned(),
                    timeout_ms: None,
                    retry_policy: None,
                    steps: Some(steps),
                    execute: true,
                    max_parallel: None,
                    wait: false,
                    traceparent: None,
                };
                // Created and started in one write (the `execute` extension of the create).
                let end = node.sagas.run(tenant, req).await?;
                anyhow::ensure!(end.state == crate::saga::SagaState::Completed, "saga {} ended {:?}", end.id(), end.state);
            }
            Scenario::Tpc { participants } => {
                // The participants come with the create (an extension of API.md).
                let members = (0..participants)
                    .map(|i| serde_json::from_value(json!({"participant_id": format!("p{i}"), "plugin": "ledger"})))
                    .collect::<Result<Vec<_>, _>>()?;
                let req = crate::tpc::CreateTpc {
                    transaction_name: "bench".into(),
                    context: json!({"amount": 10}).as_object().cloned(),
                    prepare_timeout_ms: None,
                    retry_policy: None,
                    decision_max_attempts: None,
                    participants: Some(members),
                    traceparent: None,
                };
                let tx = node.tpc.create(tenant, req).await?;
                let end = node.tpc.execute(tenant, tx.id()).await?;
                anyhow::ensure!(end.state == crate::tpc::TpcState::Committed, "2PC {} ended {:?}", end.id(), end.state);
            }
            Scenario::Managed => {
                let req = serde_json::from_value(json!({"transaction_name": "bench", "context": {"amount": 10, "quantity": 1}}))?;
                let m = node.manager.create(tenant, req).await?;
                for p in SAGA_PLUGINS {
                    node.manager.add_participant(tenant, m.id(), serde_json::from_value(json!({"participant_id": p, "plugin": p}))?).await?;
                }
                let end = node.manager.execute(tenant, m.id(), None).await?;
                anyhow::ensure!(end.state == crate::manager::Status::Committed, "managed {} ended {:?}", end.id(), end.state);
            }
        }
        Ok(())
    }
}

/// What one in-process run measured.
pub struct Measured {
    pub store: &'static str,
    pub what: String,
    pub unit: &'static str,
    pub concurrency: usize,
    pub done: usize,
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub wall: Duration,
    /// This process's CPU time per transaction during the run (the engine, its store driver
    /// and plugins; with SQLite, the database too).
    pub cpu_ms_per_tx: Option<f64>,
}

/// Runs `load` transactions of `scenario` in this process, on a fresh tenant of the store.
pub async fn measure(scenario: Scenario, load: Load) -> anyhow::Result<Measured> {
    let Load { concurrency, count, database_url, plugin_dir } = load;
    anyhow::ensure!((1..=100).contains(&scenario.size()), "--steps / --participants must be 1-100");
    anyhow::ensure!(concurrency >= 1 && count >= 1, "--concurrency and --count must be positive");
    let scratch = std::env::temp_dir().join(format!("wasmtx-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch)?;
    let url = database_url.unwrap_or_else(|| format!("sqlite://{}", scratch.join("bench.db").display()));
    let node = super::serve::NodeArgs {
        database_url: Some(url),
        data_dir: scratch.clone(),
        node_id: None,
        lease_ms: 10_000,
        fuel_metering: false,
        allow_private_endpoints: false,
        max_instances: 1000,
    }
        .start()
        .await?;
    let store = node.store.kind();
    let tenant = format!("bench-{}", uuid::Uuid::new_v4().simple());
    for name in scenario.plugins() {
        let path = plugin_dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (build the example plugins first: scripts/build-plugins)", path.display()))?;
        node.catalog.publish(&tenant, name, &bytes).await?;
    }
    let (what, unit) = match scenario {
        Scenario::Saga { steps, shape: Shape::Sequence } => (format!("sagas of {steps} steps"), "sagas"),
        Scenario::Saga { steps, shape: Shape::FanOut } => (format!("sagas of 1 step, {steps} at once, then 1"), "sagas"),
        Scenario::Tpc { participants } => (format!("2PC transactions of {participants} participants"), "tx"),
        Scenario::Managed => ("managed transactions of 3 participants".to_string(), "tx"),
    };
    eprintln!("running {count} {what} in process, {concurrency} at a time…");

    let node = std::sync::Arc::new(node);
    let cpu_before = cpu_time_of("self");
    let (latencies, wall) = run_load(concurrency, count, move || {
        let (node, tenant) = (node.clone(), tenant.clone());
        async move { scenario.run_one(&node, &tenant).await }
    })
    .await?;
    let cpu_ms_per_tx = cpu_ms_per(cpu_before, cpu_time_of("self"), latencies.len());
    let rate = latencies.len() as f64 / wall.as_secs_f64();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(Measured { store, what, unit, concurrency, done: latencies.len(), rate, p50, p99, wall, cpu_ms_per_tx })
}

