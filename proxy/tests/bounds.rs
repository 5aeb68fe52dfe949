//! Resource bounds and request heads a proxy must not take at face value: destinations
//! (one per distinct Host) are evicted when idle and capped, deadline headers cannot
//! overflow the clock, two `Host` headers are refused, an absolute-form target wins over
//! `Host`, a connection that sends nothing is closed, a kept-alive connection lives
//! until its idle timeout, not its header read timeout, and an HTTP/2 connection with no
//! stream open is closed (after the header read timeout before its first stream, the idle
//! timeout after) rather than holding a connection slot.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{App, PATIENCE, Registry, Sidecar, SidecarSpec, eventually, metric_or_zero};
use http::StatusCode;
use mesh_proxy::Config;

/// A client sidecar; made-up names get "no such name" from the harness's DNS server.
async fn client(registry: &Registry, settings: impl FnOnce(&mut Config)) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    settings(&mut spec.config);
    Sidecar::start(spec).await
}

/// A registry listing `web`: an app behind its sidecar.
async fn web() -> (Registry, App, Sidecar) {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let server = Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    (registry, app, server)
}

async fn destinations(sidecar: &Sidecar) -> usize {
    let debug = common::get(&format!("http://{}/debug/endpoints", sidecar.admin)).await;
    serde_json::from_slice::<Vec<serde_json::Value>>(&debug.body)
        .unwrap()
        .len()
}

async fn watchers(registry: &Registry) -> f64 {
    let m = common::get(&format!("{}/metrics", registry.url()))
        .await
        .text;
    metric_or_zero(&m, "mesh_registry_watchers")
}

#[tokio::test]
async fn idle_destinations_are_dropped_with_their_registry_watches() {
    let registry = Registry::start().await;
    // Long enough that none of the fifty names below falls idle before they are
    // counted, however slowly a loaded machine asks for them (a second was not).
    let idle = Duration::from_secs(15);
    let sidecar = client(&registry, |c| c.discovery.idle_timeout = idle).await;
    for i in 0..50 {
        let answer = common::get_h1(sidecar.outbound, &format!("typo-{i}"), "/").await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.text
        );
    }
    assert_eq!(destinations(&sidecar).await, 50);
    eventually(PATIENCE, "each name watched while in use", async || {
        watchers(&registry).await >= 40.0
    })
    .await;

    eventually(
        idle + PATIENCE,
        "the idle destinations and their watches dropped",
        async || destinations(&sidecar).await == 0 && watchers(&registry).await == 0.0,
    )
    .await;
}

#[tokio::test]
async fn past_max_destinations_new_names_get_a_fast_503() {
    let registry = Registry::start().await;
    let sidecar = client(&registry, |c| c.discovery.max_destinations = 3).await;
    for i in 0..3 {
        let answer = common::get_h1(sidecar.outbound, &format!("name-{i}"), "/").await;
        assert_ne!(answer.headers.get("mesh-error").unwrap(), "overloaded");
    }
    let refused = common::get_h1(sidecar.outbound, "one-too-many", "/").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["mesh-error"], "overloaded");
    assert!(
        refused.text.contains("--max-destinations"),
        "{}",
        refused.text
    );
    // Names already followed still work.
    let again = common::get_h1(sidecar.outbound, "name-0", "/").await;
    assert_ne!(again.headers["mesh-error"], "overloaded");
    let m = sidecar.metrics().await;
    assert!(
        m.contains(r#"mesh_requests_total{direction="outbound",service="one-too-many"} 1"#),
        "the refusal is counted: {m}"
    );
}

#[tokio::test]
async fn deadline_headers_cannot_panic_the_proxy() {
    let (registry, _app, _server) = web().await;
    let sidecar = client(&registry, |_| {}).await;
    let h1 = common::h1();
    let send = |name: &'static str, value: &'static str| {
        let request = http::Request::get(format!("http://{}/whoami", sidecar.outbound))
            .header("host", "web")
            .header(name, value)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        common::send(&h1, request)
    };
    for (name, value) in [
        ("mesh-timeout", "10000000000000000000s"),
        ("mesh-per-try-timeout", "10000000000000000000s"),
        ("grpc-timeout", "99999999H"),
    ] {
        let answer = send(name, value).await;
        assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.text);
    }
    let bad = send("mesh-timeout", "whenever").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("mesh-timeout"), "{}", bad.text);
    assert_eq!(send("mesh-timeout", "2s").await.status, StatusCode::OK);
}

#[tokio::test]
async fn request_heads_proxies_must_not_trust() {
    let (registry, _app, _server) = web().await;
    let sidecar = client(&registry, |c| {
        c.listen.header_read_timeout = Duration::from_millis(300)
    })
    .await;

    let two_hosts = common::raw(
        sidecar.outbound,
        b"GET /whoami HTTP/1.1\r\nhost: web\r\nhost: db\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");

    // The absolute-form target names the destination and becomes the Host the app sees.
    let absolute = common::raw(
        sidecar.outbound,
        b"GET http://web/echo HTTP/1.1\r\nhost: elsewhere\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    assert!(absolute.contains("x-echo-host: web\r\n"), "{absolute}");

    // A connection that never sends a byte is closed after the header read timeout.
    let started = Instant::now();
    let silent = common::raw(sidecar.outbound, b"").await;
    assert!(silent.is_empty(), "{silent}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the silent connection was left open"
    );
}

#[tokio::test]
async fn many_open_connections_stay_cheap_and_do_not_stop_service() {
    let (registry, _app, _server) = web().await;
    let sidecar = client(&registry, |c| c.listen.max_connections = 200).await;
    let addr: SocketAddr = sidecar.outbound;
    // More idle clients than the listener serves at once: the extra ones wait in the
    // accept queue, and the sidecar keeps answering the ones it serves.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(b"GET /whoami HTTP/1.1\r\nhost: web\r\n")
            .await
            .unwrap();
        idle.push(stream);
    }
    let m = sidecar.metrics().await;
    let open = metric_or_zero(&m, r#"mesh_tcp_open_connections{direction="outbound"}"#);
    assert!(open <= 200.0, "{open} open: {m}");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            common::get_h1(addr, "web", "/whoami"),
        )
        .await;
        if let Ok(answer) = answer {
            assert_eq!(answer.status, StatusCode::OK);
            break;
        }
        assert!(Instant::now() < deadline, "the sidecar stopped serving");
    }
}

#[tokio::test]
async fn a_thousand_and_more_names_stay_within_the_default_bounds() {
    let registry = Registry::start().await;
    // None falls idle during the test, however slow the machine.
    let sidecar = client(&registry, |c| {
        c.discovery.idle_timeout = Duration::from_secs(600)
    })
    .await;
    let (mut unknown, mut overloaded) = (0, 0);
    for i in 0..1200 {
        let answer = common::get_h1(sidecar.outbound, &format!("name-{i}"), "/").await;
        match answer
            .headers
            .get("mesh-error")
            .map(|v| v.to_str().unwrap())
        {
            Some("no-endpoints") => unknown += 1,
            Some("overloaded") => overloaded += 1,
            other => panic!("{other:?}: {}", answer.text),
        }
    }
    // The default --max-destinations: the first thousand are followed, the rest refused
    // at once, and nothing beyond the thousand is watched (two watches each: endpoints
    // and policy).
    assert_eq!((unknown, overloaded), (1000, 200));
    assert_eq!(destinations(&sidecar).await, 1000);
    assert!(watchers(&registry).await <= 2000.0);
}

/// Sends `request` on `stream` and reads one whole answer (a length-delimited or chunked
/// body); `None` when the proxy closed the connection instead.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.ok()?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_lowercase();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|n| n.trim().parse::<usize>().unwrap());
            let complete = match length {
                Some(n) => answer.len() >= head_end + 4 + n,
                None => text.ends_with("0\r\n\r\n"),
            };
            if complete {
                return Some(String::from_utf8_lossy(&answer).into_owned());
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// How long until the proxy closes `stream` (reading and discarding what it sends).
async fn until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {limit:?}"
    );
    started.elapsed()
}

#[tokio::test]
async fn kept_alive_connections_outlive_the_header_read_timeout_until_the_idle_timeout() {
    let (registry, _app, _server) = web().await;
    // Far apart, so that a slow machine cannot blur which of the two closed a connection.
    let header_read = Duration::from_millis(300);
    let idle = Duration::from_secs(5);
    let sidecar = client(&registry, |c| {
        c.listen.header_read_timeout = header_read;
        c.listen.idle_timeout = idle;
    })
    .await;
    const GET: &[u8] = b"GET /whoami HTTP/1.1\r\nhost: web\r\n\r\n";
    let connect = || tokio::net::TcpStream::connect(sidecar.outbound);

    // Waiting between requests is not a slow request head: a pooled connection that
    // sits idle for several header read timeouts is still served. (The pause is a quiet
    // spell, not a wait for something: load only delays the watchdog, and the idle
    // timeout is seconds beyond it.)
    let mut kept = connect().await.unwrap();
    let first = exchange(&mut kept, GET).await.expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(header_read * 4).await;
    let again = exchange(&mut kept, GET).await;
    let again = again.expect("the idle kept-alive connection was closed");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    // A head that has started must still be finished within the header read timeout
    // (checked every header read timeout: closed within twice it).
    use tokio::io::AsyncWriteExt;
    kept.write_all(b"GET /whoami HTTP/1.1\r\nhost: w")
        .await
        .unwrap();
    let slow_head = until_closed(&mut kept, idle).await;
    assert!(slow_head >= header_read, "closed after {slow_head:?}");

    // An idle connection is closed once it has been idle for the idle timeout.
    let mut idle_conn = connect().await.unwrap();
    assert!(exchange(&mut idle_conn, GET).await.is_some());
    let idled = until_closed(&mut idle_conn, idle * 3).await;
    assert!(
        idled >= idle,
        "closed after {idled:?}, before the idle timeout"
    );
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: all a client must send to
/// open an HTTP/2 connection, and all this one sends.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The HTTP/2 frame type GOAWAY.
const GOAWAY: u8 = 0x7;

/// The types of the HTTP/2 frames the proxy sends on `stream` until it closes it.
async fn h2_frames_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes)).await;
    assert!(
        read.is_ok(),
        "the connection was still open after {PATIENCE:?}"
    );
    let (mut frames, mut at) = (Vec::new(), 0);
    // Each frame: a 24-bit payload length, its type, flags, a stream id, the payload.
    while at + 9 <= bytes.len() {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]);
        frames.push(bytes[at + 3]);
        at += 9 + length as usize;
    }
    frames
}

#[tokio::test]
async fn http2_connections_that_never_open_a_stream_do_not_hold_connection_slots() {
    let header_read = Duration::from_millis(300);
    let limits = |c: &mut Config| {
        c.listen.max_connections = 20;
        c.listen.header_read_timeout = header_read;
    };
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, "web", app.addr);
    limits(&mut spec.config);
    let server = Sidecar::start(spec).await;
    registry.until_passing("web", 1).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["web"];
    limits(&mut spec.config);
    let client = Sidecar::start(spec).await;

    let listeners = [
        ("outbound", client.outbound, "web", "/whoami"),
        ("upstream", client.upstreams[0], "web", "/whoami"),
        ("inbound", server.inbound.unwrap(), "web", "/whoami"),
        ("admin", client.admin, "localhost", "/live"),
    ];
    for (name, addr, host, path) in listeners {
        use tokio::io::AsyncWriteExt;
        // As many silent HTTP/2 connections as the listener serves at once.
        let mut silent = Vec::new();
        for _ in 0..20 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
            silent.push(stream);
        }
        // Each is told to go away, and closed although it never acknowledges it...
        for stream in &mut silent {
            let frames = h2_frames_until_closed(stream).await;
            assert!(frames.contains(&GOAWAY), "{name}: frames {frames:?}");
        }
        // ...so a real caller gets a slot.
        let served = tokio::time::timeout(PATIENCE, common::get_h1(addr, host, path)).await;
        let served = served.unwrap_or_else(|_| panic!("{name}: the 21st caller was not served"));
        assert_eq!(served.status, StatusCode::OK, "{name}: {}", served.text);
    }
}

#[tokio::test]
async fn an_http2_connection_without_a_stream_for_the_idle_timeout_is_closed() {
    let (registry, _app, _server) = web().await;
    let idle = Duration::from_secs(2);
    let sidecar = client(&registry, |c| {
        c.listen.header_read_timeout = Duration::from_millis(300);
        c.listen.idle_timeout = idle;
    })
    .await;
    for (name, addr, host, path) in [
        ("outbound", sidecar.outbound, "web", "/whoami"),
        ("admin", sidecar.admin, "localhost", "/live"),
    ] {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::get(format!("http://{host}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = send.send_request(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{name}");
        let body = http_body_util::BodyExt::collect(answer.into_body()).await;
        assert!(body.is_ok(), "{name}");
        // One request, then silence: the connection is closed once idle for the idle
        // timeout (with a GOAWAY, which hyper's client acknowledges), not before.
        let started = Instant::now();
        common::eventually(
            idle + PATIENCE,
            "the idle HTTP/2 connection closed",
            async || connection.is_finished(),
        )
        .await;
        let after = started.elapsed();
        assert!(
            after >= idle,
            "{name}: closed after {after:?}, before the idle timeout"
        );
    }
}
