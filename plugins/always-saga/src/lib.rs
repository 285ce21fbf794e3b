//! `always-saga`: a selection policy that always chooses the saga pattern.

use wasmtx_plugin_sdk::{Decision, Pattern, Policy, Profile};

struct AlwaysSaga;

impl Policy for AlwaysSaga {
    fn select(_profile: Profile) -> Decision {
        Decision::Choose(Pattern::Saga)
    }
}

wasmtx_plugin_sdk::policy_plugin!(AlwaysSaga);
