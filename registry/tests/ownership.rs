//! Writes are bound to an identity: only a writer that may act for a service writes its
//! instances, only the writer that registered an instance renews or replaces it, and a
//! registration replaced behind a sidecar's back is noticed at its next heartbeat.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{PATIENCE, Registry, RegistryExt, eventually};
use http::{Method, StatusCode};
use mesh_registry::Config;
use mesh_registry_api::{Client, Registrar, Registration, Status};

const JSON: (&str, &str) = ("content-type", "application/json");

fn body(address: &str) -> Bytes {
    Bytes::from(format!(r#"{{"address":"{address}","ttl":"30s"}}"#))
}

/// A registry whose writes need the operator token `op` or a service token: `web-token`
/// for web, `db-token` for db.
async fn with_tokens() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# services token\nweb web-token\ndb db-token\n").unwrap();
    let config = Config {
        token: Some("op".into()),
        tokens: Some(file),
        ..Config::default()
    };
    (Registry::start_with(config).await, dir)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_token_writes_only_its_own_services_instances() {
    let (registry, _dir) = with_tokens().await;
    let path = "/v1/services/web/instances/web-a";
    let web = bearer("web-token");
    let put = registry
        .raw(
            Method::PUT,
            path,
            &[JSON, ("authorization", &web)],
            body("10.0.0.1:4143"),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.json["owner"], "token:web");
    assert!(put.json["generation"].as_u64().unwrap() > 0);

    // The db sidecar's token cannot take web's instance over, or add one, or remove it.
    let db = bearer("db-token");
    for (method, path) in [
        (Method::PUT, path),
        (Method::PUT, "/v1/services/web/instances/web-evil"),
        (Method::PUT, "/v1/services/web/instances/web-a/heartbeat"),
        (Method::DELETE, path),
    ] {
        let answer = registry
            .raw(
                method.clone(),
                path,
                &[JSON, ("authorization", &db)],
                body("10.6.6.6:4143"),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            answer.text
        );
        assert_eq!(answer.error_field(), Some("service"));
    }
    // Nor can a write without credentials, or with a made-up token.
    for headers in [vec![JSON], vec![JSON, ("authorization", "Bearer guess")]] {
        let answer = registry
            .raw(Method::PUT, path, &headers, body("10.6.6.6:4143"))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text);
    }
    let listed = registry.all_instances("web").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["address"], "10.0.0.1:4143");
}

#[tokio::test]
async fn an_instance_is_renewed_and_replaced_by_its_owner_alone() {
    let (registry, _dir) = with_tokens().await;
    let path = "/v1/services/web/instances/web-a";
    let (web, op) = (bearer("web-token"), bearer("op"));
    let put = registry
        .raw(
            Method::PUT,
            path,
            &[JSON, ("authorization", &web)],
            body("10.0.0.1:4143"),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);

    // The operator may write any service, but not over (or renew) an instance another
    // writer owns: 409, naming the owner.
    let taken = registry
        .raw(
            Method::PUT,
            path,
            &[JSON, ("authorization", &op)],
            body("10.6.6.6:4143"),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    assert_eq!(taken.error_code(), "conflict");
    assert!(taken.text.contains("token:web"), "{}", taken.text);
    let beat = registry
        .raw(
            Method::PUT,
            &format!("{path}/heartbeat"),
            &[JSON, ("authorization", &op)],
            Bytes::new(),
        )
        .await;
    assert_eq!(beat.status, StatusCode::CONFLICT, "{}", beat.text);

    // An instance the operator registered is the operator's: web's token cannot replace it.
    let ops = "/v1/services/web/instances/web-ops";
    let mine = registry
        .raw(
            Method::PUT,
            ops,
            &[JSON, ("authorization", &op)],
            body("10.0.0.9:4143"),
        )
        .await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.json["owner"], "operator");
    let taken = registry
        .raw(
            Method::PUT,
            ops,
            &[JSON, ("authorization", &web)],
            body("10.6.6.6:4143"),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    assert!(taken.text.contains("operator"), "{}", taken.text);

    // The operator removes any instance.
    let removed = registry
        .raw(
            Method::DELETE,
            path,
            &[("authorization", &op)],
            Bytes::new(),
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    let listed = registry.all_instances("web").await;
    assert_eq!(listed[0]["id"], "web-ops", "{listed}");
    assert_eq!(listed[0]["address"], "10.0.0.9:4143");
}

#[tokio::test]
async fn a_heartbeat_for_a_replaced_registration_is_told_to_register_again() {
    let registry = Registry::start().await;
    let path = "/v1/services/web/instances/web-a";
    let first = registry
        .raw(Method::PUT, path, &[JSON], body("10.0.0.1:4143"))
        .await;
    let generation = first.json["generation"].as_u64().unwrap();
    // Identical again: the same registration, the same generation.
    let again = registry
        .raw(Method::PUT, path, &[JSON], body("10.0.0.1:4143"))
        .await;
    assert_eq!(again.json["generation"].as_u64(), Some(generation));

    let replaced = registry
        .raw(Method::PUT, path, &[JSON], body("10.6.6.6:4143"))
        .await;
    let newer = replaced.json["generation"].as_u64().unwrap();
    assert_ne!(newer, generation);

    let beat = |generation: u64| {
        let registry = &registry;
        async move {
            let body = format!(r#"{{"generation":{generation}}}"#);
            let path = format!("{path}/heartbeat");
            registry.raw(Method::PUT, &path, &[JSON], body).await
        }
    };
    let stale = beat(generation).await;
    assert_eq!(stale.status, StatusCode::NOT_FOUND, "{}", stale.text);
    assert!(stale.text.contains("registered again"), "{}", stale.text);
    assert_eq!(beat(newer).await.status, StatusCode::OK);

    // A deregistration naming the old registration leaves the new one alone.
    let old = format!("{path}?generation={generation}");
    let removed = registry.raw(Method::DELETE, &old, &[], Bytes::new()).await;
    assert_eq!(removed.status, StatusCode::NOT_FOUND, "{}", removed.text);
    assert_eq!(
        registry
            .all_instances("web")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let current = format!("{path}?generation={newer}");
    let removed = registry
        .raw(Method::DELETE, &current, &[], Bytes::new())
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
}

/// The takeover that worked before owners and generations: a forged `PUT` replaced a
/// sidecar's entry, and the sidecar's own heartbeats kept the forgery alive. Now the
/// sidecar's next heartbeat is refused and it registers its own address again.
#[tokio::test]
async fn a_sidecar_takes_its_instance_back_after_a_forged_registration() {
    let registry = Registry::start().await;
    let real = Registration {
        ttl: Duration::from_secs(3),
        ..Registration::new("10.0.0.1:4143")
    };
    let registrar = Registrar::new(registry.client.clone(), "web", "web-a", real);
    let mut registered = registrar.subscribe_registered();
    let (health_tx, health) = tokio::sync::watch::channel(Status::Passing);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(registrar.run(health, async {
        let _ = stopped.await;
    }));
    registered.wait_for(|r| *r).await.unwrap();

    let attacker = Client::new(&format!("http://{}", registry.addr)).unwrap();
    let forged = Registration {
        ttl: Duration::from_secs(3600),
        ..Registration::new("10.6.6.6:4143")
    };
    attacker.register("web", "web-a", &forged).await.unwrap();
    assert_eq!(
        registry.all_instances("web").await[0]["address"],
        "10.6.6.6:4143"
    );

    eventually(
        PATIENCE,
        "the sidecar's own address listed again",
        async || registry.all_instances("web").await[0]["address"] == "10.0.0.1:4143",
    )
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    drop(health_tx);
}

#[tokio::test]
async fn an_open_registry_says_so_and_refuses_writes_under_a_rebound_name() {
    let registry = Registry::start().await;
    let ready = registry
        .raw(Method::GET, "/readyz", &[], Bytes::new())
        .await;
    assert_eq!(ready.json["writes"], serde_json::json!(["open"]));

    let path = "/v1/services/web/instances/web-a";
    let rebound = registry
        .raw(
            Method::PUT,
            path,
            &[JSON, ("host", "attacker.example:7700")],
            body("10.6.6.6:4143"),
        )
        .await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN, "{}", rebound.text);
    assert_eq!(rebound.error_field(), Some("host"));
    let local = registry
        .raw(
            Method::PUT,
            path,
            &[JSON, ("host", "localhost:7700")],
            body("10.0.0.1:4143"),
        )
        .await;
    assert_eq!(local.status, StatusCode::OK, "{}", local.text);
    assert_eq!(local.json["owner"], "anonymous");

    let (tokens, _dir) = with_tokens().await;
    let ready = tokens.raw(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(
        ready.json["writes"],
        serde_json::json!(["service-token", "operator-token"])
    );
}

#[tokio::test]
async fn owners_and_generations_survive_a_restart_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "web web-token\n").unwrap();
    let config = || Config {
        data_dir: Some(dir.path().join("data")),
        token: Some("op".into()),
        tokens: Some(tokens.clone()),
        snapshot_debounce: Duration::ZERO,
        ..Config::default()
    };
    let registry = Registry::start_with(config()).await;
    let path = "/v1/services/web/instances/web-a";
    let put = registry
        .raw(
            Method::PUT,
            path,
            &[JSON, ("authorization", &bearer("web-token"))],
            body("10.0.0.1:4143"),
        )
        .await;
    let generation = put.json["generation"].as_u64().unwrap();
    registry.stop().await.unwrap();

    let registry = Registry::start_with(config()).await;
    let listed = registry.all_instances("web").await;
    assert_eq!(listed[0]["owner"], "token:web");
    assert_eq!(listed[0]["generation"].as_u64(), Some(generation));
    let taken = registry
        .raw(
            Method::PUT,
            path,
            &[JSON, ("authorization", &bearer("op"))],
            body("10.6.6.6:4143"),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
}
