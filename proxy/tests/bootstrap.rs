//! A sidecar with mTLS on that cannot get its certificate yet (no CA, a wrong join
//! token) still answers its admin endpoints at once and says why it is not ready, and
//! its data listeners refuse with a clear error instead of hanging.

mod common;

use std::time::Duration;

use common::{App, JOIN_TOKEN, PATIENCE, Registry, Sidecar, SidecarSpec, eventually};
use http::StatusCode;
use mesh_proxy::tls::TlsMode;

async fn without_certificate(registry: &Registry, app: &App, token: &'static str) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, "web", app.addr);
    spec.config.tls.mode = TlsMode::Strict;
    spec.config.tls.join_token = Some(token.to_owned());
    Sidecar::start_unready(spec).await
}

/// Every call must be answered, and soon: a hang is the failure under test.
async fn soon<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// Waits until a signing attempt has failed: `/ready` gives the registry's answer, `why`.
async fn until_refused(sidecar: &Sidecar, why: &str) {
    let ready = format!("http://{}/ready", sidecar.admin);
    let what = format!("/ready to say why: {why}");
    eventually(PATIENCE, &what, async || {
        let body = common::get(&ready).await.body;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        body["reason"].as_str().is_some_and(|r| r.contains(why))
    })
    .await;
}

async fn check_refusing(sidecar: &Sidecar, why: &str) {
    let admin = sidecar.admin;
    let live = soon("/live", common::get(&format!("http://{admin}/live"))).await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = soon("/ready", common::get(&format!("http://{admin}/ready"))).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(body["ready"], false);
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("certificate") && reason.contains(why),
        "{body}"
    );
    let metrics = soon("/metrics", common::get(&format!("http://{admin}/metrics"))).await;
    assert_eq!(metrics.status, StatusCode::OK);

    let answer = soon("outbound", common::get_h1(sidecar.outbound, "db", "/")).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text
    );
    assert_eq!(answer.headers["mesh-error"], "no-identity");
    assert!(answer.text.contains("certificate"), "{}", answer.text);

    // Inbound: the connection is closed, not left hanging.
    let closed = soon(
        "inbound",
        common::raw(
            sidecar.inbound.unwrap(),
            b"GET / HTTP/1.1\r\nhost: web\r\n\r\n",
        ),
    )
    .await;
    assert!(!closed.starts_with("HTTP/1.1 200"), "{closed}");
}

#[tokio::test]
async fn without_a_ca_the_sidecar_answers_admin_and_refuses_data() {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let sidecar = without_certificate(&registry, &app, JOIN_TOKEN).await;
    until_refused(&sidecar, "404").await;
    check_refusing(&sidecar, "404").await;
    let services = registry.client.service("web").await.unwrap();
    assert!(
        services.instances.is_empty(),
        "not registered without a certificate"
    );
}

#[tokio::test]
async fn with_a_wrong_join_token_the_sidecar_says_so() {
    let registry = Registry::start_with_ca(Duration::from_secs(3600)).await;
    let app = App::start("web-1").await;
    let sidecar = without_certificate(&registry, &app, "not-the-token").await;
    until_refused(&sidecar, "401").await;
    check_refusing(&sidecar, "401").await;
}

#[tokio::test]
async fn from_the_first_moment_live_answers_and_ready_does_not() {
    let registry = Registry::start().await;
    let app = App::start("web-1").await;
    let sidecar = without_certificate(&registry, &app, JOIN_TOKEN).await;
    let admin = sidecar.admin;
    let live = soon("/live", common::get(&format!("http://{admin}/live"))).await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = soon("/ready", common::get(&format!("http://{admin}/ready"))).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );
}
