//! Where the engines get the time and new ids: passed in, never read inside the logic, so a
//! test can drive an engine with a clock and ids of its own.

/// The time and the ids of new transactions.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// The unique part of a new transaction's id.
    fn new_id(&self) -> uuid::Uuid;
}

/// The system clock and time-ordered ids (UUIDv7).
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms()
    }

    fn new_id(&self) -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }
}
