//! Sidecars given several registry replicas (`--registry r1,r2`) on the etcd store: one
//! replica killed with SIGKILL under load costs no call between meshed services, and no
//! instance is removed. The replicas are real `mesh-registry` processes on a real etcd.
//!
//! Needs `mesh-registry` built next to this test's binaries (`cargo test --workspace`
//! builds it) and etcd (see `registry/tests/common/etcd.rs`).

mod common;
#[path = "../../registry/tests/common/etcd.rs"]
mod etcd;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{App, PATIENCE, Sidecar, SidecarSpec, eventually, get_h1, within};
use etcd::{EtcdCluster, Replica, get};
use http::StatusCode;

fn registry_binary() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .parent()
        .unwrap();
    let binary = dir.join("mesh-registry");
    assert!(
        binary.is_file(),
        "missing {}: build it first (`cargo build -p mesh-registry`; `cargo test --workspace` does)",
        binary.display()
    );
    binary
}

/// The events `replica` recorded for `service`, as `kind: detail`.
async fn events(replica: &Replica, service: &str) -> Vec<String> {
    let (_, _, events) = get(&format!("{}/v1/events", replica.url)).await.unwrap();
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["service"] == service)
        .map(|e| {
            format!(
                "{}: {}",
                e["kind"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_a_registry_replica_killed_under_load() {
    let etcd = EtcdCluster::start(1).await;
    let binary = registry_binary();
    let a = Replica::start(&binary, &etcd.endpoints(), &[]).await;
    let b = Replica::start(&binary, &etcd.endpoints(), &[]).await;
    let registries = format!("{},{}", a.url, b.url);

    // Heartbeats every 1.3 s (a third of the TTL): a slow machine may delay one by a
    // second or two without the lease running out.
    let lease = Duration::from_secs(4);
    let apps = [App::start("web-1").await, App::start("web-2").await];
    let mut sidecars = Vec::new();
    for app in &apps {
        let mut spec = SidecarSpec::server(&registries, "web", app.addr);
        spec.config.registration.ttl = lease;
        sidecars.push(Sidecar::start(spec).await);
    }
    let client = Sidecar::start(SidecarSpec::client(&registries)).await;
    let passing = format!("{}/v1/services/web", b.url);
    eventually(PATIENCE, "both instances passing on B", async || {
        let (_, _, listing) = get(&passing).await.unwrap();
        listing["instances"]
            .as_array()
            .is_some_and(|i| i.len() == 2)
    })
    .await;

    // Calls through the client's sidecar, four at a time, for the whole test: until A's
    // lease in etcd (10 s) and then the instances' leases have run out after the kill.
    let (calls, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (calls, failed, outbound) = (calls.clone(), failed.clone(), client.outbound);
            let stopped = stopped.clone();
            tokio::spawn(async move {
                while !*stopped.borrow() {
                    let answer = get_h1(outbound, "web", "/whoami").await;
                    calls.fetch_add(1, Ordering::Relaxed);
                    if answer.status != StatusCode::OK
                        && failed.fetch_add(1, Ordering::Relaxed) == 0
                    {
                        eprintln!("first failed call: {} {}", answer.status, answer.text);
                    }
                    // The callers' pace, not a wait for anything.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    eventually(PATIENCE, "calls flowing through the mesh", async || {
        calls.load(Ordering::Relaxed) >= 50
    })
    .await;
    let b_metrics = format!("{}/metrics", b.url);
    let served_by_b = async || {
        let text = common::get(&b_metrics).await.text;
        let count = |route: &str| {
            common::metric(
                &text,
                &format!(r#"mesh_registry_http_requests_total{{code="200",route="{route}"}}"#),
            )
            .unwrap_or(0.0)
        };
        let watchers = common::metric(&text, "mesh_registry_watchers").unwrap_or(0.0);
        (count("heartbeat"), watchers)
    };
    let before = served_by_b().await;
    a.kill();
    let killed = Instant::now();
    // Every sidecar used A, the first replica given; how soon do their heartbeats and
    // blocking queries (parked watches) reach B?
    let (heartbeat_moved, watch_moved) = (Cell::new(None), Cell::new(None));
    let first_seen =
        |moved: &Cell<Option<Duration>>| moved.set(moved.get().or(Some(killed.elapsed())));
    within(PATIENCE, async || {
        let now = served_by_b().await;
        if now.0 > before.0 {
            first_seen(&heartbeat_moved);
        }
        if now.1 > before.1 {
            first_seen(&watch_moved);
        }
        (heartbeat_moved.get().is_some() && watch_moved.get().is_some()).then_some(())
    })
    .await;
    let (heartbeat_moved, watch_moved) = (heartbeat_moved.get(), watch_moved.get());
    println!(
        "after the kill, first heartbeat on B: {heartbeat_moved:?}, first watch on B: {watch_moved:?}"
    );
    assert!(
        heartbeat_moved.is_some() && watch_moved.is_some(),
        "the sidecars moved to B"
    );
    let load_ends = killed + Duration::from_secs(10) + 2 * lease;
    tokio::time::sleep_until(load_ends.into()).await;
    stop.send_replace(true);
    for task in load {
        task.await.unwrap();
    }

    let (calls, failed) = (
        calls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!("{calls} calls, {failed} failed, across a registry replica killed with SIGKILL");
    assert!(calls > 500, "the load ran: {calls} calls");
    assert_eq!(failed, 0);
    let (_, _, listing) = get(&passing).await.unwrap();
    assert_eq!(
        listing["instances"].as_array().unwrap().len(),
        2,
        "{listing}"
    );
    let events = events(&b, "web").await;
    assert!(
        !events
            .iter()
            .any(|e| e.contains("lease expired") || e.starts_with("removed")),
        "no lease ran out, no instance was removed: {events:#?}"
    );
    let ready = common::get(&format!("http://{}/ready", sidecars[0].admin)).await;
    assert!(
        ready.text.contains(r#""registered":true"#),
        "{}",
        ready.text
    );
}
