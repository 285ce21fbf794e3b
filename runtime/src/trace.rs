//! W3C Trace Context: a `traceparent` that came with the API request that created a
//! transaction is kept with it, and every call to an HTTP participant carries a child of it
//! (the same trace id and flags, a new parent id per call), so a request can be followed
//! across the services it touches.

/// A `traceparent` header, checked: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
/// neither id all zeros.
pub fn parse(header: &str) -> Option<String> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [version, trace, parent, flags]
            if hex(version, 2) && *version != "ff" && hex(trace, 32) && nonzero(trace) && hex(parent, 16) && nonzero(parent) && hex(flags, 2) =>
        {
            Some(format!("00-{trace}-{parent}-{flags}"))
        }
        _ => None,
    }
}

/// A child of `traceparent` for one outgoing call: the same trace and flags, a fresh parent id.
pub fn child(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_, trace, _, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let span = loop {
        let id = format!("{:016x}", rand::random::<u64>());
        if id != "0000000000000000" {
            break id;
        }
    };
    Some(format!("00-{trace}-{span}-{flags}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked_and_children_keep_the_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse(parent).as_deref(), Some(parent));
        for bad in ["", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01"] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let kid = child(parent).unwrap();
        assert!(kid.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && kid.ends_with("-01") && kid != parent);
        assert!(parse(&kid).is_some());
    }
}
