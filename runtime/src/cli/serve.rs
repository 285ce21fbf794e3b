//! `wasmtx serve`: wires store, Wasm host, engines and the HTTP API together, recovers what
//! a previous run left in flight, and keeps claiming sagas whose coordinator died.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::api::{AppState, Services, router};
use crate::participant::Invoker;
use crate::plugin::{CallLimits, Catalog, ComponentCache, HostConfig, PluginHost};
use crate::saga::{EngineConfig, SagaEngine};
use crate::tpc::TpcEngine;
use crate::manager::Manager;
use crate::store::Store;

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token of the admin API (creating tenants and keys); without it the admin API is off.
    #[arg(long, env = "WASMTX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What every command that runs engines needs.
#[derive(Args, Clone)]
pub struct NodeArgs {
    /// Database URL; default: the SQLite file wasmtx.db in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the embedded database, the compiled-component cache and the node id live.
    #[arg(long, env = "WASMTX_DATA_DIR", default_value = "./.wasmtx")]
    pub data_dir: PathBuf,
    /// This coordinator's identity in leases (default: kept in the data directory, so a
    /// restarted coordinator takes its own in-flight work back at once).
    #[arg(long, env = "WASMTX_NODE_ID")]
    pub node_id: Option<String>,
    /// How long a lease lasts without renewal, in ms.
    #[arg(long, env = "WASMTX_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Meter fuel in plugin calls, so tenants' `fuel` limits apply (costs a few percent).
    #[arg(long, env = "WASMTX_FUEL_METERING")]
    pub fuel_metering: bool,
}

/// The engines of one coordinator process.
pub struct Node {
    pub invoker: Invoker,
    pub store: Store,
    pub catalog: Catalog,
    pub sagas: SagaEngine,
    pub tpc: TpcEngine,
    pub manager: Manager,
}

impl NodeArgs {
    pub async fn start(&self) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating the data directory {}", self.data_dir.display()))?;
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("wasmtx.db").display()),
        };
        let store = Store::open(&url).await.with_context(|| format!("opening the store at {}", redact(&url)))?;
        let host = PluginHost::new(HostConfig {
            cache_dir: Some(self.data_dir.join("cache")),
            fuel_metering: self.fuel_metering,
            ..HostConfig::default()
        })
            .map_err(anyhow::Error::from)
            .context("starting the Wasm host")?;
        let catalog = Catalog::new(store.clone(), ComponentCache::new(host.clone()));
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => node_id_in(&self.data_dir)?,
        };
        let invoker = Invoker::new(host, CallLimits::default()).with_node_id(&node_id);
        let config = EngineConfig { node_id, lease: Duration::from_millis(self.lease_ms.max(100)) };
        let sagas = SagaEngine::new(store.clone(), catalog.clone(), invoker.clone(), config.clone());
        let tpc = TpcEngine::new(store.clone(), catalog.clone(), invoker.clone(), config);
        let manager = Manager::new(store.clone(), catalog.clone(), sagas.clone(), tpc.clone());
        Ok(Node { invoker, store, catalog, sagas, tpc, manager })
    }
}

/// The node id kept in `dir/node-id`, created on first use.
fn node_id_in(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = format!("node-{}", uuid::Uuid::new_v4());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let node = args.node.start().await?;
    let state = AppState::new(Services {
        store: node.store.clone(),
        catalog: node.catalog.clone(),
        invoker: node.invoker.clone(),
        sagas: node.sagas.clone(),
        tpc: node.tpc.clone(),
        manager: node.manager.clone(),
        admin_token: args.admin_token.clone(),
    });
    state.load_all_tenants().await.map_err(|e| anyhow::anyhow!("loading tenants: {}", e.message))?;
    // Claims what this node held before a restart at once, then, periodically, whatever a
    // dead coordinator's expired leases left behind.
    let _recovery = {
        let (sagas, tpc, manager) = (node.sagas.clone(), node.tpc.clone(), node.manager.clone());
        let every = Duration::from_millis((args.node.lease_ms / 2).clamp(100, 2_000));
        crate::recovery::spawn_loop(every, move |own| {
            let (sagas, tpc, manager) = (sagas.clone(), tpc.clone(), manager.clone());
            async move {
                let a = sagas.recover_expired(own).await.unwrap_or_else(|e| {
                    tracing::warn!("saga recovery pass failed: {e}");
                    0
                });
                let b = tpc.recover_expired(own).await.unwrap_or_else(|e| {
                    tracing::warn!("2PC recovery pass failed: {e}");
                    0
                });
                let c = manager.recover_expired(own).await.unwrap_or_else(|e| {
                    tracing::warn!("managed-transaction recovery pass failed: {e}");
                    0
                });
                a + b + c
            }
        })
    };
    // Count every durable event of the three engines for /metrics.
    let _event_counter = {
        let metrics = node.invoker.metrics().clone();
        let streams = vec![node.sagas.subscribe(), node.tpc.subscribe(), node.manager.subscribe()];
        crate::recovery::AbortOnDrop(tokio::spawn(async move {
            let mut merged = crate::journal::merged(streams);
            while let Some(p) = futures::StreamExt::next(&mut merged).await {
                metrics.count_event(&p.event.kind);
            }
        }))
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port.
    println!("wasmtx listening on http://{addr} (node {})", node.sagas.node_id());
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
