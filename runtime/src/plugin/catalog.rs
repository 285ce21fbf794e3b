//! Plugin versions as the whole fleet sees them: names and numbered versions live in the
//! store (so every coordinator on one database agrees), compiled components in the process's
//! `ComponentCache`, fetched from the store by digest on first use.

use std::sync::Arc;

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

#[derive(Clone)]
pub struct Catalog {
    store: Store,
    cache: ComponentCache,
}

impl Catalog {
    pub fn new(store: Store, cache: ComponentCache) -> Self {
        Catalog { store, cache }
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
        Ok(self.store.put_plugin(tenant, name, &component.digest, bytes, &exports, now_ms()).await?)
    }

    /// Resolves `name` (newest now) or `name@version` to its row and compiled component.
    pub async fn resolve(&self, tenant: &str, reference: &str) -> Result<(PluginRow, Arc<Component>), CatalogError> {
        let r: PluginRef = reference.parse()?;
        let row = self.store.plugin(tenant, &r.name, r.version.map(i64::from)).await?.ok_or_else(|| match r.version {
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
