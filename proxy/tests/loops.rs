//! Requests that would come back to the proxy they left: a destination that resolves to
//! the sidecar's own listeners, and a loop through several sidecars. Each is refused at
//! once with 508 and `mesh-error: loop` instead of eating connections until the process
//! runs out of file descriptors.

mod common;

use common::{App, Registry, Sidecar, SidecarSpec, metric_or_zero};
use http::StatusCode;
use mesh_registry_api::Registration;

async fn assert_loop(answer: common::Answer) {
    assert_eq!(answer.status, StatusCode::LOOP_DETECTED, "{}", answer.text);
    assert_eq!(answer.headers["mesh-error"], "loop", "{}", answer.text);
}

#[tokio::test]
async fn a_host_naming_the_sidecar_itself_is_refused() {
    let registry = Registry::start().await;
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;
    let port = client.outbound.port();
    // What `curl localhost:4140/` sends: the proxy's own address as the Host.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", client.admin.port()),
    ] {
        assert_loop(common::get_h1(client.outbound, &host, "/").await).await;
    }
    let m = client.metrics().await;
    assert!(
        metric_or_zero(&m, r#"mesh_tcp_open_connections{direction="outbound"}"#) <= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_registry_entry_pointing_at_the_sidecar_itself_is_refused() {
    let registry = Registry::start().await;
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["web"];
    let client = Sidecar::start(spec).await;
    // `web` is registered at the client's own upstream listener.
    let mut reg = Registration::new(client.upstreams[0].to_string());
    reg.metadata.insert("tls".into(), "off".into());
    registry
        .client
        .register("web", "web-1", &reg)
        .await
        .unwrap();
    registry.until_passing("web", 1).await;
    assert_loop(common::get_h1(client.upstreams[0], "web", "/").await).await;
}

#[tokio::test]
async fn a_loop_through_two_sidecars_is_stopped_by_the_hop_count() {
    let registry = Registry::start().await;
    let a = Sidecar::start(SidecarSpec::client(&registry.url())).await;
    let b = Sidecar::start(SidecarSpec::client(&registry.url())).await;
    // `web` is at both outbound listeners: each sidecar skips itself and sends to the
    // other, which sends it back.
    for (id, sidecar) in [("a", &a), ("b", &b)] {
        let mut reg = Registration::new(sidecar.outbound.to_string());
        reg.metadata.insert("tls".into(), "off".into());
        registry.client.register("web", id, &reg).await.unwrap();
    }
    registry.until_passing("web", 2).await;
    assert_loop(common::get_h1(a.outbound, "web", "/").await).await;
    for s in [&a, &b] {
        let m = s.metrics().await;
        assert!(
            metric_or_zero(&m, r#"mesh_tcp_open_connections{direction="outbound"}"#) <= 20.0,
            "{m}"
        );
    }
}

#[tokio::test]
async fn a_service_calling_itself_through_its_own_sidecar_is_no_loop() {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let sidecar = Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    // The app calls its own service: outbound → its own inbound → the app.
    let answer = common::get_h1(sidecar.outbound, "web", "/whoami").await;
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (StatusCode::OK, "web-1")
    );
}
