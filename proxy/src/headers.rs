//! Header hygiene on every hop: hop-by-hop headers removed (RFC 9110 §7.6.1), a request
//! id added when missing, requests with two `Host` headers refused. Trace context
//! (`traceparent`, `tracestate`) is left untouched.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use rand::Rng;

use crate::error::{ErrorKind, ProxyError};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, never the message, and so must not be
/// forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. `TE:
/// trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them, and gRPC's carry `te: trailers` alone, as it is
    // sent on: one pass over the headers is cheaper than a lookup per hop-by-hop header.
    let any = headers.iter().any(|(name, value)| {
        if name == header::TE {
            value != "trailers"
        } else {
            HOP_BY_HOP.contains(name)
        }
    });
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether `headers` holds `name`. For a name that is no standard header (the mesh's
/// own), one pass over the few names a message carries is cheaper than a hashed lookup.
pub fn holds(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.keys().any(|n| n == name)
}

/// Removes `name`, without a hashed lookup when it is not there (most of the time).
pub fn remove(headers: &mut HeaderMap, name: &HeaderName) {
    if holds(headers, name) {
        headers.remove(name);
    }
}

/// Refuses a request head that proxies must not pass on: two `Host` headers (RFC 9112
/// §3.2), which two hops could read as two different destinations.
pub fn check_request(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "the request has more than one Host header",
        ));
    }
    Ok(())
}

/// Adds `x-request-id` (128 random bits, hex) when the request has none. The value is
/// marked never to be indexed by HPACK: unique to one request, it would only push
/// reusable entries out of both ends' HTTP/2 header tables.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if !holds(headers, &REQUEST_ID) {
        let id: u128 = rand::rng().random();
        let mut hex = [0u8; 32];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((id >> (124 - 4 * i)) & 0xf) as usize];
        }
        let mut value = HeaderValue::from_bytes(&hex).expect("hex is a valid header");
        value.set_sensitive(true);
        headers.insert(REQUEST_ID, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_scoped_headers_but_keeps_te_trailers_and_trace_context() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TE, "gzip, trailers".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert("traceparent", "00-abc-def-01".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key(header::UPGRADE));
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["traceparent"], "00-abc-def-01");

        // gRPC's `te: trailers` passes; any other spelling is sent on as that, and the
        // rest of TE goes.
        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, "trailers".parse().unwrap());
        strip_hop_by_hop(&mut grpc);
        assert_eq!(grpc[header::TE], "trailers");
        let mut odd = HeaderMap::new();
        odd.insert(header::TE, "traiLers ".parse().unwrap());
        strip_hop_by_hop(&mut odd);
        assert_eq!(odd[header::TE], "trailers");
        let mut two = HeaderMap::new();
        two.append(header::TE, "trailers".parse().unwrap());
        two.append(header::TE, "deflate".parse().unwrap());
        two.insert(header::PROXY_AUTHORIZATION, "Basic eA==".parse().unwrap());
        strip_hop_by_hop(&mut two);
        assert_eq!(
            two.get_all(header::TE).iter().collect::<Vec<_>>(),
            ["trailers"]
        );
        assert!(!two.contains_key(header::PROXY_AUTHORIZATION));
    }

    #[test]
    fn two_hosts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "web".parse().unwrap());
        assert!(check_request(&h).is_ok());
        h.append(header::HOST, "db".parse().unwrap());
        assert_eq!(check_request(&h).unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn a_request_id_is_added_once() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h[REQUEST_ID].clone();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        ensure_request_id(&mut h);
        assert_eq!(h[REQUEST_ID], id);
        let mut other = HeaderMap::new();
        ensure_request_id(&mut other);
        assert_ne!(other[REQUEST_ID], id, "each request gets its own id");
    }
}
