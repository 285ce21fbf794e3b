//! Where everything lives in Redis: the key of each thing, and the bucket of each transaction.
//!
//! In a Redis Cluster a script may touch only keys of one slot, and a key's slot is that of
//! its hash tag (the part in braces). So:
//! - every key of one transaction (its row and its journal) shares the tag `{P:tx:ID}`;
//! - indexes that span transactions are split into [`BUCKETS`] buckets by transaction id,
//!   and every index key of one bucket shares the tag `{P:ix:B}`; claims and lists visit every
//!   bucket;
//! - a plugin's versions share `{P:plugin:TENANT:NAME}`, tenants and keys share
//!   `{P:tenants}`, a tenant's idempotency replies share `{P:reply:TENANT}`.
//!
//! `P` is the key prefix (`?prefix=` in the URL, default `wasmtx`), so several stores can share
//! one Redis.

/// Index buckets. Fixed for the life of a store (recorded under the meta key at first open):
/// changing it would lose track of indexed transactions.
pub const BUCKETS: u32 = 16;

#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    /// A transaction's row: a hash of its columns.
    pub fn tx(&self, id: &str) -> String {
        format!("{{{}:tx:{id}}}", self.prefix)
    }

    /// A transaction's journal: a list of entries, one per write, oldest first.
    pub fn journal(&self, id: &str) -> String {
        format!("{{{}:tx:{id}}}:journal", self.prefix)
    }

    /// The bucket of a transaction (FNV-1a of its id).
    pub fn bucket(id: &str) -> u32 {
        let hash = id.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        hash % BUCKETS
    }

    /// The tenants with transactions in `bucket`.
    pub fn tenants_in(&self, bucket: u32) -> String {
        format!("{{{}:ix:{bucket}}}:tenants", self.prefix)
    }

    /// A tenant's transactions of `kind` in `bucket`, scored by creation time.
    pub fn listed(&self, bucket: u32, tenant: &str, kind: &str) -> String {
        format!("{{{}:ix:{bucket}}}:list:{tenant}:{kind}", self.prefix)
    }

    /// A tenant's transactions of `kind` in `state` (not an end state) in `bucket`, scored by
    /// lease expiry (at least; see `index_add.lua`).
    pub fn in_state(&self, bucket: u32, tenant: &str, kind: &str, state: &str) -> String {
        format!("{{{}:ix:{bucket}}}:state:{tenant}:{kind}:{state}", self.prefix)
    }

    /// A plugin's versions (version → row) and digests (digest → version).
    pub fn plugin(&self, tenant: &str, name: &str) -> (String, String) {
        let tag = format!("{{{}:plugin:{tenant}:{name}}}", self.prefix);
        (format!("{tag}:versions"), format!("{tag}:digests"))
    }

    /// The names of a tenant's plugins.
    pub fn plugin_names(&self, tenant: &str) -> String {
        format!("{}:plugins:{tenant}", self.prefix)
    }

    /// Component bytes, by digest.
    pub fn component(&self, digest: &str) -> String {
        format!("{}:component:{digest}", self.prefix)
    }

    /// Tenants (id → row), keys (id → row) and revoked key ids.
    pub fn tenants(&self) -> (String, String, String) {
        let tag = format!("{{{}:tenants}}", self.prefix);
        (format!("{tag}:rows"), format!("{tag}:keys"), format!("{tag}:revoked"))
    }

    pub fn settings(&self, tenant: &str) -> String {
        format!("{}:settings:{tenant}", self.prefix)
    }

    /// A tenant's audit trail, newest first.
    pub fn audit(&self, tenant: &str) -> String {
        format!("{}:audit:{tenant}", self.prefix)
    }

    /// A remembered reply, and its tenant's register of replies (key → when remembered).
    pub fn reply(&self, tenant: &str, key: &str) -> (String, String) {
        let tag = format!("{{{}:reply:{tenant}}}", self.prefix);
        (format!("{tag}:{key}"), tag)
    }

    /// The store's own settings (its bucket count).
    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transactions_keys_share_one_hash_tag_and_buckets_spread() {
        let keys = Keys::new("p");
        assert_eq!(keys.tx("a"), "{p:tx:a}");
        assert!(keys.journal("a").starts_with("{p:tx:a}"));
        let (versions, digests) = keys.plugin("t", "n");
        assert_eq!(versions.split('}').next(), digests.split('}').next());
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            seen.insert(Keys::bucket(&format!("saga-{i}")));
        }
        assert_eq!(seen.len(), BUCKETS as usize, "200 ids reach every bucket");
        assert!(keys.listed(3, "t", "saga").starts_with("{p:ix:3}") && keys.in_state(3, "t", "saga", "running").starts_with("{p:ix:3}"));
    }
}
