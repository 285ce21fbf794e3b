//! Plugin versions in process memory: the same numbering and content addressing as the SQL
//! store (a version per new digest of a name, numbered without gaps), for a catalog that needs
//! no database — `wasmtx bench plugin` and tests of the Wasm host. Lost when the process ends.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{PluginRow, PluginStore, Result};

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
