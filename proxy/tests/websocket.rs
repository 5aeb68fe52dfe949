//! HTTP/1.1 Upgrade through a sidecar pair: Python's `websockets` (an independent
//! implementation) as client and server, in plaintext and under strict mTLS; a protocol
//! of our own to watch half-closes cross both sidecars; and a `101` nobody asked for.
//!
//! Needs Python with `websockets` (`$PYTHON`, as the README's test command sets it).

mod common;
#[path = "../../demo-services/recommendations/tests/support/python.rs"]
#[allow(dead_code)]
mod python;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    JOIN_TOKEN, PATIENCE, Registry, Sidecar, SidecarSpec, eventually, read_head, shouting_app,
};
use mesh_proxy::tls::TlsMode;
use python::python;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// The Python WebSocket echo server, on a free port of 127.0.0.1.
struct EchoServer {
    addr: SocketAddr,
    _child: Child,
}

impl EchoServer {
    async fn start(name: &str) -> EchoServer {
        let mut child = Command::new(python())
            .arg(script("ws_echo_server.py"))
            .arg(name)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
        let mut first = String::new();
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut first);
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the echo server printed its port")
            .unwrap();
        let port: u16 = first.trim().parse().unwrap_or_else(|_| {
            panic!(
                "the echo server did not start (is `websockets` installed for {}? see the \
                 README's test command): {first:?}",
                python()
            )
        });
        EchoServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }
    }
}

/// Runs the Python WebSocket client against `addr` with `Host: host`; what it saw.
async fn python_client(addr: SocketAddr, host: &str, path: &str) -> Value {
    let run = Command::new(python())
        .arg(script("ws_client.py"))
        .args([&addr.to_string(), host, path])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the WebSocket client finished")
        .unwrap();
    python::check("the Python WebSocket client", &output);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What the Python client sees from the echo server named `name`, asked at `path`.
fn echoed(name: &str, path: &str) -> Value {
    json!({
        "subprotocol_status": 101,
        "whoami": format!("{name} {path}"),
        "text": "hello",
        "binary": [0, 1, 2],
        "big_echoed": true,
        "pong": true,
        "close_code": 1000,
    })
}

#[tokio::test]
async fn a_websocket_crosses_a_plaintext_sidecar_pair() {
    let echo = EchoServer::start("chat-1").await;
    let registry = Registry::start().await;
    let url = registry.url();
    let _server = Sidecar::start(SidecarSpec::server(&url, "chat", echo.addr)).await;
    registry.until_passing("chat", 1).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["chat"];
    let client = Sidecar::start(spec).await;

    // Through the listener dedicated to chat, and through the one that routes by Host.
    let seen = python_client(client.upstreams[0], "localhost", "/room/1").await;
    assert_eq!(seen, echoed("chat-1", "/room/1"));
    let seen = python_client(client.outbound, "chat", "/room/2?x=1").await;
    assert_eq!(seen, echoed("chat-1", "/room/2?x=1"));

    // Counted as requests answered 101.
    let metrics = client.metrics().await;
    let upgraded = common::metric(
        &metrics,
        r#"mesh_responses_total{classification="success",direction="outbound",grpc_status="",service="chat",status_code="101"}"#,
    );
    assert_eq!(upgraded, Some(2.0), "{metrics}");
    // And as connections, closed cleanly, with the 1 MiB message each way.
    let closed =
        r#"mesh_spliced_closed_total{direction="outbound",reason="closed",service="chat"}"#;
    eventually(PATIENCE, "both connections counted closed", async || {
        common::metric(&client.metrics().await, closed) == Some(2.0)
    })
    .await;
    let metrics = client.metrics().await;
    for from in ["client", "server"] {
        let series = format!(
            r#"mesh_spliced_bytes_total{{direction="outbound",from="{from}",service="chat"}}"#
        );
        let bytes = common::metric(&metrics, &series).unwrap_or_default();
        assert!(bytes > 2.0 * 1024.0 * 1024.0, "{series} {bytes}");
    }
    let open = r#"mesh_spliced_open_connections{direction="outbound",service="chat"}"#;
    assert_eq!(common::metric(&metrics, open), Some(0.0), "{metrics}");
}

#[tokio::test]
async fn a_websocket_crosses_a_strict_mtls_sidecar_pair() {
    let echo = EchoServer::start("chat-tls").await;
    let registry = Registry::start_with_ca(Duration::from_secs(86_400)).await;
    let url = registry.url();
    let strict = |spec: &mut SidecarSpec| {
        spec.config.tls.mode = TlsMode::Strict;
        spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    };
    let mut spec = SidecarSpec::server(&url, "chat", echo.addr);
    strict(&mut spec);
    let server = Sidecar::start(spec).await;
    registry.until_passing("chat", 1).await;
    let mut spec = SidecarSpec::server(&url, "web", common::listener().await.local_addr().unwrap());
    strict(&mut spec);
    spec.upstreams = vec!["chat"];
    let client = Sidecar::start(spec).await;

    let seen = python_client(client.upstreams[0], "chat", "/secure").await;
    assert_eq!(seen, echoed("chat-tls", "/secure"));
    let inbound = server.metrics().await;
    let tls = common::metric(&inbound, r#"mesh_inbound_connections_total{tls="tls"}"#);
    assert!(tls.is_some_and(|n| n >= 1.0), "{inbound}");
}

async fn shouting_mesh() -> (Registry, Sidecar, Sidecar) {
    let app = shouting_app().await;
    let registry = Registry::start().await;
    let url = registry.url();
    let server = Sidecar::start(SidecarSpec::server(&url, "shout", app)).await;
    registry.until_passing("shout", 1).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["shout"];
    let client = Sidecar::start(spec).await;
    (registry, server, client)
}

#[tokio::test]
async fn a_half_close_crosses_both_sidecars_and_the_answer_still_comes_back() {
    let (_registry, _server, client) = shouting_mesh().await;
    let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
    let request =
        "GET /stream HTTP/1.1\r\nhost: shout\r\nconnection: Upgrade\r\nupgrade: shout\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: shout"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");

    stream.write_all(b"hello").await.unwrap();
    let mut loud = [0u8; 5];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut loud))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&loud, b"HELLO");
    // The client is done: the app sees its EOF through both sidecars, and its last words
    // come back on the half still open.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the app's close crossed both sidecars")
        .unwrap();
    assert_eq!(rest, b"bye");
}

#[tokio::test]
async fn a_101_the_caller_did_not_ask_for_is_a_502_and_not_passed_on() {
    let (_registry, _server, client) = shouting_mesh().await;
    let answer = common::get_h1(client.upstreams[0], "shout", "/plain").await;
    assert_eq!(
        answer.status,
        http::StatusCode::BAD_GATEWAY,
        "{}",
        answer.text
    );
    assert!(
        answer.text.contains("101 Switching Protocols"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn an_upgraded_connection_holds_an_endpoint_until_it_closes() {
    let (_registry, _server, client) = shouting_mesh().await;
    let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
    let request = "GET / HTTP/1.1\r\nhost: shout\r\nconnection: upgrade\r\nupgrade: shout\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut stream).await;
    let in_flight = async || {
        let page = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
        let page: Value = serde_json::from_slice(&page.body).unwrap();
        page[0]["endpoints"][0]["in_flight"].as_u64()
    };
    eventually(
        PATIENCE,
        "the upgraded connection counted in flight",
        async || in_flight().await == Some(1),
    )
    .await;
    drop(stream);
    eventually(
        PATIENCE,
        "the closed connection no longer counted",
        async || in_flight().await == Some(0),
    )
    .await;
}

/// The soft limit on open files of this process.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft = line.split_whitespace().nth(3).unwrap();
    soft.parse().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_thousand_idle_upgraded_connections_stay_open_and_each_still_works() {
    const N: usize = 1000;
    // Each connection is six sockets in this process: the client's, both sidecars' two,
    // and the app's.
    let needed = 6 * N as u64 + 200;
    assert!(
        open_files_limit() >= needed,
        "this test needs {needed} open files: raise `ulimit -n`"
    );
    let (_registry, server, client) = shouting_mesh().await;
    let mut streams = Vec::with_capacity(N);
    for _ in 0..N {
        let mut stream = TcpStream::connect(client.upstreams[0]).await.unwrap();
        let request =
            "GET / HTTP/1.1\r\nhost: shout\r\nconnection: upgrade\r\nupgrade: shout\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        streams.push(stream);
    }
    let open = |direction: &str| {
        format!(r#"mesh_spliced_open_connections{{direction="{direction}",service="shout"}}"#)
    };
    for (sidecar, direction) in [(&client, "outbound"), (&server, "inbound")] {
        eventually(PATIENCE, "every upgraded connection open", async || {
            common::metric(&sidecar.metrics().await, &open(direction)) == Some(N as f64)
        })
        .await;
    }
    // Idle, none was closed; each still carries bytes both ways, the last as the first.
    for (i, stream) in streams.iter_mut().enumerate() {
        let word = format!("w{i:04}");
        stream.write_all(word.as_bytes()).await.unwrap();
        let mut loud = vec![0u8; word.len()];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut loud))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(loud, word.to_ascii_uppercase().as_bytes());
    }
    drop(streams);
    eventually(PATIENCE, "every connection closed", async || {
        common::metric(&client.metrics().await, &open("outbound")) == Some(0.0)
    })
    .await;
}
