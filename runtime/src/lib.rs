//! wasmtx: a distributed-transaction coordinator whose business logic is sandboxed WebAssembly.
//!
//! The crate's public face:
//! - [`plugin`]: the Wasm host — load, validate, version and call plugin components under limits.
//! - [`model`]: the data a call carries (context, outcome, vote, selection profile).
//! - [`saga`]: the durable saga engine; [`participant`]: plugin or HTTP endpoint behind one call.
//! - [`store`]: SQLite / PostgreSQL persistence; [`api`]: the HTTP server.
//! - [`cli`]: the `wasmtx` command line.

pub mod api;
pub mod cli;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod participant;
pub mod plugin;
pub mod saga;
pub mod tpc;
pub mod store;
pub mod text;
pub mod txn;

/// The tenant of single-tenant mode (no tenants configured).
pub fn api_tenant() -> &'static str {
    "default"
}
