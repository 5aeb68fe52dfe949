//! The live tap (`GET /tap` on the admin port) over real sockets: filters by service,
//! path, status and direction; header values redacted unless named in `--tap-headers`;
//! refusals (a bad query, one tap too many); a reader that never reads and a rate cap,
//! neither slowing calls; the stream ending with the sidecar.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use common::{App, PATIENCE, Registry, Sidecar, SidecarSpec, eventually};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_registry_api::call::{CallEvent, REDACTED};
use tokio::net::TcpStream;

/// One open tap, read line by line.
struct TapStream {
    body: Incoming,
    buffer: BytesMut,
}

/// Why a tap did not open.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl TapStream {
    /// Opens a tap on its own connection; returns once the answer's head has arrived,
    /// before any line.
    async fn open(admin: SocketAddr, query: &str) -> Result<TapStream, Refused> {
        let stream = TcpStream::connect(admin).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::get(format!("/tap?{query}"))
            .header(header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
            .await
            .expect("the tap's head is sent at once")
            .unwrap();
        let (parts, body) = response.into_parts();
        let content_type = parts.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        if parts.status != StatusCode::OK {
            let text = body.collect().await.unwrap().to_bytes();
            let text = String::from_utf8(text.to_vec()).unwrap();
            return Err(Refused {
                status: parts.status,
                content_type,
                text,
            });
        }
        assert_eq!(content_type, "application/x-ndjson");
        Ok(TapStream {
            body,
            buffer: BytesMut::new(),
        })
    }

    /// The next event, waiting at most `bound` for it; `None` if none came.
    async fn next_within(&mut self, bound: Duration) -> Option<CallEvent> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let event = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("{e}: not a call event: {}", String::from_utf8_lossy(&line))
                });
                return Some(event);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await;
            match frame {
                Err(_) => return None,
                Ok(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Ok(None) => panic!("the tap ended"),
                Ok(Some(Err(e))) => panic!("the tap broke: {e}"),
            }
        }
    }

    /// The next event; fails the test if none comes within [`PATIENCE`].
    async fn next(&mut self) -> CallEvent {
        let event = self.next_within(PATIENCE).await;
        event.expect("an event on the tap")
    }

    /// Whether the stream has ended (cleanly or not) within `bound`, reading past any
    /// lines still coming.
    async fn ends_within(&mut self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// A registry, `web` (app `web-1`) behind its sidecar, and a caller sidecar.
struct Mesh {
    registry: Registry,
    _app: App,
    web: Sidecar,
    caller: Sidecar,
}

async fn mesh(settings: impl FnOnce(&mut SidecarSpec)) -> Mesh {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, "web", app.addr);
    settings(&mut spec);
    let web = Sidecar::start(spec).await;
    registry.until_passing("web", 1).await;
    let caller = Sidecar::start(SidecarSpec::client(&url)).await;
    Mesh {
        registry,
        _app: app,
        web,
        caller,
    }
}

/// A call of the caller's app to `web`.
async fn call(mesh: &Mesh, path: &str) -> StatusCode {
    call_through(mesh.caller.outbound, path.to_owned()).await
}

/// A call to `web` through the outbound listener at `outbound`.
async fn call_through(outbound: SocketAddr, path: String) -> StatusCode {
    common::get_h1(outbound, "web", &path).await.status
}

fn dropped(metrics: &str) -> f64 {
    common::metric(metrics, "mesh_tap_events_dropped_total").expect("the counter is listed")
}

#[tokio::test]
async fn a_tap_streams_only_the_calls_its_filter_matches() {
    let mesh = mesh(|_| {}).await;
    let mut tap = TapStream::open(mesh.caller.admin, "service=web&path_prefix=/a")
        .await
        .unwrap();
    for path in ["/b/1", "/a/1?q=1", "/b/2", "/a/2", "/b/3", "/a/end"] {
        call(&mesh, path).await;
    }
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("/a/end") {
        let event = tap.next().await;
        assert_eq!(event.direction, "outbound");
        assert_eq!(event.service, "web");
        assert_eq!(event.status, Some(404), "the app knows no /a");
        assert_eq!(event.tries, 1);
        seen.push(event.path.unwrap());
    }
    assert_eq!(seen, ["/a/1", "/a/2", "/a/end"]);
}

#[tokio::test]
async fn a_status_class_selects_the_failing_calls() {
    let mesh = mesh(|_| {}).await;
    let web = mesh.web.inbound.unwrap();
    let mut tap = TapStream::open(mesh.web.admin, "status=5xx").await.unwrap();
    for path in [
        "/whoami",
        "/status/503",
        "/status/200",
        "/status/404",
        "/status/502",
    ] {
        common::get_h1(web, "web", path).await;
    }
    let first = tap.next().await;
    assert_eq!(first.path.as_deref(), Some("/status/503"));
    assert_eq!(first.status, Some(503));
    assert_eq!(first.direction, "inbound");
    let second = tap.next().await;
    assert_eq!(second.path.as_deref(), Some("/status/502"));
}

#[tokio::test]
async fn a_direction_selects_the_calls_in_or_out() {
    // `web`'s sidecar sees calls to web (inbound) and its app's calls to `api`.
    let mesh = mesh(|_| {}).await;
    let api_app = App::start("api-1").await;
    let url = mesh.registry.url();
    let _api = Sidecar::start(SidecarSpec::server(&url, "api", api_app.addr)).await;
    mesh.registry.until_passing("api", 1).await;
    let web = &mesh.web;
    let mut inbound = TapStream::open(web.admin, "direction=inbound")
        .await
        .unwrap();
    let mut outbound = TapStream::open(web.admin, "direction=outbound")
        .await
        .unwrap();

    let out = common::get_h1(web.outbound, "api", "/whoami").await;
    assert_eq!(out.text, "api-1");
    assert_eq!(call(&mesh, "/whoami").await, StatusCode::OK);
    let out = common::get_h1(web.outbound, "api", "/whoami?again").await;
    assert_eq!(out.text, "api-1");
    assert_eq!(call(&mesh, "/echo").await, StatusCode::OK);

    for _ in 0..2 {
        let event = outbound.next().await;
        assert_eq!(
            (event.direction.as_str(), event.service.as_str()),
            ("outbound", "api")
        );
    }
    let first = inbound.next().await;
    assert_eq!(
        (first.direction.as_str(), first.service.as_str()),
        ("inbound", "web")
    );
    assert_eq!(first.path.as_deref(), Some("/whoami"));
    let next = inbound.next().await;
    assert_eq!(
        next.path.as_deref(),
        Some("/echo"),
        "the call to api was not sent"
    );
}

#[tokio::test]
async fn header_values_show_only_when_named() {
    let mesh = mesh(|spec| {
        spec.config.observe.tap_headers = vec!["x-shown".into(), "x-odd".into()];
    })
    .await;
    let mut tap = TapStream::open(mesh.web.admin, "").await.unwrap();
    let request = Request::get(format!("http://{}/whoami", mesh.caller.outbound))
        .header("host", "web")
        .header("x-secret", "s3cret")
        .header("x-shown", "visible")
        .header("authorization", "Bearer t0ken")
        .header("cookie", "session=c00kie")
        .header(
            "x-odd",
            http::HeaderValue::from_bytes(b"caf\xe9 \"q\" \\").unwrap(),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = common::send(&common::h1(), request).await;
    assert_eq!(answer.status, StatusCode::OK);

    let event = tap.next().await;
    let headers = event.headers.expect("a tap shows the request's headers");
    assert_eq!(headers["x-secret"], REDACTED);
    assert_eq!(headers["authorization"], REDACTED);
    assert_eq!(headers["cookie"], REDACTED);
    assert_eq!(headers["x-shown"], "visible");
    assert_eq!(headers["x-odd"], "caf\u{fffd} \"q\" \\");
    assert_eq!(headers["host"], REDACTED);
    let line = serde_json::to_string(&headers).unwrap();
    for secret in ["s3cret", "t0ken", "c00kie"] {
        assert!(!line.contains(secret), "{line}");
    }
}

#[tokio::test]
async fn bad_queries_and_a_ninth_tap_are_refused() {
    let mesh = mesh(|_| {}).await;
    let admin = mesh.caller.admin;
    for (query, param) in [
        ("direction=sideways", "direction"),
        ("servce=web", "servce"),
        ("max_rps=0", "max_rps"),
        ("status=6xx", "status"),
    ] {
        let refused = TapStream::open(admin, query).await.err().unwrap();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(refused.content_type, "text/plain");
        assert!(refused.text.contains(param), "{query}: {}", refused.text);
    }

    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(TapStream::open(admin, "").await.unwrap());
    }
    let refused = TapStream::open(admin, "").await.err().unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.text.contains('8'), "{}", refused.text);

    // A client that goes away frees its place.
    drop(open.pop());
    eventually(PATIENCE, "a tap opening in the place freed", async || {
        TapStream::open(admin, "").await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_reader_that_never_reads_slows_no_call() {
    let mesh = mesh(|_| {}).await;
    // Never read: what the sidecar sends waits in the sockets, then in its queue.
    let _stalled = TapStream::open(mesh.caller.admin, "max_rps=100")
        .await
        .unwrap();
    let before = dropped(&mesh.caller.metrics().await);
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let outbound = mesh.caller.outbound;
        calls.spawn(async move {
            for i in 0..25 {
                let path = format!("/whoami?worker={worker}&i={i}");
                assert_eq!(call_through(outbound, path).await, StatusCode::OK);
            }
        });
    }
    tokio::time::timeout(PATIENCE, calls.join_all())
        .await
        .expect("400 calls made promptly with a tap stalled");
    eventually(PATIENCE, "tap events dropped", async || {
        dropped(&mesh.caller.metrics().await) > before
    })
    .await;
}

#[tokio::test]
async fn max_rps_caps_the_events_sent() {
    let mesh = mesh(|_| {}).await;
    let mut tap = TapStream::open(mesh.caller.admin, "max_rps=1")
        .await
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        calls.spawn(call_through(mesh.caller.outbound, format!("/whoami?i={i}")));
    }
    let statuses = calls.join_all().await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));

    // Every call was either sent or dropped; count the ones sent as they arrive.
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        while tap.next_within(Duration::from_millis(50)).await.is_some() {
            received += 1;
        }
        if received as f64 + dropped(&mesh.caller.metrics().await) == 20.0 {
            break;
        }
        let now = tokio::time::Instant::now();
        assert!(
            now < deadline,
            "20 calls neither sent nor dropped: {received} sent"
        );
    }
    assert!(received >= 1, "the first call fits the burst");
    assert!(received < 10, "{received} events at max_rps=1");
}

#[tokio::test]
async fn a_tap_ends_when_the_sidecar_stops() {
    let mut mesh = mesh(|_| {}).await;
    let mut tap = TapStream::open(mesh.caller.admin, "").await.unwrap();
    assert_eq!(call(&mesh, "/whoami").await, StatusCode::OK);
    assert_eq!(tap.next().await.path.as_deref(), Some("/whoami"));
    mesh.caller.begin_shutdown();
    assert!(tap.ends_within(PATIENCE).await, "the stream ended");
    let task = mesh.caller.task.take().unwrap();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the sidecar stopped with a tap open")
        .unwrap();
}
