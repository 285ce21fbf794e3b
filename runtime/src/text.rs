//! Checks of caller-supplied text before it reaches a store or a log: names and ids are
//! 1..=max characters with no control characters (NUL in particular, which PostgreSQL text
//! refuses and which would otherwise surface as a server error).

/// `Ok` when `value` is 1..=`max_len` bytes of text without control characters; otherwise
/// the sentence to answer, naming `what`.
pub fn check(what: &str, value: &str, max_len: usize) -> Result<(), String> {
    if value.trim().is_empty() || value.len() > max_len {
        return Err(format!("{what} must be 1-{max_len} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

/// Longest id accepted in a path.
pub const MAX_ID_LEN: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_control_characters_pass_and_others_say_why() {
        assert!(check("saga_name", "order #1 ✓", 256).is_ok());
        assert!(check("saga_name", "", 256).unwrap_err().contains("1-256"));
        assert!(check("saga_name", "   ", 256).is_err());
        assert!(check("saga_name", &"x".repeat(257), 256).is_err());
        assert!(check("saga_name", "a\0b", 256).unwrap_err().contains("control"));
        assert!(check("id", "a\nb", 256).is_err());
        assert!(check("id", "a\u{7f}b", 256).is_err());
    }
}
