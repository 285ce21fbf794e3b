//! Write wasmtx plugins in Rust: implement a trait, call one macro, build for `wasm32-wasip2`.
//!
//! A plugin is a WebAssembly component implementing the `wasmtx:plugin@0.1.0` contract. This
//! crate hides the bindings: you implement [`Step`], [`Participant`] or [`Policy`] on plain
//! Rust types, read the call's JSON input with serde, answer with [`Outcome`] helpers, and one of
//! [`step_plugin!`], [`participant_plugin!`], [`service_plugin!`] or [`policy_plugin!`] exports it.
//!
//! ```ignore
//! // Cargo.toml: [lib] crate-type = ["cdylib"]; dependency wasmtx-plugin-sdk.
//! // Build:      cargo build --release --target wasm32-wasip2
//! use serde::Deserialize;
//! use wasmtx_plugin_sdk::{json, log, Call, LogLevel, Outcome, Step};
//!
//! #[derive(Deserialize)]
//! struct Order { order_id: String, amount: u64 }
//!
//! struct Payment;
//!
//! impl Step for Payment {
//!     fn execute(call: Call) -> Outcome {
//!         let order: Order = match call.input() {
//!             Ok(order) => order,
//!             Err(bad_input) => return bad_input,
//!         };
//!         if order.amount == 0 {
//!             return Outcome::failure("nothing to charge");
//!         }
//!         log(LogLevel::Info, &format!("charging {} for {}", order.amount, order.order_id));
//!         // The idempotency key is the same on every retry of this phase: use it as the
//!         // charge's de-duplication key in the payment system.
//!         Outcome::success(&json!({ "charge_id": call.idempotency_key, "amount": order.amount }))
//!     }
//!
//!     fn compensate(call: Call) -> Outcome {
//!         Outcome::success(&json!({ "refunded": call.idempotency_key }))
//!     }
//! }
//!
//! wasmtx_plugin_sdk::step_plugin!(Payment);
//! ```
//!
//! What a plugin can reach is only what the contract gives it: no files, no environment, no
//! sockets. Standard output and standard error, like [`log`], end up in the coordinator's log.

use serde::{Serialize, de::DeserializeOwned};

pub use serde_json::{Value, json};

include!(concat!(env!("OUT_DIR"), "/bindings_macro.rs"));

/// What the runtime tells a plugin about the call it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub tenant: String,
    pub transaction_id: String,
    /// Saga step name, or 2PC participant id.
    pub step: String,
    /// The action configured for this phase, e.g. `reserve_inventory`.
    pub action: String,
    /// 1 on the first try, +1 on every retry of the same phase.
    pub attempt: u32,
    /// Stable across retries and recovery of one (transaction, step, phase).
    pub idempotency_key: String,
    /// JSON object: context, overlaid with earlier outputs and this step's parameters.
    pub input: String,
    /// Milliseconds left before the runtime abandons this call.
    pub deadline_ms: u64,
}

impl Call {
    /// Deserialises the input. On malformed input the error is a ready [`Outcome::failure`]
    /// naming what is wrong, since retrying will not fix the caller's data.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, Outcome> {
        serde_json::from_str(&self.input)
            .map_err(|e| Outcome::failure(format!("invalid input for {}: {e}", self.action)))
    }

    /// The input as a JSON value (`null` if it is not valid JSON).
    pub fn input_json(&self) -> Value {
        serde_json::from_str(&self.input).unwrap_or(Value::Null)
    }

    /// In a compensation: whether the forward call may not have happened. The host gave up on
    /// it without a clear answer (a timeout, a lost connection, a trap, retries spent), so the
    /// compensation must tolerate a step that never ran — undo what is there, and succeed when
    /// there is nothing to undo. `false` when the step completed (or outside compensations).
    pub fn forward_outcome_unknown(&self) -> bool {
        self.input_json().get("forward_outcome").and_then(Value::as_str) == Some("unknown")
    }
}

/// What a step, compensation, commit or abort reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the payload is a JSON document recorded as the phase's output.
    Success(String),
    /// A business failure that retrying will not fix.
    Failure(String),
    /// A transient failure: the runtime retries with backoff within the retry budget.
    Retry(String),
}

impl Outcome {
    /// Success with `output` serialised as JSON.
    pub fn success(output: &impl Serialize) -> Self {
        match serde_json::to_string(output) {
            Ok(json) => Outcome::Success(json),
            Err(e) => Outcome::Failure(format!("output is not serialisable: {e}")),
        }
    }

    pub fn failure(reason: impl Into<String>) -> Self {
        Outcome::Failure(reason.into())
    }

    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry(reason.into())
    }
}

/// A two-phase-commit participant's answer to prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    Prepared,
    Abort(String),
}

/// A saga step: the action forward and its compensation backward.
pub trait Step {
    fn execute(call: Call) -> Outcome;
    fn compensate(call: Call) -> Outcome;
}

/// A two-phase-commit participant.
pub trait Participant {
    fn prepare(call: Call) -> Vote;
    fn commit(call: Call) -> Outcome;
    fn abort(call: Call) -> Outcome;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Eventual,
    Strong,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    High,
    Medium,
    Low,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Saga,
    TwoPhaseCommit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub participant_id: String,
    pub supports_two_phase_commit: bool,
    pub supports_saga: bool,
}

/// What a selection policy knows about a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub tenant: String,
    pub transaction_name: String,
    pub consistency: Consistency,
    pub availability: Availability,
    pub timeout_ms: u64,
    pub participants: Vec<Candidate>,
    /// JSON object: the transaction context.
    pub context: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Choose(Pattern),
    /// Refuse to run the transaction; the reason is reported to the caller.
    Reject(String),
}

/// A transaction-pattern selection policy.
pub trait Policy {
    fn select(profile: Profile) -> Decision;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Writes to the coordinator's log, tagged with tenant, transaction and step.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        // Every world of the contract imports `host`; this is its canonical-ABI lowering
        // (enum discriminant, string pointer, string length).
        #[link(wasm_import_module = "wasmtx:plugin/host@0.1.0")]
        unsafe extern "C" {
            #[link_name = "log"]
            fn host_log(level: i32, ptr: *const u8, len: usize);
        }
        unsafe { host_log(level as i32, message.as_ptr(), message.len()) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Exports `$ty: Step` as a component of world `step-plugin`.
#[macro_export]
macro_rules! step_plugin {
    ($ty:ty) => {
        $crate::__wasmtx_bindings!("step-plugin");
        $crate::__wasmtx_step_adapter!($ty);
        export!(__WasmtxPlugin);
    };
}

/// Exports `$ty: Participant` as a component of world `participant-plugin`.
#[macro_export]
macro_rules! participant_plugin {
    ($ty:ty) => {
        $crate::__wasmtx_bindings!("participant-plugin");
        $crate::__wasmtx_participant_adapter!($ty);
        export!(__WasmtxPlugin);
    };
}

/// Exports `$ty: Step + Participant` as a component of world `service-plugin`.
#[macro_export]
macro_rules! service_plugin {
    ($ty:ty) => {
        $crate::__wasmtx_bindings!("service-plugin");
        $crate::__wasmtx_step_adapter!($ty);
        $crate::__wasmtx_participant_adapter!(@impl $ty);
        export!(__WasmtxPlugin);
    };
}

/// Exports `$ty: Policy` as a component of world `policy-plugin`.
#[macro_export]
macro_rules! policy_plugin {
    ($ty:ty) => {
        $crate::__wasmtx_bindings!("policy-plugin");
        struct __WasmtxPlugin;
        impl exports::wasmtx::plugin::policy::Guest for __WasmtxPlugin {
            fn select(
                p: exports::wasmtx::plugin::policy::Profile,
            ) -> exports::wasmtx::plugin::policy::Decision {
                use exports::wasmtx::plugin::policy as wit;
                let profile = $crate::Profile {
                    tenant: p.tenant,
                    transaction_name: p.transaction_name,
                    consistency: match p.consistency {
                        wit::Consistency::Eventual => $crate::Consistency::Eventual,
                        wit::Consistency::Strong => $crate::Consistency::Strong,
                        wit::Consistency::Immediate => $crate::Consistency::Immediate,
                    },
                    availability: match p.availability {
                        wit::Availability::High => $crate::Availability::High,
                        wit::Availability::Medium => $crate::Availability::Medium,
                        wit::Availability::Low => $crate::Availability::Low,
                    },
                    timeout_ms: p.timeout_ms,
                    participants: p
                        .participants
                        .into_iter()
                        .map(|c| $crate::Candidate {
                            participant_id: c.participant_id,
                            supports_two_phase_commit: c.supports_two_phase_commit,
                            supports_saga: c.supports_saga,
                        })
                        .collect(),
                    context: p.context,
                };
                match <$ty as $crate::Policy>::select(profile) {
                    $crate::Decision::Choose($crate::Pattern::Saga) => {
                        wit::Decision::Choose(wit::Pattern::Saga)
                    }
                    $crate::Decision::Choose($crate::Pattern::TwoPhaseCommit) => {
                        wit::Decision::Choose(wit::Pattern::TwoPhaseCommit)
                    }
                    $crate::Decision::Reject(reason) => wit::Decision::Reject(reason),
                }
            }
        }
        export!(__WasmtxPlugin);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmtx_call_conversions {
    () => {
        fn __wasmtx_call(c: wasmtx::plugin::types::CallContext) -> $crate::Call {
            $crate::Call {
                tenant: c.tenant,
                transaction_id: c.transaction_id,
                step: c.step,
                action: c.action,
                attempt: c.attempt,
                idempotency_key: c.idempotency_key,
                input: c.input,
                deadline_ms: c.deadline_ms,
            }
        }
        fn __wasmtx_outcome(o: $crate::Outcome) -> wasmtx::plugin::types::Outcome {
            match o {
                $crate::Outcome::Success(s) => wasmtx::plugin::types::Outcome::Success(s),
                $crate::Outcome::Failure(s) => wasmtx::plugin::types::Outcome::Failure(s),
                $crate::Outcome::Retry(s) => wasmtx::plugin::types::Outcome::Retry(s),
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmtx_step_adapter {
    ($ty:ty) => {
        struct __WasmtxPlugin;
        $crate::__wasmtx_call_conversions!();
        impl exports::wasmtx::plugin::step::Guest for __WasmtxPlugin {
            fn execute(
                ctx: wasmtx::plugin::types::CallContext,
            ) -> wasmtx::plugin::types::Outcome {
                __wasmtx_outcome(<$ty as $crate::Step>::execute(__wasmtx_call(ctx)))
            }
            fn compensate(
                ctx: wasmtx::plugin::types::CallContext,
            ) -> wasmtx::plugin::types::Outcome {
                __wasmtx_outcome(<$ty as $crate::Step>::compensate(__wasmtx_call(ctx)))
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmtx_participant_adapter {
    ($ty:ty) => {
        struct __WasmtxPlugin;
        $crate::__wasmtx_call_conversions!();
        $crate::__wasmtx_participant_adapter!(@impl $ty);
    };
    (@impl $ty:ty) => {
        impl exports::wasmtx::plugin::participant::Guest for __WasmtxPlugin {
            fn prepare(ctx: wasmtx::plugin::types::CallContext) -> wasmtx::plugin::types::Vote {
                match <$ty as $crate::Participant>::prepare(__wasmtx_call(ctx)) {
                    $crate::Vote::Prepared => wasmtx::plugin::types::Vote::Prepared,
                    $crate::Vote::Abort(reason) => wasmtx::plugin::types::Vote::Abort(reason),
                }
            }
            fn commit(
                ctx: wasmtx::plugin::types::CallContext,
            ) -> wasmtx::plugin::types::Outcome {
                __wasmtx_outcome(<$ty as $crate::Participant>::commit(__wasmtx_call(ctx)))
            }
            fn abort(
                ctx: wasmtx::plugin::types::CallContext,
            ) -> wasmtx::plugin::types::Outcome {
                __wasmtx_outcome(<$ty as $crate::Participant>::abort(__wasmtx_call(ctx)))
            }
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}
