//! HTTP/1.1 and h2c through a sidecar pair (outbound → inbound → app): bodies, headers,
//! trailers, large messages, and the proxy's own errors.

mod common;

use bytes::Bytes;
use common::{App, H2Conn, Registry, Sidecar, SidecarSpec, TestBody};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::Full;

/// A registry, the app `web` behind its sidecar, and a client sidecar with an upstream
/// listener for `web`.
async fn pair() -> (Registry, App, Sidecar, Sidecar) {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let server = Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["web"];
    let client = Sidecar::start(spec).await;
    (registry, app, server, client)
}

#[tokio::test]
async fn http1_through_the_host_routed_listener_keeps_body_and_headers() {
    let (_registry, _app, _server, client) = pair().await;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/echo", client.outbound))
        .header("host", "web")
        .header("x-custom", "kept")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .body(Full::new(Bytes::from_static(b"hello mesh")))
        .unwrap();
    let answer = common::send(&common::h1(), request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text, "hello mesh");
    let h = &answer.headers;
    assert_eq!(h["x-echo-x-custom"], "kept");
    assert_eq!(
        h["x-echo-traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(h["x-echo-host"], "web");
    assert!(
        h.contains_key("x-echo-x-request-id"),
        "a request id is added"
    );
    assert!(
        !h.contains_key("x-echo-x-hop"),
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(h["x-version"], "HTTP/1.1");
}

#[tokio::test]
async fn http1_through_an_upstream_listener_needs_no_host() {
    let (_registry, _app, _server, client) = pair().await;
    let answer = common::get_h1(client.upstreams[0], "localhost:12345", "/whoami").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text, "web-1");
}

#[tokio::test]
async fn h2c_keeps_trailers_and_large_bodies_both_ways() {
    let (_registry, _app, _server, client) = pair().await;
    let conn = H2Conn::connect(client.outbound).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let request = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri("http://web/echo")
        .header("x-request-id", "fixed-id")
        .body(TestBody::new(big.clone(), Some(trailers)))
        .unwrap();
    let answer = conn.send(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers["x-version"], "HTTP/2.0",
        "h2 all the way to the app"
    );
    assert_eq!(
        answer.headers["x-echo-x-request-id"], "fixed-id",
        "an existing id is kept"
    );
    assert_eq!(answer.body.len(), big.len());
    assert!(answer.body == big, "the body arrives byte for byte");
    assert_eq!(answer.trailers.unwrap()["x-checksum"], "abc123");
}

#[tokio::test]
async fn no_endpoints_is_a_fast_503_and_a_trailers_only_unavailable_for_grpc() {
    let (registry, _app, _server, client) = pair().await;
    // `empty` exists in the registry but has no passing instance.
    let mut critical = mesh_registry_api::Registration::new("127.0.0.1:1");
    critical.status = mesh_registry_api::Status::Critical;
    registry
        .client
        .register("empty", "e-1", &critical)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let answer = common::get_h1(client.outbound, "empty", "/").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["mesh-error"], "no-endpoints");
    assert!(answer.text.contains("empty"));

    let conn = H2Conn::connect(client.outbound).await;
    let request = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri("http://empty/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(TestBody::empty())
        .unwrap();
    let answer = conn.send(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["grpc-status"], "14");
    assert_eq!(answer.headers["mesh-error"], "no-endpoints");
}

#[tokio::test]
async fn an_app_that_is_down_is_a_502_naming_the_cause() {
    let (_registry, mut app, _server, client) = pair().await;
    app.stop();
    // The listener closes at once; the sidecar's next connection attempt is refused.
    let answer = loop {
        let a = common::get_h1(client.outbound, "web", "/whoami").await;
        if a.status != StatusCode::OK {
            break a;
        }
    };
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers["mesh-error"], "connect-failed");
}

/// Writes raw bytes to `addr` and reads until the peer closes or answers.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&out[..n]).into_owned()
}

#[tokio::test]
async fn requests_without_a_destination_are_400() {
    let (_registry, _app, _server, client) = pair().await;
    let answer = raw(client.outbound, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("mesh-error: bad-request"), "{answer}");
}

#[tokio::test]
async fn malformed_requests_get_400_not_a_crash() {
    let (_registry, _app, _server, client) = pair().await;
    let answer = raw(client.outbound, b"GARBAGE \x00\x01 NOT HTTP\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The listener still serves.
    assert_eq!(
        common::get_h1(client.outbound, "web", "/whoami").await.text,
        "web-1"
    );
}
