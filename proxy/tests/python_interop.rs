//! Python's grpcio, an independent gRPC implementation, calling the Rust recommendations
//! service through a sidecar pair: the mesh is invisible to a real third-party client.
//!
//! Needs Python with grpcio (`$PYTHON`, as the README's test command sets it); stubs are
//! generated from the service's `.proto` at test time.

mod common;
#[path = "../../demo-services/recommendations/tests/support/python.rs"]
mod python;

use std::path::{Path, PathBuf};

use common::{Registry, Sidecar, SidecarSpec};
use mesh_proxy::inbound::AppProtocol;
use python::python;
use serde_json::{Value, json};
use tokio::process::Command;

fn service_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo-services/recommendations")
}

/// Python stubs for the service's `.proto`.
async fn stubs() -> tempfile::TempDir {
    python::stubs(&service_dir().join("proto")).await
}

#[tokio::test]
async fn a_grpcio_client_gets_books_and_not_found_through_the_mesh() {
    let stubs = stubs().await;

    let registry = Registry::start().await;
    let app_listener = common::listener().await;
    let app = app_listener.local_addr().unwrap();
    let config = recommendations::Config {
        instance_name: "reco-meshed".parse().unwrap(),
        ..Default::default()
    };
    tokio::spawn(recommendations::run(
        app_listener,
        config,
        std::future::pending(),
    ));
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, "recommendations", app);
    spec.app = Some(("recommendations", app, Some(AppProtocol::Grpc)));
    let _server = Sidecar::start(spec).await;
    registry.until_passing("recommendations", 1).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["recommendations"];
    let client = Sidecar::start(spec).await;

    let output = Command::new(python())
        .arg(service_dir().join("tests/python/interop_client.py"))
        .arg(client.upstreams[0].to_string())
        .env("PYTHONPATH", stubs.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    python::check("the Python client", &output);
    let mut result: Value = serde_json::from_slice(&output.stdout).unwrap();
    let books = result["success"]["books"].as_array_mut().unwrap();
    books.sort_by_key(|book| book[0].as_i64());
    assert_eq!(
        result["success"],
        json!({
            "books": [
                [4, "The Hitchhiker's Guide to the Galaxy"],
                [5, "Ender's Game"],
                [6, "The Dune Chronicles"],
            ],
            "served_by": "reco-meshed",
        })
    );
    assert_eq!(
        result["not_found"],
        json!({"code": "NOT_FOUND", "details": "Category not found", "served_by": "reco-meshed"})
    );
    let metrics = client.metrics().await;
    let calls = r#"mesh_requests_total{direction="outbound",service="recommendations"}"#;
    assert_eq!(common::metric(&metrics, calls), Some(2.0), "{metrics}");
}

/// A grpcio server process, stopped when dropped (its stdin closes, or it is killed).
struct PythonServer {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl PythonServer {
    async fn start(stubs: &Path, mode: &str, name: &str) -> PythonServer {
        use tokio::io::AsyncBufReadExt;
        let port = common::closed_port().port();
        let mut child = Command::new(python())
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/python/recommendations_server.py"),
            )
            .args([&port.to_string(), mode, name])
            .env("PYTHONPATH", stubs)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the Python server started")
            .unwrap();
        assert_eq!(first.as_deref(), Some("ready"));
        PythonServer {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        }
    }
}

#[tokio::test]
async fn unavailable_in_grpcio_trailers_is_retried_on_the_other_instance() {
    let stubs = stubs().await;
    let registry = Registry::start().await;
    let url = registry.url();
    let good = PythonServer::start(stubs.path(), "ok", "py-good").await;
    let bad = PythonServer::start(stubs.path(), "unavailable", "py-failing").await;
    let mut sidecars = Vec::new();
    for server in [&good, &bad] {
        let mut spec = SidecarSpec::server(&url, "recommendations", server.addr);
        spec.app = Some(("recommendations", server.addr, Some(AppProtocol::Grpc)));
        sidecars.push(Sidecar::start(spec).await);
    }
    registry.until_passing("recommendations", 2).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["recommendations"];
    let client = Sidecar::start(spec).await;

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", client.upstreams[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut stub = recommendations::pb::recommendations_client::RecommendationsClient::new(channel);
    for _ in 0..30 {
        let request = recommendations::pb::RecommendationRequest {
            user_id: 1,
            category: 0,
            max_results: 1,
        };
        let books = stub
            .recommend(request)
            .await
            .expect("every call succeeds")
            .into_inner();
        assert_eq!(books.recommendations[0].title, "The Maltese Falcon");
    }
    let metrics = client.metrics().await;
    let retried = r#"mesh_retries_total{reason="grpc-status",service="recommendations"}"#;
    assert!(
        common::metric(&metrics, retried).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    drop((good.child, bad.child));
}

/// Tries that reached an instance, as its sidecar counted them.
async fn tries(sidecar: &Sidecar) -> f64 {
    let metrics = sidecar.metrics().await;
    let inbound = r#"mesh_requests_total{direction="inbound",service="recommendations"}"#;
    common::metric(&metrics, inbound).unwrap_or(0.0)
}

/// How the client sidecar sees the endpoint at `address`.
async fn endpoint_view(client: &Sidecar, address: std::net::SocketAddr) -> Value {
    let text = common::get(&format!("http://{}/debug/endpoints", client.admin))
        .await
        .text;
    let destinations: Value = serde_json::from_str(&text).unwrap();
    destinations[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {address} in {text}"))
}

#[tokio::test]
async fn an_instance_failing_3_calls_in_10_gets_little_traffic_and_is_ejected_by_success_rate() {
    let stubs = stubs().await;
    let registry = Registry::start().await;
    let url = registry.url();
    let good = PythonServer::start(stubs.path(), "ok", "py-good").await;
    let flaky = PythonServer::start(stubs.path(), "flaky", "py-flaky").await;
    let mut sidecars = Vec::new();
    for server in [&good, &flaky] {
        let mut spec = SidecarSpec::server(&url, "recommendations", server.addr);
        spec.app = Some(("recommendations", server.addr, Some(AppProtocol::Grpc)));
        sidecars.push(Sidecar::start(spec).await);
    }
    let flaky_inbound = sidecars[1].inbound.unwrap();
    registry.until_passing("recommendations", 2).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["recommendations"];
    let client = Sidecar::start(spec).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", client.upstreams[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut stub = recommendations::pb::recommendations_client::RecommendationsClient::new(channel);
    let request = recommendations::pb::RecommendationRequest {
        user_id: 1,
        category: 0,
        max_results: 1,
    };
    let retried = r#"mesh_retries_total{reason="grpc-status",service="recommendations"}"#;

    // 300 sequential calls, as an app makes them. Every call succeeds: retries hide the
    // failures. Few tries go to the flaky instance.
    for _ in 0..300 {
        stub.recommend(request).await.expect("every call succeeds");
    }
    let (good_n, flaky_n) = (tries(&sidecars[0]).await, tries(&sidecars[1]).await);
    let retries = common::metric(&client.metrics().await, retried).unwrap_or(0.0);
    eprintln!(
        "300 calls: {good_n} tries to the good instance, {flaky_n} to the flaky one, {retries} retries"
    );
    assert!(
        flaky_n <= (good_n + flaky_n) / 4.0,
        "the flaky instance got {flaky_n} of {} tries",
        good_n + flaky_n
    );

    // More calls until the flaky instance has had enough tries for its success rate to
    // be judged, and is ejected for it.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let mut calls = 300;
    let view = loop {
        let view = endpoint_view(&client, flaky_inbound).await;
        if view["state"] == "ejected" {
            break view;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "not ejected after {calls} calls: {view}"
        );
        for _ in 0..100 {
            stub.recommend(request).await.expect("every call succeeds");
        }
        calls += 100;
    };
    assert_eq!(view["ejected_by"], "success-rate", "{view}");
    let (to_good, to_flaky) = (tries(&sidecars[0]).await, tries(&sidecars[1]).await);
    eprintln!(
        "ejected after {calls} calls: {to_good} tries to the good instance, {to_flaky} to the flaky one; {view}"
    );
    assert!(
        to_flaky <= (to_good + to_flaky) / 4.0,
        "the flaky instance got {to_flaky} of {} tries",
        to_good + to_flaky
    );

    // Ejected, it gets no more calls.
    for _ in 0..100 {
        stub.recommend(request).await.expect("every call succeeds");
    }
    assert_eq!(tries(&sidecars[1]).await, to_flaky);
    drop((good.child, flaky.child));
}
