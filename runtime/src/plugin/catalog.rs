//! Plugin versions as the whole fleet sees them: names and numbered versions live in the
//! store (so every coordinator on one database agrees), compiled components in the process's
//! `ComponentCache`, fetched from the store by digest on first use.
//!
//! Lookups are cached: `name@version` forever (a version never changes), `name` — the newest
//! version — for `LATEST_TTL`. A publish through this catalog takes effect here at once; one
//! made on another coordinator of the fleet within `LATEST_TTL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Component, ComponentCache, LoadError, LookupError, PluginRef, valid_name};
use crate::store::{PluginRow, Store, StoreError, now_ms};

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
    store: Store,
    cache: ComponentCache,
    rows: Arc<Mutex<Rows>>,
}

impl Catalog {
    pub fn new(store: Store, cache: ComponentCache) -> Self {
        Catalog { store, cache, rows: Arc::default() }
    }

    pub fn cache(&self) -> &ComponentCache {
        &self.cache
    }

    /// Validates `bytes` and records them as the next version of `name` (or returns the
    /// version that already has these bytes, with `false`).
    pub async fn publish(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(PluginRow, bool), CatalogError> {
        if !valid_name(name) {
            return Err(LoadError::BadName(name.to_string()).into());
        }
        let component = self.cache.load(bytes).await?;
        let exports = component.export_names();
        let published = self.store.put_plugin(tenant, name, &component.digest, bytes, &exports, now_ms()).await?;
        self.rows.lock().unwrap().remove(&(tenant.to_string(), name.to_string(), None));
        Ok(published)
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
            rows.insert(key, (row.clone(), Instant::now()));
            rows.insert((tenant.to_string(), name.to_string(), Some(row.version)), (row.clone(), Instant::now()));
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
