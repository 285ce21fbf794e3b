//! A state enum's legal transitions, written once per protocol as `can_become`, and the one
//! way to move: `become_`, which refuses what the table does not allow with an error value.

/// A transition the protocol's table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: String,
    pub to: String,
}

/// A state with a transition table.
pub trait Transition: Copy + std::fmt::Debug + Sized {
    /// Whether `self -> to` is legal.
    fn can_become(self, to: Self) -> bool;

    /// Moves to `to` if the table allows it.
    fn become_(&mut self, to: Self) -> Result<(), IllegalTransition> {
        if !self.can_become(to) {
            return Err(IllegalTransition { from: format!("{self:?}"), to: format!("{to:?}") });
        }
        *self = to;
        Ok(())
    }
}

/// Checks a transition table exhaustively: every pair of `all` is legal exactly when it is in
/// `legal`, and an illegal move is an error that leaves the state as it was.
#[cfg(test)]
pub(crate) fn assert_table<S: Transition + PartialEq>(all: &[S], legal: &[(S, S)]) {
    for &from in all {
        for &to in all {
            let expected = legal.contains(&(from, to));
            assert_eq!(from.can_become(to), expected, "{from:?} -> {to:?}");
            let mut state = from;
            match state.become_(to) {
                Ok(()) => assert!(expected && state == to, "{from:?} -> {to:?}"),
                Err(e) => {
                    assert!(!expected, "{from:?} -> {to:?} refused: {e}");
                    assert_eq!(state, from, "a refused transition leaves the state as it was");
                }
            }
        }
    }
}
