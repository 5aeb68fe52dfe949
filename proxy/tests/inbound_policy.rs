//! Intentions and limits from the registry, applied by the serving sidecar to the
//! callers it identifies over mTLS: a deny rule refuses (403, or PERMISSION_DENIED for
//! gRPC), its shadow run lets calls through while counting them, and a rate limit
//! answers 429 that the caller's sidecar never retries.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{
    App, H2Conn, JOIN_TOKEN, Registry, Sidecar, SidecarSpec, TestBody, debug_policy,
    metric_or_zero, put_policy, until_serving,
};
use http::{Method, Request, StatusCode, Version};
use mesh_proxy::tls::TlsMode;
use mesh_registry_api::policy::PolicyKind;
use serde_json::json;

const DAY: Duration = Duration::from_secs(86_400);

/// A strict-mTLS sidecar for `service` in front of `app`, with `settings` applied.
async fn meshed(
    registry: &Registry,
    service: &str,
    app: &App,
    settings: impl FnOnce(&mut mesh_proxy::Config),
) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, service, app.addr);
    spec.config.tls.mode = TlsMode::Strict;
    spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    settings(&mut spec.config);
    Sidecar::start(spec).await
}

fn denied(mode: &str, rule: &str) -> String {
    format!(r#"mesh_policy_denied_total{{mode="{mode}",rule="{rule}",service="recs"}}"#)
}

#[tokio::test]
async fn a_deny_intention_refuses_its_caller_and_a_shadow_one_only_counts() {
    let registry = Registry::start_with_ca(DAY).await;
    let app = App::start("recs").await;
    let server = meshed(&registry, "recs", &app, |_| {}).await;
    registry.until_passing("recs", 1).await;
    let web_app = App::start("web").await;
    let web = meshed(&registry, "web", &web_app, |_| {}).await;
    let batch_app = App::start("batch").await;
    let batch = meshed(&registry, "batch", &batch_app, |_| {}).await;

    let no_batch = json!({"rules": [{"name": "no-batch", "from": "batch", "action": "deny"}]});
    let index = put_policy(&registry, "recs", PolicyKind::Intentions, no_batch).await;
    until_serving(&server, index).await;

    let allowed = common::get_h1(web.outbound, "recs", "/whoami").await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text);
    let refused = common::get_h1(batch.outbound, "recs", "/whoami").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert_eq!(refused.headers["mesh-error"], "denied");
    assert!(refused.text.contains("no-batch"), "{}", refused.text);
    // gRPC callers get PERMISSION_DENIED.
    let call = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri("http://recs/recs.Recs/Get")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(TestBody::new(Bytes::from_static(&[0, 0, 0, 0, 0]), None))
        .unwrap();
    let grpc = H2Conn::connect(batch.outbound).await.send(call).await;
    assert_eq!(grpc.status, StatusCode::OK);
    assert_eq!(grpc.headers["grpc-status"], "7", "PERMISSION_DENIED");
    assert_eq!(
        app.received.load(Ordering::SeqCst),
        1,
        "only web's call reached the app"
    );
    let m = server.metrics().await;
    assert_eq!(
        metric_or_zero(&m, &denied("enforce", "no-batch")),
        2.0,
        "{m}"
    );

    // The same rule in shadow: batch's calls go through, and are counted and listed.
    let shadow = json!({"rules": [{"name": "no-batch", "from": "batch", "action": "deny", "mode": "shadow"}]});
    let index = put_policy(&registry, "recs", PolicyKind::Intentions, shadow).await;
    until_serving(&server, index).await;
    let through = common::get_h1(batch.outbound, "recs", "/whoami").await;
    assert_eq!(
        (through.status, through.text.as_str()),
        (StatusCode::OK, "recs")
    );
    assert_eq!(app.received.load(Ordering::SeqCst), 2);
    let m = server.metrics().await;
    assert_eq!(
        metric_or_zero(&m, &denied("shadow", "no-batch")),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_or_zero(&m, &denied("enforce", "no-batch")),
        2.0,
        "{m}"
    );
    let page = debug_policy(&server).await;
    let recent = page["serving"]["recent_denials"]
        .as_array()
        .unwrap()
        .clone();
    let last = recent.last().unwrap();
    assert_eq!(
        (last["rule"].as_str(), last["mode"].as_str()),
        (Some("no-batch"), Some("shadow"))
    );
    assert_eq!(last["caller"], "batch");
    assert_eq!(page["serving"]["intentions"]["rules"][0]["mode"], "shadow");
}

#[tokio::test]
async fn a_rate_limited_call_is_refused_once_and_never_retried() {
    let registry = Registry::start().await;
    let url = registry.url();
    let app = App::start("recs").await;
    let server = Sidecar::start(SidecarSpec::server(&url, "recs", app.addr)).await;
    registry.until_passing("recs", 1).await;
    let mut spec = SidecarSpec::client(&url);
    // Even a caller told to retry 429s does not retry a rate-limited answer at once.
    spec.config.retry.statuses = vec![429, 502, 503, 504];
    let caller = Sidecar::start(spec).await;

    // One token every 100 s: after the burst of 3, every call is over the limit.
    let limits = json!({"per_caller": {"rps": 0.01, "burst": 3}});
    let index = put_policy(&registry, "recs", PolicyKind::Limits, limits).await;
    until_serving(&server, index).await;

    let (mut ok, mut limited) = (0, 0u32);
    for _ in 0..10 {
        let answer = common::get_h1(caller.outbound, "recs", "/whoami").await;
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(answer.headers["mesh-error"], "rate-limited");
                let after: u64 = answer.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(after >= 1, "Retry-After: {after}");
            }
            other => panic!("{other}: {}", answer.text),
        }
    }
    assert_eq!((ok, limited), (3, 7));
    // A gRPC caller over the limit gets RESOURCE_EXHAUSTED, not an HTTP error.
    let call = Request::builder()
        .method(Method::POST)
        .version(Version::HTTP_2)
        .uri("http://recs/recs.Recs/Get")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(TestBody::new(Bytes::from_static(&[0, 0, 0, 0, 0]), None))
        .unwrap();
    let grpc = H2Conn::connect(caller.outbound).await.send(call).await;
    assert_eq!(grpc.status, StatusCode::OK);
    assert_eq!(grpc.headers["grpc-status"], "8", "RESOURCE_EXHAUSTED");
    limited += 1;
    assert_eq!(app.received.load(Ordering::SeqCst), 3);
    // The serving sidecar refused exactly as many tries as the app saw refusals: none
    // was tried again.
    let served = server.metrics().await;
    let refused = r#"mesh_rate_limited_total{direction="inbound",service="recs"}"#;
    assert_eq!(
        metric_or_zero(&served, refused),
        f64::from(limited),
        "{served}"
    );
    let tries = r#"mesh_requests_total{direction="inbound",service="recs"}"#;
    assert_eq!(metric_or_zero(&served, tries), 11.0, "{served}");
    let called = caller.metrics().await;
    let answered = r#"mesh_rate_limited_total{direction="outbound",service="recs"}"#;
    assert_eq!(
        metric_or_zero(&called, answered),
        f64::from(limited),
        "{called}"
    );
    assert_eq!(
        common::metric_sum(&called, "mesh_retries_total", r#"service="recs""#),
        0.0
    );
}

#[tokio::test]
async fn each_proven_caller_has_a_bucket_of_its_own() {
    let registry = Registry::start_with_ca(DAY).await;
    let app = App::start("recs").await;
    let server = meshed(&registry, "recs", &app, |_| {}).await;
    registry.until_passing("recs", 1).await;
    let web_app = App::start("web").await;
    let web = meshed(&registry, "web", &web_app, |_| {}).await;
    let batch_app = App::start("batch").await;
    let batch = meshed(&registry, "batch", &batch_app, |_| {}).await;

    let limits = json!({"per_caller": {"rps": 0.01, "burst": 2}});
    let index = put_policy(&registry, "recs", PolicyKind::Limits, limits).await;
    until_serving(&server, index).await;
    let status = async |caller: &Sidecar| {
        common::get_h1(caller.outbound, "recs", "/whoami")
            .await
            .status
    };
    for _ in 0..2 {
        assert_eq!(status(&batch).await, StatusCode::OK);
    }
    assert_eq!(
        status(&batch).await,
        StatusCode::TOO_MANY_REQUESTS,
        "batch spent its burst"
    );
    for _ in 0..2 {
        assert_eq!(status(&web).await, StatusCode::OK, "web has its own bucket");
    }
    assert_eq!(status(&web).await, StatusCode::TOO_MANY_REQUESTS);
}
