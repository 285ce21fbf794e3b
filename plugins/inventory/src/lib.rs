//! `inventory`: reserves and releases stock — a legacy system with no two-phase commit, so it
//! exports only `step`. Input: `{sku?: string, quantity?: number, stock?: number}`; a quantity
//! above the stock (default 100) fails.

use serde::Deserialize;
use wasmtx_plugin_sdk::{Call, Outcome, Step, json};

#[derive(Deserialize)]
struct Reservation {
    #[serde(default)]
    sku: Option<String>,
    #[serde(default = "one")]
    quantity: u64,
    #[serde(default = "hundred")]
    stock: u64,
}

fn one() -> u64 {
    1
}

fn hundred() -> u64 {
    100
}

struct Inventory;

impl Step for Inventory {
    fn execute(call: Call) -> Outcome {
        let r: Reservation = match call.input() {
            Ok(r) => r,
            Err(bad) => return bad,
        };
        if r.quantity > r.stock {
            return Outcome::failure(format!("insufficient stock: {} requested, {} left", r.quantity, r.stock));
        }
        Outcome::success(&json!({ "reservation_id": call.idempotency_key, "sku": r.sku, "quantity": r.quantity }))
    }

    fn compensate(call: Call) -> Outcome {
        Outcome::success(&json!({ "released": call.transaction_id }))
    }
}

wasmtx_plugin_sdk::step_plugin!(Inventory);
