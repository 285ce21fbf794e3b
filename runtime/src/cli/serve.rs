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
use crate::saga::SagaEngine;
use crate::txn::EngineConfig;
use crate::tpc::TpcEngine;
use crate::manager::Manager;
use crate::store::Store;

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How long ended transactions (documents, journals) and idempotency replies are kept, in
    /// ms (default 7 days); 0 keeps them forever. A tenant's `limits.retention_ms` overrides it.
    /// On Redis, the URL's `retention` applies instead (keys expire by themselves).
    #[arg(long, env = "WASMTX_RETENTION_MS", default_value_t = crate::retention::DEFAULT_RETENTION_MS)]
    pub retention_ms: u64,
    /// How long audit entries are kept, in ms (default 90 days); 0 keeps them forever.
    #[arg(long, env = "WASMTX_AUDIT_RETENTION_MS", default_value_t = crate::retention::DEFAULT_AUDIT_RETENTION_MS)]
    pub audit_retention_ms: u64,
    /// How often the retention sweeper runs, in ms.
    #[arg(long, env = "WASMTX_SWEEP_EVERY_MS", default_value_t = 60_000)]
    pub sweep_every_ms: u64,
    /// Bearer token of the admin API (creating tenants and keys); without it the admin API is off.
    #[arg(long, env = "WASMTX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Serve single-tenant mode (no API key needed) on a non-loopback address. Without it, a
    /// server listening beyond loopback answers 401 until a tenant exists (create one with
    /// the admin token), and refuses to start when it has no admin token either.
    #[arg(long, env = "WASMTX_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Connections served at once; more wait to be accepted. Raised towards the process's
    /// file limit when that allows, lowered to fit it when not.
    #[arg(long, env = "WASMTX_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A client must send a request's headers within this many ms (idle keep-alive
    /// connections included), or its connection is closed.
    #[arg(long, env = "WASMTX_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A request is answered within this many ms: past it the answer is 503
    /// `request_timeout` (a transaction it started keeps running; GET it to follow it).
    #[arg(long, env = "WASMTX_REQUEST_TIMEOUT_MS", default_value_t = 300_000)]
    pub request_timeout_ms: u64,
    /// On SIGTERM or Ctrl-C: how long calls in flight may take to be answered and recorded
    /// before their transactions are handed back and the process exits (0).
    #[arg(long, env = "WASMTX_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
    /// Export spans (one per transaction drive, phase and call) over OTLP/HTTP to this
    /// collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is appended). Off by default;
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (a full URL) works too.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// A request's body must arrive within this many ms of its headers (else 408).
    #[arg(long, env = "WASMTX_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// An answer may wait this many ms for a client that does not read it; then the
    /// connection is closed.
    #[arg(long, env = "WASMTX_WRITE_STALL_MS", default_value_t = 30_000)]
    pub write_stall_ms: u64,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What every command that runs engines needs.
#[derive(Args, Clone)]
pub struct NodeArgs {
    /// Database URL: sqlite://PATH, postgres://…, redis://[user:pass@]host:port[/db],
    /// redis+cluster://host:port,host:port,… (Redis options as ?prefix=&retention=&durability=,
    /// see README), or memory:// (lost when the process stops). Default: the SQLite file
    /// wasmtx.db in the data directory.
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
    /// Let every tenant's HTTP participants and plugins reach loopback, private, link-local
    /// and other non-public addresses. Without it only public addresses are called, except
    /// that single-tenant mode (no tenants) may call loopback, for local development.
    #[arg(long, env = "WASMTX_ALLOW_PRIVATE_ENDPOINTS")]
    pub allow_private_endpoints: bool,
    /// Plugin instances live at once (the Wasm host's pool); a call beyond them waits for one.
    #[arg(long, env = "WASMTX_MAX_INSTANCES", default_value_t = 1000)]
    pub max_instances: u32,
}

/// The engines of one coordinator process.
pub struct Node {
    pub invoker: Invoker,
    pub store: Store,
    pub catalog: Catalog,
    pub sagas: SagaEngine,
    pub tpc: TpcEngine,
    pub manager: Manager,
    pub alerts: crate::alert::Alerts,
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
            max_concurrent_instances: self.max_instances.max(1),
            ..HostConfig::default()
        })
            .map_err(anyhow::Error::from)
            .context("starting the Wasm host")?;
        let catalog = Catalog::new(store.clone(), ComponentCache::new(host.clone()));
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => node_id_in(&self.data_dir)?,
        };
        let invoker = Invoker::new(host, CallLimits::default())
            .with_node_id(&node_id)
            .allow_private_endpoints(self.allow_private_endpoints);
        let lease = Duration::from_millis(self.lease_ms.max(100));
        let alerts = crate::alert::Alerts::new(store.clone(), invoker.clone(), node_id.clone(), lease);
        let config = EngineConfig { node_id, lease, ..EngineConfig::default() };
        let sagas = SagaEngine::new(store.clone(), catalog.clone(), invoker.clone(), config.clone());
        let tpc = TpcEngine::new(store.clone(), catalog.clone(), invoker.clone(), config);
        let manager = Manager::new(store.clone(), catalog.clone(), sagas.clone(), tpc.clone());
        Ok(Node { invoker, store, catalog, sagas, tpc, manager, alerts })
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
    let open = args.listen.ip().is_loopback() || args.allow_unauthenticated;
    if !open && args.admin_token.as_deref().is_none_or(str::is_empty) && !node.store.has_tenants().await? {
        anyhow::bail!(
            "refusing to serve {} without API keys: no tenant exists and there is no admin token to create one. \
             Set WASMTX_ADMIN_TOKEN and create a tenant, listen on loopback, or pass --allow-unauthenticated",
            args.listen
        );
    }
    let state = AppState::new(Services {
        store: node.store.clone(),
        catalog: node.catalog.clone(),
        invoker: node.invoker.clone(),
        sagas: node.sagas.clone(),
        tpc: node.tpc.clone(),
        manager: node.manager.clone(),
        alerts: node.alerts.clone(),
        admin_token: args.admin_token.clone(),
        single_tenant: open,
    });
    state.load_all_tenants().await.map_err(|e| anyhow::anyhow!("loading tenants: {}", e.message))?;
    // Claims what this node held before a restart at once, then, periodically, whatever a
    // dead coordinator's expired leases left behind.
    let _recovery = {
        let (sagas, tpc, manager, alerts) = (node.sagas.clone(), node.tpc.clone(), node.manager.clone(), node.alerts.clone());
        let every = Duration::from_millis((args.node.lease_ms / 2).clamp(100, 2_000));
        let state = state.clone();
        crate::txn::recovery::spawn_loop(every, move |own| {
            let (sagas, tpc, manager, alerts, state) = (sagas.clone(), tpc.clone(), manager.clone(), alerts.clone(), state.clone());
            async move {
                // Tenants created on another coordinator: their work may be recovered here.
                if let Err(e) = state.load_all_tenants().await {
                    tracing::warn!("loading tenants failed: {}", e.message);
                }
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
                // Alert deliveries whose retry is due are claimed like any other work.
                alerts.recover_expired(own).await;
                a + b + c
            }
        })
        .await
    };
    let _retention = crate::retention::spawn(
        node.store.clone(),
        crate::retention::RetentionPolicy {
            transactions_ms: args.retention_ms,
            audit_ms: args.audit_retention_ms,
            every: Duration::from_millis(args.sweep_every_ms.max(10)),
        },
    );
    // What needs an operator, counted for /metrics as often as the sweeper runs; a failure
    // of the last ten minutes whose alert was never raised (its coordinator died between the
    // two writes) is raised now.
    let _census = {
        let (store, metrics, alerts) = (node.store.clone(), node.invoker.metrics().clone(), node.alerts.clone());
        let every = Duration::from_millis(args.sweep_every_ms.max(10));
        crate::txn::recovery::AbortOnDrop(tokio::spawn(async move {
            loop {
                match crate::attention::census(&store).await {
                    Ok(census) => {
                        census.counts.into_iter().for_each(|(kind, n)| metrics.set_attention(kind, n));
                        let since = crate::store::now_ms() - 600_000;
                        if let Err(e) = alerts.reconcile(&census.failed, since).await {
                            tracing::warn!("raising missed failure alerts failed: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("counting the transactions that need attention failed: {e}"),
                }
                tokio::time::sleep(every).await;
            }
        }))
    };
    // Every durable event of the three engines (one channel) is counted for /metrics; those
    // that are alert events become deliveries (each stored before it is sent).
    let _observer = {
        let (alerts, metrics) = (node.alerts.clone(), node.invoker.metrics().clone());
        let mut announced = node.sagas.subscribe();
        crate::txn::recovery::AbortOnDrop(tokio::spawn(async move {
            while let Some(p) = crate::txn::journal::next_announced(&mut announced).await {
                if crate::alert::event_of(&p).is_some() {
                    let (alerts, p) = (alerts.clone(), p.clone());
                    tokio::spawn(async move {
                        if let Err(e) = alerts.raise(&p).await {
                            tracing::warn!(transaction_id = %p.tx_id, "raising an alert failed: {e}");
                        }
                    });
                }
                metrics.count_event(&p.event.kind);
                if p.terminal {
                    // The kind, from the id's prefix (saga-, tpc-, tx-).
                    let kind = match p.tx_id.split('-').next() {
                        Some("saga") => "saga",
                        Some("tpc") => "2pc",
                        _ => "transaction",
                    };
                    let took = Duration::from_millis(crate::store::now_ms().saturating_sub(p.created_at_ms).max(0) as u64);
                    metrics.count_end(kind, p.state, took);
                }
            }
        }))
    };
    let listener = listen(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let max_connections = fit_connections(args.max_connections);
    // Tests and scripts read this line to find the port.
    println!("wasmtx listening on http://{addr} (node {})", node.sagas.node_id());
    let deadlines = crate::api::Deadlines {
        request: Duration::from_millis(args.request_timeout_ms.max(1)),
        body: Duration::from_millis(args.body_timeout_ms.max(1)),
    };
    let edge = crate::api::Edge { deadlines, app: state.clone(), loopback: addr.ip().is_loopback() };
    let app = router(state).layer(axum::middleware::from_fn_with_state(edge, crate::api::deadline));
    let limits = Connections {
        max: max_connections,
        header_timeout: Duration::from_millis(args.header_timeout_ms.max(1)),
        write_stall: Duration::from_millis(args.write_stall_ms.max(1)),
    };
    let connections = serve_connections(listener, app, limits, shutdown_signal()).await;
    // Shutting down: no new requests; no more claims; the engines finish the calls in flight,
    // record them and hand their transactions back, within the grace period.
    let grace = Duration::from_millis(args.shutdown_grace_ms);
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!("shutting down: finishing the calls in flight (grace {} ms)", grace.as_millis());
    drop(_recovery);
    node.sagas.drain();
    node.tpc.drain();
    let handed_back = tokio::time::timeout_at(deadline, async { tokio::join!(node.sagas.idle(), node.tpc.idle()) }).await;
    // The managed records follow their delegates, which are handed back now.
    match node.manager.release_owned().await {
        Ok(n) if n > 0 => tracing::info!(released = n, "managed transactions handed back"),
        Ok(_) => {}
        Err(e) => tracing::warn!("handing back managed transactions failed: {e}; their leases will expire"),
    }
    // Answers to requests still open (an execute waiting for its saga) go out before exiting.
    let _ = tokio::time::timeout_at(deadline, connections.closed()).await;
    match handed_back {
        Ok(_) => tracing::info!("every transaction driven here was handed back"),
        Err(_) => tracing::warn!("the grace period ended with calls in flight; their leases will expire"),
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The connections still open once the server stopped accepting.
struct Open {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    max: u32,
}

impl Open {
    /// Waits until every connection has closed.
    async fn closed(&self) {
        let _all = self.slots.acquire_many(self.max).await;
    }
}

/// How the server treats connections.
struct Connections {
    max: usize,
    header_timeout: Duration,
    write_stall: Duration,
}

/// Accepts connections while fewer than `limits.max` are open, each served by hyper with a
/// header-read timeout and bounded header buffers; on `shutdown`, stops accepting and lets
/// open connections finish their requests.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Connections,
    shutdown: impl std::future::Future<Output = ()>,
) -> Open {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let max = limits.max.max(1);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Headers past the API's own 32 KiB cap get its JSON 431; past this, hyper's own.
        .max_buf_size(256 << 10)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a moment instead of spinning.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stream = Stalling { io: stream, stall: limits.write_stall, timer: None };
        let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    Open { slots, max: max as u32 }
}

/// A connection whose writes must make progress: a client that stops reading its answers
/// (pipelining requests it never reads) is disconnected after `stall` instead of holding its
/// slot forever.
struct Stalling<T> {
    io: T,
    stall: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Stalling<T> {
    /// `Ready(Err)` once writes made no progress for `stall`; `Pending` until then.
    fn stalled(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        let stall = self.stall;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        timer.as_mut().poll(cx).map(|()| std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading"))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stalling<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stalling<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(done) => {
                self.timer = None;
                Poll::Ready(done)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(done) => {
                self.timer = None;
                Poll::Ready(done)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Connections the kernel queues for `accept` (it caps this at `net.core.somaxconn`).
/// `TcpListener::bind` asks for 128: a burst of new clients beyond that — 256 connecting at
/// once in `bench api` — overflowed the queue, and each dropped SYN cost its client the kernel's
/// one-second retransmission (p99 ≈ 1.05 s).
const ACCEPT_BACKLOG: u32 = 4096;

/// A listener on `addr` whose accept queue holds `ACCEPT_BACKLOG` connections.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted server binds its port again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// `wanted` connections, if the process's file limit allows them with room for the store,
/// the compiled-component cache and outbound calls: the soft limit is raised towards the
/// hard one when needed, and the connection cap lowered to fit otherwise.
fn fit_connections(wanted: usize) -> usize {
    const RESERVE: u64 = 512;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    let needed = wanted as u64 + RESERVE;
    if limit.rlim_cur < needed && limit.rlim_max > limit.rlim_cur {
        let raised = libc::rlimit { rlim_cur: needed.min(limit.rlim_max), rlim_max: limit.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    let fits = limit.rlim_cur.saturating_sub(RESERVE).max(16) as usize;
    if fits < wanted {
        tracing::warn!("the file limit ({}) allows {fits} connections, not {wanted}", limit.rlim_cur);
    }
    wanted.min(fits)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn a_burst_of_clients_beyond_128_is_queued_for_accept_not_dropped() {
        // Nothing accepts: each connection completes only if the accept queue holds it (a
        // dropped SYN leaves its client retrying, and with nothing accepting it never lands).
        let listener = super::listen(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel caps the queue at `net.core.somaxconn` (4096 on current kernels).
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096);
        let clients: usize = 300.min(somaxconn);
        let burst = (0..clients).map(|_| tokio::time::timeout(Duration::from_secs(20), tokio::net::TcpStream::connect(addr)));
        let connected = futures::future::join_all(burst).await;
        let queued = connected.iter().filter(|c| matches!(c, Ok(Ok(_)))).count();
        assert_eq!(queued, clients, "connections queued for accept");
        drop(listener);
    }
}
