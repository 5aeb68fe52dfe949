//! Calls that survive failing instances: retries (gRPC statuses in trailers included),
//! their budget, deadlines, outlier ejection, and the drain of a leaving instance.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    App, H2Conn, PATIENCE, Registry, Sidecar, SidecarSpec, TestBody, eventually, metric_or_zero,
};
use http::{Method, Request, StatusCode, Version};
use mesh_proxy::Config;
use mesh_registry_api::Registration;

/// `web` served by the given apps, each behind its own sidecar.
async fn service(registry: &Registry, apps: &[&App]) -> Vec<Sidecar> {
    let url = registry.url();
    let mut sidecars = Vec::new();
    for app in apps {
        sidecars.push(Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await);
    }
    registry.until_passing("web", apps.len()).await;
    sidecars
}

async fn client(registry: &Registry, settings: impl FnOnce(&mut Config)) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    settings(&mut spec.config);
    Sidecar::start(spec).await
}

fn grpc_call(path: &str) -> Request<TestBody> {
    Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri(format!("http://web{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(TestBody::new(Bytes::from_static(&[0, 0, 0, 0, 0]), None))
        .unwrap()
}

#[tokio::test]
async fn unavailable_in_trailers_from_one_instance_is_retried_on_the_other() {
    let registry = Registry::start().await;
    let good = App::start("web-good").await;
    let bad = App::start("web-failing").await;
    let _s = service(&registry, &[&good, &bad]).await;
    let client = client(&registry, |_| {}).await;
    let conn = H2Conn::connect(client.outbound).await;

    for _ in 0..40 {
        let answer = conn.send(grpc_call("/grpc.Test/Call")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.trailers.as_ref().unwrap()["grpc-status"],
            "0",
            "every call succeeds"
        );
        assert_eq!(answer.text, "web-good");
    }
    let m = client.metrics().await;
    assert!(
        bad.received.load(Ordering::SeqCst) > 0,
        "the failing instance was tried"
    );
    let retries = metric_or_zero(
        &m,
        r#"mesh_retries_total{reason="grpc-status",service="web"}"#,
    );
    assert!(retries >= 1.0, "{m}");
    let ok = r#"mesh_responses_total{classification="success",direction="outbound",grpc_status="0",service="web",status_code="200"}"#;
    assert_eq!(metric_or_zero(&m, ok), 40.0, "{m}");
}

#[tokio::test]
async fn an_instance_refusing_connections_is_ejected_probed_and_readmitted() {
    let registry = Registry::start().await;
    let good = App::start("web-good").await;
    let _s = service(&registry, &[&good]).await;
    // An instance whose address refuses connections.
    let dead = common::closed_port();
    let mut reg = Registration::new(dead.to_string());
    reg.ttl = Duration::from_secs(3600);
    registry
        .client
        .register("web", "web-dead", &reg)
        .await
        .unwrap();
    registry.until_passing("web", 2).await;
    // The balancer avoids an endpoint once it has failed, so it may not get a second
    // try soon: one failure ejects it here.
    let client = client(&registry, |c| {
        c.ejection.after = 1;
        c.ejection.backoff = Duration::from_millis(500);
    })
    .await;

    for _ in 0..30 {
        let answer = common::get_h1(client.outbound, "web", "/whoami").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "no client-visible failure: {}",
            answer.text
        );
    }
    let m = client.metrics().await;
    assert!(
        metric_or_zero(
            &m,
            r#"mesh_endpoint_ejections_total{reason="consecutive-failures",service="web"}"#
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_or_zero(&m, r#"mesh_retries_total{reason="not-sent",service="web"}"#) >= 1.0,
        "{m}"
    );
    let debug = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
    assert!(debug.text.contains("ejected"), "{}", debug.text);

    // The instance comes back: after the backoff a probe finds it and it is readmitted.
    let back = App::start_on(dead, "web-revived").await;
    eventually(PATIENCE, "traffic to the revived instance", async || {
        let answer = common::get_h1(client.outbound, "web", "/whoami").await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.text == "web-revived"
    })
    .await;
    let m = client.metrics().await;
    assert_eq!(
        metric_or_zero(&m, r#"mesh_endpoints{service="web",state="ejected"}"#),
        0.0,
        "{m}"
    );
    drop(back);
}

#[tokio::test]
async fn a_post_is_not_retried_on_503_but_a_get_and_a_marked_post_are() {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let _s = service(&registry, &[&app]).await;
    let client = client(&registry, |_| {}).await;
    let url = format!("http://{}/status/503", client.outbound);
    let send = |method: Method, marked: bool| {
        let mut b = Request::builder()
            .method(method)
            .uri(&url)
            .header("host", "web");
        if marked {
            b = b.header("mesh-retry", "true");
        }
        b.body(http_body_util::Full::new(Bytes::from_static(b"x")))
            .unwrap()
    };

    let before = app.received.load(Ordering::SeqCst);
    let answer = common::send(&common::h1(), send(Method::POST, false)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.received.load(Ordering::SeqCst) - before,
        1,
        "a POST is tried once"
    );

    let before = app.received.load(Ordering::SeqCst);
    common::send(&common::h1(), send(Method::GET, false)).await;
    assert_eq!(
        app.received.load(Ordering::SeqCst) - before,
        3,
        "a GET is tried 3 times"
    );

    let before = app.received.load(Ordering::SeqCst);
    common::send(&common::h1(), send(Method::POST, true)).await;
    assert_eq!(
        app.received.load(Ordering::SeqCst) - before,
        3,
        "a marked POST too"
    );
    assert!(
        !app.last_headers.lock().unwrap().contains_key("mesh-retry"),
        "the marker is the mesh's, not the app's"
    );
}

#[tokio::test]
async fn retries_stop_at_the_budget_and_say_so() {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let _s = service(&registry, &[&app]).await;
    // No share of traffic, a floor of 1 retry per second: 10 retries per 10 s window.
    let client = client(&registry, |c| {
        c.retry.budget.ratio = 0.0;
        c.retry.budget.min_per_second = 1;
    })
    .await;

    let mut exhausted = 0;
    for _ in 0..20 {
        let answer = common::get_h1(client.outbound, "web", "/status/503").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        if answer
            .headers
            .get("mesh-error")
            .is_some_and(|v| v == "budget-exhausted")
        {
            exhausted += 1;
        }
    }
    let m = client.metrics().await;
    // Five requests use two retries each; the other fifteen find the budget spent.
    assert_eq!(
        metric_or_zero(&m, r#"mesh_retries_total{reason="status",service="web"}"#),
        10.0,
        "{m}"
    );
    assert_eq!(exhausted, 15);
    assert_eq!(
        metric_or_zero(&m, r#"mesh_retry_budget_exhausted_total{service="web"}"#),
        15.0,
        "{m}"
    );
}

#[tokio::test]
async fn grpc_timeout_is_enforced_and_the_rest_is_passed_on() {
    let registry = Registry::start().await;
    let slow = App::start_with_latency("web-slow", Duration::from_secs(20)).await;
    let _s = service(&registry, &[&slow]).await;
    let client = client(&registry, |_| {}).await;
    let conn = H2Conn::connect(client.outbound).await;

    // A deadline of 1 s, against an app that takes 20 s: seconds of margin either way
    // for a slow machine, which may spend a while on the way to the app.
    let deadline = Duration::from_secs(1);
    let mut call = grpc_call("/grpc.Test/Call");
    call.headers_mut()
        .insert("grpc-timeout", "1000m".parse().unwrap());
    let started = Instant::now();
    let answer = conn.send(call).await;
    let took = started.elapsed();
    assert_eq!(answer.headers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(answer.headers["mesh-error"], "timeout");
    assert!(took >= deadline && took < deadline * 10, "{took:?}");

    let seen = slow.last_headers.lock().unwrap()["grpc-timeout"]
        .to_str()
        .unwrap()
        .to_owned();
    let passed_on = mesh_proxy::deadline::parse_grpc_timeout(&seen).unwrap();
    assert!(passed_on < deadline, "the next hop got {seen}");
    assert!(passed_on > deadline / 2, "the next hop got {seen}");
}

#[tokio::test]
async fn a_large_failing_answer_streams_through_and_is_not_retried() {
    let registry = Registry::start().await;
    let big = App::start("web-big").await;
    let _s = service(&registry, &[&big]).await;
    let client = client(&registry, |_| {}).await;
    let conn = H2Conn::connect(client.outbound).await;

    let answer = conn.send(grpc_call("/grpc.Test/Call")).await;
    assert_eq!(answer.body.len(), 100 * 1024, "the body arrives whole");
    assert_eq!(answer.trailers.unwrap()["grpc-status"], "14");
    assert_eq!(
        big.received.load(Ordering::SeqCst),
        1,
        "too big to hold back: not retried"
    );
}

#[tokio::test]
async fn a_leaving_instance_finishes_its_requests_and_gets_no_new_ones() {
    let registry = Registry::start().await;
    let mut a = App::start("web-a").await;
    let b = App::start("web-b").await;
    let mut sidecars = service(&registry, &[&a, &b]).await;
    let client = client(&registry, |_| {}).await;

    // A request a holds until the test lets it answer lands on a (again until it does:
    // one that lands on b is let go at once).
    let slow = loop {
        let outbound = client.outbound;
        let on_b = b.received.load(Ordering::SeqCst);
        let handle = tokio::spawn(async move { common::get_h1(outbound, "web", "/hold").await });
        eventually(PATIENCE, "the request at a or b", async || {
            a.in_flight.load(Ordering::SeqCst) == 1 || b.received.load(Ordering::SeqCst) > on_b
        })
        .await;
        if a.in_flight.load(Ordering::SeqCst) == 1 {
            break handle;
        }
        b.release();
        handle.await.unwrap();
    };
    sidecars[0].begin_shutdown();
    registry.until_passing("web", 1).await;
    for _ in 0..10 {
        let answer = common::get_h1(client.outbound, "web", "/whoami").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.text, "web-b",
            "no new requests reach the leaving instance"
        );
    }
    a.release();
    let answer = slow.await.unwrap();
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (StatusCode::OK, "web-a")
    );
    a.stop();
    tokio::time::timeout(Duration::from_secs(10), sidecars[0].task.take().unwrap())
        .await
        .expect("exits once drained")
        .unwrap();
}

#[tokio::test]
async fn past_the_pending_limit_requests_are_refused_at_once() {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let _s = service(&registry, &[&app]).await;
    let client = client(&registry, |c| c.outbound.max_pending = 1).await;
    let outbound = client.outbound;
    // A request the app holds until the test lets it answer: the one pending.
    let slow = tokio::spawn(async move { common::get_h1(outbound, "web", "/hold").await });
    eventually(PATIENCE, "the held request at the app", async || {
        app.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    let started = Instant::now();
    let refused = common::get_h1(client.outbound, "web", "/whoami").await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["mesh-error"], "overloaded");
    app.release();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        common::get_h1(client.outbound, "web", "/whoami")
            .await
            .status,
        StatusCode::OK
    );
}
