//! `cost-aware`: two-phase commit holds locks on every participant until the decision, so it
//! is worth it only for few participants that all support it and when consistency matters.
//! Chooses 2PC when there are at most 3 participants, all support it, and consistency is not
//! eventual; rejects an empty transaction; otherwise saga.

use wasmtx_plugin_sdk::{Consistency, Decision, Pattern, Policy, Profile};

const MAX_2PC_PARTICIPANTS: usize = 3;

struct CostAware;

impl Policy for CostAware {
    fn select(profile: Profile) -> Decision {
        if profile.participants.is_empty() {
            return Decision::Reject("a transaction needs at least one participant".into());
        }
        let all_2pc = profile.participants.iter().all(|p| p.supports_two_phase_commit);
        if all_2pc
            && profile.participants.len() <= MAX_2PC_PARTICIPANTS
            && profile.consistency != Consistency::Eventual
        {
            Decision::Choose(Pattern::TwoPhaseCommit)
        } else {
            Decision::Choose(Pattern::Saga)
        }
    }
}

wasmtx_plugin_sdk::policy_plugin!(CostAware);
