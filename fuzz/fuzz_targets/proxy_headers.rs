//! Arbitrary request heads into what the proxy reads from callers' headers before anything
//! else: the route (Host, `:authority`, absolute-form targets), deadline headers, the hop
//! count, hop-by-hop hygiene, upgrade requests, gRPC statuses and `mesh-error` values. None may panic, and
//! what they return must hold up: deadlines never past the clamp, a route's service name
//! lowercased and non-empty, no hop-by-hop header left after stripping.
//!
//! Input: a first line taken as the request target, then `name: value` lines.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use mesh_proxy::classify::Judged;
use mesh_proxy::deadline::{self, Deadlines, MAX_DEADLINE};
use mesh_proxy::error::ErrorKind;
use mesh_proxy::outbound::Route;
use mesh_proxy::retry::RetryConfig;
use mesh_proxy::{grpc, headers, loops, upgrade};

/// The default retry policy, made once: it comes from the flags' declarations.
static RETRY: LazyLock<RetryConfig> = LazyLock::new(RetryConfig::default);

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let mut map = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }

    let now = tokio::time::Instant::now();
    if let Ok(d) = Deadlines::of(&map, Some(Duration::from_secs(30)), None, now) {
        assert!(d.total.is_none_or(|t| t <= now + MAX_DEADLINE));
        assert!(d.per_try.is_none_or(|p| p <= MAX_DEADLINE));
        let _ = d.try_deadline(now);
        let _ = d.remaining(now);
        if let Some(left) = d.remaining(now) {
            let encoded = deadline::grpc_timeout(left);
            let back = deadline::parse_grpc_timeout(encoded.to_str().unwrap())
                .expect("an encoded grpc-timeout parses");
            // Never more time than is left, and at most a millisecond less.
            assert!(
                back <= left.max(Duration::from_micros(1)),
                "{left:?} → {back:?}"
            );
            assert!(
                back + Duration::from_millis(1) >= left,
                "{left:?} → {back:?}"
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(target) {
        let _ = deadline::parse_grpc_timeout(text);
        let response = grpc::trailers_only(grpc::UNAVAILABLE, text);
        assert!(response.headers().contains_key(grpc::GRPC_STATUS));
    }

    let mut hops = map.clone();
    let _ = loops::count_hop(&mut hops);

    let mut stripped = map.clone();
    headers::strip_hop_by_hop(&mut stripped);
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        assert!(!stripped.contains_key(name));
    }
    assert!(stripped.get(header::TE).is_none_or(|te| te == "trailers"));

    let mut request = Request::builder();
    if let Ok(uri) = http::Uri::try_from(target) {
        request = request.uri(uri);
    }
    if let Ok(mut request) = request.body(()) {
        *request.headers_mut() = map.clone();
        let _ = headers::check_request(&request);
        if let Some((service, _port)) = Route::ByHost.destination(&request) {
            assert!(!service.is_empty());
            assert_eq!(service, service.to_ascii_lowercase());
        }
        // An upgrade is an `Upgrade` header the request carries, and never `h2c` alone.
        if let Some(protocol) = upgrade::requested(&request) {
            assert!(map.get_all(header::UPGRADE).iter().any(|v| v == protocol));
            assert_ne!(protocol.as_bytes().to_ascii_lowercase(), b"h2c");
        }
    }

    let _ = grpc::status_of(&map);
    for value in map.values() {
        if let Some(kind) = ErrorKind::from_header(value) {
            assert_eq!(kind.as_str().as_bytes(), value.as_bytes());
        }
    }
    let retry = &*RETRY;
    let status = StatusCode::from_u16(500 + u16::from(target.first().copied().unwrap_or(0) % 100))
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let _ = retry.classify_response(Judged::of(status, grpc::status_of(&map)), &map, true);
});
