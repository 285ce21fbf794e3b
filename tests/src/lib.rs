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
}

/// The bytes of a built plugin.
pub fn plugin_bytes(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(path)).unwrap_or_else(|e| panic!("reading plugin {path}: {e}"))
}
