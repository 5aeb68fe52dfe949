//! The ejection lifecycle end to end: an ejected endpoint's probe may time out, hang or
//! be abandoned by its caller, and the endpoint must still come back once it is healthy;
//! the success-rate rule leaves alone what is only slow, and a service failing alike.
//! (The state machine itself is tested under a paused clock in `breaker.rs`, and an
//! outlier by success rate, with grpcio, in `python_interop.rs`.)

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{App, Mode, PATIENCE, Registry, Sidecar, SidecarSpec, eventually, within};
use http::StatusCode;
use mesh_proxy::Config;
use mesh_proxy::balance::Strategy;

/// `web` served by a steady app and a flaky one, and a client sidecar that ejects after
/// two failures for 300 ms, with `settings`. It balances round-robin, so the flaky
/// instance gets every other request however its latency estimate moves (P2C may avoid a
/// failing instance for many seconds, and these tests are about ejection).
async fn setup(settings: impl FnOnce(&mut Config)) -> (Registry, App, App, Vec<Sidecar>, Sidecar) {
    let registry = Registry::start().await;
    let steady = App::start("steady").await;
    let flaky = App::start("flaky").await;
    let mut servers = Vec::new();
    for app in [&steady, &flaky] {
        servers.push(Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await);
    }
    registry.until_passing("web", 2).await;
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    spec.config.ejection.after = 2;
    spec.config.ejection.backoff = Duration::from_millis(300);
    spec.config.outbound.balancer = Strategy::RoundRobin;
    settings(&mut spec.config);
    let client = Sidecar::start(spec).await;
    (registry, steady, flaky, servers, client)
}

/// Calls until the client has ejected an endpoint of web `n` times in all.
async fn until_ejections(client: &Sidecar, n: f64) {
    let ejected = within(PATIENCE, async || {
        let answer = common::get_h1(client.outbound, "web", "/whoami").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let m = client.metrics().await;
        let ejections = common::metric_sum(&m, "mesh_endpoint_ejections_total", r#"service="web""#);
        (ejections >= n).then_some(())
    })
    .await;
    if ejected.is_none() {
        panic!("never ejected {n} times: {}", client.metrics().await);
    }
}

/// Asks until the flaky instance answers again.
async fn until_back(client: &Sidecar) {
    let back = within(PATIENCE, async || {
        let answer = common::get_h1(client.outbound, "web", "/whoami").await;
        (answer.text == "flaky").then_some(())
    })
    .await;
    if back.is_none() {
        let endpoints = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
        panic!("the flaky instance never came back: {}", endpoints.text);
    }
}

#[tokio::test]
async fn a_probe_that_times_out_counts_as_a_failure_and_the_endpoint_still_comes_back() {
    let (_r, _steady, flaky, _servers, client) =
        setup(|c| c.outbound.per_try_timeout = Some(Duration::from_millis(200))).await;
    flaky.set_mode(Mode::Failing);
    until_ejections(&client, 1.0).await;
    // Its probe will hang until the per-try deadline: a failure, so it is out again.
    flaky.set_mode(Mode::Hanging);
    until_ejections(&client, 2.0).await;
    flaky.set_mode(Mode::Normal);
    until_back(&client).await;
}

#[tokio::test]
async fn a_probe_its_caller_gives_up_on_does_not_keep_the_endpoint_out() {
    let (_r, _steady, flaky, _servers, client) = setup(|_| {}).await;
    flaky.set_mode(Mode::Failing);
    until_ejections(&client, 1.0).await;
    flaky.set_mode(Mode::Hanging);
    // Requests until one is the probe: it reaches the flaky app, which never answers,
    // and its caller gives up.
    let before = flaky.received.load(Ordering::SeqCst);
    eventually(PATIENCE, "a probe of the ejected endpoint", async || {
        let outbound = client.outbound;
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            common::get_h1(outbound, "web", "/whoami"),
        )
        .await;
        flaky.received.load(Ordering::SeqCst) != before
    })
    .await;
    flaky.set_mode(Mode::Normal);
    until_back(&client).await;
}

/// `web` served by one app per latency, all in `mode`, and a client sidecar.
async fn fleet(latencies: &[u64], mode: Mode) -> (Registry, Vec<App>, Vec<Sidecar>, Sidecar) {
    let registry = Registry::start().await;
    let (mut apps, mut servers) = (Vec::new(), Vec::new());
    for (i, ms) in latencies.iter().enumerate() {
        let app = App::start_with_latency(&format!("web-{i}"), Duration::from_millis(*ms)).await;
        app.set_mode(mode);
        servers.push(Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await);
        apps.push(app);
    }
    registry.until_passing("web", latencies.len()).await;
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;
    (registry, apps, servers, client)
}

/// Every endpoint of `web` the client sees is in rotation.
async fn none_ejected(client: &Sidecar) {
    let m = client.metrics().await;
    let ejections = common::metric_sum(&m, "mesh_endpoint_ejections_total", r#"service="web""#);
    assert_eq!(ejections, 0.0, "{m}");
    let debug = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
    assert!(
        !debug.text.contains(r#""state": "ejected""#),
        "{}",
        debug.text
    );
}

#[tokio::test]
async fn an_instance_that_is_only_slow_is_not_ejected() {
    let (_r, apps, _servers, client) = fleet(&[0, 150], Mode::Normal).await;
    let conn = common::H2Conn::connect(client.outbound).await;
    for _ in 0..10 {
        let batch: Vec<_> = (0..8)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.get("web", "/whoami").await.status })
            })
            .collect();
        for call in batch {
            assert_eq!(call.await.unwrap(), StatusCode::OK);
        }
    }
    assert!(
        apps[1].received.load(Ordering::SeqCst) > 0,
        "the slow one was tried"
    );
    none_ejected(&client).await;
}

#[tokio::test]
async fn a_service_whose_instances_all_fail_alike_ejects_none() {
    // Every instance fails a third of its requests: none is an outlier among its peers.
    let (_r, apps, _servers, client) = fleet(&[0, 0, 0], Mode::Flaky).await;
    for _ in 0..300 {
        common::get_h1(client.outbound, "web", "/whoami").await;
    }
    for app in &apps {
        assert!(
            app.received.load(Ordering::SeqCst) >= 10,
            "every instance had tries to judge"
        );
    }
    none_ejected(&client).await;
}

#[tokio::test]
async fn a_grpc_server_error_counts_against_its_endpoint_as_a_500_does() {
    let (_r, _steady, flaky, _servers, client) = setup(|_| {}).await;
    // INTERNAL in a trailers-only answer whose HTTP status is 200: the endpoint failed
    // the call as surely as with a 500, and two in a row eject it.
    flaky.set_mode(Mode::GrpcInternal);
    until_ejections(&client, 1.0).await;
    // Each answer is counted once its stream ends, just after the caller has it.
    eventually(PATIENCE, "both failures counted as failures", async || {
        let m = client.metrics().await;
        let series = r#"mesh_responses_total{classification="failure",direction="outbound",grpc_status="13",service="web",status_code="200"}"#;
        common::metric_or_zero(&m, series) >= 2.0
    })
    .await;
}

#[tokio::test]
async fn a_rate_limited_endpoint_gets_less_traffic_and_is_not_ejected() {
    // P2C: a 429 lowers the endpoint's success estimate as a failure does, so the
    // balancer sends it less; an overloaded server is no outlier to eject, though.
    let (_r, steady, limiting, _servers, client) =
        setup(|c| c.outbound.balancer = Strategy::P2c).await;
    limiting.set_mode(Mode::RateLimiting);
    let mut limited = 0;
    for _ in 0..200 {
        let answer = common::get_h1(client.outbound, "web", "/whoami").await;
        match answer.status {
            StatusCode::OK => assert_eq!(answer.text, "steady"),
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}: {}", answer.text),
        }
    }
    assert_eq!(limiting.received.load(Ordering::SeqCst), limited);
    assert_eq!(steady.received.load(Ordering::SeqCst), 200 - limited);
    assert!(
        limited < 20,
        "the rate-limited endpoint got {limited} of 200 requests"
    );
    let m = client.metrics().await;
    let counted = common::metric_sum(&m, "mesh_rate_limited_total", r#"service="web""#);
    assert_eq!(counted, limited as f64, "{m}");
    none_ejected(&client).await;
}
