//! W3C Trace Context carried from the page request into the recommendations call, so a
//! page view and the call it makes are one trace.
//!
//! The marketplace makes no spans of its own; it passes `traceparent` and `tracestate` on,
//! as any instrumented app does, and whatever records spans around it (a sidecar on each
//! side of the call) links them into one trace.

use axum::http::{HeaderMap, HeaderValue};
use tonic::metadata::{MetadataMap, MetadataValue};

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Copies the trace context of a page request's `headers` into the call's `metadata`.
///
/// `traceparent` goes on only when the request has exactly one (the W3C rule: several mean
/// none is trusted) and it is printable ASCII, as metadata must be. `tracestate` goes on
/// only with it: the specification allows it over several header lines, which are joined
/// with commas into the one line it also allows.
pub(crate) fn propagate(headers: &HeaderMap, metadata: &mut MetadataMap) {
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let (Some(parent), None) = (parents.next(), parents.next()) else {
        return;
    };
    let Some(parent) = ascii(parent) else {
        return;
    };
    metadata.insert(TRACEPARENT, parent);

    let states: Option<Vec<&str>> = headers
        .get_all(TRACESTATE)
        .iter()
        .map(|value| value.to_str().ok())
        .collect();
    let Some(states) = states.filter(|states| !states.is_empty()) else {
        return;
    };
    if let Ok(state) = MetadataValue::try_from(states.join(",")) {
        metadata.insert(TRACESTATE, state);
    }
}

/// `value` as ASCII metadata, or `None` when it holds bytes metadata may not carry.
fn ascii(value: &HeaderValue) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    MetadataValue::try_from(value.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn propagated(headers: &[(&'static str, &[u8])]) -> (Option<String>, Option<String>) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        let mut metadata = MetadataMap::new();
        propagate(&map, &mut metadata);
        let get = |name| {
            metadata
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        (get(TRACEPARENT), get(TRACESTATE))
    }

    #[test]
    fn both_headers_are_copied_as_they_are() {
        let state = b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
        assert_eq!(
            propagated(&[("traceparent", PARENT.as_bytes()), ("tracestate", state)]),
            (
                Some(PARENT.to_owned()),
                Some(String::from_utf8(state.to_vec()).unwrap())
            )
        );
    }

    #[test]
    fn tracestate_lines_are_joined_with_commas() {
        let headers: [(&str, &[u8]); 3] = [
            ("traceparent", PARENT.as_bytes()),
            ("tracestate", b"congo=t61rcWkgMzE"),
            ("tracestate", b"rojo=00f067aa0ba902b7"),
        ];
        assert_eq!(
            propagated(&headers).1.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    #[test]
    fn nothing_without_one_usable_traceparent() {
        assert_eq!(propagated(&[]), (None, None));
        assert_eq!(propagated(&[("tracestate", b"congo=1")]), (None, None));
        let two: [(&str, &[u8]); 2] = [
            ("traceparent", PARENT.as_bytes()),
            ("traceparent", PARENT.as_bytes()),
        ];
        assert_eq!(propagated(&two), (None, None));
        let binary: [(&str, &[u8]); 2] = [("traceparent", b"00-\xff"), ("tracestate", b"congo=1")];
        assert_eq!(propagated(&binary), (None, None));
    }

    #[test]
    fn a_tracestate_metadata_cannot_carry_is_left_out() {
        let headers: [(&str, &[u8]); 2] = [
            ("traceparent", PARENT.as_bytes()),
            ("tracestate", b"congo=\xff"),
        ];
        assert_eq!(propagated(&headers), (Some(PARENT.to_owned()), None));
    }
}
