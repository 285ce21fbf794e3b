//! Host-side bindings of the `wasmtx:plugin@0.1.0` contract, generated from `wit/`.

pub(crate) mod service {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "service-plugin",
        exports: { default: async },
    });
}

pub(crate) mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy-plugin",
        exports: { default: async },
        with: {
            "wasmtx:plugin/host": super::service::wasmtx::plugin::host,
        },
    });
}

pub(crate) use policy::exports::wasmtx::plugin::policy as wit_policy;
pub(crate) use service::exports::wasmtx::plugin::{participant as wit_participant, step as wit_step};
pub(crate) use service::wasmtx::plugin::{host as wit_host, types as wit_types};

/// The interfaces a plugin may export, by their full WIT names.
pub const STEP_EXPORT: &str = "wasmtx:plugin/step@0.1.0";
pub const PARTICIPANT_EXPORT: &str = "wasmtx:plugin/participant@0.1.0";
pub const POLICY_EXPORT: &str = "wasmtx:plugin/policy@0.1.0";
/// The package prefix every role export starts with, whatever its version.
pub const PACKAGE_PREFIX: &str = "wasmtx:plugin/";
pub const CONTRACT_VERSION: &str = "0.1.0";
