//! Turns bytes into a ready-to-call component: refuses garbage with a reason, compiles once
//! (or loads the compiled artifact from the disk cache), pre-links against the sandbox, and
//! records which roles the component plays.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{self, InstancePre, types::ComponentItem};

use super::bindings::{
    CONTRACT_VERSION, PACKAGE_PREFIX, PARTICIPANT_EXPORT, POLICY_EXPORT, STEP_EXPORT, wit_participant,
    wit_policy, wit_step,
};
use super::sandbox::{CallState, CallTags};
use super::{LoadError, PluginHost};

/// A role a component can play, decided by what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Step,
    Participant,
    Policy,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Step, Role::Participant, Role::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Step => "step",
            Role::Participant => "participant",
            Role::Policy => "policy",
        }
    }

    fn export_name(self) -> &'static str {
        match self {
            Role::Step => STEP_EXPORT,
            Role::Participant => PARTICIPANT_EXPORT,
            Role::Policy => POLICY_EXPORT,
        }
    }
}

pub(crate) struct RoleIndices {
    pub(crate) step: Option<wit_step::GuestIndices>,
    pub(crate) participant: Option<wit_participant::GuestIndices>,
    pub(crate) policy: Option<wit_policy::GuestIndices>,
}

/// A validated, compiled component, pre-linked and ready to instantiate per call.
pub struct Component {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// The roles it exports, in `Role::ALL` order.
    pub roles: Vec<Role>,
    pub size: usize,
    pub(crate) pre: InstancePre<CallState>,
    pub(crate) indices: RoleIndices,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component").field("digest", &self.digest).field("roles", &self.roles).finish()
    }
}

impl Component {
    pub fn exports(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn export_names(&self) -> Vec<&'static str> {
        self.roles.iter().map(|r| r.as_str()).collect()
    }
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `digest_of`, on a blocking thread when the bytes are large enough to matter (a 64 MiB
/// component hashes for ~0.2 s).
pub async fn digest_off_thread(bytes: &[u8]) -> String {
    if bytes.len() < (1 << 20) {
        return digest_of(bytes);
    }
    let owned = bytes.to_vec();
    tokio::task::spawn_blocking(move || digest_of(&owned)).await.expect("hashing does not panic")
}

/// Checks the binary's header: a component, not a core module or something else.
fn check_header(bytes: &[u8], limit: usize) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.is_empty() {
        return Err(LoadError::Empty);
    }
    if bytes.len() > limit {
        return Err(LoadError::TooLarge { size: bytes.len(), limit });
    }
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotWasm);
    }
    if bytes[4..8] == CORE_VERSION {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// Validates and compiles `bytes`, reusing the host's disk cache when it has this digest.
pub(crate) async fn load(host: &PluginHost, bytes: &[u8]) -> Result<Arc<Component>, LoadError> {
    check_header(bytes, host.config().max_component_bytes)?;
    // Hashing and compiling take up to seconds of CPU: on a blocking thread, a few at a time,
    // so uploads never stall the async workers that serve requests and drive transactions.
    // The permit lives in the blocking task: a caller that goes away mid-compile does not
    // free a slot while the compilation still runs.
    let permit = host.compiles().acquire_owned().await.expect("never closed");
    let (owned, on_pool) = (bytes.to_vec(), host.clone());
    let compiled = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let host = on_pool;
        let digest = digest_of(&owned);
        let compiled = compile_cached(&host, &owned, &digest)?;
        let roles = roles_of(&host, &compiled)?;
        let pre = host
            .linker()
            .instantiate_pre(&compiled)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let indices = role_indices(&pre, &roles)?;
        Ok::<_, LoadError>(Component { digest, roles, size: owned.len(), pre, indices })
    })
    .await;
    let component = match compiled {
        Ok(result) => result?,
        Err(e) => return Err(LoadError::Invalid(format!("compiling the component failed: {e}"))),
    };
    type_check(host, &component).await?;
    Ok(Arc::new(component))
}

fn compile_cached(
    host: &PluginHost,
    bytes: &[u8],
    digest: &str,
) -> Result<component::Component, LoadError> {
    let engine = host.engine();
    let cached = host.config().cache_dir.as_deref().map(|dir| cache_path(dir, engine, digest));
    if let Some(path) = cached.as_deref().filter(|p| p.exists()) {
        // Read into memory rather than mmap: another process rewriting the cache file must
        // not be able to pull code out from under a running call.
        let read = std::fs::read(path).map_err(wasmtime::Error::from);
        // SAFETY: the file was written by `Component::serialize` of this same engine
        // configuration (the engine hash is in its name) into the host's own cache directory;
        // wasmtime still checks its header and engine compatibility before using it.
        match read.and_then(|bytes| unsafe { component::Component::deserialize(engine, bytes) }) {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable compiled cache entry: {e}"),
        }
    }
    let compiled = component::Component::new(engine, bytes).map_err(|e| {
        let message = format!("{e:#}");
        // More core instances, memories or tables than one component may have (or the whole
        // pool holds): it could never be instantiated (and a call would wait for room for ever).
        if message.contains("in the pooling allocator") {
            LoadError::Invalid(format!("the component needs more than one component may have of the Wasm host's instance pool: {message}"))
        } else if message.contains("core module") || message.contains("component version") {
            LoadError::NotWasm
        } else {
            LoadError::Invalid(message)
        }
    })?;
    if let Some(path) = cached {
        if let Err(e) = write_cache(&path, &compiled) {
            tracing::warn!(path = %path.display(), "could not cache compiled component: {e}");
        }
    }
    Ok(compiled)
}

fn cache_path(dir: &Path, engine: &wasmtime::Engine, digest: &str) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let hex = digest.trim_start_matches("sha256:");
    dir.join(format!("{hex}-{:016x}.cwasm", hasher.finish()))
}

fn write_cache(path: &Path, compiled: &component::Component) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = compiled.serialize().map_err(anyhow::Error::from)?;
    // Write-then-rename so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The roles a compiled component exports; refuses a wrong contract version or no role.
fn roles_of(host: &PluginHost, compiled: &component::Component) -> Result<Vec<Role>, LoadError> {
    let ty = compiled.component_type();
    let names: Vec<String> = ty
        .exports(host.engine())
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    let listed = if names.is_empty() { "nothing".to_string() } else { names.join(", ") };
    let roles: Vec<Role> =
        Role::ALL.into_iter().filter(|r| names.iter().any(|n| n == r.export_name())).collect();
    if roles.is_empty() {
        let other_version = names.iter().find_map(|n| {
            let rest = n.strip_prefix(PACKAGE_PREFIX)?;
            let (_, version) = rest.split_once('@')?;
            Some(version.to_string())
        });
        return Err(match other_version {
            Some(found) => {
                LoadError::WrongContractVersion { found, expected: CONTRACT_VERSION, exports: listed }
            }
            None => LoadError::NoRole { exports: listed },
        });
    }
    Ok(roles)
}

fn role_indices(pre: &InstancePre<CallState>, roles: &[Role]) -> Result<RoleIndices, LoadError> {
    let bad = |role: Role| {
        move |e: wasmtime::Error| bad_export(pre.engine(), pre.component(), role, e)
    };
    Ok(RoleIndices {
        step: match roles.contains(&Role::Step) {
            true => Some(wit_step::GuestIndices::new(pre).map_err(bad(Role::Step))?),
            false => None,
        },
        participant: match roles.contains(&Role::Participant) {
            true => Some(wit_participant::GuestIndices::new(pre).map_err(bad(Role::Participant))?),
            false => None,
        },
        policy: match roles.contains(&Role::Policy) {
            true => Some(wit_policy::GuestIndices::new(pre).map_err(bad(Role::Policy))?),
            false => None,
        },
    })
}

/// Loading the typed functions checks every export's signature against the contract. It needs
/// an instance, so instantiate once in a throwaway sandbox; no export is called.
const TYPE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn type_check(host: &PluginHost, component: &Component) -> Result<(), LoadError> {
    const MEMORY_CAP: usize = 64 << 20;
    let new_store = || {
        let mut store = wasmtime::Store::new(host.engine(), CallState::new(CallTags::default(), MEMORY_CAP));
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(super::deadline_ticks(TYPE_CHECK_TIMEOUT));
        if host.config().fuel_metering {
            let _ = store.set_fuel(u64::MAX);
        }
        store
    };
    // The instance is the pool's like a call's: admitted in turn, never refused for want of room
    // while calls run (an upload during a flood waits, then succeeds).
    let _admission = host.admit("", MEMORY_CAP).await;
    let mut room = host.room();
    let (mut store, instance) = loop {
        let mut store = new_store();
        match tokio::time::timeout(TYPE_CHECK_TIMEOUT, component.pre.instantiate_async(&mut store)).await {
            Ok(Err(e)) if super::Room::is_full(&e) => room.wait().await,
            instantiated => break (store, instantiated),
        }
    };
    drop(room);
    let instance = instance
        .map_err(|_| LoadError::Invalid("instantiation did not finish in time".into()))?
        .map_err(|e| LoadError::Invalid(format!("instantiation failed: {e:#}")))?;
    let idx = &component.indices;
    let (engine, compiled) = (host.engine(), component.pre.component());
    if let Some(i) = &idx.step {
        i.load(&mut store, &instance).map_err(|e| bad_export(engine, compiled, Role::Step, e))?;
    }
    if let Some(i) = &idx.participant {
        i.load(&mut store, &instance).map_err(|e| bad_export(engine, compiled, Role::Participant, e))?;
    }
    if let Some(i) = &idx.policy {
        i.load(&mut store, &instance).map_err(|e| bad_export(engine, compiled, Role::Policy, e))?;
    }
    Ok(())
}

/// A role export whose functions do not have the contract's types. wasmtime's own message
/// ("expected record of 8 fields, found 7 fields") is kept, after a description in the
/// contract's terms of what differs — what a plugin author built against a stale or edited
/// copy of the WIT needs to see.
fn bad_export(engine: &wasmtime::Engine, compiled: &component::Component, role: Role, e: wasmtime::Error) -> LoadError {
    let found = format!("{e:#}");
    let reason = match contract_drift(engine, compiled, role) {
        Some(drift) => format!("{drift}; rebuild it against wit/plugin.wit (wasmtx:plugin@{CONTRACT_VERSION}) [{found}]"),
        None => found,
    };
    LoadError::BadExport { role: role.as_str(), reason }
}

/// The contract's functions of a role, each with the WIT names of its parameter record and
/// its result variant.
fn contract_functions(role: Role) -> &'static [(&'static str, &'static str, &'static str)] {
    match role {
        Role::Step => &[("execute", "call-context", "outcome"), ("compensate", "call-context", "outcome")],
        Role::Participant => &[
            ("prepare", "call-context", "vote"),
            ("commit", "call-context", "outcome"),
            ("abort", "call-context", "outcome"),
        ],
        Role::Policy => &[("select", "profile", "decision")],
    }
}

/// Compares a component's export of `role` with the contract by name: missing functions,
/// record fields and variant cases. `None` when the names agree (the difference is in types).
fn contract_drift(engine: &wasmtime::Engine, compiled: &component::Component, role: Role) -> Option<String> {
    use wasmtime::component::types::Type;
    let ty = compiled.component_type();
    let ComponentItem::ComponentInstance(export) = ty.get_export(engine, role.export_name())?.ty else { return None };
    let funcs: std::collections::HashMap<&str, component::types::ComponentFunc> = export
        .exports(engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentFunc(f) => Some((name, f)),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    for (name, record, variant) in contract_functions(role) {
        let Some(func) = funcs.get(name) else {
            problems.push(format!("it has no function `{name}`"));
            continue;
        };
        if let Some((_, Type::Record(r))) = func.params().next() {
            let found: Vec<String> = r.fields().map(|f| f.name.to_string()).collect();
            problems.extend(name_diff(&format!("`{name}`'s {record}"), "field", &found, &wit_members("record", record)));
        }
        if let Some(Type::Variant(v)) = func.results().next() {
            let found: Vec<String> = v.cases().map(|c| c.name.to_string()).collect();
            problems.extend(name_diff(&format!("`{name}`'s {variant}"), "case", &found, &wit_members("variant", variant)));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn name_diff(what: &str, member: &str, found: &[String], expected: &[String]) -> Option<String> {
    let missing: Vec<&str> = expected.iter().filter(|e| !found.contains(e)).map(String::as_str).collect();
    let extra: Vec<&str> = found.iter().filter(|f| !expected.contains(f)).map(String::as_str).collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("lacks {member} {}", quoted(&missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("has {member} {} the contract does not", quoted(&extra)));
    }
    (!parts.is_empty()).then(|| format!("{what} {}", parts.join(" and ")))
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// The member names of `record NAME { … }` or `variant NAME { … }` in the contract's WIT.
fn wit_members(kind: &str, name: &str) -> Vec<String> {
    const CONTRACT: &str = include_str!("../../../wit/plugin.wit");
    let header = format!("{kind} {name} {{");
    let Some(start) = CONTRACT.find(&header) else { return Vec::new() };
    let body = &CONTRACT[start + header.len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| l.split([':', '(', ',']).next().unwrap_or("").trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contracts_records_and_variants_are_read_from_the_wit() {
        assert_eq!(
            wit_members("record", "call-context"),
            ["tenant", "transaction-id", "step", "action", "attempt", "idempotency-key", "input", "deadline-ms"]
        );
        assert_eq!(wit_members("variant", "outcome"), ["success", "failure", "retry"]);
        assert_eq!(wit_members("variant", "vote"), ["prepared", "abort"]);
        assert_eq!(wit_members("variant", "decision"), ["choose", "reject"]);
        assert_eq!(wit_members("record", "profile").len(), 7);
    }

    #[test]
    fn name_differences_are_spelled_out() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            name_diff("`execute`'s call-context", "field", &s(&["a", "c"]), &s(&["a", "b"])).as_deref(),
            Some("`execute`'s call-context lacks field `b` and has field `c` the contract does not")
        );
        assert_eq!(name_diff("x", "case", &s(&["a"]), &s(&["a"])), None);
    }
}

/// What `wasmtx plugin inspect` reports about a file.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub digest: String,
    pub size: usize,
    pub exports: Vec<&'static str>,
}

/// Validates `bytes` as a plugin and reports its digest and roles.
pub async fn inspect(host: &PluginHost, bytes: &[u8]) -> Result<Inspection, LoadError> {
    let c = load(host, bytes).await?;
    Ok(Inspection { digest: c.digest.clone(), size: c.size, exports: c.export_names() })
}
