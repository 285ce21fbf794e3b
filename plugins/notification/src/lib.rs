//! `notification`: sends the customer a message. Compensation sends nothing back: a sent
//! message cannot be unsent, and the saga's later steps never fail after it in the examples.

use wasmtx_plugin_sdk::{Call, LogLevel, Outcome, Step, json, log};

struct Notification;

impl Step for Notification {
    fn execute(call: Call) -> Outcome {
        let input = call.input_json();
        let to = input.get("email").and_then(|e| e.as_str()).unwrap_or("customer");
        log(LogLevel::Info, &format!("notifying {to}"));
        Outcome::success(&json!({ "notified": to }))
    }

    fn compensate(_call: Call) -> Outcome {
        Outcome::success(&json!({ "notified": false }))
    }
}

wasmtx_plugin_sdk::step_plugin!(Notification);
