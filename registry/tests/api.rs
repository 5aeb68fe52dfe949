//! The registry API over real sockets: lifecycle, errors, auth, metrics.

mod common;

use bytes::Bytes;
use common::{JSON, Registry, RegistryExt};
use http::{Method, StatusCode};
use mesh_registry::Config;
use mesh_registry_api::{Heartbeat, Registration, Status};

const PUT: Method = Method::PUT;
const GET: Method = Method::GET;
const DELETE: Method = Method::DELETE;

#[tokio::test]
async fn register_list_heartbeat_deregister() {
    let r = Registry::start().await;
    let c = &r.client;

    let mut registration = Registration::new("10.0.0.7:4143");
    registration.tags = vec!["v1".into()];
    let stored = c
        .register("recommendations", "r-1", &registration)
        .await
        .unwrap();
    assert_eq!(stored.address, "10.0.0.7:4143");
    assert_eq!(stored.status, Status::Passing);

    let listing = c.service("recommendations").await.unwrap();
    assert!(listing.exists);
    assert_eq!(listing.instances.len(), 1);
    assert_eq!(listing.instances[0].id, "r-1");
    assert_eq!(listing.instances[0].tags, vec!["v1".to_owned()]);

    let services = c.services().await.unwrap();
    assert_eq!(services.services.len(), 1);
    assert_eq!(services.services[0].name, "recommendations");
    assert_eq!(
        (services.services[0].instances, services.services[0].passing),
        (1, 1)
    );

    // A warning heartbeat takes the instance out of the default listing.
    let beat = Heartbeat {
        status: Some(Status::Warning),
        output: Some("slow disk".into()),
        ..Heartbeat::default()
    };
    let lease = c.heartbeat("recommendations", "r-1", &beat).await.unwrap();
    assert_eq!(lease.status, Status::Warning);
    assert!(
        c.service("recommendations")
            .await
            .unwrap()
            .instances
            .is_empty()
    );
    let all = r.all_instances("recommendations").await;
    assert_eq!(all[0]["status"], "warning");
    assert_eq!(all[0]["output"], "slow disk");

    c.deregister("recommendations", "r-1").await.unwrap();
    let listing = c.service("recommendations").await.unwrap();
    assert!(!listing.exists);
    assert!(c.services().await.unwrap().services.is_empty());

    let again = r
        .raw(
            DELETE,
            "/v1/services/recommendations/instances/r-1",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.error_code(), "not_found");
}

#[tokio::test]
async fn re_registering_replaces_and_identical_re_registration_keeps_the_index() {
    let r = Registry::start().await;
    let path = "/v1/services/web/instances/a";
    let first = r.raw(PUT, path, &[JSON], r#"{"address":"h:1"}"#).await;
    assert_eq!(first.status, StatusCode::OK);
    let same = r.raw(PUT, path, &[JSON], r#"{"address":"h:1"}"#).await;
    assert_eq!(
        same.index(),
        first.index(),
        "an identical registration is a no-op"
    );

    let moved = r
        .raw(PUT, path, &[JSON], r#"{"address":"h:2","weight":5}"#)
        .await;
    assert!(moved.index() > first.index());
    let listing = r.client.service("web").await.unwrap();
    assert_eq!(listing.instances.len(), 1);
    assert_eq!(listing.instances[0].address, "h:2");
    assert_eq!(listing.instances[0].weight, 5);
    assert_eq!(listing.index, moved.index());
}

#[tokio::test]
async fn heartbeat_for_an_unknown_instance_is_404_so_the_client_re_registers() {
    let r = Registry::start().await;
    let err = r
        .client
        .heartbeat("web", "ghost", &Heartbeat::default())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    let raw = r
        .raw(
            PUT,
            "/v1/services/web/instances/ghost/heartbeat",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(raw.status, StatusCode::NOT_FOUND);
    assert!(raw.headers.contains_key("x-mesh-index"));
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_field() {
    let r = Registry::start().await;
    let reg = "/v1/services/web/instances/a";
    let big = format!(
        r#"{{"address":"h:1","tags":["{}"]}}"#,
        "x".repeat(70 * 1024)
    );
    type Headers = Vec<(&'static str, &'static str)>;
    let cases: Vec<(Method, &str, Headers, String, StatusCode, &str)> = vec![
        (
            PUT,
            "/v1/services/Web/instances/a",
            vec![JSON],
            r#"{"address":"h:1"}"#.into(),
            StatusCode::BAD_REQUEST,
            "service",
        ),
        (
            PUT,
            "/v1/services/web/instances/a%20b",
            vec![JSON],
            r#"{"address":"h:1"}"#.into(),
            StatusCode::BAD_REQUEST,
            "id",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"address":"nohost"}"#.into(),
            StatusCode::BAD_REQUEST,
            "address",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"address":"h:0"}"#.into(),
            StatusCode::BAD_REQUEST,
            "address",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"port":80}"#.into(),
            StatusCode::BAD_REQUEST,
            "port",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"address":"h:1","weight":0}"#.into(),
            StatusCode::BAD_REQUEST,
            "weight",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"address":"h:1","weight":5000}"#.into(),
            StatusCode::BAD_REQUEST,
            "weight",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"address":"h:1","ttl":"100ms"}"#.into(),
            StatusCode::BAD_REQUEST,
            "ttl",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"address":"h:1","ttl":"3h"}"#.into(),
            StatusCode::BAD_REQUEST,
            "ttl",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            r#"{"address":"h:1","status":"dead"}"#.into(),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            "not json".into(),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            "".into(),
            StatusCode::BAD_REQUEST,
            "address",
        ),
        (
            PUT,
            reg,
            vec![("content-type", "application/x-www-form-urlencoded")],
            r#"{"address":"h:1"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
        (
            PUT,
            reg,
            vec![],
            r#"{"address":"h:1"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
        (
            PUT,
            reg,
            vec![JSON],
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
        (
            PUT,
            "/v1/services/web/instances/a/heartbeat",
            vec![JSON],
            r#"{"status":"fine"}"#.into(),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            GET,
            "/v1/services/web?index=abc",
            vec![],
            "".into(),
            StatusCode::BAD_REQUEST,
            "index",
        ),
        (
            GET,
            "/v1/services/web?wait=soon",
            vec![],
            "".into(),
            StatusCode::BAD_REQUEST,
            "wait",
        ),
        (
            GET,
            "/v1/services/web?all=perhaps",
            vec![],
            "".into(),
            StatusCode::BAD_REQUEST,
            "all",
        ),
        (
            GET,
            "/v1/services/web_1",
            vec![],
            "".into(),
            StatusCode::BAD_REQUEST,
            "service",
        ),
    ];
    for (method, path, headers, body, status, field) in cases {
        let answer = r.raw(method.clone(), path, &headers, body.clone()).await;
        let shown: String = body.chars().take(60).collect();
        assert_eq!(
            answer.status, status,
            "{method} {path} {shown}: {}",
            answer.text
        );
        assert_eq!(
            answer.error_field(),
            Some(field),
            "{method} {path} {shown}: {}",
            answer.text
        );
        assert!(!answer.json["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(
            answer.headers["content-type"], "application/json",
            "{method} {path}"
        );
    }
    // Nothing of the above was stored.
    assert!(r.client.services().await.unwrap().services.is_empty());
}

#[tokio::test]
async fn ids_of_dots_alone_and_admin_metadata_that_is_not_host_port_are_400() {
    let r = Registry::start().await;
    let body = r#"{"address":"h:1"}"#;
    // Dots alone are path segments ("." and ".." mean something to every URL resolver):
    // refused on every route that names an instance.
    for id in [".", "..", "..."] {
        for (method, suffix, body) in [
            (PUT, "", body),
            (PUT, "/heartbeat", ""),
            (DELETE, "", ""),
            (GET, "/admin/ready", ""),
        ] {
            let path = format!("/v1/services/web/instances/{id}{suffix}");
            let answer = r.raw(method.clone(), &path, &[JSON], body).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert_eq!(answer.error_field(), Some("id"), "{method} {path}");
        }
    }
    // Dots among other characters are fine.
    for id in [".a", "a..b", "a.", "_.", "-"] {
        let path = format!("/v1/services/web/instances/{id}");
        let answer = r.raw(PUT, &path, &[JSON], body).await;
        assert_eq!(answer.status, StatusCode::OK, "{id}: {}", answer.text);
    }

    // `admin` is where the registry reads the sidecar's admin pages: host:port, like
    // `address`, and refused naming it when it is not.
    for admin in [
        "",
        "10.0.0.7",
        "http://10.0.0.7:4191",
        "10.0.0.7:4191/metrics",
        "evil.example:0",
        "user@host:80",
    ] {
        let registration =
            serde_json::json!({"address": "10.0.0.7:4143", "metadata": {"admin": admin}});
        let path = "/v1/services/web/instances/sidecar";
        let answer = r.raw(PUT, path, &[JSON], registration.to_string()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{admin:?}");
        assert_eq!(answer.error_field(), Some("metadata.admin"), "{admin:?}");
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(message.contains("admin"), "{message}");
    }
    let fine = serde_json::json!({"address": "10.0.0.7:4143", "metadata": {"admin": "10.0.0.7:4191", "zone": "not an address"}});
    let answer = r
        .raw(
            PUT,
            "/v1/services/web/instances/sidecar",
            &[JSON],
            fine.to_string(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let r = Registry::start().await;
    let missing = r.raw(GET, "/v2/anything", &[], Bytes::new()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // Not `not_found`: a client reaching the registry under a wrong URL must be able to
    // tell this from "no such instance".
    assert_eq!(missing.error_code(), "no_route");
    let prefixed = r
        .raw(
            PUT,
            "/v1/v1/services/web/instances/a/heartbeat",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(prefixed.status, StatusCode::NOT_FOUND);
    assert_eq!(prefixed.error_code(), "no_route");

    for (method, path, allow) in [
        (Method::POST, "/v1/services", "GET"),
        (DELETE, "/v1/services/web", "GET"),
        (GET, "/v1/services/web/instances/a", "PUT, DELETE"),
        (
            Method::POST,
            "/v1/services/web/instances/a/heartbeat",
            "PUT",
        ),
        (Method::PATCH, "/metrics", "GET"),
    ] {
        let answer = r.raw(method.clone(), path, &[], Bytes::new()).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.error_code(), "method_not_allowed");
        assert_eq!(answer.headers["allow"], allow);
    }
}

#[tokio::test]
async fn with_a_token_writes_need_it_and_reads_do_not() {
    let config = Config {
        token: Some("s3cret".into()),
        ..Config::default()
    };
    let r = Registry::start_with(config).await;
    let path = "/v1/services/web/instances/a";
    let body = r#"{"address":"h:1"}"#;

    let none = r.raw(PUT, path, &[JSON], body).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.error_code(), "unauthorized");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = r
        .raw(PUT, path, &[JSON, ("authorization", "Bearer s3cres")], body)
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let delete = r.raw(DELETE, path, &[], Bytes::new()).await;
    assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
    // Authentication schemes are case-insensitive (RFC 9110, section 11.1).
    for header in ["bearer s3cret", "BEARER s3cret", " Bearer  s3cret "] {
        let answer = r
            .raw(PUT, path, &[JSON, ("authorization", header)], body)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{header:?}: {}", answer.text);
    }

    let client = r.client.clone().with_token("s3cret");
    client
        .register("web", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    // Reads stay open: sidecars and Prometheus need no secret to discover.
    assert_eq!(r.client.service("web").await.unwrap().instances.len(), 1);
    assert!(
        r.client
            .heartbeat("web", "a", &Heartbeat::default())
            .await
            .is_err()
    );
    client
        .heartbeat("web", "a", &Heartbeat::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn every_answer_carries_the_index_and_ops_endpoints_answer() {
    let r = Registry::start().await;
    r.client
        .register("web", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/v1/services",
        "/nope",
    ] {
        let answer = r.raw(GET, path, &[], Bytes::new()).await;
        assert!(answer.index() >= 1, "{path}");
    }
    let openapi = r.raw(GET, "/openapi.json", &[], Bytes::new()).await;
    assert!(openapi.json["paths"]["/v1/services/{service}"].is_object());

    let metrics = r.metrics().await;
    assert!(
        metrics.contains(r#"mesh_registry_instances{service="web",status="passing"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mesh_registry_http_requests_total{code="200",route="register"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mesh_registry_http_requests_total{code="404",route="unknown"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("mesh_registry_watchers 0"));
    assert!(metrics.contains("mesh_registry_lease_expirations_total 0"));
}
