//! `wasmtx run SPEC.json`: one transaction, start to end, on the embedded store, with each
//! durable step printed as it happens and the final document on stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::serve::{Node, NodeArgs};
use crate::model::{Progress, RetryPolicy};
use crate::tpc::{CreateTpc, ParticipantSpec, TpcState};
use crate::manager::{CreateManaged, ManagedParticipant, Requirements, Status as ManagedStatus};
use crate::saga::{CreateSaga, SagaState, StepSpec};

#[derive(Args)]
pub struct RunArgs {
    /// The transaction spec (JSON): `{kind: "transaction"|"saga"|"2pc", plugins: {name: "path.wasm"},
    /// …the create body…, participants | steps, pattern?}`.
    pub spec: PathBuf,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaSpec {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    plugins: BTreeMap<String, PathBuf>,
    saga_name: String,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    retry_policy: Option<RetryPolicy>,
    steps: Vec<StepSpec>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.spec).with_context(|| format!("reading {}", args.spec.display()))?;
    let kind = serde_json::from_str::<Value>(&text)
        .with_context(|| format!("{} is not valid JSON", args.spec.display()))?
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    let base = args.spec.parent().map(PathBuf::from).unwrap_or_default();
    let started = Instant::now();
    match kind.as_deref() {
        Some("saga") => {
            let spec: SagaSpec =
                serde_json::from_str(&text).with_context(|| format!("invalid saga spec {}", args.spec.display()))?;
            let node = start(&args, &base, &spec.plugins, started).await?;
            run_saga(node, spec, started).await
        }
        Some("2pc") => {
            let spec: TpcSpec =
                serde_json::from_str(&text).with_context(|| format!("invalid 2pc spec {}", args.spec.display()))?;
            let node = start(&args, &base, &spec.plugins, started).await?;
            run_tpc(node, spec, started).await
        }
        Some("transaction") => {
            let spec: ManagedSpec =
                serde_json::from_str(&text).with_context(|| format!("invalid transaction spec {}", args.spec.display()))?;
            let node = start(&args, &base, &spec.plugins, started).await?;
            run_managed(node, spec, started).await
        }
        Some(other) => bail!("unknown spec kind {other:?} (expected \"transaction\", \"saga\" or \"2pc\")"),
        None => bail!("the spec needs a \"kind\": \"transaction\", \"saga\" or \"2pc\""),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TpcSpec {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    plugins: BTreeMap<String, PathBuf>,
    transaction_name: String,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    prepare_timeout_ms: Option<u64>,
    #[serde(default)]
    retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    decision_max_attempts: Option<u32>,
    participants: Vec<ParticipantSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagedSpec {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    plugins: BTreeMap<String, PathBuf>,
    transaction_name: String,
    #[serde(default)]
    requirements: Option<Requirements>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    parallel: bool,
    participants: Vec<ManagedParticipant>,
    #[serde(default)]
    pattern: Option<String>,
}

async fn run_managed(node: Node, spec: ManagedSpec, started: Instant) -> anyhow::Result<ExitCode> {
    let tenant = crate::api_tenant();
    let req = CreateManaged {
        transaction_name: spec.transaction_name,
        requirements: spec.requirements,
        context: spec.context,
        policy: spec.policy,
        retry_policy: spec.retry_policy,
        parallel: spec.parallel,
        traceparent: None,
    };
    let m = node.manager.create(tenant, req).await?;
    for p in spec.participants {
        node.manager.add_participant(tenant, m.id(), p).await?;
    }
    eprintln!("transaction {} created", m.id());
    // The delegate's id is known only once the pattern is chosen: follow every transaction
    // (the engines announce on one channel) until the first end, the delegate's.
    let follow = print_progress(node.manager.subscribe(), None);
    let done = node.manager.execute(tenant, m.id(), spec.pattern.as_deref()).await?;
    let doc = node.manager.document(tenant, &done).await?;
    if done.state.is_terminal() && done.doc.delegate_id.is_some() {
        let _ = follow.await;
    } else {
        follow.abort();
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    eprintln!(
        "transaction {} {} by {} in {} ms",
        done.id(),
        done.state.as_str(),
        doc["selected_pattern"].as_str().unwrap_or("no pattern"),
        started.elapsed().as_millis()
    );
    Ok(if done.state == ManagedStatus::Committed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Opens the embedded store and registers the spec's plugins.
async fn start(args: &RunArgs, base: &std::path::Path, plugins: &BTreeMap<String, PathBuf>, started: Instant) -> anyhow::Result<Node> {
    let node = args.node.start().await?;
    eprintln!("store ready ({:?}) in {} ms", node.store.kind(), started.elapsed().as_millis());
    for (name, path) in plugins {
        let path = if path.is_absolute() { path.clone() } else { base.join(path) };
        let bytes = std::fs::read(&path).with_context(|| {
            format!("reading plugin {name} from {} (build the examples with scripts/build-plugins)", path.display())
        })?;
        let t = Instant::now();
        let (row, created) = node.catalog.publish(crate::api_tenant(), name, &bytes).await.with_context(|| format!("plugin {name}"))?;
        eprintln!(
            "plugin {name}@{} {} ({} ms)",
            row.version,
            if created { "registered" } else { "already registered" },
            t.elapsed().as_millis()
        );
    }
    Ok(node)
}

/// Prints each durable change announced on `progress` (of transaction `id`, if given) as it
/// is committed, until a transaction it follows ends.
fn print_progress(mut progress: tokio::sync::broadcast::Receiver<Progress>, id: Option<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        while let Some(p) = crate::txn::journal::next_announced(&mut progress).await {
            if id.as_ref().is_some_and(|id| *id != p.tx_id) {
                continue;
            }
            let step = p.event.step.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
            let detail = match &p.event.detail {
                Value::Object(m) if m.is_empty() => String::new(),
                d => format!(" {d}"),
            };
            eprintln!("[{:>6} ms] {}{step}{detail}", t0.elapsed().as_millis(), p.event.kind);
            if p.terminal {
                break;
            }
        }
    })
}

async fn run_tpc(node: Node, spec: TpcSpec, started: Instant) -> anyhow::Result<ExitCode> {
    let tenant = crate::api_tenant();
    let req = CreateTpc {
        transaction_name: spec.transaction_name,
        context: spec.context,
        prepare_timeout_ms: spec.prepare_timeout_ms,
        retry_policy: spec.retry_policy,
        decision_max_attempts: spec.decision_max_attempts,
        participants: None,
        traceparent: None,
    };
    let tx = node.tpc.create(tenant, req).await?;
    for p in spec.participants {
        node.tpc.add_participant(tenant, tx.id(), p).await?;
    }
    eprintln!("2PC transaction {} created", tx.id());
    let printer = print_progress(node.tpc.subscribe(), Some(tx.id().to_string()));
    let done = node.tpc.execute(tenant, tx.id()).await?;
    let _ = printer.await;
    println!("{}", serde_json::to_string_pretty(&done.document())?);
    eprintln!("transaction {} {} in {} ms", done.id(), done.state.as_str(), started.elapsed().as_millis());
    Ok(if done.state == TpcState::Committed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn run_saga(node: Node, spec: SagaSpec, started: Instant) -> anyhow::Result<ExitCode> {
    let tenant = crate::api_tenant();
    let saga = node
        .sagas
        .create(tenant, CreateSaga { max_parallel: None, wait: false, saga_name: spec.saga_name, context: spec.context, timeout_ms: spec.timeout_ms, retry_policy: spec.retry_policy, steps: None, execute: false, traceparent: None })
        .await?;
    for step in spec.steps {
        node.sagas.add_step(tenant, saga.id(), step).await?;
    }
    eprintln!("saga {} created with {} steps", saga.id(), node.sagas.get(tenant, saga.id()).await?.doc.steps.len());

    let printer = print_progress(node.sagas.subscribe(), Some(saga.id().to_string()));
    let done = node.sagas.execute(tenant, saga.id(), true).await?;
    let _ = printer.await;
    println!("{}", serde_json::to_string_pretty(&done.document())?);
    eprintln!("saga {} {} in {} ms", done.id(), done.state.as_str(), started.elapsed().as_millis());
    Ok(if done.state == SagaState::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
