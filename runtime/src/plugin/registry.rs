//! What names a plugin (`name`, `name@version`, checked names) and the process's compiled
//! components by digest. The versions themselves are the catalog's (`catalog.rs`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::loader::{self, Component};

use super::{LoadError, LookupError, PluginHost};

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

/// Plugin names: 1-64 of `A-Z a-z 0-9 - _`, starting with a letter or digit (the transaction
/// nodes' `StepNode_payment_step` is one); case matters.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
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
        assert_eq!("StepNode_payment_step@2".parse::<PluginRef>().unwrap().name, "StepNode_payment_step", "capitals are allowed");
        for bad in ["", "Pay{ment}", "pay ment", "_x", "payment@", "payment@x", "@1", "-x", "a@1@2"] {
            assert!(bad.parse::<PluginRef>().is_err(), "{bad:?} should be refused");
        }
    }
}
