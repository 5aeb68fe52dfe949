//! The client crate's registration loop against a real registry.

mod common;

use std::time::Duration;

use common::TestRegistry;
use mesh_registry_api::{Registrar, Registration, Status};
use tokio::sync::{oneshot, watch};

/// Blocks on the service until `check` holds for its full listing (all statuses).
async fn until(r: &TestRegistry, service: &str, check: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..300 {
        if check(&r.all_instances(service).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition never held for {service}");
}

#[tokio::test]
async fn registers_reports_health_comes_back_after_being_forgotten_and_deregisters() {
    let r = TestRegistry::start_default().await;
    let mut registration = Registration::new("127.0.0.1:4143");
    registration.ttl = Duration::from_secs(1);
    let registrar = Registrar::new(r.client.clone(), "web", "web-1", registration);
    let mut registered = registrar.subscribe_registered();
    let (health_tx, health) = watch::channel(Status::Passing);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(registrar.run(health, async {
        let _ = stopped.await;
    }));

    registered.wait_for(|r| *r).await.unwrap();
    until(&r, "web", |i| i[0]["status"] == "passing").await;

    // A health change is reported without waiting for the next beat.
    health_tx.send_replace(Status::Warning);
    until(&r, "web", |i| i[0]["status"] == "warning").await;
    health_tx.send_replace(Status::Passing);
    until(&r, "web", |i| i[0]["status"] == "passing").await;

    // The registry forgets the instance (a restart without --data-dir looks the same):
    // the next heartbeat gets 404 and the loop registers again.
    let first = r.client.service("web").await.unwrap().instances[0]
        .registered_at
        .clone();
    r.client.deregister("web", "web-1").await.unwrap();
    until(&r, "web", |i| {
        i[0]["id"] == "web-1" && i[0]["registered_at"] != first.as_str()
    })
    .await;

    // Shutdown deregisters.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(!*registered.borrow());
    assert!(!r.client.service("web").await.unwrap().exists);
}

#[tokio::test]
async fn keeps_trying_while_the_registry_is_down_and_registers_when_it_appears() {
    // Reserve a port, then free it: nothing listens there until the registry starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = mesh_registry_api::Client::new(&format!("127.0.0.1:{port}")).unwrap();
    let registrar = Registrar::new(client, "web", "web-1", Registration::new("127.0.0.1:1"));
    let mut registered = registrar.subscribe_registered();
    let (_health_tx, health) = watch::channel(Status::Passing);
    let task = tokio::spawn(registrar.run(health, std::future::pending()));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*registered.borrow());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(mesh_registry::run(listener, Default::default(), async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(15), registered.wait_for(|r| *r))
        .await
        .expect("registered once the registry came up")
        .unwrap();
    task.abort();
}
