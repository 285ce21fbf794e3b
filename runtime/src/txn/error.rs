//! The one error of the engines. Its kinds are what a caller can do about it, and the API
//! maps each kind to a status and code in one place.

use crate::plugin::CatalogError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// No such transaction of this kind for this tenant.
    #[error("no {kind} {id}")]
    NotFound { kind: &'static str, id: String },
    /// The transaction's state does not allow the action.
    #[error("transaction {id} is {state}: {action} is not possible")]
    WrongState { id: String, state: &'static str, action: &'static str },
    /// A 2PC transaction decided to commit: abort is no longer possible.
    #[error("transaction {0} already decided to commit; it cannot be aborted")]
    DecidedCommit(String),
    /// Another coordinator drives the transaction (or another request changed it meanwhile).
    #[error("transaction {0} is being driven by another coordinator")]
    Busy(String),
    /// The request is not acceptable as given.
    #[error("{0}")]
    Invalid(String),
    /// An HTTP endpoint the tenant's outbound policy does not let it call.
    #[error("{0}")]
    EndpointRefused(String),
    #[error("{0}")]
    Plugin(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server failed, not the request (a driver that panicked, an illegal transition).
    #[error("{0}")]
    Internal(String),
}

impl TxError {
    /// Another writer changed the transaction since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, TxError::Store(StoreError::Conflict { .. }))
    }

    /// A write of transaction `id` that lost to another request's (a conflict) is `Busy` (409),
    /// the caller's race rather than the server's fault; any other error stays as it is.
    pub fn busy_if_conflict(self, id: &str) -> TxError {
        if self.is_conflict() { TxError::Busy(id.into()) } else { self }
    }
}

impl From<super::IllegalTransition> for TxError {
    fn from(e: super::IllegalTransition) -> Self {
        TxError::Internal(format!("the engine attempted an {e}"))
    }
}
