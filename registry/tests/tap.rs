//! A sidecar's live tap relayed by the registry, over real sockets: a small fake admin
//! server streams lines as a sidecar's `/tap` does (its end is the point here: when lines
//! come, and what reaches it), and the registry passes them on as they come, checks the
//! filter first, lets only the operator tap where there are credentials, and keeps half
//! of its relay slots for pages. That a tap ends cleanly at its longest is tested beside
//! the relay (`sidecar.rs`), with a shorter longest.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{PATIENCE, Registry, RegistryExt, eventually};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_registry_api::Registration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const OPERATOR: &str = "operator-secret";
const WEB_TOKEN: &str = "web-secret";

/// How the fake admin server answers `/tap`.
#[derive(Clone, Copy)]
enum Tap {
    /// One line, then a second once `next` is notified, then nothing more (open).
    Stepped,
    /// 503: as many taps open as the sidecar allows.
    Full,
    /// 404: a sidecar without the tap.
    Missing,
}

/// A fake sidecar admin port: `/tap` as `tap` says, `/ready` as a ready sidecar.
struct FakeAdmin {
    address: SocketAddr,
    /// Each request's first line, as it arrived.
    requests: Arc<Mutex<Vec<String>>>,
    next: Arc<Notify>,
}

impl FakeAdmin {
    async fn start(tap: Tap) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(Notify::new());
        let (seen, step) = (requests.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, tap, seen.clone(), step.clone()));
            }
        });
        FakeAdmin {
            address,
            requests,
            next,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn taps(&self) -> usize {
        let taps = self.requests().into_iter();
        taps.filter(|r| r.starts_with("GET /tap")).count()
    }
}

const LINE_1: &str = "{\"time\":\"2026-12-08T10:00:00Z\",\"direction\":\"inbound\",\"kind\":\"request\",\"service\":\"web\",\"path\":\"/one\",\"duration_ms\":1.5,\"request_bytes\":0,\"response_bytes\":2}\n";
const LINE_2: &str = "{\"time\":\"2026-12-08T10:00:01Z\",\"direction\":\"inbound\",\"kind\":\"request\",\"service\":\"web\",\"path\":\"/two\",\"duration_ms\":1.5,\"request_bytes\":0,\"response_bytes\":2}\n";

async fn answer(mut stream: TcpStream, tap: Tap, seen: Arc<Mutex<Vec<String>>>, next: Arc<Notify>) {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).await.is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or_default().to_owned();
    let is_tap = line.starts_with("GET /tap");
    seen.lock().unwrap().push(line);
    let reply = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let bytes = match (tap, is_tap) {
        (_, false) => reply("200 OK", "{\"ready\":true}"),
        (Tap::Full, true) => reply("503 Service Unavailable", "8 taps are open\n"),
        (Tap::Missing, true) => reply("404 Not Found", "not found; try /metrics\n"),
        (Tap::Stepped, true) => {
            let chunk = |line: &str| format!("{:x}\r\n{line}\r\n", line.len());
            let start = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                 transfer-encoding: chunked\r\n\r\n{}",
                chunk(LINE_1)
            );
            if stream.write_all(start.as_bytes()).await.is_err() {
                return;
            }
            next.notified().await;
            if stream.write_all(chunk(LINE_2).as_bytes()).await.is_err() {
                return;
            }
            // Open, and quiet, as a sidecar's tap is when there are no calls; the
            // connection closes when the relay drops it.
            let _ = stream.read(&mut [0u8; 1]).await;
            return;
        }
    };
    let _ = stream.write_all(bytes.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Registers `web/{id}` with its sidecar admin address.
async fn register(r: &Registry, id: &str, admin: SocketAddr) {
    register_with(&r.client, id, admin).await;
}

async fn register_with(client: &mesh_registry_api::Client, id: &str, admin: SocketAddr) {
    let mut registration = Registration::new("127.0.0.1:4143");
    registration
        .metadata
        .insert("admin".into(), admin.to_string());
    client.register("web", id, &registration).await.unwrap();
}

/// A streamed answer: its head, and its body read frame by frame.
struct Stream {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Incoming,
    read: String,
}

impl Stream {
    async fn open(url: &str, bearer: Option<&str>) -> Stream {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut request = Request::get(url);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = client
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Stream {
            status: parts.status,
            headers: parts.headers,
            body,
            read: String::new(),
        }
    }

    /// Reads until `n` lines have arrived; panics if the stream ends first.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        while self.read.matches('\n').count() < n {
            let frame = self.body.frame().await;
            let frame = frame.expect("the stream ended").expect("the stream broke");
            let data = frame.into_data().unwrap_or_default();
            self.read.push_str(std::str::from_utf8(&data).unwrap());
        }
        self.read.lines().map(str::to_owned).collect()
    }

    /// The whole body of a refusal, as JSON.
    async fn json(self) -> serde_json::Value {
        let body = self.body.collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }
}

fn tap_url(r: &Registry, id: &str, query: &str) -> String {
    r.url_for(&format!("/v1/services/web/instances/{id}/admin/tap{query}"))
}

#[tokio::test]
async fn lines_stream_through_as_the_sidecar_sends_them() {
    let fake = FakeAdmin::start(Tap::Stepped).await;
    let r = Registry::start().await;
    register(&r, "a", fake.address).await;

    let query = "?method=get&status=5XX&path_prefix=/a%20b&max_rps=";
    let mut tap = Stream::open(&tap_url(&r, "a", query), None).await;
    assert_eq!(tap.status, StatusCode::OK);
    assert_eq!(tap.headers["content-type"], "application/x-ndjson");
    assert_eq!(tap.headers["x-content-type-options"], "nosniff");
    assert_eq!(
        tap.headers["x-mesh-sidecar"],
        fake.address.to_string().as_str()
    );
    // The first line arrives while the sidecar holds the second back.
    assert_eq!(tap.lines(1).await, [LINE_1.trim_end()]);
    fake.next.notify_one();
    assert_eq!(tap.lines(2).await[1], LINE_2.trim_end());

    // The filter as the registry wrote it again: nothing else reaches the sidecar.
    assert_eq!(
        fake.requests(),
        ["GET /tap?path_prefix=/a%20b&method=GET&status=5xx HTTP/1.1"]
    );
}

#[tokio::test]
async fn a_bad_filter_is_refused_by_the_registry_without_asking_the_sidecar() {
    let fake = FakeAdmin::start(Tap::Stepped).await;
    let r = Registry::start().await;
    register(&r, "a", fake.address).await;
    for (query, param) in [
        ("?direction=sideways", "direction"),
        ("?status=6xx", "status"),
        ("?max_rps=0", "max_rps"),
        ("?path_prefix=api", "path_prefix"),
        ("?service=web&then=/shutdown", "then"),
    ] {
        let refused = Stream::open(&tap_url(&r, "a", query), None).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{query}");
        let body = refused.json().await;
        assert_eq!(body["error"]["code"], "invalid_argument", "{query}");
        assert_eq!(body["error"]["field"], param, "{query}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{param}: ")), "{message}");
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    let post = r
        .raw(
            Method::POST,
            "/v1/services/web/instances/a/admin/tap",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET");
}

#[tokio::test]
async fn with_credentials_only_the_operator_taps() {
    let fake = FakeAdmin::start(Tap::Stepped).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("web {WEB_TOKEN}\n")).unwrap();
    let r = Registry::start_with(mesh_registry::Config {
        token: Some(OPERATOR.into()),
        tokens: Some(tokens),
        ..mesh_registry::Config::default()
    })
    .await;
    register_with(&r.client.clone().with_token(OPERATOR), "a", fake.address).await;
    let url = tap_url(&r, "a", "");

    let anonymous = Stream::open(&url, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers["www-authenticate"], "Bearer");
    let body = anonymous.json().await;
    assert_eq!(body["error"]["code"], "unauthorized");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("operator token (--token)"), "{message}");

    let wrong = Stream::open(&url, Some("guess")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    // The web service's own token writes web's instances, but taps see other services.
    let service = Stream::open(&url, Some(WEB_TOKEN)).await;
    assert_eq!(service.status, StatusCode::FORBIDDEN);
    let body = service.json().await;
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(body["error"]["field"], "authorization");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    let mut operator = Stream::open(&url, Some(OPERATOR)).await;
    assert_eq!(operator.status, StatusCode::OK);
    assert_eq!(operator.lines(1).await, [LINE_1.trim_end()]);
}

#[tokio::test]
async fn taps_hold_at_most_half_the_slots_and_pages_are_still_relayed() {
    let fake = FakeAdmin::start(Tap::Stepped).await;
    let r = Registry::start_with(mesh_registry::Config {
        max_admin_relays: 4,
        ..mesh_registry::Config::default()
    })
    .await;
    register(&r, "a", fake.address).await;
    let url = tap_url(&r, "a", "");

    let mut first = Stream::open(&url, None).await;
    let mut second = Stream::open(&url, None).await;
    for tap in [&mut first, &mut second] {
        assert_eq!(tap.status, StatusCode::OK);
        tap.lines(1).await;
    }
    let third = Stream::open(&url, None).await;
    assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers["retry-after"], "1");
    let body = third.json().await;
    assert_eq!(body["error"]["code"], "relays_busy");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("2 taps"), "{message}");
    assert_eq!(fake.taps(), 2, "the sidecar was not asked a third time");

    // Both taps stay open, and pages are relayed beside them.
    for _ in 0..3 {
        let ready = r
            .raw(
                Method::GET,
                "/v1/services/web/instances/a/admin/ready",
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(ready.status, StatusCode::OK);
    }

    // A client that leaves gives its tap's slot back.
    drop(first);
    eventually(PATIENCE, "a third tap opened", async || {
        Stream::open(&url, None).await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_sidecar_that_will_not_tap_is_answered_for_with_its_reason() {
    let full = FakeAdmin::start(Tap::Full).await;
    let missing = FakeAdmin::start(Tap::Missing).await;
    let r = Registry::start().await;
    register(&r, "full", full.address).await;
    register(&r, "old", missing.address).await;

    let busy = Stream::open(&tap_url(&r, "full", ""), None).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = busy.json().await;
    assert_eq!(body["error"]["code"], "relays_busy");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("8 taps are open"), "{message}");

    let old = Stream::open(&tap_url(&r, "old", ""), None).await;
    assert_eq!(old.status, StatusCode::BAD_GATEWAY);
    let body = old.json().await;
    assert_eq!(body["error"]["code"], "sidecar_unreachable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&missing.address.to_string()) && message.contains("404"),
        "{message}"
    );

    let unknown = Stream::open(&tap_url(&r, "nobody", ""), None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
