//! The OpenAPI document and the routing table agree: every documented path is routed,
//! and every route (down to each file of the dashboard) is documented.

use mesh_registry::api::OPENAPI;
use mesh_registry::route::target;
use mesh_registry::ui;

#[test]
fn the_openapi_document_is_json_and_names_every_route() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/services", &["get"][..]),
        ("/v1/services/{service}", &["get"]),
        ("/v1/services/{service}/instances/{id}", &["put", "delete"]),
        ("/v1/services/{service}/instances/{id}/heartbeat", &["put"]),
        (
            "/v1/services/{service}/instances/{id}/admin/ready",
            &["get"],
        ),
        (
            "/v1/services/{service}/instances/{id}/admin/metrics",
            &["get"],
        ),
        (
            "/v1/services/{service}/instances/{id}/admin/debug/endpoints",
            &["get"],
        ),
        (
            "/v1/services/{service}/instances/{id}/admin/debug/policy",
            &["get"],
        ),
        ("/v1/policy/{service}", &["get"]),
        ("/v1/policy/{service}/{kind}", &["get", "put", "delete"]),
        ("/v1/events", &["get"]),
        ("/metrics", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/prometheus/targets", &["get"]),
        ("/v1/ca/sign", &["post"]),
        ("/v1/ca/bundle", &["get"]),
        ("/", &["get"]),
        ("/ui", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path].get(*m).is_some(), "{m} {path} missing");
        }
    }
    for name in ui::names() {
        let path = format!("{}{name}", ui::PATH);
        assert!(
            paths[&path].get("get").is_some(),
            "{path} is not documented"
        );
    }
    for path in paths.keys() {
        let concrete = path
            .replace("{service}", "web")
            .replace("{id}", "a")
            .replace("{kind}", "routes");
        assert!(
            target(&concrete).is_some(),
            "{path} is documented but not routed"
        );
    }
}
