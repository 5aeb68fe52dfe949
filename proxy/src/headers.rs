//! Header hygiene on every hop: hop-by-hop headers removed (RFC 9110 §7.6.1), a request
//! id added when missing, tunnels and requests with two `Host` headers (or one that is no
//! host) refused. Trace context (`traceparent`, `tracestate`) is left untouched.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request};
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

/// Refuses a request head that proxies must not pass on: a tunnel ([`refuse_tunnel`]),
/// two `Host` headers (RFC 9112 §3.2), which two hops could read as two different
/// destinations, or a `Host` that is no `host[:port]`, which no HTTP/2 hop could carry as
/// `:authority`.
pub fn check_request<B>(request: &Request<B>) -> Result<(), ProxyError> {
    refuse_tunnel(request)?;
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "the request has more than one Host header",
        ));
    }
    if let Some(host) = first.filter(|h| !h.is_empty())
        && !is_host_and_port(host)
    {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            format!("the Host header {host:?} is no host[:port]"),
        ));
    }
    Ok(())
}

/// Refuses tunnels: `CONNECT` (RFC 9110 §9.3.6), which asks for a raw TCP tunnel, as an
/// app with `HTTPS_PROXY` pointing at its sidecar sends, and HTTP/2's extended CONNECT
/// (RFC 8441), which asks for one carrying another protocol (`:protocol`, such as
/// `websocket`). The mesh balances, retries and counts requests, and a tunnel's bytes are
/// none of those: passed on, a CONNECT reached an app that could not serve it, and its
/// failure counted against a healthy endpoint. Every listener refuses it itself, before
/// any endpoint is chosen.
///
/// The one place that decides. Extended CONNECT does not even get here yet: the listeners
/// do not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL, so HTTP/2 resets such a stream
/// before it is a request. Carrying WebSockets over HTTP/2 takes advertising it (hyper's
/// `enable_connect_protocol`, in `server::connection_builder`), letting `websocket` pass
/// here, and forwarding the upgraded stream.
pub fn refuse_tunnel<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if request.method() != Method::CONNECT {
        return Ok(());
    }
    let tunnel = match request.extensions().get::<hyper::ext::Protocol>() {
        Some(protocol) => format!("extended CONNECT ({})", protocol.as_str()),
        None => "CONNECT".to_owned(),
    };
    Err(ProxyError::new(
        ErrorKind::Tunnel,
        format!("{tunnel} is not proxied: the mesh forwards requests, not tunnels"),
    ))
}

/// `host[:port]`, without the user info a URI authority may also hold, and with a port
/// that is a number when there is one.
fn is_host_and_port(value: &HeaderValue) -> bool {
    if value.as_bytes().contains(&b'@') {
        return false;
    }
    let Ok(authority) = Authority::try_from(value.as_bytes()) else {
        return false;
    };
    let after_host = authority.as_str().strip_prefix(authority.host());
    after_host.is_some_and(str::is_empty) || authority.port_u16().is_some()
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

    fn with_hosts(hosts: &[&'static str]) -> Request<()> {
        let mut request = Request::new(());
        for host in hosts {
            let host = HeaderValue::from_static(host);
            request.headers_mut().append(header::HOST, host);
        }
        request
    }

    #[test]
    fn two_hosts_are_refused() {
        assert!(check_request(&with_hosts(&["web"])).is_ok());
        let two = check_request(&with_hosts(&["web", "db"]));
        assert_eq!(two.unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn tunnels_are_refused() {
        let mut connect = with_hosts(&["web:443"]);
        *connect.method_mut() = Method::CONNECT;
        assert_eq!(check_request(&connect).unwrap_err().kind, ErrorKind::Tunnel);
        let websocket = hyper::ext::Protocol::from_static("websocket");
        connect.extensions_mut().insert(websocket);
        let refused = refuse_tunnel(&connect).unwrap_err();
        assert!(
            refused.message.contains("extended CONNECT (websocket)"),
            "{refused}"
        );
        assert!(refuse_tunnel(&with_hosts(&["web"])).is_ok());
    }

    #[test]
    fn a_host_must_be_host_and_port() {
        let check = |host: &'static str| check_request(&with_hosts(&[host])).is_ok();
        for good in ["web", "web:8080", "10.0.0.7:4143", "[::1]:80", ""] {
            assert!(check(good), "{good:?}");
        }
        for bad in ["web/x", "a b", "user@web", "web:port", "web:", "web:99999"] {
            assert!(!check(bad), "{bad:?}");
        }
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
