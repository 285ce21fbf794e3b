//! wasmtx: a distributed-transaction coordinator whose business logic is sandboxed WebAssembly.
//!
//! The crate's public face:
//! - [`plugin`]: the Wasm host — load, validate, version and call plugin components under limits.
//! - [`model`]: the data a call carries (context, outcome, vote, selection profile).
//! - [`cli`]: the `wasmtx` command line.

pub mod cli;
pub mod model;
pub mod plugin;
