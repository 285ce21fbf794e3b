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

use super::serve::NodeArgs;
use crate::model::RetryPolicy;
use crate::saga::{CreateSaga, SagaState, StepSpec};

#[derive(Args)]
pub struct RunArgs {
    /// The transaction spec (JSON): `{kind, plugins: {name: "path.wasm"}, …create body…, steps}`.
    pub spec: PathBuf,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaSpec {
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
    match kind.as_deref() {
        Some("saga") => {}
        Some(other) => bail!("spec kind {other:?} is not supported yet (supported: \"saga\")"),
        None => bail!("the spec needs a \"kind\": \"saga\""),
    }
    let spec: SagaSpec = serde_json::from_str(&text).with_context(|| format!("invalid saga spec {}", args.spec.display()))?;
    debug_assert_eq!(spec.kind, "saga");
    let base = args.spec.parent().map(PathBuf::from).unwrap_or_default();

    let started = Instant::now();
    let node = args.node.start().await?;
    eprintln!("store ready ({:?}) in {} ms", node.store.backend(), started.elapsed().as_millis());
    for (name, path) in &spec.plugins {
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

    let tenant = crate::api_tenant();
    let saga = node
        .sagas
        .create(tenant, CreateSaga { saga_name: spec.saga_name, context: spec.context, timeout_ms: spec.timeout_ms, retry_policy: spec.retry_policy })
        .await?;
    for step in spec.steps {
        node.sagas.add_step(tenant, saga.id(), step).await?;
    }
    eprintln!("saga {} created with {} steps", saga.id(), node.sagas.get(tenant, saga.id()).await?.doc.steps.len());

    let mut progress = node.sagas.subscribe();
    let id = saga.id().to_string();
    let printer = tokio::spawn(async move {
        let t0 = Instant::now();
        while let Ok(p) = progress.recv().await {
            if p.saga_id != id {
                continue;
            }
            let step = p.event.step.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
            let detail = match &p.event.detail {
                Value::Object(m) if m.is_empty() => String::new(),
                d => format!(" {d}"),
            };
            eprintln!("[{:>6} ms] {}{step}{detail}", t0.elapsed().as_millis(), p.event.kind);
            if p.state.is_terminal() {
                break;
            }
        }
    });
    let done = node.sagas.execute(tenant, saga.id(), true).await?;
    let _ = printer.await;
    println!("{}", serde_json::to_string_pretty(&done.document())?);
    eprintln!("saga {} {} in {} ms", done.id(), done.state.as_str(), started.elapsed().as_millis());
    Ok(if done.state == SagaState::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
