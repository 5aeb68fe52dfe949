//! The events timeline over real sockets: what each change records, in order, and
//! `GET /v1/events` blocking like the other queries.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{JSON, PATIENCE, Registry, RegistryExt, eventually};
use http::{Method, StatusCode};
use mesh_registry::Config;
use mesh_registry_api::{Heartbeat, Registration, Status};
use serde_json::Value;

const GET: Method = Method::GET;

/// `(kind, instance)` of each event, oldest first.
fn kinds(page: &Value) -> Vec<(String, String)> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap().to_owned();
            (field("kind"), field("instance"))
        })
        .collect()
}

fn pair(kind: &str, instance: &str) -> (String, String) {
    (kind.to_owned(), instance.to_owned())
}

#[tokio::test]
async fn every_change_is_an_event_in_order_and_renewals_are_not() {
    let r = Registry::start_with(Config {
        critical_grace: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(20),
        ..Config::default()
    })
    .await;
    let c = &r.client;
    let empty = r.raw(GET, "/v1/events", &[], Bytes::new()).await;
    assert_eq!(empty.json, serde_json::json!({"index": 1, "events": []}));

    c.register("web", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    c.register("web", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    c.register("web", "a", &Registration::new("h:2"))
        .await
        .unwrap();
    c.heartbeat("web", "a", &Heartbeat::default())
        .await
        .unwrap();
    let failing = Heartbeat {
        status: Some(Status::Critical),
        output: Some("connection refused".into()),
        ..Heartbeat::default()
    };
    c.heartbeat("web", "a", &failing).await.unwrap();
    c.deregister("web", "a").await.unwrap();
    let mut short = Registration::new("h:3");
    short.ttl = Duration::from_secs(1);
    c.register("db", "b", &short).await.unwrap();

    // The short lease runs out, then the grace period: the sweeper records both.
    eventually(PATIENCE, "seven events", async || {
        let page = r.raw(GET, "/v1/events", &[], Bytes::new()).await;
        kinds(&page.json).len() >= 7
    })
    .await;
    let page = r.raw(GET, "/v1/events", &[], Bytes::new()).await;
    assert_eq!(
        kinds(&page.json),
        [
            pair("registered", "a"),
            pair("registered", "a"),
            pair("critical", "a"),
            pair("deregistered", "a"),
            pair("registered", "b"),
            pair("critical", "b"),
            pair("removed", "b"),
        ]
    );
    let events = page.json["events"].as_array().unwrap();
    assert_eq!(events[1]["detail"], "re-registered: address h:1 → h:2");
    assert_eq!(
        events[2]["detail"],
        "passing → critical: connection refused"
    );
    assert!(
        events[5]["detail"]
            .as_str()
            .unwrap()
            .starts_with("lease expired")
    );
    assert_eq!(events[6]["service"], "db");
    let indexes: Vec<u64> = events
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    assert_eq!(page.json["index"].as_u64(), indexes.last().copied());
    assert_eq!(page.index(), indexes[6]);
    assert!(
        humantime::parse_rfc3339(events[0]["time"].as_str().unwrap()).is_ok(),
        "{}",
        events[0]["time"]
    );

    // Only what came after the index a reader passes.
    let tail = r
        .raw(
            GET,
            &format!("/v1/events?index={}", indexes[4]),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        kinds(&tail.json),
        [pair("critical", "b"), pair("removed", "b")]
    );
}

#[tokio::test]
async fn a_blocked_reader_is_woken_by_the_next_event() {
    let r = Registry::start().await;
    let seen = r.raw(GET, "/v1/events", &[], Bytes::new()).await.index();
    let waiter = tokio::spawn({
        let url = r.url_for(&format!("/v1/events?index={seen}&wait=60s"));
        async move { common::request(GET, &url, &[], Bytes::new()).await }
    });
    r.until_watchers(1.0).await;
    assert!(!waiter.is_finished());
    let path = "/v1/services/web/instances/a";
    r.raw(Method::PUT, path, &[JSON], r#"{"address":"h:1"}"#)
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the registration")
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(kinds(&answer.json), [pair("registered", "a")]);
    assert!(answer.index() > seen);
}

#[tokio::test]
async fn wait_is_honoured_and_an_index_from_before_a_restart_answers_at_once() {
    let r = Registry::start().await;
    r.client
        .register("web", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    let latest = r.raw(GET, "/v1/events", &[], Bytes::new()).await.index();

    let started = Instant::now();
    let path = format!("/v1/events?index={latest}&wait=400ms");
    let quiet = r.raw(GET, &path, &[], Bytes::new()).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(quiet.json["events"], serde_json::json!([]));
    assert_eq!(quiet.index(), latest);

    let started = Instant::now();
    let path = format!("/v1/events?index={}&wait=60s", latest + 1000);
    let ahead = r.raw(GET, &path, &[], Bytes::new()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(kinds(&ahead.json), [pair("registered", "a")]);

    let bad = r.raw(GET, "/v1/events?index=-1", &[], Bytes::new()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_field(), Some("index"));
    assert!(
        r.metrics()
            .await
            .contains(r#"mesh_registry_http_requests_total{code="200",route="events"}"#)
    );
}
