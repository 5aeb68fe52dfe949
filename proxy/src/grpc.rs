//! What the proxy needs to know about gRPC: spotting a call, reading its status, and
//! answering one with a status of our own.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::{self, BoxBody};

/// gRPC status codes the proxy produces.
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const PERMISSION_DENIED: u32 = 7;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;

/// The header (or trailer) carrying a gRPC call's status.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// A gRPC call is an HTTP/2 request whose content type is `application/grpc[+proto…]`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The `grpc-status` in a header block (response headers of a trailers-only answer, or
/// trailers).
pub fn status_of(headers: &HeaderMap) -> Option<u32> {
    // Most answers are no gRPC answers: one pass over their few names is cheaper than the
    // hashed lookup of a name that is no standard header.
    if !headers.keys().any(|name| name == GRPC_STATUS) {
        return None;
    }
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Status code names, by number.
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A status code by number (`8`) or name (`RESOURCE_EXHAUSTED`), as flags take it.
pub fn parse_code(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return if (n as usize) < NAMES.len() {
            Ok(n)
        } else {
            Err(format!("{n} is not a gRPC code (0-16)"))
        };
    }
    let upper = s.trim().to_ascii_uppercase();
    NAMES
        .iter()
        .position(|n| *n == upper)
        .map(|i| i as u32)
        .ok_or_else(|| {
            format!("{s:?} is not a gRPC code name like UNAVAILABLE or RESOURCE_EXHAUSTED")
        })
}

/// A trailers-only gRPC answer: HTTP 200 with the status in the headers and no body,
/// which every gRPC client reads as the call's final status.
pub fn trailers_only(code: u32, message: &str) -> Response<BoxBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", message);
    }
    response
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec): keep printable ASCII
/// except `%`, encode everything else.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_grpc_and_its_status() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        assert!(is_grpc(&h));
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(status_of(&h), Some(14));
    }

    #[test]
    fn codes_parse_by_number_or_name() {
        assert_eq!(parse_code("8"), Ok(8));
        assert_eq!(parse_code("resource_exhausted"), Ok(8));
        assert!(parse_code("17").is_err());
        assert!(parse_code("NOPE").is_err());
    }

    #[test]
    fn trailers_only_answers_carry_an_encoded_message() {
        let r = trailers_only(UNAVAILABLE, "no endpoints for 100% of ü");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "no endpoints for 100%25 of %C3%BC"
        );
    }
}
