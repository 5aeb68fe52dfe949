//! The admin port and the listeners' limits: metrics that add up (and that promtool
//! accepts), endpoint debugging, loopback-only shutdown, slow clients dropped.

mod common;

use std::time::Duration;

use common::{App, Registry, Sidecar, SidecarSpec};
use http::StatusCode;

#[tokio::test]
async fn after_n_requests_every_counter_and_histogram_says_n() {
    let registry = Registry::start().await;
    let url = registry.url();
    let app = App::start("web-1").await;
    let server = Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&url)).await;

    const N: usize = 25;
    for _ in 0..N {
        assert_eq!(
            common::get_h1(client.outbound, "web", "/whoami")
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        common::get_h1(client.outbound, "web", "/status/503")
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let out = client.metrics().await;
    let n = N as f64;
    assert_eq!(
        common::metric(
            &out,
            r#"mesh_requests_total{direction="outbound",service="web"}"#
        ),
        Some(n + 1.0),
        "{out}"
    );
    let ok = r#"mesh_responses_total{classification="success",direction="outbound",grpc_status="",service="web",status_code="200"}"#;
    assert_eq!(common::metric(&out, ok), Some(n), "{out}");
    let failed = r#"mesh_responses_total{classification="failure",direction="outbound",grpc_status="",service="web",status_code="503"}"#;
    assert_eq!(common::metric(&out, failed), Some(1.0), "{out}");
    let count = r#"mesh_response_latency_seconds_count{classification="success",direction="outbound",service="web"}"#;
    assert_eq!(common::metric(&out, count), Some(n), "{out}");
    let inf = r#"mesh_response_latency_seconds_bucket{classification="success",direction="outbound",service="web",le="+Inf"}"#;
    assert_eq!(common::metric(&out, inf), Some(n), "{out}");

    // The GET answered 503 is idempotent: it was tried 3 times in all.
    let retried = r#"mesh_retries_total{reason="status",service="web"}"#;
    assert_eq!(common::metric(&out, retried), Some(2.0), "{out}");
    let inbound = server.metrics().await;
    assert_eq!(
        common::metric(
            &inbound,
            r#"mesh_requests_total{direction="inbound",service="web"}"#
        ),
        Some(n + 3.0),
        "{inbound}"
    );
    for name in [
        "mesh_retries_total",
        "mesh_retry_budget_exhausted_total",
        "mesh_endpoint_ejections_total",
        "mesh_tcp_open_connections",
        "mesh_discovery_updates_total",
        "mesh_registry_connected",
        "mesh_endpoints",
    ] {
        assert!(out.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    promtool_accepts(&out);
    promtool_accepts(&inbound);
}

/// `promtool check metrics` (Debian's `prometheus` package) reads the exposition as
/// Prometheus would. CI installs it; elsewhere the check is skipped with a note.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "promtool not installed (apt-get install prometheus): exposition check skipped"
            );
            return;
        }
        Err(e) => panic!("promtool is needed in CI: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejected the metrics:\n{report}"
    );
}

#[tokio::test]
async fn debug_endpoints_shows_each_endpoint_and_why_it_is_in() {
    let registry = Registry::start().await;
    let url = registry.url();
    let app = App::start("web-1").await;
    let _server = Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&url)).await;
    common::get_h1(client.outbound, "web", "/whoami").await;

    let debug = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
    let json: serde_json::Value = serde_json::from_slice(&debug.body).unwrap();
    let web = &json[0];
    assert_eq!(web["service"], "web");
    assert_eq!(web["source"], "registry");
    let endpoint = &web["endpoints"][0];
    assert_eq!(endpoint["state"], "ready");
    assert_eq!(endpoint["in_flight"], 0);
    assert!(endpoint["ewma_ms"].as_f64().unwrap() > 0.0);
    assert!(endpoint["reason"].as_str().unwrap().contains("registry"));
    assert!(endpoint["instance"].as_str().unwrap().starts_with("web-"));
}

#[tokio::test]
async fn shutdown_over_the_admin_port_stops_the_sidecar() {
    let registry = Registry::start().await;
    let url = registry.url();
    let mut client = Sidecar::start(SidecarSpec::client(&url)).await;
    let wrong = common::get(&format!("http://{}/shutdown", client.admin)).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);

    let request = http::Request::post(format!("http://{}/shutdown", client.admin))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let answer = common::send(&common::h1(), request).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    tokio::time::timeout(Duration::from_secs(10), client.task.take().unwrap())
        .await
        .expect("the sidecar stopped")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let registry = Registry::start().await;
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    spec.config.listen.header_read_timeout = Duration::from_millis(300);
    let client = Sidecar::start(spec).await;

    let mut stream = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the proxy closed the connection")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn the_probe_binary_reports_readiness_by_exit_code() {
    let registry = Registry::start().await;
    let url = registry.url();
    let client = Sidecar::start(SidecarSpec::client(&url)).await;
    let probe = |target: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-probe"))
            .arg(target)
            .output()
            .await
            .unwrap()
    };
    let ready = probe(format!("http://{}/ready", client.admin)).await;
    assert!(ready.status.success(), "{ready:?}");
    let missing = probe(format!("http://{}/nope", client.admin)).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let tcp = probe(format!("tcp://{}", client.outbound)).await;
    assert!(tcp.status.success());
    let closed = common::closed_port();
    assert_eq!(
        probe(format!("tcp://{closed}")).await.status.code(),
        Some(1)
    );
    let help = probe("--help".into()).await;
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: mesh-probe"));
    assert_eq!(probe("localhost:4191".into()).await.status.code(), Some(1));
}

#[tokio::test]
async fn the_probe_binary_waits_until_its_target_is_ready() {
    let probe = |args: Vec<String>| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-probe"))
            .args(args)
            .output()
    };
    // Not ready for its first two probes, then ready.
    let listener = common::listener().await;
    let target = format!("http://{}/ready", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for status in [
            "503 Service Unavailable",
            "503 Service Unavailable",
            "200 OK",
        ] {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let answer = format!("HTTP/1.0 {status}\r\ncontent-length: 0\r\n\r\n");
            stream.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    let waited = probe(vec!["--wait".into(), "60s".into(), target])
        .await
        .unwrap();
    assert!(waited.status.success(), "{waited:?}");
    server.await.unwrap();

    let closed = common::closed_port();
    let gave_up = probe(vec![
        "--wait".into(),
        "1s".into(),
        format!("tcp://{closed}"),
    ])
    .await
    .unwrap();
    assert_eq!(gave_up.status.code(), Some(1), "{gave_up:?}");
    for wait in ["soon", "18446744073709551615s"] {
        let bad = probe(vec![
            "--wait".into(),
            wait.into(),
            format!("tcp://{closed}"),
        ])
        .await
        .unwrap();
        assert_eq!(bad.status.code(), Some(2), "{wait}: {bad:?}");
    }
}

#[tokio::test]
async fn past_the_connection_limit_new_connections_wait_their_turn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let registry = Registry::start().await;
    let url = registry.url();
    let app = App::start("web-1").await;
    let _server = Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let mut spec = SidecarSpec::client(&url);
    spec.config.listen.max_connections = 1;
    let client = Sidecar::start(spec).await;
    let request = b"GET /whoami HTTP/1.1\r\nHost: web\r\n\r\n";

    // The first connection is served and stays open (keep-alive).
    let mut first = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second waits in the accept queue while the first is open...
    let mut second = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    second.write_all(request).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(waited.is_err(), "served past the limit");
    // ...and is served once it closes.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served after the first closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
