//! `ledger`: a 2PC participant for transfers. Input: `{amount: number, balance?: number}`;
//! prepare votes abort when the balance (default 1 000) cannot cover a debit.

use wasmtx_plugin_sdk::{Call, Outcome, Participant, Vote, json};

struct Ledger;

impl Participant for Ledger {
    fn prepare(call: Call) -> Vote {
        let input = call.input_json();
        let amount = input.get("amount").and_then(|a| a.as_f64()).unwrap_or(0.0);
        let balance = input.get("balance").and_then(|b| b.as_f64()).unwrap_or(1_000.0);
        if amount > balance {
            Vote::Abort(format!("insufficient funds: {amount} > {balance}"))
        } else {
            Vote::Prepared
        }
    }

    fn commit(call: Call) -> Outcome {
        Outcome::success(&json!({ "posted": call.idempotency_key }))
    }

    fn abort(call: Call) -> Outcome {
        Outcome::success(&json!({ "voided": call.idempotency_key }))
    }
}

wasmtx_plugin_sdk::participant_plugin!(Ledger);
