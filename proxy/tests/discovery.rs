//! Discovery through the registry and DNS: new instances get traffic, removed ones stop
//! getting it, a dead registry does not stop traffic, unknown names fall back to DNS.

mod common;

use std::collections::HashSet;

use common::{App, PATIENCE, Registry, Sidecar, SidecarSpec, eventually};
use http::StatusCode;

/// Asks `/whoami` through the client sidecar until `done` holds for the set of names
/// seen in the last `window` answers (bounded).
async fn until_seen(client: &Sidecar, window: usize, done: impl Fn(&HashSet<String>) -> bool) {
    eventually(PATIENCE, "the traffic to match", async || {
        let mut seen = HashSet::new();
        for _ in 0..window {
            let a = common::get_h1(client.outbound, "web", "/whoami").await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            seen.insert(a.text);
        }
        done(&seen)
    })
    .await;
}

#[tokio::test]
async fn instances_joining_and_leaving_are_followed() {
    let registry = Registry::start().await;
    let url = registry.url();
    let a = App::start("web-a").await;
    let _sa = Sidecar::start(SidecarSpec::server(&url, "web", a.addr)).await;
    registry.until_passing("web", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&url)).await;
    until_seen(&client, 5, |s| s.len() == 1 && s.contains("web-a")).await;

    // A new instance registers mid-test and receives traffic.
    let b = App::start("web-b").await;
    let mut sb = Sidecar::start(SidecarSpec::server(&url, "web", b.addr)).await;
    registry.until_passing("web", 2).await;
    until_seen(&client, 20, |s| s.contains("web-b")).await;

    // It leaves (its sidecar deregisters on shutdown) and stops receiving traffic.
    sb.begin_shutdown();
    registry.until_passing("web", 1).await;
    until_seen(&client, 20, |s| s.len() == 1 && s.contains("web-a")).await;
    let metrics = client.metrics().await;
    let updates = common::metric(
        &metrics,
        r#"mesh_discovery_updates_total{service="web",source="registry"}"#,
    );
    assert!(updates >= Some(3.0), "{metrics}");
    assert_eq!(
        common::metric(&metrics, r#"mesh_endpoints{service="web",state="ready"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn traffic_keeps_flowing_to_known_endpoints_while_the_registry_is_down() {
    let registry = Registry::start().await;
    let url = registry.url();
    let a = App::start("web-a").await;
    let _sa = Sidecar::start(SidecarSpec::server(&url, "web", a.addr)).await;
    registry.until_passing("web", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&url)).await;
    until_seen(&client, 3, |s| s.contains("web-a")).await;
    assert_eq!(
        common::metric(&client.metrics().await, "mesh_registry_connected"),
        Some(1.0)
    );

    registry.stop().await.unwrap();
    // The watch notices; the gauge and /ready's body say so.
    eventually(PATIENCE, "the registry reported unreachable", async || {
        common::metric(&client.metrics().await, "mesh_registry_connected") == Some(0.0)
    })
    .await;
    assert_eq!(
        common::metric(&client.metrics().await, "mesh_registry_connected"),
        Some(0.0)
    );
    let ready = common::get(&format!("http://{}/ready", client.admin)).await;
    assert!(
        ready.text.contains(r#""registry_connected":false"#),
        "{}",
        ready.text
    );

    for _ in 0..20 {
        let answer = common::get_h1(client.outbound, "web", "/whoami").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text, "web-a");
    }
}

#[tokio::test]
async fn names_the_registry_does_not_know_resolve_through_dns() {
    let registry = Registry::start().await;
    let url = registry.url();
    // An un-meshed service: no sidecar, not registered. `localhost` comes from /etc/hosts.
    let plain = App::start("plain").await;
    let client = Sidecar::start(SidecarSpec::client(&url)).await;
    let host = format!("localhost:{}", plain.addr.port());
    let answer = common::get_h1(client.outbound, &host, "/whoami").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.text, "plain");
    let metrics = client.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            r#"mesh_discovery_updates_total{service="localhost",source="dns"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    // IP literals need no lookup at all.
    let answer = common::get_h1(client.outbound, &plain.addr.to_string(), "/whoami").await;
    assert_eq!(answer.text, "plain");
}
