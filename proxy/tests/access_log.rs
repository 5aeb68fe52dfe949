//! The access log (`--access-log FILE`): one JSON line per call on each sidecar it
//! crosses, read back as the API's `CallEvent`; a call the mesh itself fails; an opaque
//! TCP connection; a hostile request; a file that cannot be opened.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{App, PATIENCE, Registry, Sidecar, SidecarSpec, eventually};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::observe::AccessLogTarget;
use mesh_registry_api::call::CallEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Sets `spec` to log to `file` in `dir`, and returns the file's path.
fn log_to(spec: &mut SidecarSpec, dir: &tempfile::TempDir, file: &str) -> PathBuf {
    let path = dir.path().join(file);
    spec.config.observe.access_log = AccessLogTarget::File(path.clone());
    path
}

/// The lines of an access log, each parsed; none while the file does not exist.
fn lines(path: &Path) -> Vec<CallEvent> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not a call event: {line}"))
        })
        .collect()
}

/// Waits until the log at `path` has `n` lines, and returns them.
async fn until_lines(path: &Path, n: usize) -> Vec<CallEvent> {
    let what = format!("{n} lines in {}", path.display());
    eventually(PATIENCE, &what, async || lines(path).len() >= n).await;
    let lines = lines(path);
    assert_eq!(lines.len(), n, "{lines:#?}");
    lines
}

fn by_path<'a>(lines: &'a [CallEvent], path: &str) -> &'a CallEvent {
    let mut found = lines.iter().filter(|l| l.path.as_deref() == Some(path));
    let line = found
        .next()
        .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"));
    assert!(found.next().is_none(), "one line for {path}: {lines:#?}");
    line
}

/// A registry; the app `web-1` behind the sidecar of `web`; a caller sidecar; each
/// sidecar logging to its own file in `dir`.
struct Pair {
    registry: Registry,
    _app: App,
    callee: Sidecar,
    caller: Sidecar,
    callee_log: PathBuf,
    caller_log: PathBuf,
}

async fn pair(dir: &tempfile::TempDir) -> Pair {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, "web", app.addr);
    let callee_log = log_to(&mut spec, dir, "callee.log");
    let callee = Sidecar::start(spec).await;
    registry.until_passing("web", 1).await;
    let mut spec = SidecarSpec::client(&url);
    let caller_log = log_to(&mut spec, dir, "caller.log");
    let caller = Sidecar::start(spec).await;
    Pair {
        registry,
        _app: app,
        callee,
        caller,
        callee_log,
        caller_log,
    }
}

#[tokio::test]
async fn each_call_is_one_line_on_each_sidecar_it_crosses() {
    let dir = tempfile::tempdir().unwrap();
    let mut pair = pair(&dir).await;
    let client = common::h1();
    let get = Request::get(format!("http://{}/whoami?user=alice", pair.caller.outbound))
        .header("host", "web")
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = common::send(&client, get).await;
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (StatusCode::OK, "web-1")
    );
    let post = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/echo", pair.caller.outbound))
        .header("host", "web")
        .body(Full::new(Bytes::from_static(b"hello mesh")))
        .unwrap();
    let answer = common::send(&client, post).await;
    assert_eq!(answer.text, "hello mesh");

    let callee_at = pair.callee.inbound.unwrap().to_string();
    let caller = until_lines(&pair.caller_log, 2).await;
    let whoami = by_path(&caller, "/whoami");
    assert_eq!(whoami.direction, "outbound");
    assert_eq!(whoami.kind, "request");
    assert_eq!(whoami.service, "web");
    assert_eq!(whoami.method.as_deref(), Some("GET"));
    assert_eq!(whoami.authority.as_deref(), Some("web"));
    assert_eq!(whoami.status, Some(200));
    assert_eq!(whoami.tries, 1);
    assert_eq!(whoami.endpoint.as_deref(), Some(callee_at.as_str()));
    let peer: SocketAddr = whoami.peer.as_deref().unwrap().parse().unwrap();
    assert!(peer.ip().is_loopback(), "the app's address: {peer}");
    assert_eq!(whoami.trace_id.as_deref(), Some(TRACE_ID));
    assert_eq!(whoami.span_id, None, "not traced here");
    assert_eq!(whoami.response_bytes, "web-1".len() as u64);
    assert_eq!(whoami.mesh_error, None);
    assert!(!whoami.failed);
    assert!(whoami.duration_ms >= 0.0);
    assert_eq!(whoami.headers, None, "the log never carries headers");
    humantime::parse_rfc3339(&whoami.time).expect("an RFC 3339 time");
    let echo = by_path(&caller, "/echo");
    assert_eq!(echo.method.as_deref(), Some("POST"));
    assert_eq!(echo.request_bytes, 10);
    assert_eq!(echo.response_bytes, 10);
    assert_eq!(echo.trace_id, None, "no traceparent, no trace id");

    let callee = until_lines(&pair.callee_log, 2).await;
    let whoami = by_path(&callee, "/whoami");
    assert_eq!(whoami.direction, "inbound");
    assert_eq!(whoami.service, "web");
    assert_eq!(whoami.status, Some(200));
    assert_eq!(whoami.endpoint, None);
    assert!(whoami.peer.is_some(), "the calling sidecar's address");
    assert_eq!(
        whoami.trace_id.as_deref(),
        Some(TRACE_ID),
        "one trace id per call"
    );
    assert_eq!(whoami.response_bytes, 5);
    assert_eq!(by_path(&callee, "/echo").request_bytes, 10);

    // The last lines are written before the sidecar's run returns.
    let answer = common::get_h1(pair.caller.outbound, "web", "/whoami?last").await;
    assert_eq!(answer.status, StatusCode::OK);
    pair.caller.begin_shutdown();
    let task = pair.caller.task.take().unwrap();
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the sidecar stopped")
        .unwrap();
    assert_eq!(lines(&pair.caller_log).len(), 3);
}

#[tokio::test]
async fn a_call_the_mesh_fails_is_logged_with_its_mesh_error() {
    let dir = tempfile::tempdir().unwrap();
    let pair = pair(&dir).await;
    // `empty` exists in the registry but has no passing instance.
    let mut critical = mesh_registry_api::Registration::new("127.0.0.1:1");
    critical.status = mesh_registry_api::Status::Critical;
    let registry = &pair.registry.client;
    registry.register("empty", "e-1", &critical).await.unwrap();

    let answer = common::get_h1(pair.caller.outbound, "empty", "/nothing?x=1").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["mesh-error"], "no-endpoints");

    let lines = until_lines(&pair.caller_log, 1).await;
    let line = &lines[0];
    assert_eq!(line.service, "empty");
    assert_eq!(line.path.as_deref(), Some("/nothing"));
    assert_eq!(line.status, Some(503));
    assert_eq!(line.mesh_error.as_deref(), Some("no-endpoints"));
    assert_eq!(line.tries, 0, "no endpoint to try");
    assert_eq!(line.endpoint, None);
}

/// A TCP server that reads until the client half-closes, then answers `got N bytes`
/// and closes.
async fn counter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if stream.read_to_end(&mut got).await.is_ok() {
                    let answer = format!("got {} bytes", got.len());
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_opaque_tcp_connection_is_one_tcp_line_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().await;
    let url = registry.url();
    let server = counter().await;
    let mut spec = SidecarSpec::server(&url, "db", server);
    spec.app = Some(("db", server, Some(AppProtocol::Tcp)));
    let callee_log = log_to(&mut spec, &dir, "callee.log");
    let callee = Sidecar::start(spec).await;
    registry.until_passing("db", 1).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["db"];
    let caller_log = log_to(&mut spec, &dir, "caller.log");
    let caller = Sidecar::start(spec).await;

    let mut stream = TcpStream::connect(caller.upstreams[0]).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .expect("the server answered and closed")
        .unwrap();
    assert_eq!(answer, "got 4 bytes");
    drop(stream);

    let callee_at = callee.inbound.unwrap().to_string();
    for (log, direction) in [(&caller_log, "outbound"), (&callee_log, "inbound")] {
        let lines = until_lines(log, 1).await;
        let line = &lines[0];
        assert_eq!(line.kind, "tcp", "{line:?}");
        assert_eq!(line.direction, direction);
        assert_eq!(line.service, "db");
        assert_eq!(line.request_bytes, 4, "{line:?}");
        assert_eq!(line.response_bytes, "got 4 bytes".len() as u64, "{line:?}");
        assert_eq!((line.method.as_ref(), line.path.as_ref()), (None, None));
        assert_eq!(line.status, None);
        assert!(line.peer.is_some());
        if direction == "outbound" {
            assert_eq!(line.endpoint.as_deref(), Some(callee_at.as_str()));
            assert_eq!(line.tries, 1);
        }
    }
}

#[tokio::test]
async fn a_hostile_request_is_still_one_valid_line() {
    let dir = tempfile::tempdir().unwrap();
    let pair = pair(&dir).await;
    let long = "x".repeat(10_000);
    let mut request = Vec::new();
    request
        .extend_from_slice(format!("GET /hostile/{long}%22%5C%00?q=%FF HTTP/1.1\r\n").as_bytes());
    request.extend_from_slice(b"Host: web\r\n");
    request.extend_from_slice(b"X-Odd: caf\xe9 \"quoted\" \\back\\ \xff\xfe\t{\"json\":1}\r\n");
    request.extend_from_slice(b"X-Empty:\r\n");
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let answer = common::raw(pair.caller.outbound, &request).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    let path = format!("/hostile/{long}%22%5C%00");
    for log in [&pair.caller_log, &pair.callee_log] {
        let lines = until_lines(log, 1).await;
        assert_eq!(lines[0].path.as_deref(), Some(path.as_str()));
        assert_eq!(lines[0].status, Some(404));
    }
    // Still serving.
    let answer = common::get_h1(pair.caller.outbound, "web", "/whoami").await;
    assert_eq!(answer.status, StatusCode::OK);
    until_lines(&pair.caller_log, 2).await;
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_stops_the_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = mesh_proxy::Config::default();
    // A directory: not a file it can append to.
    config.observe.access_log = AccessLogTarget::File(dir.path().to_owned());
    let listeners = mesh_proxy::Listeners {
        inbound: None,
        outbound: common::listener().await,
        upstreams: Vec::new(),
        admin: common::listener().await,
    };
    let run = mesh_proxy::run(listeners, config, std::future::pending());
    let error = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("start-up fails at once")
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("--access-log"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}
