//! What every protocol has, written once: the record (`Record<S, D>`) and its states'
//! transition table ([`Transition`], [`IllegalTransition`]), the journal every write goes
//! through, the engine core (store, catalog, invoker, settings, drivers), lease keeping and the
//! recovery loop, the checks every participant spec shares, time formatting, and the one error
//! type ([`TxError`]) whose kinds the API maps to status codes once.
//!
//! The protocols (`saga`, `tpc`, `manager`) build on this module; it knows none of them, and it
//! never touches a driver (SQL, wasmtime, HTTP) directly.

/// Implements [`TxState`] for a state enum from its own `as_str`, `parse` and `is_terminal`.
macro_rules! tx_state {
    ($state:ty) => {
        impl $crate::txn::TxState for $state {
            fn as_str(self) -> &'static str {
                <$state>::as_str(self)
            }
            fn parse(s: &str) -> Option<Self> {
                <$state>::parse(s)
            }
            fn is_terminal(self) -> bool {
                <$state>::is_terminal(self)
            }
        }
    };
}
pub(crate) use tx_state;

mod clock;
pub(crate) mod core;
mod error;
pub mod journal;
pub mod recovery;
pub mod spec;
pub(crate) mod transition;

pub use clock::{Clock, SystemClock};
pub use core::EngineConfig;
pub(crate) use core::Recovers;
pub use error::TxError;
pub use journal::{Asked, Journal, Record, TxState, next_announced, wait_for_end};
pub use transition::{IllegalTransition, Transition};

/// Tries of one compensation or 2PC decision after which its transaction needs an
/// operator's attention (while it is still being retried).
pub const ATTENTION_ATTEMPTS: u32 = 3;
/// Takeovers after expired leases after which a transaction needs attention: its
/// coordinators keep dying or stalling while they drive it.
pub const ATTENTION_RECOVERIES: u32 = 3;

/// RFC 3339 with milliseconds, UTC: how documents show times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
