//! Leases and persistence across the whole server: expiry through the sweeper, and the
//! snapshot across restarts.

mod common;

use std::time::Duration;

use common::{PATIENCE, Registry, RegistryExt, eventually};
use mesh_registry::Config;
use mesh_registry_api::{Registration, Status};

fn fast_leases() -> Config {
    Config {
        critical_grace: Duration::from_millis(500),
        sweep_interval: Duration::from_millis(20),
        ..Config::default()
    }
}

#[tokio::test]
async fn a_silent_instance_turns_critical_then_disappears_and_watchers_see_both() {
    let r = Registry::start_with(fast_leases()).await;
    let mut short = Registration::new("h:1");
    short.ttl = Duration::from_secs(1);
    r.client.register("web", "dying", &short).await.unwrap();
    let mut long = Registration::new("h:2");
    long.ttl = Duration::from_secs(600);
    r.client.register("web", "alive", &long).await.unwrap();

    let mut watch = r.client.watch("web");
    assert_eq!(watch.next().await.unwrap().instances.len(), 2);

    // The next change is the expiry: only the live instance is still listed.
    let expired = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<_> = expired.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["alive"]);
    let all = r.all_instances("web").await;
    assert_eq!(all[0]["id"], "alive");
    assert_eq!(all[1]["id"], "dying");
    assert_eq!(all[1]["status"], "critical");
    assert_eq!(
        r.metric("mesh_registry_lease_expirations_total").await,
        Some(1.0)
    );

    // Then the grace period ends and it is removed; heartbeats now get 404.
    let index = expired.index;
    let removed = r
        .client
        .service_blocking("web", index, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(removed.index > index);
    let all = r.all_instances("web").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    let err = r
        .client
        .heartbeat("web", "dying", &Default::default())
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn the_catalog_survives_a_restart_through_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: Some(dir.path().to_owned()),
        ..Config::default()
    };
    let r = Registry::start_with(config.clone()).await;
    let mut reg = Registration::new("10.1.2.3:4143");
    reg.weight = 3;
    reg.metadata.insert("zone".into(), "a".into());
    r.client
        .register("recommendations", "r-1", &reg)
        .await
        .unwrap();
    r.client
        .register("marketplace", "m-1", &Registration::new("10.1.2.4:4143"))
        .await
        .unwrap();
    let index_before = r.client.services().await.unwrap().index;
    r.stop().await.unwrap();

    let r = Registry::start_with(config).await;
    let listing = r.client.service("recommendations").await.unwrap();
    assert_eq!(listing.instances.len(), 1);
    let instance = &listing.instances[0];
    assert_eq!(
        (instance.id.as_str(), instance.address.as_str()),
        ("r-1", "10.1.2.3:4143")
    );
    assert_eq!(instance.weight, 3);
    assert_eq!(instance.metadata["zone"], "a");
    assert_eq!(instance.status, Status::Passing);
    assert!(
        r.client.services().await.unwrap().index >= index_before,
        "indexes never go back"
    );
    // Restored instances are known: their sidecars' next heartbeat succeeds.
    r.client
        .heartbeat("marketplace", "m-1", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn changes_are_written_without_waiting_for_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: Some(dir.path().to_owned()),
        snapshot_debounce: Duration::from_millis(50),
        ..Config::default()
    };
    let r = Registry::start_with(config).await;
    r.client
        .register("web", "a", &Registration::new("h:7"))
        .await
        .unwrap();
    let file = dir.path().join("catalog.json");
    eventually(PATIENCE, "the registration in the snapshot", async || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.contains("h:7")
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog.json");
    std::fs::write(&file, b"{\"version\":1,\"services\":{\"web\":").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config {
        data_dir: Some(dir.path().to_owned()),
        ..Config::default()
    };
    let err = mesh_registry::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("corrupt"), "{message}");
    // The file is left as it was, for the operator to inspect.
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("{\"version\":1")
    );
}

#[tokio::test]
async fn a_snapshot_holding_what_the_api_refuses_is_refused_naming_it() {
    let times = r#""registered_at":"2026-12-02T00:00:00Z","last_heartbeat":"2026-12-02T00:00:00Z""#;
    for (instance, field) in [
        (
            format!(r#""..":{{"address":"10.0.0.7:4143",{times}}}"#),
            "field id",
        ),
        (
            format!(
                r#""web-1":{{"address":"10.0.0.7:4143","metadata":{{"admin":"http://10.0.0.7:4191"}},{times}}}"#
            ),
            "field metadata.admin",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = format!(r#"{{"version":1,"index":7,"services":{{"web":{{{instance}}}}}}}"#);
        std::fs::write(dir.path().join("catalog.json"), snapshot).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = Config {
            data_dir: Some(dir.path().to_owned()),
            ..Config::default()
        };
        let started = mesh_registry::run(listener, config, std::future::pending());
        let err = tokio::time::timeout(PATIENCE, started)
            .await
            .unwrap_or_else(|_| panic!("started with {field} refused by the API"))
            .expect_err(field)
            .to_string();
        assert!(err.contains("corrupt") && err.contains(field), "{err}");
    }
}

/// Expiry to the second, under tokio's paused clock: the registry serves on the test's
/// runtime, so its sweeper's ticks and the leases' deadlines are the test's virtual time.
#[tokio::test(start_paused = true)]
async fn a_lease_runs_out_at_its_ttl_and_the_instance_goes_a_grace_later() {
    let config = Config {
        critical_grace: Duration::from_secs(10),
        sweep_interval: Duration::from_secs(1),
        ..Config::default()
    };
    let r = Registry::start_with(config).await;
    let started = tokio::time::Instant::now();
    let mut silent = Registration::new("h:1");
    silent.ttl = Duration::from_secs(5);
    r.client.register("web", "silent", &silent).await.unwrap();

    let status = async || {
        let all = r.all_instances("web").await;
        all[0]["status"].as_str().map(str::to_owned)
    };
    // Critical once its 5 s have run out, removed 10 s later; never before.
    for (at, expected) in [
        (4_500, Some("passing")),
        (5_500, Some("critical")),
        (14_500, Some("critical")),
        (15_500, None),
    ] {
        tokio::time::sleep_until(started + Duration::from_millis(at)).await;
        assert_eq!(status().await.as_deref(), expected, "after {at} ms");
    }
    assert_eq!(
        r.metric("mesh_registry_lease_expirations_total").await,
        Some(1.0)
    );
}
