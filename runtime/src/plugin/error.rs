//! Typed errors of the Wasm host: why a component was refused, and why a call ended badly.

use std::time::Duration;

/// Why a component was refused at load time.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the component is empty (0 bytes)")]
    Empty,
    #[error("component is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly binary (no `\\0asm` header)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build for wasm32-wasip2 or run `wasm-tools component new`"
    )]
    CoreModule,
    #[error("the component does not compile: {0}")]
    Invalid(String),
    #[error(
        "the component implements wasmtx:plugin@{found}, but this runtime speaks wasmtx:plugin@{expected} (exports: {exports})"
    )]
    WrongContractVersion { found: String, expected: &'static str, exports: String },
    #[error(
        "the component exports none of the roles step, participant, policy of wasmtx:plugin@0.1.0 (it exports: {exports})"
    )]
    NoRole { exports: String },
    #[error("the component's `{role}` export does not match the contract: {reason}")]
    BadExport { role: &'static str, reason: String },
    #[error("the component imports something the sandbox does not provide: {0}")]
    UnsupportedImport(String),
    #[error("invalid plugin name {0:?}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    BadName(String),
}

/// Why a plugin call did not produce an answer. Each ends only the call that hit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the plugin did not answer within {after:?}")]
    Timeout { after: Duration },
    #[error("the plugin exceeded its memory cap of {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: usize },
    #[error("the plugin ran out of fuel")]
    FuelExhausted,
    #[error("the plugin trapped: {message}")]
    Trap { message: String },
    #[error("the plugin does not export `{role}`")]
    MissingRole { role: &'static str },
    #[error("the plugin could not be instantiated: {0}")]
    Instantiate(String),
}

/// Why a plugin reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no plugin named {0:?}")]
    UnknownPlugin(String),
    #[error("plugin {name:?} has no version {version}")]
    UnknownVersion { name: String, version: u32 },
    #[error("invalid plugin reference {0:?}: expected `name` or `name@version`")]
    BadReference(String),
}
