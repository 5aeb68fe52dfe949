//! Routes from the registry, applied by the caller's sidecar: a weighted canary between
//! two versions chosen by registration metadata, moved without a redeploy; a header
//! rule; a subset nobody is in; and the last policy kept while the registry is away.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{App, PATIENCE, Registry, Sidecar, SidecarSpec, eventually, put_policy, until_routes};
use http::{Request, StatusCode};
use http_body_util::Full;
use mesh_registry_api::policy::PolicyKind;
use serde_json::json;

/// Two versions of `recs`, each an app behind a sidecar registered with its `version`,
/// and a caller's sidecar.
struct Canary {
    registry: Registry,
    v1: App,
    v2: App,
    _servers: Vec<Sidecar>,
    caller: Sidecar,
}

impl Canary {
    async fn start() -> Canary {
        let registry = Registry::start().await;
        let url = registry.url();
        let (v1, v2) = (App::start("v1").await, App::start("v2").await);
        let mut servers = Vec::new();
        for (app, version) in [(&v1, "v1"), (&v2, "v2")] {
            let mut spec = SidecarSpec::server(&url, "recs", app.addr);
            spec.config.registration.metadata = vec![("version".into(), version.into())];
            servers.push(Sidecar::start(spec).await);
        }
        registry.until_passing("recs", 2).await;
        let caller = Sidecar::start(SidecarSpec::client(&url)).await;
        Canary {
            registry,
            v1,
            v2,
            _servers: servers,
            caller,
        }
    }

    /// Writes `routes` for `recs`, and waits until the caller's sidecar has them.
    async fn route(&self, routes: serde_json::Value) {
        // The caller follows a destination once it has called it.
        let _ = common::get_h1(self.caller.outbound, "recs", "/whoami").await;
        let index = put_policy(&self.registry, "recs", PolicyKind::Routes, routes).await;
        until_routes(&self.caller, "recs", index).await;
    }

    /// `n` calls through the caller's sidecar (one keep-alive client), counted by which
    /// version answered.
    async fn calls(&self, n: usize, header: Option<(&str, &str)>) -> BTreeMap<String, usize> {
        let client = common::h1();
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let mut request = Request::get(format!("http://{}/whoami", self.caller.outbound))
                .header(http::header::HOST, "recs");
            if let Some((name, value)) = header {
                request = request.header(name, value);
            }
            let answer =
                common::send(&client, request.body(Full::new(Bytes::new())).unwrap()).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
            *seen.entry(answer.text).or_default() += 1;
        }
        seen
    }
}

fn split(weights: (u32, u32)) -> serde_json::Value {
    json!({"rules": [{"name": "canary", "backends": [
        {"subset": "version=v1", "weight": weights.0},
        {"subset": "version=v2", "weight": weights.1},
    ]}]})
}

#[tokio::test]
async fn a_canary_split_follows_its_weights_and_moves_without_a_redeploy() {
    let mesh = Canary::start().await;
    mesh.route(split((90, 10))).await;
    let seen = mesh.calls(2000, None).await;
    let v2 = seen.get("v2").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (0.07..=0.13).contains(&v2),
        "v2 got {:.1} % of the calls, not 10 % ± 3: {seen:?}",
        v2 * 100.0
    );
    // The figure, for whoever runs it with --nocapture.
    eprintln!("90/10 canary: v2 got {:.2} % of 2,000 calls", v2 * 100.0);

    // All to v2: once the caller has the new split, v1 gets no new call.
    mesh.route(split((0, 100))).await;
    let v1_before = mesh.v1.received.load(std::sync::atomic::Ordering::SeqCst);
    let seen = mesh.calls(200, None).await;
    assert_eq!(seen.get("v2"), Some(&200), "{seen:?}");
    let v1_after = mesh.v1.received.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(v1_before, v1_after, "v1 is drained of new calls");
    assert!(mesh.v2.received.load(std::sync::atomic::Ordering::SeqCst) >= 200);
}

#[tokio::test]
async fn a_header_rule_sends_only_tagged_calls_to_the_canary() {
    let mesh = Canary::start().await;
    mesh.route(json!({"rules": [
        {"name": "testers", "matches": [{"headers": {"X-Canary": "1"}}],
         "backends": [{"subset": "version=v2", "weight": 100}]},
        {"name": "everyone", "backends": [{"subset": "version=v1", "weight": 100}]},
    ]}))
    .await;
    let tagged = mesh.calls(50, Some(("x-canary", "1"))).await;
    assert_eq!(tagged.get("v2"), Some(&50), "{tagged:?}");
    let untagged = mesh.calls(50, None).await;
    assert_eq!(untagged.get("v1"), Some(&50), "{untagged:?}");
    let other_value = mesh.calls(20, Some(("x-canary", "0"))).await;
    assert_eq!(other_value.get("v1"), Some(&20), "{other_value:?}");
}

#[tokio::test]
async fn a_subset_without_instances_is_no_endpoints_naming_the_subset() {
    let mesh = Canary::start().await;
    mesh.route(json!({"rules": [
        {"name": "next", "matches": [{"path": {"prefix": "/whoami"}}],
         "backends": [{"subset": "version=v3", "weight": 100}]},
    ]}))
    .await;
    let answer = common::get_h1(mesh.caller.outbound, "recs", "/whoami").await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text
    );
    assert_eq!(answer.headers["mesh-error"], "no-endpoints");
    assert!(
        answer.text.contains("version=v3") && answer.text.contains("next"),
        "{}",
        answer.text
    );
    // A request no rule matches is routed as without routes.
    let answer = common::get_h1(mesh.caller.outbound, "recs", "/echo").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[tokio::test]
async fn the_last_routes_stay_in_force_while_the_registry_is_away() {
    let mesh = Canary::start().await;
    mesh.route(split((0, 100))).await;
    let Canary {
        registry,
        v1,
        caller,
        ..
    } = mesh;
    registry.stop().await.unwrap();

    let ready = format!("http://{}/ready", caller.admin);
    eventually(PATIENCE, "/ready to say the policy is stale", async || {
        let answer = common::get(&ready).await;
        answer.status == StatusCode::OK
            && answer.text.contains("policy of recs: registry unreachable")
    })
    .await;
    let before = v1.received.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..50 {
        let answer = common::get_h1(caller.outbound, "recs", "/whoami").await;
        assert_eq!(
            (answer.status, answer.text.as_str()),
            (StatusCode::OK, "v2")
        );
    }
    assert_eq!(
        v1.received.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
}

#[tokio::test]
async fn a_rules_timeout_replaces_the_sidecars() {
    let mesh = Canary::start().await;
    mesh.route(json!({"rules": [
        {"name": "slow-ones", "matches": [{"path": {"prefix": "/slow"}}],
         "backends": [{"weight": 100}], "timeout": "200ms", "retries": {"attempts": 0}},
    ]}))
    .await;
    let started = std::time::Instant::now();
    let answer = common::get_h1(mesh.caller.outbound, "recs", "/slow?ms=5000").await;
    assert_eq!(
        answer.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.text
    );
    assert_eq!(answer.headers["mesh-error"], "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    // Calls the rule does not match keep the sidecar's own (no) deadline.
    let answer = common::get_h1(mesh.caller.outbound, "recs", "/whoami").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn retries_stay_in_the_routes_subset() {
    let mesh = Canary::start().await;
    mesh.route(split((100, 0))).await;
    mesh.v1.set_mode(common::Mode::Failing);
    let v2_before = mesh.v2.received.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        let answer = common::get_h1(mesh.caller.outbound, "recs", "/whoami").await;
        // v1's own failure, retried on v1 only: v2 would have answered 200.
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.text
        );
    }
    let metrics = mesh.caller.metrics().await;
    assert!(
        common::metric_sum(&metrics, "mesh_retries_total", r#"service="recs""#) >= 1.0,
        "the calls were retried: {metrics}"
    );
    assert_eq!(
        mesh.v2.received.load(std::sync::atomic::Ordering::SeqCst),
        v2_before
    );
}
