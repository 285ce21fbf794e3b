//! `payment`: charges and refunds (saga step), or holds and captures (2PC participant).
//! Input: `{amount: number, order_id?: string, card_limit?: number}`; an amount above the card
//! limit (default 10 000) is declined.

use serde::Deserialize;
use wasmtx_plugin_sdk::{Call, LogLevel, Outcome, Participant, Step, Vote, json, log};

#[derive(Deserialize)]
struct Charge {
    amount: f64,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default = "default_limit")]
    card_limit: f64,
}

fn default_limit() -> f64 {
    10_000.0
}

struct Payment;

impl Payment {
    fn declined(charge: &Charge) -> Option<String> {
        (charge.amount > charge.card_limit)
            .then(|| format!("card declined: {} exceeds limit {}", charge.amount, charge.card_limit))
    }
}

impl Step for Payment {
    fn execute(call: Call) -> Outcome {
        let charge: Charge = match call.input() {
            Ok(c) => c,
            Err(bad) => return bad,
        };
        if let Some(reason) = Payment::declined(&charge) {
            return Outcome::failure(reason);
        }
        log(LogLevel::Info, &format!("charged {} ({})", charge.amount, call.idempotency_key));
        Outcome::success(&json!({
            "charge_id": call.idempotency_key,
            "amount": charge.amount,
            "order_id": charge.order_id,
        }))
    }

    fn compensate(call: Call) -> Outcome {
        Outcome::success(&json!({ "refund_of": call.transaction_id, "refund_id": call.idempotency_key }))
    }
}

impl Participant for Payment {
    fn prepare(call: Call) -> Vote {
        match call.input::<Charge>() {
            Ok(charge) => match Payment::declined(&charge) {
                Some(reason) => Vote::Abort(reason),
                None => Vote::Prepared,
            },
            Err(_) => Vote::Abort("invalid payment input".into()),
        }
    }

    fn commit(call: Call) -> Outcome {
        Outcome::success(&json!({ "captured": call.idempotency_key }))
    }

    fn abort(call: Call) -> Outcome {
        Outcome::success(&json!({ "released": call.idempotency_key }))
    }
}

wasmtx_plugin_sdk::service_plugin!(Payment);
