//! `--tls strict` means every connection to a mesh endpoint is mTLS with the
//! destination's identity, or it is not made: a rogue registry entry without TLS, and a
//! name only DNS knows, get no plaintext request unless a flag names the destination.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{App, JOIN_TOKEN, Registry, Sidecar, SidecarSpec};
use http::{Request, StatusCode};
use http_body_util::Full;
use mesh_proxy::Config;
use mesh_proxy::tls::TlsMode;
use mesh_registry_api::Registration;

const DAY: Duration = Duration::from_secs(86_400);

async fn meshed(
    registry: &Registry,
    service: &str,
    app: &App,
    settings: impl FnOnce(&mut Config),
) -> Sidecar {
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, service, app.addr);
    spec.config.tls.mode = TlsMode::Strict;
    spec.config.tls.join_token = Some(JOIN_TOKEN.to_owned());
    settings(&mut spec.config);
    Sidecar::start(spec).await
}

/// An instance of `web` registered by anyone (no token on the registry): plaintext,
/// straight at `app`.
async fn rogue(registry: &Registry, app: &App) {
    let reg = Registration::new(app.addr.to_string());
    registry
        .client
        .register("web", "rogue", &reg)
        .await
        .unwrap();
}

fn with_secret(addr: std::net::SocketAddr, host: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/whoami"))
        .header("host", host)
        .header("authorization", "Bearer the-marketplace-secret")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_strict_sidecar_never_sends_a_request_to_a_rogue_plaintext_instance() {
    let registry = Registry::start_with_ca(DAY).await;
    let web_app = App::start("web-1").await;
    let web = meshed(&registry, "web", &web_app, |_| {}).await;
    let evil = App::start("evil").await;
    rogue(&registry, &evil).await;
    registry.until_passing("web", 2).await;
    let caller_app = App::start("marketplace").await;
    let caller = meshed(&registry, "marketplace", &caller_app, |_| {}).await;

    for _ in 0..20 {
        let answer = common::send(&common::h1(), with_secret(caller.outbound, "web")).await;
        assert_eq!(
            (answer.status, answer.text.as_str()),
            (StatusCode::OK, "web-1")
        );
    }
    assert_eq!(
        evil.received.load(Ordering::SeqCst),
        0,
        "no request reached the rogue"
    );

    // With the real instance gone, only the rogue is left: refused, not dialled.
    drop(web);
    registry.until_passing("web", 1).await;
    for _ in 0..3 {
        let answer = common::send(&common::h1(), with_secret(caller.outbound, "web")).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text);
        assert_eq!(answer.headers["mesh-error"], "forbidden");
        assert!(answer.text.contains("mTLS"), "{}", answer.text);
    }
    assert_eq!(evil.received.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn plaintext_needs_a_flag_naming_the_destination() {
    let registry = Registry::start_with_ca(DAY).await;
    let evil = App::start("legacy-web").await;
    rogue(&registry, &evil).await;
    registry.until_passing("web", 1).await;
    let plain = App::start("plain").await;
    let caller_app = App::start("marketplace").await;

    let strict = meshed(&registry, "marketplace", &caller_app, |_| {}).await;
    let dns_name = format!("localhost:{}", plain.addr.port());
    for host in ["web", dns_name.as_str()] {
        let answer = common::get_h1(strict.outbound, host, "/whoami").await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{host}: {}",
            answer.text
        );
    }
    assert_eq!(evil.received.load(Ordering::SeqCst), 0);
    assert_eq!(plain.received.load(Ordering::SeqCst), 0);
    drop(strict);

    let caller_app = App::start("marketplace").await;
    let allowing = meshed(&registry, "marketplace", &caller_app, |c| {
        c.tls.plaintext_to = vec!["web".into(), "localhost".into()]
    })
    .await;
    assert_eq!(
        common::get_h1(allowing.outbound, "web", "/whoami")
            .await
            .text,
        "legacy-web"
    );
    assert_eq!(
        common::get_h1(allowing.outbound, &dns_name, "/whoami")
            .await
            .text,
        "plain"
    );
}
