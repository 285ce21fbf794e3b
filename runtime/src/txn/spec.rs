//! What every step and participant description shares: exactly one target (a plugin or an
//! http(s) endpoint), and the bounds of its timeouts and size; and the one bound of every
//! kind's context.

/// Longest timeout of one call (a step, a participant's phase): an hour.
pub const MAX_CALL_TIMEOUT_MS: u64 = 3_600_000;
/// Largest step (or participant) description, parameters included, as JSON.
pub const MAX_SPEC_BYTES: usize = 32 << 10;
/// Largest context of a transaction of any kind (saga, 2PC, managed), as JSON: each call's
/// input carries it, and every write of the transaction's document stores it.
pub const MAX_CONTEXT_BYTES: usize = 256 << 10;

/// What runs a step or participant: exactly one of a plugin and an http(s) endpoint.
/// `what` names it in the error ("step \"charge\"", "participant \"bank\"").
pub fn validate_target(what: &str, plugin: &Option<String>, endpoint: &Option<String>) -> Result<(), String> {
    match (plugin, endpoint) {
        (Some(_), Some(_)) => Err(format!("{what}: give exactly one of plugin and endpoint, not both")),
        (None, None) => Err(format!("{what}: give exactly one of plugin and endpoint")),
        (None, Some(url))
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() > 2048
                || url.contains(char::is_control)
                || url::Url::parse(url).is_err() =>
        {
            Err(format!("{what}: endpoint must be an http:// or https:// URL"))
        }
        _ => Ok(()),
    }
}

/// Refuses a description larger than [`MAX_SPEC_BYTES`] as JSON.
pub fn check_size(what: &str, spec: &impl serde::Serialize) -> Result<(), String> {
    check_json_size(what, spec, MAX_SPEC_BYTES)
}

/// Refuses a transaction's context larger than [`MAX_CONTEXT_BYTES`] as JSON.
pub fn check_context(context: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    check_json_size("context", context, MAX_CONTEXT_BYTES)
}

fn check_json_size(what: &str, value: &impl serde::Serialize, max: usize) -> Result<(), String> {
    match serde_json::to_vec(value).map_or(0, |v| v.len()) > max {
        true => Err(format!("{what} is larger than {max} bytes as JSON")),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    /// `{"blob":"…"}` of exactly `bytes` bytes as JSON.
    fn context(bytes: usize) -> Map<String, Value> {
        let Value::Object(map) = json!({"blob": "x".repeat(bytes - r#"{"blob":""}"#.len())}) else { unreachable!() };
        map
    }

    #[test]
    fn a_context_up_to_its_cap_passes_and_one_byte_more_is_refused() {
        assert!(check_context(&context(MAX_CONTEXT_BYTES)).is_ok());
        let refused = check_context(&context(MAX_CONTEXT_BYTES + 1)).unwrap_err();
        assert!(refused.contains("context") && refused.contains(&MAX_CONTEXT_BYTES.to_string()), "{refused}");
        assert!(check_size("step \"a\"", &json!({"p": "y".repeat(MAX_SPEC_BYTES)})).unwrap_err().starts_with("step \"a\""));
    }
}
