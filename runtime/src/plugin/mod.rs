//! The Wasm host: one wasmtime `Engine` per process, components validated and compiled once
//! (and cached on disk), one `InstancePre` per component version, a fresh `Store` per call.
//!
//! A plugin that traps, loops or allocates without bound costs its own call and nothing else:
//! every call runs under a wall-clock deadline (epoch ticks make a computing plugin yield, an
//! async timeout ends the call), a
//! memory cap and optional fuel, and a store that trapped is dropped, never entered again.
//! This module must never let a plugin reach files, environment, sockets or another call's state.
//!
//! ```no_run
//! # async fn demo(bytes: Vec<u8>) -> anyhow::Result<()> {
//! use wasmtx::plugin::{CallLimits, CallTags, Catalog, HostConfig, PluginHost};
//! use wasmtx::model::CallContext;
//!
//! let host = PluginHost::new(HostConfig::default())?;
//! let catalog = Catalog::in_memory(host.clone());
//! let (added, _new) = catalog.add("default", "payment", &bytes).await?;
//! let plugin = catalog.version("default", "payment").await?;
//! let ctx = CallContext {
//!     tenant: "default".into(), transaction_id: "t1".into(), step: "charge".into(),
//!     action: "charge".into(), attempt: 1, idempotency_key: "t1/charge/execute".into(),
//!     input: r#"{"amount": 10}"#.into(), deadline_ms: 30_000, traceparent: None,
//! };
//! let outcome = host.execute(&plugin.component, ctx, &CallLimits::default(), CallTags::default()).await?;
//! # let _ = (added, outcome); Ok(()) }
//! ```

mod bindings;
mod catalog;
mod error;
mod loader;
mod registry;
mod sandbox;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig, Store, Trap};

use crate::model::{CallContext, Decision, Outcome, Pattern, Profile, Vote};
use bindings::{wit_host, wit_policy, wit_types};
use sandbox::CallState;

pub use catalog::{Catalog, CatalogError, PluginVersion};
pub use error::{CallError, LoadError, LookupError};
pub use loader::{Component, Role, digest_of, digest_off_thread, inspect};
pub use registry::{ComponentCache, PluginRef, valid_name};
pub use sandbox::{CallTags, HttpGrant};

/// How often the epoch advances; deadlines are enforced to this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// A computing plugin yields its thread every this many ticks (20 ms).
const YIELD_EVERY_TICKS: u64 = 4;

/// Process-wide settings of the Wasm host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Instances that may be live at once (the pooling allocator's slots).
    pub max_concurrent_instances: u32,
    /// The largest memory cap any call may be given; per-call caps are at most this.
    pub max_memory_bytes: usize,
    /// Enables fuel metering engine-wide (a few percent slower); per-call fuel then applies.
    pub fuel_metering: bool,
    /// Where compiled components are cached, keyed by digest and engine; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Largest component accepted, in bytes.
    pub max_component_bytes: usize,
    /// Components compiled at once (on blocking threads, never the async workers).
    pub max_concurrent_compiles: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_concurrent_instances: 1000,
            max_memory_bytes: 1 << 30,
            fuel_metering: false,
            cache_dir: None,
            max_component_bytes: 64 << 20,
            max_concurrent_compiles: std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
        }
    }
}

/// Limits of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock deadline (default 30 s).
    pub timeout: Duration,
    /// Linear-memory cap (default 64 MiB).
    pub memory_bytes: usize,
    /// Fuel for the call, when the host meters fuel (default: unmetered).
    pub fuel: Option<u64>,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits { timeout: Duration::from_secs(30), memory_bytes: 64 << 20, fuel: None }
    }
}

/// The Wasm host. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<CallState>,
    config: HostConfig,
    ticker_stop: Arc<AtomicBool>,
    /// One permit per instance slot of the pool: a call waits here (in order) for a slot
    /// instead of failing to instantiate.
    slots: Arc<Semaphore>,
    /// Tenants' shares of the slots and of plugin memory, where they have one.
    shares: RwLock<HashMap<String, Arc<ShareGate>>>,
    /// Held (written) by a call that found another kind of pool slot full, for as long as it
    /// waits: calls admitted after it instantiate only once it has, so it is not overtaken
    /// for ever by lighter components.
    strained: tokio::sync::RwLock<()>,
    /// Compilations running at once.
    compiles: Arc<Semaphore>,
}

/// A tenant's share of the host: how many instances its calls may hold at once, and how much
/// memory (the sum of their caps) they may reserve. `None`: no bound but the host's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostShare {
    pub max_instances: Option<u32>,
    pub max_memory_bytes: Option<usize>,
}

struct ShareGate {
    instances: Option<Arc<Semaphore>>,
    /// Permits are MiB of memory caps.
    memory_mib: Option<(Arc<Semaphore>, u32)>,
}

/// What a call holds while it runs: its tenant's share and a pool slot.
pub(crate) struct Admission {
    _share: Vec<OwnedSemaphorePermit>,
    _slot: OwnedSemaphorePermit,
}

/// An admitted instantiation that found another kind of pool slot full (core instances,
/// memories, tables: a component with many core modules). Nothing of it has run, so it waits
/// rather than fail: ahead of the instantiations admitted after it, for the calls that run to
/// end (each within its deadline). It fits once they have: no loaded component needs more than
/// the whole pool.
pub(crate) struct Room<'a> {
    strained: &'a tokio::sync::RwLock<()>,
    ahead: Option<tokio::sync::RwLockWriteGuard<'a, ()>>,
    backoff: Duration,
}

impl Room<'_> {
    /// Whether `e` says the pool is full (then `wait` and try again, in a fresh store).
    pub(crate) fn is_full(e: &wasmtime::Error) -> bool {
        e.downcast_ref::<PoolConcurrencyLimitError>().is_some()
    }

    /// Waits a little longer each time before the next try.
    pub(crate) async fn wait(&mut self) {
        if self.ahead.is_none() {
            self.ahead = Some(self.strained.write().await);
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(200));
    }
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// What a call asks of a component.
enum Invocation {
    Execute(CallContext),
    Compensate(CallContext),
    Prepare(CallContext),
    Commit(CallContext),
    Abort(CallContext),
    Select(Profile),
}

enum Reply {
    Outcome(Outcome),
    Vote(Vote),
    Decision(Decision),
}

/// The most of each a component may instantiate in one call (and less in a smaller pool).
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 16;
const MAX_TABLES_PER_COMPONENT: u32 = 64;

impl PluginHost {
    pub fn new(config: HostConfig) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let (core_instances, memories, tables) = (
            config.max_concurrent_instances.saturating_mul(8),
            config.max_concurrent_instances.saturating_mul(2),
            config.max_concurrent_instances.saturating_mul(4),
        );
        pool.total_component_instances(config.max_concurrent_instances)
            .total_core_instances(core_instances)
            .total_memories(memories)
            .total_tables(tables)
            // A component that would not fit an empty pool is refused when it is loaded, so a
            // call that finds the pool full only waits for other calls to end (`invoke`).
            // Per component, no more than a plugin needs (a componentize-py one makes under 16
            // core instances): one tenant's component cannot hold the slots of the whole pool.
            .max_core_instances_per_component(core_instances.min(MAX_CORE_INSTANCES_PER_COMPONENT))
            .max_memories_per_component(memories.min(MAX_MEMORIES_PER_COMPONENT))
            .max_tables_per_component(tables.min(MAX_TABLES_PER_COMPONENT))
            .total_stacks(config.max_concurrent_instances)
            .max_memory_size(config.max_memory_bytes)
            // Reset the first MiB of a reused slot with memset instead of madvise: a typical
            // plugin call touches a few hundred KiB, and page faults on every call were the
            // largest per-call cost measured by `wasmtx bench plugin`.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .decommit_batch_size(32)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel_metering)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)?;

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Outbound HTTP exists for plugins, but each request is checked against the calling
        // tenant's allowlist (empty by default: everything is refused).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        wit_host::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.weak(), ticker_stop.clone());

        let slots = Arc::new(Semaphore::new(config.max_concurrent_instances as usize));
        let compiles = Arc::new(Semaphore::new(config.max_concurrent_compiles.max(1)));
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                config,
                ticker_stop,
                slots,
                shares: RwLock::default(),
                strained: tokio::sync::RwLock::new(()),
                compiles,
            }),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Sets `tenant`'s share of the host (replacing any earlier one for new calls).
    pub fn set_share(&self, tenant: &str, share: HostShare) {
        let gate = ShareGate {
            instances: share.max_instances.map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
            memory_mib: share.max_memory_bytes.map(|b| {
                let mib = (b >> 20).max(1) as u32;
                (Arc::new(Semaphore::new(mib as usize)), mib)
            }),
        };
        self.inner.shares.write().unwrap().insert(tenant.to_string(), Arc::new(gate));
    }

    /// Instance slots in use now.
    pub fn instances_in_use(&self) -> usize {
        self.inner.config.max_concurrent_instances as usize - self.inner.slots.available_permits()
    }

    /// Waits for the tenant's share (when it has one), then for a pool slot: in arrival
    /// order, so a tenant flooding the host queues behind its own share, not in front of others
    /// — and behind a call admitted earlier that waits for room (`Room`). Every instance the
    /// host makes is admitted so (a call's, an upload's type check).
    pub(crate) async fn admit(&self, tenant: &str, memory_cap: usize) -> Admission {
        let gate = self.inner.shares.read().unwrap().get(tenant).cloned();
        let mut share = Vec::new();
        if let Some(gate) = gate {
            if let Some(instances) = &gate.instances {
                share.push(instances.clone().acquire_owned().await.expect("never closed"));
            }
            if let Some((memory, total)) = &gate.memory_mib {
                let mib = (memory_cap.div_ceil(1 << 20) as u32).clamp(1, *total);
                share.push(memory.clone().acquire_many_owned(mib).await.expect("never closed"));
            }
        }
        let slot = self.inner.slots.clone().acquire_owned().await.expect("never closed");
        drop(self.inner.strained.read().await);
        Admission { _share: share, _slot: slot }
    }

    /// The wait of an admitted instantiation for room of another kind than slots.
    pub(crate) fn room(&self) -> Room<'_> {
        Room { strained: &self.inner.strained, ahead: None, backoff: Duration::from_millis(5) }
    }

    pub(crate) fn compiles(&self) -> Arc<Semaphore> {
        self.inner.compiles.clone()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<CallState> {
        &self.inner.linker
    }

    /// Runs a saga step's action.
    pub async fn execute(
        &self,
        component: &Component,
        ctx: CallContext,
        limits: &CallLimits,
        tags: CallTags,
    ) -> Result<Outcome, CallError> {
        self.invoke(component, Invocation::Execute(ctx), limits, tags).await.map(Reply::into_outcome)
    }

    /// Runs a saga step's compensation.
    pub async fn compensate(
        &self,
        component: &Component,
        ctx: CallContext,
        limits: &CallLimits,
        tags: CallTags,
    ) -> Result<Outcome, CallError> {
        self.invoke(component, Invocation::Compensate(ctx), limits, tags).await.map(Reply::into_outcome)
    }

    /// Asks a 2PC participant to prepare.
    pub async fn prepare(
        &self,
        component: &Component,
        ctx: CallContext,
        limits: &CallLimits,
        tags: CallTags,
    ) -> Result<Vote, CallError> {
        match self.invoke(component, Invocation::Prepare(ctx), limits, tags).await? {
            Reply::Vote(v) => Ok(v),
            _ => unreachable!("prepare answers a vote"),
        }
    }

    /// Tells a 2PC participant to commit.
    pub async fn commit(
        &self,
        component: &Component,
        ctx: CallContext,
        limits: &CallLimits,
        tags: CallTags,
    ) -> Result<Outcome, CallError> {
        self.invoke(component, Invocation::Commit(ctx), limits, tags).await.map(Reply::into_outcome)
    }

    /// Tells a 2PC participant to abort.
    pub async fn abort(
        &self,
        component: &Component,
        ctx: CallContext,
        limits: &CallLimits,
        tags: CallTags,
    ) -> Result<Outcome, CallError> {
        self.invoke(component, Invocation::Abort(ctx), limits, tags).await.map(Reply::into_outcome)
    }

    /// Asks a selection policy to choose a pattern.
    pub async fn select(
        &self,
        component: &Component,
        profile: Profile,
        limits: &CallLimits,
        tags: CallTags,
    ) -> Result<Decision, CallError> {
        match self.invoke(component, Invocation::Select(profile), limits, tags).await? {
            Reply::Decision(d) => Ok(d),
            _ => unreachable!("select answers a decision"),
        }
    }

    async fn invoke(
        &self,
        component: &Component,
        invocation: Invocation,
        limits: &CallLimits,
        tags: CallTags,
    ) -> Result<Reply, CallError> {
        let role = invocation.role();
        if !component.exports(role) {
            return Err(CallError::MissingRole { role: role.as_str() });
        }
        let memory_cap = limits.memory_bytes.min(self.inner.config.max_memory_bytes);
        // Waiting to be admitted is the host's delay, not the plugin's: the call's deadline
        // starts once it is admitted, and the wait never fails it.
        let _admission = self.admit(&tags.tenant, memory_cap).await;
        let mut room = self.room();
        let mut invocation = Some(invocation);
        let mut tags = Some(tags);
        let (store, result) = loop {
            let mut store = self.new_store(tags.take().expect("tags per try"), memory_cap, limits)?;
            // One deadline for a plugin that computes (it yields every tick) and one that waits
            // in the host (a WASI sleep, a blocked poll).
            let call = invocation.take().expect("one invocation per try");
            let result = tokio::time::timeout(limits.timeout, call_in_store(component, &mut store, call)).await;
            match result {
                Ok(Err(CallFailure::Instantiate(e, back))) if Room::is_full(&e) => {
                    invocation = Some(back);
                    tags = Some(store.into_data().tags);
                    room.wait().await;
                }
                result => break (store, result),
            }
        };
        drop(room);
        let state = store.data();
        state.flush_output();
        match result {
            Err(_elapsed) => Err(CallError::Timeout { after: limits.timeout }),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(CallFailure::Instantiate(e, _))) => {
                Err(classify(e, state, limits).unwrap_or_else(CallError::Instantiate))
            }
            Ok(Err(CallFailure::Call(e))) => Err(classify(e, state, limits)
                .unwrap_or_else(|message| CallError::Trap { message })),
        }
    }
}

enum CallFailure {
    /// Instantiation failed; the invocation comes back, untouched, for another try.
    Instantiate(wasmtime::Error, Invocation),
    Call(wasmtime::Error),
}

impl PluginHost {
    /// A fresh store for one try of a call: its own WASI context, memory cap, epoch deadline
    /// and fuel.
    fn new_store(&self, tags: CallTags, memory_cap: usize, limits: &CallLimits) -> Result<Store<CallState>, CallError> {
        let mut store = Store::new(&self.inner.engine, CallState::new(tags, memory_cap));
        store.limiter(|s| &mut s.limiter);
        // Yield to the executor every few ticks: a plugin that computes never holds a worker
        // thread for longer than that, so other tenants' calls keep running; the deadline
        // itself is the async timeout. Yielding at every tick measured p50 28 µs instead
        // of 15.5 µs in `wasmtx bench plugin`; every fourth tick (20 ms) costs nothing there.
        store.set_epoch_deadline(YIELD_EVERY_TICKS);
        store.epoch_deadline_async_yield_and_update(YIELD_EVERY_TICKS);
        if self.inner.config.fuel_metering {
            store.set_fuel(limits.fuel.unwrap_or(u64::MAX)).map_err(|e| CallError::Instantiate(e.to_string()))?;
        }
        Ok(store)
    }
}

/// Maps a wasmtime error to the limit that caused it, or returns its readable message.
fn classify(e: wasmtime::Error, state: &CallState, limits: &CallLimits) -> Result<CallError, String> {
    if state.limiter.hit {
        return Ok(CallError::MemoryLimit { limit_bytes: limits.memory_bytes });
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return Ok(CallError::Timeout { after: limits.timeout }),
        Some(Trap::OutOfFuel) => return Ok(CallError::FuelExhausted),
        _ => {}
    }
    let mut message = format!("{e}");
    if let Some(trap) = e.downcast_ref::<Trap>() {
        message = format!("{trap}");
    }
    // The plugin's own account (an exception, a panic) first; the trap it caused after.
    if let Some(explained) = state.last_stderr_message() {
        message = format!("{explained} ({message})");
    }
    Err(message)
}

async fn call_in_store(
    component: &Component,
    store: &mut Store<CallState>,
    invocation: Invocation,
) -> Result<Reply, CallFailure> {
    let instance = match component.pre.instantiate_async(&mut *store).await {
        Ok(instance) => instance,
        Err(e) => return Err(CallFailure::Instantiate(e, invocation)),
    };
    let indices = &component.indices;
    // `invoke` checked the role is exported, so the matching indices are present.
    let reply = async {
        Ok(match invocation {
            Invocation::Execute(ctx) => {
                let step = role_indices(&indices.step)?.load(&mut *store, &instance)?;
                Reply::Outcome(from_wit_outcome(step.call_execute(&mut *store, &to_wit_ctx(ctx)).await?))
            }
            Invocation::Compensate(ctx) => {
                let step = role_indices(&indices.step)?.load(&mut *store, &instance)?;
                Reply::Outcome(from_wit_outcome(
                    step.call_compensate(&mut *store, &to_wit_ctx(ctx)).await?,
                ))
            }
            Invocation::Prepare(ctx) => {
                let p = role_indices(&indices.participant)?.load(&mut *store, &instance)?;
                Reply::Vote(match p.call_prepare(&mut *store, &to_wit_ctx(ctx)).await? {
                    wit_types::Vote::Prepared => Vote::Prepared,
                    wit_types::Vote::Abort(reason) => Vote::Abort(reason),
                })
            }
            Invocation::Commit(ctx) => {
                let p = role_indices(&indices.participant)?.load(&mut *store, &instance)?;
                Reply::Outcome(from_wit_outcome(p.call_commit(&mut *store, &to_wit_ctx(ctx)).await?))
            }
            Invocation::Abort(ctx) => {
                let p = role_indices(&indices.participant)?.load(&mut *store, &instance)?;
                Reply::Outcome(from_wit_outcome(p.call_abort(&mut *store, &to_wit_ctx(ctx)).await?))
            }
            Invocation::Select(profile) => {
                let policy = role_indices(&indices.policy)?.load(&mut *store, &instance)?;
                let decision = policy.call_select(&mut *store, &to_wit_profile(profile)).await?;
                Reply::Decision(match decision {
                    wit_policy::Decision::Choose(wit_policy::Pattern::Saga) => Decision::Choose(Pattern::Saga),
                    wit_policy::Decision::Choose(wit_policy::Pattern::TwoPhaseCommit) => {
                        Decision::Choose(Pattern::TwoPhaseCommit)
                    }
                    wit_policy::Decision::Reject(reason) => Decision::Reject(reason),
                })
            }
        })
    };
    reply.await.map_err(CallFailure::Call)
}

fn role_indices<T>(indices: &Option<T>) -> wasmtime::Result<&T> {
    indices.as_ref().ok_or_else(|| wasmtime::format_err!("role not exported"))
}

fn to_wit_profile(p: Profile) -> wit_policy::Profile {
    use crate::model::{Availability, Consistency};
    wit_policy::Profile {
        tenant: p.tenant,
        transaction_name: p.transaction_name,
        consistency: match p.consistency {
            Consistency::Eventual => wit_policy::Consistency::Eventual,
            Consistency::Strong => wit_policy::Consistency::Strong,
            Consistency::Immediate => wit_policy::Consistency::Immediate,
        },
        availability: match p.availability {
            Availability::High => wit_policy::Availability::High,
            Availability::Medium => wit_policy::Availability::Medium,
            Availability::Low => wit_policy::Availability::Low,
        },
        timeout_ms: p.timeout_ms,
        participants: p
            .participants
            .into_iter()
            .map(|c| wit_policy::Candidate {
                participant_id: c.participant_id,
                supports_two_phase_commit: c.supports_two_phase_commit,
                supports_saga: c.supports_saga,
            })
            .collect(),
        context: p.context,
    }
}

impl Invocation {
    fn role(&self) -> Role {
        match self {
            Invocation::Execute(_) | Invocation::Compensate(_) => Role::Step,
            Invocation::Prepare(_) | Invocation::Commit(_) | Invocation::Abort(_) => Role::Participant,
            Invocation::Select(_) => Role::Policy,
        }
    }
}

impl Reply {
    fn into_outcome(self) -> Outcome {
        match self {
            Reply::Outcome(o) => o,
            _ => unreachable!("this phase answers an outcome"),
        }
    }
}

fn to_wit_ctx(c: CallContext) -> wit_types::CallContext {
    wit_types::CallContext {
        tenant: c.tenant,
        transaction_id: c.transaction_id,
        step: c.step,
        action: c.action,
        attempt: c.attempt,
        idempotency_key: c.idempotency_key,
        input: c.input,
        deadline_ms: c.deadline_ms,
    }
}

fn from_wit_outcome(o: wit_types::Outcome) -> Outcome {
    match o {
        wit_types::Outcome::Success(s) => Outcome::Success(s),
        wit_types::Outcome::Failure(s) => Outcome::Failure(s),
        wit_types::Outcome::Retry(s) => Outcome::Retry(s),
    }
}

/// Epoch ticks that cover `timeout`, rounded up, plus one for the tick in progress.
pub(crate) fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64).saturating_add(1)
}

fn spawn_epoch_ticker(engine: wasmtime::EngineWeak, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("wasmtx-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch thread");
}
