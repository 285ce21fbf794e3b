//! Pattern selection by the built-in rules (DESIGN.md, "Managed transactions"), as a pure
//! function over requirements and capabilities.

use crate::model::{Availability, Consistency, Pattern};

/// What one participant can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub participant_id: String,
    pub two_phase_commit: bool,
    pub saga: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Choose(Pattern, &'static str),
    Reject(String),
}

/// The built-in rules, in order:
/// 1. consistency `immediate` → 2PC if every participant supports it, else rejected naming
///    those that do not;
/// 2. consistency `strong`, every participant supports 2PC, availability not `high` → 2PC;
/// 3. otherwise → saga.
pub fn builtin(consistency: Consistency, availability: Availability, caps: &[Capability]) -> Selection {
    let lacking_2pc: Vec<&str> = caps.iter().filter(|c| !c.two_phase_commit).map(|c| c.participant_id.as_str()).collect();
    match consistency {
        Consistency::Immediate if lacking_2pc.is_empty() && !caps.is_empty() => {
            Selection::Choose(Pattern::TwoPhaseCommit, "immediate consistency: every participant supports 2PC")
        }
        Consistency::Immediate if caps.is_empty() => {
            Selection::Reject("immediate consistency needs two-phase commit, and the transaction has no participants".into())
        }
        Consistency::Immediate => Selection::Reject(format!(
            "immediate consistency needs two-phase commit, which these participants do not support: {}",
            lacking_2pc.join(", ")
        )),
        Consistency::Strong if lacking_2pc.is_empty() && !caps.is_empty() && availability != Availability::High => {
            Selection::Choose(Pattern::TwoPhaseCommit, "strong consistency, all participants support 2PC, availability not high")
        }
        _ => Selection::Choose(Pattern::Saga, "saga: eventual consistency, high availability or mixed capabilities"),
    }
}

/// The participants that cannot take part in `pattern`.
pub fn incapable(pattern: Pattern, caps: &[Capability]) -> Vec<String> {
    caps.iter()
        .filter(|c| match pattern {
            Pattern::Saga => !c.saga,
            Pattern::TwoPhaseCommit => !c.two_phase_commit,
        })
        .map(|c| c.participant_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Availability::*;
    use Consistency::*;

    fn cap(id: &str, tpc: bool, saga: bool) -> Capability {
        Capability { participant_id: id.into(), two_phase_commit: tpc, saga }
    }

    fn pattern(s: Selection) -> Option<Pattern> {
        match s {
            Selection::Choose(p, _) => Some(p),
            Selection::Reject(_) => None,
        }
    }

    #[test]
    fn every_requirement_combination_against_every_capability_mix() {
        let all_2pc = vec![cap("a", true, true), cap("b", true, false)];
        let mixed = vec![cap("a", true, true), cap("legacy", false, true)];
        let none_2pc = vec![cap("a", false, true), cap("b", false, true)];
        let empty: Vec<Capability> = vec![];
        use Pattern::{Saga, TwoPhaseCommit as Tpc};
        // (consistency, availability, participants, expected; None = rejected)
        let table: Vec<(Consistency, Availability, &Vec<Capability>, Option<Pattern>)> = vec![
            (Immediate, High, &all_2pc, Some(Tpc)),
            (Immediate, Medium, &all_2pc, Some(Tpc)),
            (Immediate, Low, &all_2pc, Some(Tpc)),
            (Immediate, High, &mixed, None),
            (Immediate, Low, &none_2pc, None),
            (Immediate, Low, &empty, None),
            (Strong, High, &all_2pc, Some(Saga)),
            (Strong, Medium, &all_2pc, Some(Tpc)),
            (Strong, Low, &all_2pc, Some(Tpc)),
            (Strong, Low, &mixed, Some(Saga)),
            (Strong, Medium, &none_2pc, Some(Saga)),
            (Strong, Low, &empty, Some(Saga)),
            (Eventual, High, &all_2pc, Some(Saga)),
            (Eventual, Low, &all_2pc, Some(Saga)),
            (Eventual, Medium, &mixed, Some(Saga)),
            (Eventual, High, &none_2pc, Some(Saga)),
            (Eventual, High, &empty, Some(Saga)),
        ];
        for (c, a, caps, expected) in table {
            assert_eq!(pattern(builtin(c, a, caps)), expected, "{c:?} {a:?} {caps:?}");
        }
    }

    #[test]
    fn rejections_name_the_participants_without_2pc() {
        let caps = vec![cap("payments", true, true), cap("mainframe", false, true), cap("crm", false, true)];
        match builtin(Immediate, High, &caps) {
            Selection::Reject(reason) => assert!(reason.contains("mainframe, crm") && !reason.contains("payments"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_seed_examples() {
        // E-commerce order: payment (2PC + saga) and a saga-only inventory, defaults → saga.
        let order = vec![cap("payment", true, true), cap("inventory", false, true)];
        assert_eq!(pattern(builtin(Eventual, High, &order)), Some(Pattern::Saga));
        // Financial transfer: two ledgers, immediate consistency → 2PC.
        let transfer = vec![cap("debit", true, false), cap("credit", true, false)];
        assert_eq!(pattern(builtin(Immediate, Low, &transfer)), Some(Pattern::TwoPhaseCommit));
        // Cross-system integration with a legacy mainframe, strong but mixed → saga.
        let integration = vec![cap("crm", true, true), cap("mainframe", false, true)];
        assert_eq!(pattern(builtin(Strong, Medium, &integration)), Some(Pattern::Saga));
    }

    #[test]
    fn incapable_participants_are_listed_per_pattern() {
        let caps = vec![cap("a", true, false), cap("b", false, true)];
        assert_eq!(incapable(Pattern::Saga, &caps), ["a"]);
        assert_eq!(incapable(Pattern::TwoPhaseCommit, &caps), ["b"]);
    }
}
