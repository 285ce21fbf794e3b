//! The memory backend (`memory://`): everything in process memory, for development and tests,
//! lost when the process stops. `MemoryPlugins` alone keeps plugin versions for a catalog that
//! needs no database (`wasmtx bench plugin`, tests of the Wasm host), with the SQL store's
//! numbering and content addressing.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::{
    Audit, AuditStore, Backend, EventRow, IdempotencyStore, IdempotentReply, Inspect, KeyRow, Lease, NewEvent, PluginRow,
    PluginStore, Result, Retention, SettingStore, StoreError, TenantRow, TenantStore, TxQuery, TxRow, TxStore,
};

/// An in-memory [`PluginStore`].
#[derive(Default)]
pub struct MemoryPlugins {
    inner: Mutex<Plugins>,
}

#[derive(Default)]
struct Plugins {
    /// (tenant, name) → its versions, oldest first.
    versions: HashMap<(String, String), Vec<PluginRow>>,
    bytes: HashMap<String, Vec<u8>>,
}

#[async_trait]
impl PluginStore for MemoryPlugins {
    async fn put_plugin(&self, tenant: &str, name: &str, digest: &str, bytes: &[u8], exports: &[&str], now_ms: i64) -> Result<(PluginRow, bool)> {
        let mut inner = self.inner.lock().unwrap();
        inner.bytes.entry(digest.to_string()).or_insert_with(|| bytes.to_vec());
        let versions = inner.versions.entry((tenant.to_string(), name.to_string())).or_default();
        if let Some(existing) = versions.iter().find(|v| v.digest == digest) {
            return Ok((existing.clone(), false));
        }
        let row = PluginRow {
            tenant: tenant.into(),
            name: name.into(),
            version: versions.last().map_or(1, |v| v.version + 1),
            digest: digest.into(),
            exports: exports.iter().map(|e| e.to_string()).collect(),
            created_at_ms: now_ms,
        };
        versions.push(row.clone());
        Ok((row, true))
    }

    async fn plugin(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<PluginRow>> {
        let inner = self.inner.lock().unwrap();
        let versions = inner.versions.get(&(tenant.to_string(), name.to_string()));
        Ok(versions.and_then(|vs| match version {
            Some(v) => vs.iter().find(|r| r.version == v).cloned(),
            None => vs.last().cloned(),
        }))
    }

    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginRow>> {
        Ok(self.inner.lock().unwrap().versions.get(&(tenant.to_string(), name.to_string())).cloned().unwrap_or_default())
    }

    async fn latest_plugins(&self, tenant: &str) -> Result<Vec<PluginRow>> {
        let inner = self.inner.lock().unwrap();
        let mut latest: Vec<PluginRow> = inner.versions.iter().filter(|((t, _), _)| t == tenant).filter_map(|(_, v)| v.last().cloned()).collect();
        latest.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(latest)
    }

    async fn component_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.lock().unwrap().bytes.get(digest).cloned())
    }
}

/// Everything in process memory (`memory://`): for development and tests, lost when the
/// process stops. The same traits and guarantees within one process as the SQL store —
/// revision-checked writes with their journal entry, leases, claims — each operation atomic
/// under one lock.
#[derive(Default)]
pub struct MemoryStore {
    plugins: MemoryPlugins,
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    txs: HashMap<String, (TxRow, i64)>,
    /// Per transaction: (first seq, written at, events) per write.
    journal: HashMap<String, Vec<(i64, i64, Vec<NewEvent>)>>,
    tenants: HashMap<String, TenantRow>,
    /// key id → (key, revoked).
    keys: HashMap<String, (KeyRow, bool)>,
    /// (tenant, key) → (reply, remembered at).
    replies: HashMap<(String, String), (IdempotentReply, i64)>,
    settings: HashMap<(String, String), String>,
    /// (tenant, at, actor, action, detail), oldest first.
    audit: Vec<(String, i64, String, String, Value)>,
}

impl MemoryStore {
    /// The process's store named `name` while anything holds it (a fresh one for `""`).
    pub fn named(name: &str) -> std::sync::Arc<MemoryStore> {
        use std::sync::{Arc, OnceLock, Weak};
        static NAMED: OnceLock<Mutex<HashMap<String, Weak<MemoryStore>>>> = OnceLock::new();
        if name.is_empty() {
            return Arc::new(MemoryStore::default());
        }
        let mut named = NAMED.get_or_init(Default::default).lock().unwrap();
        named.retain(|_, store| store.strong_count() > 0);
        if let Some(store) = named.get(name).and_then(Weak::upgrade) {
            return store;
        }
        let store = Arc::new(MemoryStore::default());
        named.insert(name.to_string(), Arc::downgrade(&store));
        store
    }
}

impl State {
    fn append(&mut self, row: &TxRow, events: &[NewEvent], last_seq: i64) {
        if !events.is_empty() {
            let first = last_seq - events.len() as i64 + 1;
            self.journal.entry(row.id.clone()).or_default().push((first, row.updated_at_ms, events.to_vec()));
        }
    }

    /// The audit entry of a transaction's write that took effect, in the same step.
    fn audit_written(&mut self, row: &TxRow, audit: Option<&Audit>) {
        if let Some(a) = audit {
            self.record_audit(&row.tenant, &a.actor, &a.action, &a.detail);
        }
    }

    fn record_audit(&mut self, tenant: &str, actor: &str, action: &str, detail: &Value) {
        self.audit.push((tenant.to_string(), super::now_ms(), actor.to_string(), action.to_string(), detail.clone()));
    }
}

#[async_trait]
impl TxStore for MemoryStore {
    async fn insert_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<()> {
        let mut s = self.inner.lock().unwrap();
        if s.txs.contains_key(&row.id) {
            return Err(StoreError::Conflict { kind: "transaction", id: row.id.clone() });
        }
        let last_seq = events.len() as i64;
        s.txs.insert(row.id.clone(), (row.clone(), last_seq));
        s.append(row, events, last_seq);
        s.audit_written(row, audit);
        Ok(())
    }

    async fn save_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<i64> {
        let mut s = self.inner.lock().unwrap();
        let conflict = || StoreError::Conflict { kind: "transaction", id: row.id.clone() };
        let (stored, last_seq) = s.txs.get_mut(&row.id).ok_or_else(conflict)?;
        if stored.rev != row.rev || stored.tenant != row.tenant {
            return Err(conflict());
        }
        *last_seq += events.len() as i64;
        let last = *last_seq;
        *stored = TxRow { rev: row.rev + 1, ..row.clone() };
        s.append(row, events, last);
        s.audit_written(row, audit);
        Ok(row.rev + 1)
    }

    async fn get_tx(&self, tenant: &str, kind: &str, id: &str) -> Result<Option<TxRow>> {
        let s = self.inner.lock().unwrap();
        Ok(s.txs.get(id).map(|(r, _)| r.clone()).filter(|r| r.tenant == tenant && r.kind == kind))
    }

    async fn search_tx(&self, tenant: &str, query: &TxQuery, limit: i64) -> Result<Vec<TxRow>> {
        let s = self.inner.lock().unwrap();
        let mut rows: Vec<TxRow> = s.txs.values().map(|(r, _)| r).filter(|r| r.tenant == tenant && query.matches(r)).cloned().collect();
        rows.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        rows.truncate(limit.max(0) as usize);
        Ok(rows)
    }

    async fn events(&self, id: &str) -> Result<Vec<EventRow>> {
        let s = self.inner.lock().unwrap();
        let entries = s.journal.get(id).cloned().unwrap_or_default();
        Ok(entries
            .into_iter()
            .flat_map(|(first, at, events)| {
                events.into_iter().zip(first..).map(move |(e, seq)| EventRow { seq, at_ms: at, kind: e.kind, step: e.step, detail: e.detail })
            })
            .collect())
    }

    async fn count_active(&self, tenant: &str) -> Result<i64> {
        let s = self.inner.lock().unwrap();
        let active = |r: &TxRow| super::ACTIVE.iter().any(|(k, states)| r.kind == *k && states.contains(&r.state.as_str()));
        Ok(s.txs.values().filter(|(r, _)| r.tenant == tenant && active(r)).count() as i64)
    }

    async fn claim_expired(&self, kind: &str, states: &[&str], lease: &Lease, now_ms: i64, limit: i64, own: bool) -> Result<Vec<TxRow>> {
        let mut s = self.inner.lock().unwrap();
        let mut due: Vec<(i64, String)> = s
            .txs
            .values()
            .map(|(r, _)| r)
            .filter(|r| r.kind == kind && states.contains(&r.state.as_str()))
            .filter(|r| r.lease_until_ms < now_ms || (own && r.owner.as_deref() == Some(lease.owner.as_str())))
            .map(|r| (r.lease_until_ms, r.id.clone()))
            .collect();
        due.sort();
        due.truncate(limit.max(0) as usize);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, id) in due {
            let (row, _) = s.txs.get_mut(&id).expect("listed above");
            row.owner = Some(lease.owner.clone());
            row.lease_until_ms = lease.until_ms;
            row.rev += 1;
            claimed.push(row.clone());
        }
        Ok(claimed)
    }

    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<bool> {
        let mut s = self.inner.lock().unwrap();
        match s.txs.get_mut(id) {
            Some((row, _)) if row.owner.as_deref() == Some(lease.owner.as_str()) => {
                row.lease_until_ms = lease.until_ms;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl PluginStore for MemoryStore {
    async fn put_plugin(&self, tenant: &str, name: &str, digest: &str, bytes: &[u8], exports: &[&str], now_ms: i64) -> Result<(PluginRow, bool)> {
        self.plugins.put_plugin(tenant, name, digest, bytes, exports, now_ms).await
    }

    async fn plugin(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<PluginRow>> {
        self.plugins.plugin(tenant, name, version).await
    }

    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginRow>> {
        self.plugins.plugin_versions(tenant, name).await
    }

    async fn latest_plugins(&self, tenant: &str) -> Result<Vec<PluginRow>> {
        self.plugins.latest_plugins(tenant).await
    }

    async fn component_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.plugins.component_bytes(digest).await
    }
}

#[async_trait]
impl TenantStore for MemoryStore {
    async fn create_tenant(&self, tenant: &TenantRow, key: &KeyRow) -> Result<bool> {
        let mut s = self.inner.lock().unwrap();
        if s.tenants.contains_key(&tenant.tenant_id) {
            return Ok(false);
        }
        s.tenants.insert(tenant.tenant_id.clone(), tenant.clone());
        s.keys.insert(key.key_id.clone(), (key.clone(), false));
        Ok(true)
    }

    async fn add_key(&self, key: &KeyRow) -> Result<()> {
        self.inner.lock().unwrap().keys.insert(key.key_id.clone(), (key.clone(), false));
        Ok(())
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str, _now_ms: i64) -> Result<bool> {
        let mut s = self.inner.lock().unwrap();
        match s.keys.get_mut(key_id) {
            Some((key, revoked)) if key.tenant_id == tenant && !*revoked => {
                *revoked = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn live_keys(&self, tenant: &str) -> Result<Vec<KeyRow>> {
        let mut live: Vec<KeyRow> = self.inner.lock().unwrap().keys.values().filter(|(k, revoked)| !revoked && k.tenant_id == tenant).map(|(k, _)| k.clone()).collect();
        live.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.key_id.cmp(&b.key_id)));
        Ok(live)
    }

    async fn live_key(&self, key_id: &str) -> Result<Option<KeyRow>> {
        Ok(self.inner.lock().unwrap().keys.get(key_id).filter(|(_, revoked)| !revoked).map(|(k, _)| k.clone()))
    }

    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRow>> {
        Ok(self.inner.lock().unwrap().tenants.get(tenant).cloned())
    }

    async fn tenant_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self.inner.lock().unwrap().tenants.keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    async fn has_tenants(&self) -> Result<bool> {
        Ok(!self.inner.lock().unwrap().tenants.is_empty())
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn idempotent_reply(&self, tenant: &str, key: &str) -> Result<Option<IdempotentReply>> {
        Ok(self.inner.lock().unwrap().replies.get(&(tenant.to_string(), key.to_string())).map(|(r, _)| r.clone()))
    }

    async fn remember_reply(&self, tenant: &str, key: &str, reply: &IdempotentReply, now_ms: i64) -> Result<bool> {
        match self.inner.lock().unwrap().replies.entry((tenant.to_string(), key.to_string())) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert((reply.clone(), now_ms));
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl SettingStore for MemoryStore {
    async fn setting(&self, tenant: &str, key: &str) -> Result<Option<String>> {
        Ok(self.inner.lock().unwrap().settings.get(&(tenant.to_string(), key.to_string())).cloned())
    }

    async fn put_setting(&self, tenant: &str, key: &str, value: &str) -> Result<()> {
        self.inner.lock().unwrap().settings.insert((tenant.to_string(), key.to_string()), value.to_string());
        Ok(())
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn audit(&self, tenant: &str, actor: &str, action: &str, detail: &Value) -> Result<()> {
        self.inner.lock().unwrap().record_audit(tenant, actor, action, detail);
        Ok(())
    }

    async fn audit_log(&self, tenant: &str, limit: i64) -> Result<Vec<(i64, String, String, Value)>> {
        let s = self.inner.lock().unwrap();
        let entries = s.audit.iter().rev().filter(|e| e.0 == tenant).take(limit.max(0) as usize);
        Ok(entries.map(|(_, at, actor, action, detail)| (*at, actor.clone(), action.clone(), detail.clone())).collect())
    }
}

#[async_trait]
impl Retention for MemoryStore {
    async fn purge_ended(&self, tenant: &str, kind: &str, states: &[&str], before_ms: i64, limit: i64) -> Result<u64> {
        let mut s = self.inner.lock().unwrap();
        let doomed: Vec<String> = s
            .txs
            .values()
            .map(|(r, _)| r)
            .filter(|r| r.tenant == tenant && r.kind == kind && states.contains(&r.state.as_str()) && r.updated_at_ms < before_ms)
            .map(|r| r.id.clone())
            .take(limit.max(0) as usize)
            .collect();
        for id in &doomed {
            s.txs.remove(id);
            s.journal.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn purge_replies(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64> {
        let mut s = self.inner.lock().unwrap();
        let doomed: Vec<(String, String)> =
            s.replies.iter().filter(|((t, _), (_, at))| t == tenant && *at < before_ms).map(|(k, _)| k.clone()).take(limit.max(0) as usize).collect();
        for key in &doomed {
            s.replies.remove(key);
        }
        Ok(doomed.len() as u64)
    }

    async fn purge_audit(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64> {
        let mut s = self.inner.lock().unwrap();
        let mut left = limit.max(0);
        let before = s.audit.len();
        s.audit.retain(|(t, at, ..)| {
            let purge = t == tenant && *at < before_ms && left > 0;
            left -= purge as i64;
            !purge
        });
        Ok((before - s.audit.len()) as u64)
    }
}

#[async_trait]
impl Inspect for MemoryStore {
    async fn state_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let s = self.inner.lock().unwrap();
        let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for (r, _) in s.txs.values() {
            *counts.entry((r.kind.clone(), r.state.clone())).or_default() += 1;
        }
        Ok(counts.into_iter().map(|((k, st), n)| (k, st, n)).collect())
    }

    async fn states_of_kind(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let s = self.inner.lock().unwrap();
        Ok(s.txs.values().filter(|(r, _)| r.kind == kind).map(|(r, _)| (r.id.clone(), r.state.clone())).collect())
    }

    async fn journal_events(&self, kind: &str, event: &str) -> Result<Vec<(String, i64, NewEvent)>> {
        let s = self.inner.lock().unwrap();
        let mut found = Vec::new();
        for (id, entries) in &s.journal {
            if s.txs.get(id).is_none_or(|(r, _)| r.kind != kind) {
                continue;
            }
            for (_, at, events) in entries {
                found.extend(events.iter().filter(|e| e.kind == event).map(|e| (id.clone(), *at, e.clone())));
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Backend for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
