//! wasmtx: a distributed-transaction coordinator whose business logic is sandboxed WebAssembly.
//!
//! The crate's public face, from the bottom up:
//! - [`model`]: the data a call carries (context, outcome, vote, selection profile).
//! - [`store`]: durable state behind traits, with SQLite / PostgreSQL in [`store::sql`].
//! - [`plugin`]: the Wasm host — load, validate, version and call plugin components under limits.
//! - [`outbound`]: the one policy for HTTP calls made on a tenant's behalf;
//!   [`participant`]: a plugin or an HTTP endpoint behind one call.
//! - [`txn`]: what every protocol shares (record, transitions, journal, leases, recovery,
//!   clock, [`txn::TxError`]).
//! - [`saga`], [`tpc`], [`manager`]: the protocols.
//! - [`api`]: the HTTP server; [`cli`]: the `wasmtx` command line.

pub mod alert;
pub mod api;
pub mod attention;
pub mod cli;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod participant;
pub mod plugin;
pub mod retention;
pub mod saga;
pub mod tpc;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod trace;
pub mod txn;

/// The tenant of single-tenant mode (no tenants configured).
pub fn api_tenant() -> &'static str {
    "default"
}
