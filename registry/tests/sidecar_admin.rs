//! Reading a sidecar's admin pages through the registry, over real sockets: a small fake
//! admin server answers (or misbehaves), and the registry passes answers on or says
//! precisely why it could not.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Answer, Registry, RegistryExt};
use http::{Method, StatusCode};
use mesh_registry_api::Registration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GET: Method = Method::GET;
const SCRIPT_PAGE: &str =
    "<!doctype html><script>fetch('/v1/services/web/instances/a',{method:'DELETE'})</script>";
const SCRIPT_SVG: &str =
    "<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(document.domain)</script></svg>";
const LARGE: usize = 900 * 1024;
const METRICS: &str = "# TYPE mesh_requests_total counter\nmesh_requests_total{direction=\"inbound\",service=\"web\"} 7\n";

/// How the fake admin server answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Like a mesh-proxy: `/ready`, `/metrics`, `/debug/endpoints`, 404 otherwise.
    Sidecar,
    /// A sidecar that is not ready: 503 on `/ready`.
    NotReady,
    /// Accepts, reads the request, never answers.
    Silent,
    /// Answers something that is not HTTP.
    Garbage,
    /// Redirects elsewhere.
    Redirect,
    /// Declares and sends more than the registry reads.
    Huge,
    /// Sends more than the registry reads, chunked, declaring no length.
    HugeChunked,
    /// A large page within the cap (900 KiB), with its length.
    Large,
    /// Answers every page with a page of HTML that runs a script.
    Html,
    /// Answers every page with an SVG image that runs a script.
    Svg,
    /// Answers 101 Switching Protocols.
    Switching,
    /// Answers with a status past 599.
    Status600,
    /// Answers 404 with an empty body, as a web server that is no sidecar would.
    NotFound,
    /// Sends its head, then one body byte every 100 ms, forever.
    Trickle,
}

/// A fake sidecar admin port; `requests` holds each request's head as it arrived.
struct FakeAdmin {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeAdmin {
    async fn start(behaviour: Behaviour) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, behaviour, seen.clone()));
            }
        });
        FakeAdmin { address, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(mut stream: TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).await.is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    seen.lock().unwrap().push(head);
    let reply = |status: &str, content_type: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let bytes = match (behaviour, path.as_str()) {
        (Behaviour::Silent, _) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        (Behaviour::Garbage, _) => b"hello, this is not HTTP\r\n\r\n".to_vec(),
        (Behaviour::Redirect, _) => {
            b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n"
                .to_vec()
        }
        (Behaviour::HugeChunked, _) => {
            let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                transfer-encoding: chunked\r\n\r\n"
                .to_vec();
            for _ in 0..32 {
                bytes.extend(b"10000\r\n");
                bytes.extend(vec![b'x'; 0x10000]);
                bytes.extend(b"\r\n");
            }
            bytes.extend(b"0\r\n\r\n");
            bytes
        }
        (Behaviour::Large, _) => {
            let body = "x".repeat(LARGE);
            reply("200 OK", "text/plain; version=0.0.4", &body)
        }
        (Behaviour::Html, _) => reply("200 OK", "text/html; charset=utf-8", SCRIPT_PAGE),
        (Behaviour::Svg, _) => reply("200 OK", "image/svg+xml", SCRIPT_SVG),
        (Behaviour::Switching, _) => {
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\
              <script>alert(document.cookie)</script>"
                .to_vec()
        }
        (Behaviour::Status600, _) => reply("600 Beyond", "text/html", SCRIPT_PAGE),
        (Behaviour::NotFound, _) => reply("404 Not Found", "text/plain", ""),
        (Behaviour::Trickle, _) => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while stream.write_all(b"1\r\nx\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        (Behaviour::Huge, _) => {
            let mut bytes =
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2097152\r\n\r\n"
                    .to_vec();
            bytes.extend(vec![b'x'; 2 * 1024 * 1024]);
            bytes
        }
        (Behaviour::NotReady, "/ready") => reply(
            "503 Service Unavailable",
            "application/json",
            r#"{"ready":false,"registry_connected":true,"reason":"no mTLS certificate yet"}"#,
        ),
        (_, "/ready") => reply(
            "200 OK",
            "application/json",
            r#"{"ready":true,"registry_connected":true}"#,
        ),
        (_, "/metrics") => reply("200 OK", "text/plain; version=0.0.4", METRICS),
        (_, "/debug/endpoints") => reply("200 OK", "application/json", "[]\n"),
        _ => reply("404 Not Found", "text/plain", "not found\n"),
    };
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

/// Registers `web/a` with its sidecar admin address (or none).
async fn register(r: &Registry, admin: Option<String>) {
    let mut registration = Registration::new("127.0.0.1:4143");
    if let Some(admin) = admin {
        registration.metadata.insert("admin".into(), admin);
    }
    r.client.register("web", "a", &registration).await.unwrap();
}

async fn admin_page(r: &Registry, page: &str) -> Answer {
    let path = format!("/v1/services/web/instances/a/admin/{page}");
    r.raw(GET, &path, &[], Bytes::new()).await
}

#[tokio::test]
async fn the_three_pages_are_passed_on_with_the_sidecars_status_and_type() {
    let fake = FakeAdmin::start(Behaviour::Sidecar).await;
    let r = Registry::start().await;
    register(&r, Some(fake.address.to_string())).await;

    let metrics = admin_page(&r, "metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(
        metrics.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        metrics.headers["x-mesh-sidecar"],
        fake.address.to_string().as_str()
    );
    assert_eq!(metrics.text, METRICS);

    let ready = admin_page(&r, "ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["ready"], true);
    let endpoints = admin_page(&r, "debug/endpoints").await;
    assert_eq!(endpoints.headers["content-type"], "application/json");
    assert_eq!(endpoints.json, serde_json::json!([]));

    // Plain GETs of those paths, to the registered address and nothing else.
    let requests = fake.requests();
    let lines: Vec<&str> = requests.iter().map(|h| h.lines().next().unwrap()).collect();
    assert_eq!(
        lines,
        [
            "GET /metrics HTTP/1.1",
            "GET /ready HTTP/1.1",
            "GET /debug/endpoints HTTP/1.1"
        ]
    );
    let host = format!("host: {}", fake.address);
    assert!(
        requests[0].to_lowercase().contains(&host),
        "{}",
        requests[0]
    );
    assert!(
        r.metrics()
            .await
            .contains(r#"mesh_registry_http_requests_total{code="200",route="sidecar_admin"} 3"#)
    );
}

#[tokio::test]
async fn a_sidecar_that_is_not_ready_is_passed_on_as_such() {
    let fake = FakeAdmin::start(Behaviour::NotReady).await;
    let r = Registry::start().await;
    register(&r, Some(fake.address.to_string())).await;
    let ready = admin_page(&r, "ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json["reason"], "no mTLS certificate yet");
    assert!(ready.headers.contains_key("x-mesh-sidecar"));
}

#[tokio::test]
async fn unknown_instances_missing_addresses_and_other_pages_are_404s_with_their_codes() {
    let r = Registry::start().await;
    let unknown = admin_page(&r, "metrics").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code(), "not_found");

    register(&r, None).await;
    let none = admin_page(&r, "metrics").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(none.error_code(), "no_admin");
    assert!(!none.headers.contains_key("x-mesh-sidecar"));

    for page in [
        "shutdown",
        "live",
        "debug",
        "metrics/x",
        "",
        "%2e%2e/metrics",
    ] {
        let other = admin_page(&r, page).await;
        assert_eq!(other.status, StatusCode::NOT_FOUND, "{page}");
        assert_eq!(other.error_code(), "no_route", "{page}");
    }
    let post = r
        .raw(
            Method::POST,
            "/v1/services/web/instances/a/admin/metrics",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    let bad = r
        .raw(
            GET,
            "/v1/services/Web/instances/a/admin/ready",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_field(), Some("service"));
}

#[tokio::test]
async fn a_refused_or_misbehaving_sidecar_is_a_502_naming_the_address_and_why() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = closed.local_addr().unwrap().to_string();
    drop(closed);
    let garbage = FakeAdmin::start(Behaviour::Garbage)
        .await
        .address
        .to_string();
    let redirect = FakeAdmin::start(Behaviour::Redirect)
        .await
        .address
        .to_string();
    let huge = FakeAdmin::start(Behaviour::Huge).await.address.to_string();
    let r = Registry::start().await;
    for (admin, why) in [
        (refused.as_str(), "cannot connect"),
        (garbage.as_str(), "no answer"),
        (redirect.as_str(), "redirects are not followed"),
        (huge.as_str(), "larger than 1048576 bytes"),
    ] {
        register(&r, Some(admin.to_owned())).await;
        let answer = admin_page(&r, "metrics").await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{admin}");
        assert_eq!(answer.error_code(), "sidecar_unreachable", "{admin}");
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(admin) && message.contains(why),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_sidecar_that_never_answers_is_a_504_after_two_seconds() {
    let silent = FakeAdmin::start(Behaviour::Silent).await;
    let r = Registry::start().await;
    register(&r, Some(silent.address.to_string())).await;
    let started = Instant::now();
    let answer = admin_page(&r, "debug/endpoints").await;
    let waited = started.elapsed();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.error_code(), "sidecar_timeout");
    assert!(
        answer.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&silent.address.to_string())
    );
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // Other requests were not held up meanwhile: the registry still answers at once.
    let started = Instant::now();
    r.client.services().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// What every relayed answer says about itself, whatever the sidecar said: data for
/// scripts to read, never a page a browser renders on the registry's origin (where the
/// dashboard lives).
fn assert_served_as_data(answer: &Answer, content_type: &str, what: &str) {
    assert_eq!(answer.headers["content-type"], content_type, "{what}");
    assert_eq!(
        answer.headers["x-content-type-options"], "nosniff",
        "{what}"
    );
    assert_eq!(
        answer.headers["content-security-policy"], "sandbox; default-src 'none'",
        "{what}"
    );
}

#[tokio::test]
async fn html_or_svg_from_a_sidecar_is_relayed_as_data_never_as_a_page() {
    let html = FakeAdmin::start(Behaviour::Html).await;
    let svg = FakeAdmin::start(Behaviour::Svg).await;
    let fine = FakeAdmin::start(Behaviour::Sidecar).await;
    let r = Registry::start().await;
    for (fake, name) in [(&html, "html"), (&svg, "svg"), (&fine, "a mesh-proxy")] {
        register(&r, Some(fake.address.to_string())).await;
        for (page, content_type) in [
            ("metrics", "text/plain; version=0.0.4; charset=utf-8"),
            ("ready", "application/json"),
            ("debug/endpoints", "application/json"),
        ] {
            let answer = admin_page(&r, page).await;
            assert_eq!(answer.status, StatusCode::OK, "{name} {page}");
            assert_served_as_data(&answer, content_type, &format!("{name} {page}"));
        }
    }
    // The sidecar's words are passed on, only their type is not.
    register(&r, Some(html.address.to_string())).await;
    assert_eq!(admin_page(&r, "metrics").await.text, SCRIPT_PAGE);
}

#[tokio::test]
async fn a_status_other_than_200_or_503_from_a_sidecar_is_a_502() {
    let switching = FakeAdmin::start(Behaviour::Switching).await;
    let beyond = FakeAdmin::start(Behaviour::Status600).await;
    let not_found = FakeAdmin::start(Behaviour::NotFound).await;
    let r = Registry::start().await;
    for (fake, status) in [(&switching, "101"), (&beyond, "600"), (&not_found, "404")] {
        let admin = fake.address.to_string();
        register(&r, Some(admin.clone())).await;
        for page in ["ready", "metrics", "debug/endpoints"] {
            let answer = admin_page(&r, page).await;
            assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{status} {page}");
            assert_eq!(
                answer.error_code(),
                "sidecar_unreachable",
                "{status} {page}"
            );
            let message = answer.json["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&admin) && message.contains(status),
                "{message}"
            );
            assert!(!answer.headers.contains_key("x-mesh-sidecar"));
        }
    }
}

#[tokio::test]
async fn a_large_page_is_relayed_whole_and_one_past_the_cap_is_cut() {
    let large = FakeAdmin::start(Behaviour::Large).await;
    let chunked = FakeAdmin::start(Behaviour::HugeChunked).await;
    let r = Registry::start().await;
    register(&r, Some(large.address.to_string())).await;
    let answer = admin_page(&r, "metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text.len(), LARGE);

    // No length declared: the relay has begun by the time the cap is passed, so the
    // answer is cut, and the client sees a body that broke off rather than a whole one.
    register(&r, Some(chunked.address.to_string())).await;
    let url = r.url_for("/v1/services/web/instances/a/admin/metrics");
    let (status, body) = get_counting(&url).await;
    assert_eq!(status, StatusCode::OK);
    let body = body.expect_err("a body past the cap must break off");
    assert!(body <= 1024 * 1024, "{body} bytes relayed before the cut");
}

/// GETs `url` and reads its body: the status, and the body's length or, when the body
/// broke off, how many bytes had arrived.
async fn get_counting(url: &str) -> (StatusCode, Result<usize, usize>) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut read = 0;
    loop {
        match body.frame().await {
            None => return (status, Ok(read)),
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            Some(Err(_)) => return (status, Err(read)),
        }
    }
}

#[tokio::test]
async fn relays_past_the_cap_are_503_at_once_and_slots_free_when_clients_leave() {
    let trickle = FakeAdmin::start(Behaviour::Trickle).await;
    let fine = FakeAdmin::start(Behaviour::Sidecar).await;
    let r = Registry::start_with(mesh_registry::Config {
        max_admin_relays: 2,
        ..mesh_registry::Config::default()
    })
    .await;
    register(&r, Some(trickle.address.to_string())).await;
    let mut other = Registration::new("127.0.0.1:4143");
    other
        .metadata
        .insert("admin".into(), fine.address.to_string());
    r.client.register("web", "b", &other).await.unwrap();

    // Two relays that never end hold both slots.
    let url = r.url_for("/v1/services/web/instances/a/admin/metrics");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get_counting(&url).await })
        })
        .collect();
    common::eventually(common::PATIENCE, "two relays under way", async || {
        trickle.requests().len() == 2
    })
    .await;

    let busy = r
        .raw(
            GET,
            "/v1/services/web/instances/b/admin/ready",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.error_code(), "relays_busy");
    let message = busy.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("2 sidecar admin pages"), "{message}");
    assert!(fine.requests().is_empty(), "the sidecar was not asked");

    // Clients that go away give their slots back.
    for task in held {
        task.abort();
    }
    common::eventually(common::PATIENCE, "a relay served again", async || {
        let path = "/v1/services/web/instances/b/admin/ready";
        r.raw(GET, path, &[], Bytes::new()).await.status == StatusCode::OK
    })
    .await;
}
