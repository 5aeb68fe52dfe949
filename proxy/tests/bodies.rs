//! Odd bodies through a sidecar pair: uploads larger than the retry buffer, bodies the
//! caller breaks (malformed chunks, uploads cut short), a streaming answer whose first
//! message comes late, and an HTTP/1.0 app.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{
    App, H2Conn, PATIENCE, Registry, Sidecar, SidecarSpec, TestBody, eventually, metric_or_zero,
};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use mesh_proxy::Config;
use mesh_registry_api::Registration;

const MIB: usize = 1024 * 1024;

/// A registry, `web` behind its sidecar, and a client sidecar with an upstream listener
/// for `web`; `settings` for the client.
async fn pair(app: &App, settings: impl FnOnce(&mut Config)) -> (Registry, Sidecar, Sidecar) {
    let registry = Registry::start().await;
    let server = Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["web"];
    settings(&mut spec.config);
    let client = Sidecar::start(spec).await;
    (registry, server, client)
}

#[tokio::test]
async fn uploads_larger_than_the_retry_buffer_are_sent_once_on_every_listener() {
    let app = App::start("web-1").await;
    let (_registry, _server, client) = pair(&app, |_| {}).await;
    let big = Bytes::from(vec![7u8; MIB]);

    // HTTP/1.1 with Content-Length, through the Host-routed and the upstream listener.
    for (addr, host) in [(client.outbound, "web"), (client.upstreams[0], "localhost")] {
        let before = app.received.load(Ordering::SeqCst);
        let request = Request::post(format!("http://{addr}/len"))
            .header("host", host)
            .body(Full::new(big.clone()))
            .unwrap();
        let answer = common::send(&common::h1(), request).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.text, MIB.to_string());
        assert_eq!(app.received.load(Ordering::SeqCst) - before, 1);
    }

    // HTTP/2 with content-length.
    let conn = H2Conn::connect(client.outbound).await;
    let request = Request::post("http://web/len")
        .version(Version::HTTP_2)
        .header("content-length", MIB.to_string())
        .body(TestBody::new(big.clone(), None))
        .unwrap();
    let answer = conn.send(request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.text, MIB.to_string());
}

#[tokio::test]
async fn a_large_upload_goes_elsewhere_when_its_first_endpoint_refuses_the_connection() {
    let app = App::start("web-1").await;
    let (registry, _server, client) = pair(&app, |_| {}).await;
    // A second instance, registered as a sidecar, whose address refuses connections.
    let dead = common::closed_port();
    let mut reg = Registration::new(dead.to_string());
    reg.metadata.insert("tls".into(), "off".into());
    registry
        .client
        .register("web", "web-dead", &reg)
        .await
        .unwrap();
    registry.until_passing("web", 2).await;

    for _ in 0..10 {
        let request = Request::post(format!("http://{}/len", client.outbound))
            .header("host", "web")
            .body(Full::new(Bytes::from(vec![1u8; MIB])))
            .unwrap();
        let answer = common::send(&common::h1(), request).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.text, MIB.to_string());
    }
}

#[tokio::test]
async fn bodies_the_caller_breaks_are_answered_400_and_never_eject_the_endpoint() {
    let app = App::start("web-1").await;
    let (_registry, _server, client) = pair(&app, |c| c.ejection.after = 2).await;

    for _ in 0..6 {
        // A malformed chunk size.
        let head = "POST /len HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n";
        let answer = common::raw(
            client.outbound,
            format!("{head}5\r\nhello\r\nzz\r\n").as_bytes(),
        )
        .await;
        assert!(
            !answer.contains(" 502 ") && !answer.contains("upstream-failed"),
            "{answer}"
        );
        // An upload that stops short of its Content-Length: the caller closes its side
        // once the request has reached the app, its body on the way.
        let received = app.received.load(Ordering::SeqCst);
        let mut stream = tokio::net::TcpStream::connect(client.outbound)
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(
                b"POST /len HTTP/1.1\r\nhost: web\r\ncontent-length: 100000\r\n\r\nonly this",
            )
            .await
            .unwrap();
        eventually(PATIENCE, "the upload at the app", async || {
            app.received.load(Ordering::SeqCst) > received
        })
        .await;
        drop(stream);
    }
    // Once every connection above has ended, so has each request's verdict on the
    // endpoint: no ejection can follow.
    let open = r#"mesh_tcp_open_connections{direction="outbound"}"#;
    eventually(PATIENCE, "the callers' connections closed", async || {
        metric_or_zero(&client.metrics().await, open) == 0.0
    })
    .await;

    let m = client.metrics().await;
    assert_eq!(
        common::metric_sum(&m, "mesh_endpoint_ejections_total", r#"service="web""#),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_or_zero(&m, r#"mesh_endpoints{service="web",state="ready"}"#),
        1.0,
        "{m}"
    );
    let debug = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
    assert!(!debug.text.contains("ejected:"), "{}", debug.text);
    assert_eq!(
        common::get_h1(client.outbound, "web", "/whoami")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_malformed_chunk_is_answered_400_with_the_reason() {
    let app = App::start("web-1").await;
    let (_registry, _server, client) = pair(&app, |_| {}).await;
    // The head is complete and routable; the body breaks after it has started to flow.
    let mut stream = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"POST /len HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    eventually(PATIENCE, "the request at the app", async || {
        app.received.load(Ordering::SeqCst) == 1
    })
    .await;
    stream.write_all(b"not-a-chunk-size\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("mesh-error: bad-request"), "{answer}");
}

#[tokio::test]
async fn a_streaming_answer_is_passed_on_before_its_first_message() {
    let app = App::start("web-1").await;
    let (_registry, _server, client) = pair(&app, |_| {}).await;
    let stream = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let call = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri("http://web/grpc.Stream/Watch")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(TestBody::new(Bytes::from_static(&[0, 0, 0, 0, 0]), None))
        .unwrap();
    // The app sends its headers at once and its first message only when released: the
    // headers must reach the caller while the message is still held back.
    let response = tokio::time::timeout(Duration::from_secs(5), send.send_request(call))
        .await
        .expect("the stream's headers were held back")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.release();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn an_http10_answer_reaches_the_caller_as_http11() {
    // An app that speaks HTTP/1.0: it answers and closes the connection.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold")
                    .await;
            });
        }
    });
    let registry = Registry::start().await;
    let _server = Sidecar::start(SidecarSpec::server(&registry.url(), "old", app_addr)).await;
    registry.until_passing("old", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;
    let answer = common::raw(
        client.outbound,
        b"GET / HTTP/1.1\r\nhost: old\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\r\n\r\n") && answer.contains("old"),
        "{answer}"
    );
}
