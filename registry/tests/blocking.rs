//! Blocking queries over real sockets: immediate answers, waits, and who gets woken.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Registry, RegistryExt, metric_sum};
use http::Method;
use mesh_registry_api::Registration;

#[tokio::test]
async fn answers_at_once_when_the_index_already_moved() {
    let r = Registry::start().await;
    r.client
        .register("web", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    let first = r.client.service("web").await.unwrap();
    r.client
        .register("web", "b", &Registration::new("h:2"))
        .await
        .unwrap();

    let started = Instant::now();
    let listing = r
        .client
        .service_blocking("web", first.index, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(listing.index > first.index);
    assert_eq!(listing.instances.len(), 2, "the answer is the full state");
}

#[tokio::test]
async fn wakes_on_its_own_service_and_not_on_another() {
    let r = Registry::start().await;
    r.client
        .register("web", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    let seen = r.client.service("web").await.unwrap().index;

    let client = r.client.clone();
    let waiter = tokio::spawn(async move {
        client
            .service_blocking("web", seen, Duration::from_secs(60))
            .await
            .unwrap()
    });
    r.until_watchers(1.0).await;

    // A change to another service must leave the watcher parked: watched for a while,
    // since what is checked is that nothing happens.
    r.client
        .register("db", "x", &Registration::new("h:9"))
        .await
        .unwrap();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "woken by a change to another service"
        );
    }
    assert_eq!(r.metric("mesh_registry_watchers").await, Some(1.0));

    r.client
        .register("web", "b", &Registration::new("h:2"))
        .await
        .unwrap();
    let listing = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by its own service")
        .unwrap();
    assert!(listing.index > seen);
    let ids: Vec<_> = listing.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    r.until_watchers(0.0).await;
}

#[tokio::test]
async fn wait_is_honoured_when_nothing_changes() {
    let r = Registry::start().await;
    let seen = r.client.service("web").await.unwrap();
    assert!(!seen.exists);

    let started = Instant::now();
    let answer = r
        .raw(
            Method::GET,
            &format!("/v1/services/web?index={}&wait=400ms", seen.index),
            &[],
            Bytes::new(),
        )
        .await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    // 400 ms plus at most 1/16 of jitter; the rest is slack for a loaded machine.
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(answer.index(), seen.index);
    assert_eq!(answer.json["exists"], false);
}

#[tokio::test]
async fn a_watch_on_a_missing_service_wakes_when_it_appears() {
    let r = Registry::start().await;
    let mut watch = r.client.watch("later");
    let first = watch.next().await.unwrap();
    assert!(!first.exists);

    let client = r.client.clone();
    let waiter = tokio::spawn(async move { watch.next().await.unwrap() });
    r.until_watchers(1.0).await;
    client
        .register("later", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(next.exists);
    assert_eq!(next.instances[0].address, "h:1");
}

#[tokio::test]
async fn the_service_list_blocks_on_the_catalog_index() {
    let r = Registry::start().await;
    let seen = r.client.services().await.unwrap().index;
    let url = format!("/v1/services?index={seen}&wait=60s");
    let waiter = tokio::spawn({
        let url = r.url_for(&url);
        async move { common::request(Method::GET, &url, &[], Bytes::new()).await }
    });
    r.until_watchers(1.0).await;
    r.client
        .register("any", "a", &Registration::new("h:1"))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.index() > seen);
    assert_eq!(answer.json["services"][0]["name"], "any");
}

#[tokio::test]
async fn each_service_in_the_list_carries_its_listing_index_and_only_a_changed_one_moves() {
    let r = Registry::start().await;
    for service in ["api", "db", "web"] {
        r.client
            .register(service, "a", &Registration::new("h:1"))
            .await
            .unwrap();
    }
    let indexes = async || {
        let list = r.raw(Method::GET, "/v1/services", &[], Bytes::new()).await;
        let mut indexes = Vec::new();
        for summary in list.json["services"].as_array().unwrap() {
            let name = summary["name"].as_str().unwrap();
            let listing = r.client.service(name).await.unwrap();
            assert_eq!(summary["index"], listing.index, "{name}: {}", list.text);
            indexes.push(listing.index);
        }
        indexes
    };
    let before = indexes().await;
    r.client
        .register("db", "b", &Registration::new("h:2"))
        .await
        .unwrap();
    let after = indexes().await;
    assert_eq!(after[0], before[0], "api did not change");
    assert!(after[1] > before[1], "db changed");
    assert_eq!(after[2], before[2], "web did not change");
}

#[tokio::test]
async fn shutdown_releases_parked_watchers_at_once() {
    let r = Registry::start().await;
    let seen = r.client.service("web").await.unwrap().index;
    let client = r.client.clone();
    let waiter = tokio::spawn(async move {
        client
            .service_blocking("web", seen, Duration::from_secs(300))
            .await
    });
    r.until_watchers(1.0).await;
    let started = Instant::now();
    r.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let answered = waiter.await.unwrap().unwrap();
    assert_eq!(answered.index, seen);
}

/// A watch under tokio's paused clock: the registry serves on the test's runtime, so
/// blocking queries run out on the test's virtual time.
#[tokio::test(start_paused = true)]
async fn a_watch_rides_out_quiet_blocking_queries_and_returns_as_the_change_happens() {
    let r = Registry::start().await;
    let mut lasting = Registration::new("h:1");
    lasting.ttl = Duration::from_secs(600);
    r.client.register("web", "a", &lasting).await.unwrap();
    let mut watch = r.client.watch("web").with_wait(Duration::from_secs(5));
    assert_eq!(watch.next().await.unwrap().instances.len(), 1);
    let started = tokio::time::Instant::now();
    let client = r.client.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(23)).await;
        lasting.address = "h:2".into();
        client.register("web", "b", &lasting).await.unwrap();
    });

    // Four blocking queries run out meanwhile (5 s each, and up to 5/16 s of jitter):
    // the watch asks again after each, and returns the change the moment it happens.
    let changed = watch.next().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(23));
    assert_eq!(changed.instances.len(), 2);
    let metrics = r.metrics().await;
    let listings = metric_sum(
        &metrics,
        "mesh_registry_http_requests_total",
        r#"route="get_service""#,
    );
    assert_eq!(listings, 6.0, "{metrics}");
}
