//! `shipping`: books and cancels a shipment. Input: `{address?: string}`; an empty address fails.

use wasmtx_plugin_sdk::{Call, Outcome, Step, json};

struct Shipping;

impl Step for Shipping {
    fn execute(call: Call) -> Outcome {
        let input = call.input_json();
        if input.get("address").and_then(|a| a.as_str()) == Some("") {
            return Outcome::failure("no shipping address");
        }
        Outcome::success(&json!({ "tracking_number": format!("TRK-{}", call.idempotency_key) }))
    }

    fn compensate(call: Call) -> Outcome {
        Outcome::success(&json!({ "cancelled": call.transaction_id }))
    }
}

wasmtx_plugin_sdk::step_plugin!(Shipping);
