//! Test support: paths of the plugins built by `build.rs`, and helpers that let end-to-end
//! tests read like protocol traces.

use std::path::Path;

/// Paths of the built plugin components.
pub mod plugins {
    pub const PAYMENT: &str = env!("WASMTX_PLUGIN_PAYMENT");
    pub const INVENTORY: &str = env!("WASMTX_PLUGIN_INVENTORY");
    pub const SHIPPING: &str = env!("WASMTX_PLUGIN_SHIPPING");
    pub const NOTIFICATION: &str = env!("WASMTX_PLUGIN_NOTIFICATION");
    pub const LEDGER: &str = env!("WASMTX_PLUGIN_LEDGER");
    pub const SCRIPTED: &str = env!("WASMTX_PLUGIN_SCRIPTED");
    pub const ALWAYS_SAGA: &str = env!("WASMTX_PLUGIN_ALWAYS_SAGA");
    pub const COST_AWARE: &str = env!("WASMTX_PLUGIN_COST_AWARE");
    pub const SCRIPTED_POLICY: &str = env!("WASMTX_PLUGIN_SCRIPTED_POLICY");
    /// Built against a stale copy of the WIT (`call-context` without `deadline-ms`).
    pub const DRIFTED_CONTRACT: &str = env!("WASMTX_PLUGIN_DRIFTED_CONTRACT");
    /// `plugins/python/inventory`, built with componentize-py (world `step-plugin`).
    pub const PYTHON_INVENTORY: &str = env!("WASMTX_PLUGIN_PYTHON_INVENTORY");
    /// `plugins/js/fraud-check`, built with componentize-js (world `participant-plugin`).
    pub const JS_FRAUD_CHECK: &str = env!("WASMTX_PLUGIN_JS_FRAUD_CHECK");
}

/// Where the tests' hosts cache compiled components (digest + engine keyed, like production):
/// the large Python and JavaScript components are compiled once, not by every test.
pub fn compiled_cache_dir() -> std::path::PathBuf {
    env!("WASMTX_TEST_COMPILED_CACHE").into()
}

/// The bytes of a built plugin.
pub fn plugin_bytes(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(path)).unwrap_or_else(|e| panic!("reading plugin {path}: {e}"))
}
