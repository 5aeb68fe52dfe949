//! Policy documents in the registry: checked whole before they are stored (an invalid
//! one never reaches a sidecar), written only by the service's owner or the operator,
//! followed by blocking queries, and kept across a restart (snapshot) and a replica's
//! death (etcd).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::etcd::{EtcdCluster, Replica};
use common::{JSON, PATIENCE, Registry, RegistryExt, eventually, request};
use http::{Method, StatusCode};
use mesh_registry::Config;
use mesh_registry_api::Client;

const BINARY: &str = env!("CARGO_BIN_EXE_mesh-registry");

const CANARY: &str = r#"{"rules":[{"backends":[
    {"subset":"version=v1","weight":90},{"subset":"version=v2","weight":10}]}]}"#;

async fn put(registry: &Registry, path: &str, body: &str, token: Option<&str>) -> common::Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![JSON];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    let body = Bytes::from(body.to_owned());
    registry.raw(Method::PUT, path, &headers, body).await
}

#[tokio::test]
async fn a_document_is_stored_normalised_and_served_to_followers() {
    let registry = Registry::start().await;
    let none = registry
        .raw(Method::GET, "/v1/policy/web", &[], Bytes::new())
        .await;
    assert_eq!(none.status, StatusCode::OK);
    assert!(none.json["routes"].is_null() && none.json["intentions"].is_null());

    // A follower parked on web's policy wakes when it is written.
    let client = Client::new(&format!("http://{}", registry.addr)).unwrap();
    let parked = tokio::spawn({
        let client = client.clone();
        let index = none.index();
        async move { client.policy_blocking("web", index, PATIENCE).await }
    });
    registry.until_watchers(1.0).await;
    let written = Instant::now();
    let stored = put(&registry, "/v1/policy/web/routes", CANARY, None).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text);
    // Normalised: the rule got its name and the version is said.
    assert_eq!(stored.json["rules"][0]["name"], "rule-1");
    assert_eq!(stored.json["version"], 1);
    let woken = parked.await.unwrap().unwrap();
    assert!(written.elapsed() < Duration::from_secs(5));
    assert_eq!(woken.index, stored.index());
    assert!(woken.index > none.index());
    assert_eq!(
        woken.routes.unwrap()["rules"][0]["backends"][1]["weight"],
        10
    );

    let one = registry
        .raw(Method::GET, "/v1/policy/web/routes", &[], Bytes::new())
        .await;
    assert_eq!(one.json, stored.json);
    let other = registry
        .raw(Method::GET, "/v1/policy/web/limits", &[], Bytes::new())
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);

    // Another service's policy does not move web's index; deleting web's does.
    put(&registry, "/v1/policy/db/limits", r#"{"rps":5}"#, None).await;
    let web = registry
        .raw(Method::GET, "/v1/policy/web", &[], Bytes::new())
        .await;
    assert_eq!(web.index(), stored.index());
    let deleted = registry
        .raw(Method::DELETE, "/v1/policy/web/routes", &[], Bytes::new())
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let web = registry
        .raw(Method::GET, "/v1/policy/web", &[], Bytes::new())
        .await;
    assert!(web.json["routes"].is_null());
    assert!(web.index() > stored.index());
}

#[tokio::test]
async fn an_invalid_document_is_refused_naming_its_field_and_the_old_one_stays() {
    let registry = Registry::start().await;
    put(&registry, "/v1/policy/web/routes", CANARY, None).await;
    for (body, field, says) in [
        (
            r#"{"rules":[{"backends":[{"subset":"version=v1","weight":90}]}]}"#,
            "rules[0].backends",
            "100",
        ),
        (
            r#"{"rules":[{"matches":[{"colour":"red"}]}]}"#,
            "rules[0].matches[0]",
            "colour",
        ),
        (
            r#"{"rules":[{"backends":[{"subset":"version","weight":100}]}]}"#,
            "rules[0].backends[0].subset",
            "key=value",
        ),
        (r#"{"version":2,"rules":[]}"#, "version", "2"),
        ("not json", "body", "JSON"),
    ] {
        let refused = put(&registry, "/v1/policy/web/routes", body, None).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
        let named = refused.error_field().unwrap_or_default();
        assert!(named.starts_with(field), "{body}: field {named}");
        assert!(refused.text.contains(says), "{body}: {}", refused.text);
    }
    let refused = put(&registry, "/v1/policy/web/colours", "{}", None).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let kept = registry
        .raw(Method::GET, "/v1/policy/web/routes", &[], Bytes::new())
        .await;
    assert_eq!(kept.json["rules"][0]["backends"][0]["weight"], 90);
}

#[tokio::test]
async fn only_the_services_owner_or_the_operator_writes_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "web web-token\ndb db-token\n").unwrap();
    let config = Config {
        token: Some("op".into()),
        tokens: Some(tokens),
        ..Config::default()
    };
    let registry = Registry::start_with(config).await;
    let deny = r#"{"default":"deny"}"#;
    let path = "/v1/policy/web/intentions";
    for token in [None, Some("db-token"), Some("nonsense")] {
        let refused = put(&registry, path, deny, token).await;
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&refused.status),
            "{token:?}: {}",
            refused.text
        );
        let deleted = registry.raw(Method::DELETE, path, &[], Bytes::new()).await;
        assert_eq!(deleted.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        put(&registry, path, deny, Some("web-token")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        put(&registry, path, deny, Some("op")).await.status,
        StatusCode::OK
    );
    let read = registry.raw(Method::GET, path, &[], Bytes::new()).await;
    assert_eq!(read.json["default"], "deny");
}

#[tokio::test]
async fn policies_survive_a_restart_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        data_dir: Some(dir.path().to_owned()),
        snapshot_debounce: Duration::from_millis(10),
        ..Config::default()
    };
    let registry = Registry::start_with(config()).await;
    let stored = put(&registry, "/v1/policy/web/routes", CANARY, None).await;
    put(
        &registry,
        "/v1/policy/web/limits",
        r#"{"rps":50,"burst":5}"#,
        None,
    )
    .await;
    registry.stop().await.unwrap();

    let registry = Registry::start_with(config()).await;
    let policy = registry
        .raw(Method::GET, "/v1/policy/web", &[], Bytes::new())
        .await;
    assert_eq!(policy.json["routes"], stored.json);
    assert_eq!(policy.json["limits"]["burst"], 5);
    assert!(policy.index() >= stored.index());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_policy_written_through_one_replica_is_served_by_all_and_outlives_it() {
    let etcd = EtcdCluster::start(1).await;
    let a = Replica::start(Path::new(BINARY), &etcd.endpoints(), &[]).await;
    let b = Replica::start(Path::new(BINARY), &etcd.endpoints(), &[]).await;
    let to_b = Client::new(&b.url).unwrap();
    let before = to_b.policy("web").await.unwrap().index;
    let parked = tokio::spawn(async move { to_b.policy_blocking("web", before, PATIENCE).await });

    let url = format!("{}/v1/policy/web/routes", a.url);
    let stored = request(Method::PUT, &url, &[JSON], Bytes::from(CANARY)).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text);
    let woken = parked.await.unwrap().unwrap();
    assert_eq!(woken.routes.unwrap(), stored.json);
    assert!(woken.index > before);

    // A replica started after A is gone reads it from etcd.
    a.kill();
    let c = Replica::start(Path::new(BINARY), &etcd.endpoints(), &[]).await;
    let to_c = Client::new(&c.url).unwrap();
    let read = to_c.policy("web").await.unwrap();
    assert_eq!(read.routes.unwrap(), stored.json);

    // A deletion through C reaches B.
    let url = format!("{}/v1/policy/web/routes", c.url);
    let deleted = request(Method::DELETE, &url, &[], Bytes::new()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let to_b = Client::new(&b.url).unwrap();
    eventually(PATIENCE, "B saw the deletion", async || {
        to_b.policy("web").await.unwrap().routes.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_policy_documents_written_by_hand_are_held_to_the_apis_rules() {
    use mesh_registry::etcd::client::{Etcd, Op};
    use mesh_registry::etcd::metrics::EtcdMetrics;

    let etcd = EtcdCluster::start(1).await;
    let a = Replica::start(Path::new(BINARY), &etcd.endpoints(), &[]).await;
    let to_a = Client::new(&a.url).unwrap();
    let metrics = std::sync::Arc::new(EtcdMetrics::new(&mesh_registry::metrics::Metrics::new()));
    let by_hand = Etcd::new(vec![etcd.endpoint(0)], metrics);
    let put = |key: &str, value: &str| Op::Put {
        key: format!("/mesh/policies/{key}"),
        value: value.as_bytes().to_vec(),
        lease: 0,
    };
    let short = r#"{"rules":[{"backends":[{"subset":"version=v1","weight":90}]}]}"#;
    by_hand
        .txn(
            &[],
            &[
                // Refused by the API: weights short of 100, a name with capitals, a kind
                // that does not exist, a document that is not JSON.
                put("web/routes", short),
                put("Web/limits", r#"{"rps":5}"#),
                put("web/colours", r#"{"rps":5}"#),
                put("db/limits", "{"),
                // What the API would have written.
                put("web/limits", r#"{"rps":5}"#),
            ],
        )
        .await
        .unwrap();
    eventually(PATIENCE, "the valid document served", async || {
        to_a.policy("web").await.unwrap().limits.is_some()
    })
    .await;
    let web = to_a.policy("web").await.unwrap();
    assert!(web.routes.is_none() && web.intentions.is_none(), "{web:?}");
    assert!(to_a.policy("db").await.unwrap().limits.is_none());
    let (status, _, _) = common::etcd::get(&format!("{}/v1/policy/Web", a.url))
        .await
        .unwrap();
    assert_eq!(status, 400, "the name itself is refused by the API");

    // A valid document, then one written over it by hand that the API would refuse: the
    // valid one stays in force.
    let url = format!("{}/v1/policy/web/routes", a.url);
    let stored = request(Method::PUT, &url, &[JSON], Bytes::from(CANARY)).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text);
    by_hand.txn(&[], &[put("web/routes", short)]).await.unwrap();
    // The next valid write through the API shows the mirror has read past the bad one.
    put_limits_and_wait(&to_a, &a.url, r#"{"rps":7}"#).await;
    assert_eq!(
        to_a.policy("web").await.unwrap().routes.unwrap(),
        stored.json
    );
}

/// Writes `web`'s limits through the API and waits until the replica serves them.
async fn put_limits_and_wait(client: &Client, base: &str, limits: &str) {
    let url = format!("{base}/v1/policy/web/limits");
    let stored = request(Method::PUT, &url, &[JSON], Bytes::from(limits.to_owned())).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text);
    eventually(PATIENCE, "the new limits served", async || {
        client.policy("web").await.unwrap().limits == Some(stored.json.clone())
    })
    .await;
}
