//! The plugin registry: names and numbered versions live in a `PluginStore` — the store, so
//! every coordinator on one database agrees, or memory (`Catalog::in_memory`) where no
//! database is wanted — compiled components in the process's `ComponentCache`, fetched from the
//! store by digest on first use. Content-addressed: identical bytes are one version of a name
//! and one compiled component however many names point at them; a new version is an atomic
//! swap for new lookups, and a caller holding an older version keeps it.
//!
//! Lookups are cached: `name@version` forever (a version never changes), `name` — the newest
//! version — for `LATEST_TTL`. A publish through this catalog takes effect here at once; one
//! made on another coordinator of the fleet within `LATEST_TTL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Component, ComponentCache, LoadError, LookupError, PluginHost, PluginRef, valid_name};
use crate::store::{PluginRow, PluginStore, Store, StoreError, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the bytes of component {0} are missing from the store")]
    MissingBytes(String),
}

/// How long "the newest version of `name`" is answered from memory.
pub const LATEST_TTL: Duration = Duration::from_secs(1);

/// (tenant, name, version or `None` for the newest) → the row, and when it was read.
type Rows = HashMap<(String, String, Option<i64>), (PluginRow, Instant)>;

#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn PluginStore>,
    cache: ComponentCache,
    rows: Arc<Mutex<Rows>>,
}

/// Remembers `row` as its name's newest version (and as itself) — unless a newer one is
/// remembered: a lookup that read the store before a publish answers after it, and must not
/// hide the published version for `LATEST_TTL`.
fn remember_newest(rows: &mut Rows, tenant: &str, row: &PluginRow) {
    let now = Instant::now();
    let newest = (tenant.to_string(), row.name.clone(), None);
    let newer_known = rows.get(&newest).is_some_and(|(known, at)| known.version > row.version && at.elapsed() < LATEST_TTL);
    if !newer_known {
        rows.insert(newest, (row.clone(), now));
    }
    rows.insert((tenant.to_string(), row.name.clone(), Some(row.version)), (row.clone(), now));
}

/// One version of a named plugin, with its compiled component.
#[derive(Debug, Clone)]
pub struct PluginVersion {
    pub name: String,
    pub version: i64,
    pub digest: String,
    pub exports: Vec<String>,
    pub created_at_ms: i64,
    pub component: Arc<Component>,
}

impl PluginVersion {
    fn of(row: PluginRow, component: Arc<Component>) -> Self {
        PluginVersion { name: row.name, version: row.version, digest: row.digest, exports: row.exports, created_at_ms: row.created_at_ms, component }
    }
}

impl Catalog {
    pub fn new(store: Store, cache: ComponentCache) -> Self {
        Catalog { store: store.plugins(), cache, rows: Arc::default() }
    }

    /// A catalog whose versions live in this process only (benchmarks, tests of the host).
    pub fn in_memory(host: PluginHost) -> Self {
        let store: Arc<dyn PluginStore> = Arc::new(crate::store::memory::MemoryPlugins::default());
        Catalog { store, cache: ComponentCache::new(host), rows: Arc::default() }
    }

    pub fn host(&self) -> &PluginHost {
        self.cache.host()
    }

    /// `publish`, answering the version with its compiled component.
    pub async fn add(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(PluginVersion, bool), CatalogError> {
        let (row, created, component) = self.publish_compiled(tenant, name, bytes).await?;
        Ok((PluginVersion::of(row, component), created))
    }

    /// `resolve`, as one version with its compiled component.
    pub async fn version(&self, tenant: &str, reference: &str) -> Result<PluginVersion, CatalogError> {
        let (row, component) = self.resolve(tenant, reference).await?;
        Ok(PluginVersion::of(row, component))
    }

    /// Every version of `name`, oldest first.
    pub async fn versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginRow>, CatalogError> {
        Ok(self.store.plugin_versions(tenant, name).await?)
    }

    /// The newest version of each of `tenant`'s plugins, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<PluginRow>, CatalogError> {
        Ok(self.store.latest_plugins(tenant).await?)
    }

    pub fn cache(&self) -> &ComponentCache {
        &self.cache
    }

    /// Validates `bytes` and records them as the next version of `name` (or returns the
    /// version that already has these bytes, with `false`).
    pub async fn publish(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(PluginRow, bool), CatalogError> {
        let (row, created, _) = self.publish_compiled(tenant, name, bytes).await?;
        Ok((row, created))
    }

    async fn publish_compiled(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(PluginRow, bool, Arc<Component>), CatalogError> {
        if !valid_name(name) {
            return Err(LoadError::BadName(name.to_string()).into());
        }
        let component = self.cache.load(bytes).await?;
        let exports = component.export_names();
        let (row, created) = self.store.put_plugin(tenant, name, &component.digest, bytes, &exports, now_ms()).await?;
        if created {
            remember_newest(&mut self.rows.lock().unwrap(), tenant, &row);
        }
        Ok((row, created, component))
    }

    /// The stored row of `name` (newest) or `name@version`, from memory when it may be.
    async fn row(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<PluginRow>, StoreError> {
        let key = (tenant.to_string(), name.to_string(), version);
        if let Some((row, read_at)) = self.rows.lock().unwrap().get(&key)
            && (version.is_some() || read_at.elapsed() < LATEST_TTL)
        {
            return Ok(Some(row.clone()));
        }
        let row = self.store.plugin(tenant, name, version).await?;
        if let Some(row) = &row {
            let mut rows = self.rows.lock().unwrap();
            match version {
                Some(_) => {
                    rows.insert(key, (row.clone(), Instant::now()));
                }
                None => remember_newest(&mut rows, tenant, row),
            }
        }
        Ok(row)
    }

    /// Resolves `name` (newest now) or `name@version` to its row and compiled component.
    pub async fn resolve(&self, tenant: &str, reference: &str) -> Result<(PluginRow, Arc<Component>), CatalogError> {
        let r: PluginRef = reference.parse()?;
        let row = self.row(tenant, &r.name, r.version.map(i64::from)).await?.ok_or_else(|| match r.version {
            Some(version) => LookupError::UnknownVersion { name: r.name.clone(), version },
            None => LookupError::UnknownPlugin(r.name.clone()),
        })?;
        if let Some(component) = self.cache.get(&row.digest) {
            return Ok((row, component));
        }
        let bytes = self
            .store
            .component_bytes(&row.digest)
            .await?
            .ok_or_else(|| CatalogError::MissingBytes(row.digest.clone()))?;
        let component = self.cache.load(&bytes).await?;
        Ok((row, component))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64) -> PluginRow {
        PluginRow { tenant: "t".into(), name: "x".into(), version, digest: format!("d{version}"), exports: vec![], created_at_ms: 0 }
    }

    fn newest(rows: &Rows) -> i64 {
        rows[&("t".to_string(), "x".to_string(), None)].0.version
    }

    #[test]
    fn a_lookup_answering_after_a_publish_does_not_hide_the_published_version() {
        let mut rows = Rows::new();
        remember_newest(&mut rows, "t", &row(1));
        remember_newest(&mut rows, "t", &row(2));
        // A lookup that read the store before version 2 was published.
        remember_newest(&mut rows, "t", &row(1));
        assert_eq!(newest(&rows), 2);
        assert!(rows.contains_key(&("t".to_string(), "x".to_string(), Some(1))));
        remember_newest(&mut rows, "t", &row(3));
        assert_eq!(newest(&rows), 3);
    }
}
