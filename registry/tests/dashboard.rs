//! The dashboard's routes over real sockets: the redirects to `/ui/`, its files with their
//! content types, what `/readyz` tells it (and `meshctl`) about the registry, and how it
//! learns of a policy change. What the page draws is tested in headless Chromium
//! (`demo/tests/dashboard.rs`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{JSON, Registry, RegistryExt, request};
use http::{Method, StatusCode};
use mesh_registry::Config;
use mesh_registry::ca::Ca;
use mesh_registry_api::Registration;

const GET: Method = Method::GET;

#[tokio::test]
async fn the_root_and_ui_without_its_slash_redirect_to_the_dashboard() {
    let r = Registry::start().await;
    for path in ["/", "/ui"] {
        let answer = r.raw(GET, path, &[], Bytes::new()).await;
        assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT, "{path}");
        assert_eq!(answer.headers["location"], "/ui/", "{path}");
        assert!(answer.headers.contains_key("x-mesh-index"));
    }
    let post = r.raw(Method::POST, "/", &[], Bytes::new()).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.error_code(), "method_not_allowed");
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_types_and_no_cache() {
    let r = Registry::start().await;
    let page = r.raw(GET, "/ui/", &[], Bytes::new()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-cache");
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert!(page.text.contains("<title>mesh-registry dashboard</title>"));
    assert!(page.text.contains(r#"<script type="module" src="app.js">"#));

    for (file, content_type) in [
        ("style.css", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("figures.js", "text/javascript; charset=utf-8"),
        ("sidecars.js", "text/javascript; charset=utf-8"),
        ("sidecar-reader.js", "text/javascript; charset=utf-8"),
        ("policy.js", "text/javascript; charset=utf-8"),
        ("view.js", "text/javascript; charset=utf-8"),
    ] {
        let answer = r.raw(GET, &format!("/ui/{file}"), &[], Bytes::new()).await;
        assert_eq!(answer.status, StatusCode::OK, "{file}");
        assert_eq!(answer.headers["content-type"], content_type, "{file}");
        assert_eq!(answer.headers["cache-control"], "no-cache", "{file}");
        assert!(!answer.text.is_empty(), "{file}");
    }
    let missing = r.raw(GET, "/ui/missing.js", &[], Bytes::new()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "no_route");

    let metrics = r.metrics().await;
    assert!(
        metrics.contains(r#"mesh_registry_http_requests_total{code="200",route="ui"} 9"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn readyz_names_the_version_no_ca_and_the_store() {
    let r = Registry::start().await;
    let ready = r.raw(GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(
        ready.json,
        serde_json::json!({"status": "ready", "version": env!("CARGO_PKG_VERSION"), "ca": null,
                           "store": {"kind": "memory", "stale": false}, "writes": ["open"]})
    );
}

#[tokio::test]
async fn readyz_names_the_trust_domain_and_the_certificates_lifetime_of_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let generated = Ca::generate("example.org").unwrap();
    std::fs::write(dir.path().join("ca.pem"), &generated.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), &generated.key_pem).unwrap();
    let r = Registry::start_with(Config {
        ca_cert: Some(dir.path().join("ca.pem")),
        ca_key: Some(dir.path().join("ca-key.pem")),
        join_token: Some("join-me".into()),
        trust_domain: "example.org".into(),
        cert_ttl: Duration::from_secs(24 * 3600),
        ..Config::default()
    })
    .await;
    let ready = r.raw(GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(
        ready.json["ca"],
        serde_json::json!({"trust_domain": "example.org", "cert_ttl": "24h"})
    );
    assert_eq!(ready.json["status"], "ready");
}

/// The page follows one blocking query, on `/v1/services`, and reads a service's policy
/// when that answers: a policy write must wake it (its index moves) even though no
/// service's own index does, and `/v1/policy/{s}` then holds the document with its
/// strings as written (the page, not the registry, keeps them from being markup).
#[tokio::test]
async fn a_policy_write_wakes_the_catalog_query_the_page_follows() {
    let r = Registry::start().await;
    r.client
        .register("shop", "shop-1", &Registration::new("127.0.0.1:1"))
        .await
        .unwrap();
    let before = r.raw(GET, "/v1/services", &[], Bytes::new()).await;
    let shop_index = before.json["services"][0]["index"].clone();

    let url = r.url_for(&format!("/v1/services?index={}&wait=30s", before.index()));
    let waiting = tokio::spawn(async move { request(GET, &url, &[], Bytes::new()).await });
    r.until_watchers(1.0).await;
    let markup = "<img src=x onerror=alert(1)>";
    let routes = serde_json::json!({"rules": [{
        "matches": [{"headers": {"x-canary": markup}}],
        "backends": [{"subset": "version=v2", "weight": 100}],
    }]});
    let put = r
        .raw(
            Method::PUT,
            "/v1/policy/shop/routes",
            &[JSON],
            routes.to_string(),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);

    let woke = waiting.await.unwrap();
    assert_eq!(woke.status, StatusCode::OK);
    assert!(woke.index() > before.index(), "{}", woke.text);
    assert_eq!(woke.json["services"][0]["index"], shop_index);

    let policy = r.raw(GET, "/v1/policy/shop", &[], Bytes::new()).await;
    assert_eq!(policy.status, StatusCode::OK);
    assert_eq!(policy.headers["content-type"], "application/json");
    let rule = &policy.json["routes"]["rules"][0];
    assert_eq!(rule["matches"][0]["headers"]["x-canary"], markup);
    assert_eq!(rule["backends"][0]["subset"], "version=v2");
    assert_eq!(policy.json["intentions"], serde_json::Value::Null);
    assert_eq!(policy.json["limits"], serde_json::Value::Null);
}
