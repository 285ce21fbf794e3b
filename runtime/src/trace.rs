//! W3C Trace Context: a `traceparent` that came with the API request that created a
//! transaction is kept with it, and every call to an HTTP participant carries a child of it
//! (the same trace id and flags, a new parent id per call), so a request can be followed
//! across the services it touches.
//!
//! When spans are exported (`crate::telemetry`), the same trace holds the coordinator's own
//! spans: a transaction's spans hang under the request that created it ([`of_request`],
//! [`adopt`]), and a call carries its own span as the parent ([`outgoing`]), so the callee's
//! spans hang under the call. Without export, nothing here creates or costs a span.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

/// The `traceparent` a new transaction keeps, from its create request's `header` (checked
/// by [`parse`]): when spans are exported, that of a `create` span under the request's, so
/// the transaction's spans join the caller's trace (or start one); otherwise the request's
/// own.
pub fn of_request(header: Option<String>, kind: &'static str) -> Option<String> {
    let span = tracing::info_span!("create", kind);
    adopt(&span, header.as_deref());
    of_span(&span).or(header)
}

/// Makes `span` (not yet entered) a child of the stored `traceparent` in the exported trace.
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(span_context) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// The `traceparent` to send on a call made inside `span`: the span itself when spans are
/// exported, else a fresh child of the transaction's `traceparent`, if it has one.
pub fn outgoing(span: &tracing::Span, traceparent: Option<&str>) -> Option<String> {
    of_span(span).or_else(|| traceparent.and_then(child))
}

/// `span` as a `traceparent`, if it is exported.
fn of_span(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let own = context.span().span_context().clone();
    own.is_valid().then(|| format!("00-{:032x}-{:016x}-{:02x}", own.trace_id(), own.span_id(), own.trace_flags().to_u8()))
}

fn span_context(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (_, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    Some(SpanContext::new(TraceId::from_hex(trace).ok()?, SpanId::from_hex(parent).ok()?, flags, true, TraceState::NONE))
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

    #[test]
    fn without_export_the_request_is_kept_and_calls_get_children() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(of_request(Some(parent.into()), "saga").as_deref(), Some(parent));
        assert_eq!(of_request(None, "saga"), None);
        let sent = outgoing(&tracing::Span::none(), Some(parent)).unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent != parent);
        assert_eq!(outgoing(&tracing::Span::none(), None), None);
        let context = span_context(parent).unwrap();
        assert_eq!((format!("{:032x}", context.trace_id()), format!("{:016x}", context.span_id())), ("4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into()));
    }
}
