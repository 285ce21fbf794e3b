//! Named, numbered versions of components, per tenant. Components are content-addressed:
//! identical bytes are one compiled component however many names point at them. Adding a
//! version is an atomic swap for new lookups; a caller holding an older version keeps it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::loader::{self, Component, digest_of};

use super::{LoadError, LookupError, PluginHost};

/// One version of a named plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginVersion {
    pub name: String,
    pub version: u32,
    pub digest: String,
    pub exports: Vec<&'static str>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub component: Arc<Component>,
}

/// `name` (the newest version) or `name@version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    pub version: Option<u32>,
}

impl std::str::FromStr for PluginRef {
    type Err = LookupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LookupError::BadReference(s.to_string());
        let (name, version) = match s.split_once('@') {
            Some((name, v)) => (name, Some(v.parse::<u32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        if !valid_name(name) {
            return Err(bad());
        }
        Ok(PluginRef { name: name.to_string(), version })
    }
}

/// Plugin names: 1-64 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

type Key = (String, String);

/// The in-process registry: what names and versions exist, and their compiled components.
#[derive(Clone)]
pub struct Registry {
    cache: ComponentCache,
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    versions: HashMap<Key, Vec<Arc<PluginVersion>>>,
}

/// Compiled components by digest, shared by everything that resolves plugins in a process:
/// identical bytes are compiled once however many names and tenants point at them.
#[derive(Clone)]
pub struct ComponentCache {
    host: PluginHost,
    by_digest: Arc<RwLock<HashMap<String, Arc<Component>>>>,
}

impl ComponentCache {
    pub fn new(host: PluginHost) -> Self {
        ComponentCache { host, by_digest: Arc::default() }
    }

    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    pub fn get(&self, digest: &str) -> Option<Arc<Component>> {
        self.by_digest.read().unwrap().get(digest).cloned()
    }

    /// The compiled component for `bytes`, validating and compiling them on first sight.
    pub async fn load(&self, bytes: &[u8]) -> Result<Arc<Component>, LoadError> {
        let digest = loader::digest_off_thread(bytes).await;
        if let Some(c) = self.get(&digest) {
            return Ok(c);
        }
        let component = loader::load(&self.host, bytes).await?;
        Ok(self.by_digest.write().unwrap().entry(digest).or_insert(component).clone())
    }
}

impl Registry {
    pub fn new(host: PluginHost) -> Self {
        Registry { cache: ComponentCache::new(host), inner: Arc::default() }
    }

    pub fn host(&self) -> &PluginHost {
        self.cache.host()
    }

    /// Validates `bytes` and makes them the newest version of `name`. Identical bytes already
    /// registered under `name` return that version and `false`.
    pub async fn add(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(Arc<PluginVersion>, bool), LoadError> {
        self.add_at(tenant, name, bytes, Utc::now()).await
    }

    /// As [`Registry::add`], with the creation time given (e.g. when reloading from a store).
    pub async fn add_at(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
        created_at: DateTime<Utc>,
    ) -> Result<(Arc<PluginVersion>, bool), LoadError> {
        if !valid_name(name) {
            return Err(LoadError::BadName(name.to_string()));
        }
        let digest = digest_of(bytes);
        let key = (tenant.to_string(), name.to_string());
        if let Some(existing) = self.find_digest(&key, &digest) {
            return Ok((existing, false));
        }
        let component = self.cache.load(bytes).await?;

        let mut inner = self.inner.write().unwrap();
        let versions = inner.versions.entry(key).or_default();
        // Another caller may have added the same bytes while this one compiled.
        if let Some(existing) = versions.iter().find(|v| v.digest == digest) {
            return Ok((existing.clone(), false));
        }
        let version = Arc::new(PluginVersion {
            name: name.to_string(),
            version: versions.last().map_or(1, |v| v.version + 1),
            digest,
            exports: component.export_names(),
            created_at,
            component,
        });
        versions.push(version.clone());
        Ok((version, true))
    }

    fn find_digest(&self, key: &Key, digest: &str) -> Option<Arc<PluginVersion>> {
        let inner = self.inner.read().unwrap();
        inner.versions.get(key)?.iter().find(|v| v.digest == digest).cloned()
    }

    /// Resolves `name` (newest) or `name@version` for `tenant`.
    pub fn resolve(&self, tenant: &str, reference: &str) -> Result<Arc<PluginVersion>, LookupError> {
        let r: PluginRef = reference.parse()?;
        let inner = self.inner.read().unwrap();
        let versions = inner
            .versions
            .get(&(tenant.to_string(), r.name.clone()))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| LookupError::UnknownPlugin(r.name.clone()))?;
        match r.version {
            None => Ok(versions.last().unwrap().clone()),
            Some(n) => versions
                .iter()
                .find(|v| v.version == n)
                .cloned()
                .ok_or(LookupError::UnknownVersion { name: r.name, version: n }),
        }
    }

    /// Every version of `name`, oldest first.
    pub fn versions(&self, tenant: &str, name: &str) -> Vec<Arc<PluginVersion>> {
        let inner = self.inner.read().unwrap();
        inner.versions.get(&(tenant.to_string(), name.to_string())).cloned().unwrap_or_default()
    }

    /// The newest version of each plugin of `tenant`, by name.
    pub fn list(&self, tenant: &str) -> Vec<Arc<PluginVersion>> {
        let inner = self.inner.read().unwrap();
        let mut latest: Vec<_> = inner
            .versions
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .filter_map(|(_, v)| v.last().cloned())
            .collect();
        latest.sort_by(|a, b| a.name.cmp(&b.name));
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            "payment".parse::<PluginRef>().unwrap(),
            PluginRef { name: "payment".into(), version: None }
        );
        assert_eq!(
            "payment@3".parse::<PluginRef>().unwrap(),
            PluginRef { name: "payment".into(), version: Some(3) }
        );
        for bad in ["", "Payment", "pay ment", "payment@", "payment@x", "@1", "-x", "a@1@2"] {
            assert!(bad.parse::<PluginRef>().is_err(), "{bad:?} should be refused");
        }
    }
}
