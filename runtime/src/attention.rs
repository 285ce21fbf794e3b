//! The census of what needs an operator, for `/metrics`: per kind, the transactions whose
//! document says `needs_attention` (failed; a compensation or 2PC decision still retried after
//! `ATTENTION_ATTEMPTS` tries; leases that keep expiring), across every tenant. It reads only
//! failed transactions and those still in flight (never the ended history), at most `CAP`
//! of each per tenant and state, so a pass stays bounded; a managed transaction counts by its
//! own record (its delegate counts under its kind).

use std::collections::BTreeMap;

use crate::manager::Status;
use crate::saga::{SagaDoc, SagaState};
use crate::store::{Store, StoreError, TxQuery, TxRow};
use crate::tpc::{TpcDoc, TpcState};
use crate::txn::Record;

/// Rows read at most per tenant, kind and state.
pub const CAP: i64 = 1000;

/// The states worth reading for each kind: failed, and every state not yet ended.
fn states() -> [(&'static str, Vec<&'static str>); 3] {
    let sagas = [SagaState::Running, SagaState::Compensating, SagaState::Failed];
    let tpc = [TpcState::Preparing, TpcState::Prepared, TpcState::Committing, TpcState::Aborting, TpcState::Failed];
    [
        (crate::saga::KIND, sagas.iter().map(|s| s.as_str()).collect()),
        (crate::tpc::KIND, tpc.iter().map(|s| s.as_str()).collect()),
        (crate::manager::KIND, vec![Status::Failed.as_str()]),
    ]
}

/// Whether `row` needs an operator.
fn needs_attention(row: TxRow) -> bool {
    match row.kind.as_str() {
        // A row that does not decode is not counted here; reading it reports the corruption.
        crate::saga::KIND => Record::<SagaState, SagaDoc>::from_row(row).is_ok_and(|r| r.doc.needs_attention(r.state)),
        crate::tpc::KIND => Record::<TpcState, TpcDoc>::from_row(row).is_ok_and(|r| r.doc.needs_attention(r.state)),
        _ => row.state == Status::Failed.as_str(),
    }
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Census {
    /// How many transactions of each kind need attention.
    pub counts: BTreeMap<&'static str, i64>,
    /// The failed ones read (of every kind), for the alerts to check they were raised.
    pub failed: Vec<TxRow>,
}

/// One pass over every tenant (and the single-tenant `default`).
pub async fn census(store: &Store) -> Result<Census, StoreError> {
    let mut tenants = store.tenant_ids().await?;
    tenants.push(crate::api_tenant().to_string());
    let mut census = Census { counts: states().iter().map(|(kind, _)| (*kind, 0)).collect(), failed: Vec::new() };
    for tenant in &tenants {
        for (kind, states) in states() {
            for state in states {
                let query = TxQuery { kind: Some(kind.into()), state: Some(state.into()), ..TxQuery::default() };
                for row in store.search_tx(tenant, &query, CAP).await? {
                    if row.state == "failed" {
                        census.failed.push(row.clone());
                    }
                    if needs_attention(row) {
                        *census.counts.entry(kind).or_default() += 1;
                    }
                }
            }
        }
    }
    Ok(census)
}
