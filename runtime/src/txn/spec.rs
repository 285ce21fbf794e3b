//! What every step and participant description shares: exactly one target (a plugin or an
//! http(s) endpoint), and the bounds of its timeouts and size.

/// Longest timeout of one call (a step, a participant's phase): an hour.
pub const MAX_CALL_TIMEOUT_MS: u64 = 3_600_000;
/// Largest step (or participant) description, parameters included, as JSON.
pub const MAX_SPEC_BYTES: usize = 32 << 10;

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
    match serde_json::to_vec(spec).map_or(0, |v| v.len()) > MAX_SPEC_BYTES {
        true => Err(format!("{what} is larger than {MAX_SPEC_BYTES} bytes as JSON")),
        false => Ok(()),
    }
}
