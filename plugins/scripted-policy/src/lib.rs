//! `scripted-policy`: a test policy whose answer comes from the transaction context's
//! `policy_script`: `saga`, `2pc` (chosen whatever the participants can do), `reject`,
//! `trap`, `spin`. Anything else: saga.

use wasmtx_plugin_sdk::{Decision, Pattern, Policy, Profile};

struct ScriptedPolicy;

impl Policy for ScriptedPolicy {
    fn select(profile: Profile) -> Decision {
        let context: serde_json::Value = serde_json::from_str(&profile.context).unwrap_or_default();
        match context.get("policy_script").and_then(|s| s.as_str()).unwrap_or("saga") {
            "2pc" => Decision::Choose(Pattern::TwoPhaseCommit),
            "reject" => Decision::Reject("scripted policy refuses".into()),
            "trap" => panic!("scripted policy trap"),
            "spin" => loop {
                std::hint::black_box(());
            },
            _ => Decision::Choose(Pattern::Saga),
        }
    }
}

wasmtx_plugin_sdk::policy_plugin!(ScriptedPolicy);
