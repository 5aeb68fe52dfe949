//! The etcd store against a real etcd: replicas serving each other's writes, indexes from
//! revisions, heartbeats that are not writes, leases across replicas, and the faults (a
//! replica killed, an etcd member lost, etcd's quorum lost and back).
//!
//! Replicas are `mesh-registry` processes, so that killing one is a real SIGKILL; etcd
//! is the real binary (see `common/etcd.rs` for where it comes from).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::etcd::{EtcdCluster, Replica, get};
use common::{JSON, PATIENCE, eventually, eventually_some, request};
use http::{Method, StatusCode};
use mesh_registry_api::{Client, Heartbeat, Registrar, Registration, Status};

const BINARY: &str = env!("CARGO_BIN_EXE_mesh-registry");

async fn replica(etcd: &EtcdCluster, extra: &[&str]) -> Replica {
    Replica::start(Path::new(BINARY), &etcd.endpoints(), extra).await
}

fn ttl(registration: Registration, ttl: Duration) -> Registration {
    Registration {
        ttl,
        ..registration
    }
}

/// `service`'s instances with their status, as `replica` lists them (`?all=true`).
async fn statuses(replica: &Replica, service: &str) -> Vec<(String, String)> {
    let (_, _, listing) = get(&format!("{}/v1/services/{service}?all=true", replica.url))
        .await
        .expect("the replica answers");
    listing["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let field = |f: &str| i[f].as_str().unwrap().to_owned();
            (field("id"), field("status"))
        })
        .collect()
}

/// The kinds of the events `replica` recorded, oldest first.
async fn event_kinds(replica: &Replica) -> Vec<String> {
    let (_, _, events) = get(&format!("{}/v1/events", replica.url)).await.unwrap();
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// One sample of `replica`'s /metrics.
async fn metric(replica: &Replica, series: &str) -> Option<f64> {
    let url = format!("{}/metrics", replica.url);
    let text = request(Method::GET, &url, &[], Bytes::new()).await.text;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_each_others_writes_and_wake_only_the_changed_services_watchers() {
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = (replica(&etcd, &[]).await, replica(&etcd, &[]).await);
    let (to_a, to_b) = (Client::new(&a.url).unwrap(), Client::new(&b.url).unwrap());

    let mut registration = Registration::new("10.0.0.1:4143");
    registration
        .metadata
        .insert("admin".into(), "10.0.0.1:4191".into());
    let stored = to_a.register("web", "web-1", &registration).await.unwrap();
    let listed = to_b.service("web").await.unwrap();
    assert_eq!(listed.instances, vec![stored], "B lists what A stored");
    assert_eq!(
        listed.index,
        to_a.service("web").await.unwrap().index,
        "one index on both"
    );

    // Prometheus finds the instance's sidecar through either replica, and each replica's
    // metrics show the catalog and where it stands with etcd.
    let (_, _, targets) = get(&format!("{}/v1/prometheus/targets", b.url))
        .await
        .unwrap();
    assert_eq!(targets[0]["targets"][0], "10.0.0.1:4191", "{targets}");
    let metrics = request(
        Method::GET,
        &format!("{}/metrics", b.url),
        &[],
        Bytes::new(),
    )
    .await
    .text;
    for series in [
        r#"mesh_registry_instances{service="web",status="passing"} 1"#,
        "mesh_registry_store_stale 0",
        r#"mesh_registry_etcd_request_duration_seconds_count{op="range"}"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }

    // A write through A wakes a blocking query parked on B.
    let mut woken_after = Vec::new();
    for i in 0..30 {
        let index = to_b.service("web").await.unwrap().index;
        let watch = tokio::spawn({
            let to_b = to_b.clone();
            async move {
                let listing = to_b
                    .service_blocking("web", index, Duration::from_secs(10))
                    .await;
                (listing.unwrap(), Instant::now())
            }
        });
        eventually(PATIENCE, "the blocking query parked on B", async || {
            metric(&b, "mesh_registry_watchers").await == Some(1.0)
        })
        .await;
        let registration = Registration::new(format!("10.0.1.{i}:4143"));
        let written = Instant::now();
        to_a.register("web", &format!("extra-{i}"), &registration)
            .await
            .unwrap();
        let (listing, woken) = watch.await.unwrap();
        assert!(listing.index > index);
        assert!(
            listing
                .instances
                .iter()
                .any(|x| x.id == format!("extra-{i}"))
        );
        woken_after.push(woken.saturating_duration_since(written));
    }
    woken_after.sort();
    let p99 = woken_after[woken_after.len() * 99 / 100];
    println!(
        "blocking query on B woken after A's write was sent: p50 {:?}, p99 {p99:?}",
        woken_after[woken_after.len() / 2]
    );
    // Woken by the write, not by the end of the 10 s wait. The 100 ms p99 target is
    // checked by the benchmark (S6), where the machine is not also running every test.
    let slowest = *woken_after.last().unwrap();
    assert!(slowest < Duration::from_secs(2), "slowest wake {slowest:?}");

    // A write to another service leaves web's watchers asleep until their wait ends: the
    // watcher is parked on B, and B has the other write, well before its wait is over.
    let index = to_b.service("web").await.unwrap().index;
    let wait = Duration::from_secs(5);
    let started = Instant::now();
    let watch = tokio::spawn({
        let to_b = to_b.clone();
        async move { to_b.service_blocking("web", index, wait).await }
    });
    eventually(PATIENCE, "web's watcher parked on B", async || {
        metric(&b, "mesh_registry_watchers").await == Some(1.0)
    })
    .await;
    to_a.register("db", "db-1", &Registration::new("10.0.0.9:4143"))
        .await
        .unwrap();
    eventually(PATIENCE, "db's registration on B", async || {
        !statuses(&b, "db").await.is_empty()
    })
    .await;
    let listing = watch.await.unwrap().unwrap();
    assert_eq!(listing.index, index);
    assert!(
        started.elapsed() >= wait,
        "woken after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_the_same_on_every_replica_and_never_go_back_across_restarts() {
    let etcd = EtcdCluster::start(1).await;
    let a = replica(&etcd, &[]).await;
    let to_a = Client::new(&a.url).unwrap();
    to_a.register("web", "web-1", &Registration::new("10.0.0.1:4143"))
        .await
        .unwrap();
    to_a.register("web", "web-2", &Registration::new("10.0.0.2:4143"))
        .await
        .unwrap();
    to_a.register("db", "db-1", &Registration::new("10.0.0.3:4143"))
        .await
        .unwrap();
    to_a.deregister("web", "web-2").await.unwrap();
    let web = to_a.service("web").await.unwrap().index;
    let catalog = to_a.services().await.unwrap().index;
    a.kill();

    // A replica started afterwards knows the same indexes, the deregistration included.
    let c = replica(&etcd, &[]).await;
    let to_c = Client::new(&c.url).unwrap();
    assert_eq!(to_c.service("web").await.unwrap().index, web);
    assert_eq!(to_c.services().await.unwrap().index, catalog);
    // Each service in the list carries its own index, on a mirror of etcd as in memory.
    let listed = to_c.services().await.unwrap().services;
    assert_eq!(listed.iter().find(|s| s.name == "web").unwrap().index, web);
    to_c.deregister("web", "web-1").await.unwrap();
    let emptied = to_c.service("web").await.unwrap();
    assert!(!emptied.exists && emptied.index > web);
    assert_eq!(to_c.service("nobody").await.unwrap().index, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_not_etcd_writes_only_changes_are() {
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = (replica(&etcd, &[]).await, replica(&etcd, &[]).await);
    let (to_a, to_b) = (Client::new(&a.url).unwrap(), Client::new(&b.url).unwrap());
    to_a.register("web", "web-1", &Registration::new("10.0.0.1:4143"))
        .await
        .unwrap();

    let beats = |client: Client, n: usize| async move {
        let started = Instant::now();
        for _ in 0..n {
            client
                .heartbeat("web", "web-1", &Heartbeat::default())
                .await
                .unwrap();
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let before = etcd.revision(0).await;
    let rate = beats(to_a.clone(), 1000).await;
    assert_eq!(
        etcd.revision(0).await,
        before,
        "heartbeats to the owner write nothing"
    );

    // The sidecar moves to B: one write, B taking the lease over; then nothing again.
    beats(to_b.clone(), 1000).await;
    let after = etcd.revision(0).await;
    assert_eq!(after, before + 1, "one write for the new owner");
    println!("{rate:.0} heartbeats/s to one replica; etcd writes: 0, then 1 for a change of owner");

    // A status change is a write, seen by the other replica.
    let warning = Heartbeat {
        status: Some(Status::Warning),
        output: Some("slow".into()),
        ..Heartbeat::default()
    };
    to_b.heartbeat("web", "web-1", &warning).await.unwrap();
    assert_eq!(etcd.revision(0).await, after + 1);
    assert_eq!(
        statuses(&a, "web").await,
        vec![("web-1".into(), "warning".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_is_critical_then_removed_on_every_replica() {
    let etcd = EtcdCluster::start(1).await;
    let grace = ["--critical-grace", "1s"];
    let (a, b) = (replica(&etcd, &grace).await, replica(&etcd, &grace).await);
    let to_a = Client::new(&a.url).unwrap();
    let lease = Duration::from_secs(1);
    let registration = ttl(Registration::new("10.0.0.1:4143"), lease);
    // The lease cannot start before the registration is sent.
    let sent = Instant::now();
    to_a.register("web", "web-1", &registration).await.unwrap();

    eventually(PATIENCE, "web-1 critical on B", async || {
        statuses(&b, "web").await == vec![("web-1".into(), "critical".into())]
    })
    .await;
    assert!(sent.elapsed() >= lease, "not before its TTL");
    eventually(PATIENCE, "web-1 removed on B", async || {
        statuses(&b, "web").await.is_empty()
    })
    .await;
    assert_eq!(event_kinds(&b).await, ["registered", "critical", "removed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mass_expiry_guard_spares_a_service_whose_leases_run_out_together() {
    let etcd = EtcdCluster::start(1).await;
    // A, which owns the leases, looks at them only every 10 s: the three registrations
    // below, made one after the other, run out (1 s) before its first look, so that look
    // finds all three run out together however slowly they were made. (Every 100 ms, the
    // default, a slow machine makes the first run out alone.)
    let a = replica(&etcd, &["--sweep-interval", "10s"]).await;
    let to_a = Client::new(&a.url).unwrap();
    for i in 0..3 {
        let registration = ttl(
            Registration::new(format!("10.0.0.{i}:4143")),
            Duration::from_secs(1),
        );
        to_a.register("web", &format!("web-{i}"), &registration)
            .await
            .unwrap();
    }
    let b = replica(&etcd, &[]).await;

    // All three fell silent at once: their leases are extended by one TTL, once.
    eventually(PATIENCE, "A's sweep of the three leases", async || {
        let kinds = event_kinds(&a).await;
        kinds.iter().filter(|k| *k != "registered").count() >= 3
    })
    .await;
    let kinds = event_kinds(&a).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "spared").count(),
        3,
        "{kinds:?}"
    );
    let passing = statuses(&b, "web").await;
    assert!(
        passing.iter().all(|(_, s)| s == "passing"),
        "spared: {passing:?}"
    );
    eventually(PATIENCE, "critical after the second TTL", async || {
        statuses(&b, "web")
            .await
            .iter()
            .all(|(_, s)| s == "critical")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_heartbeats_loses_no_instance() {
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = (replica(&etcd, &[]).await, replica(&etcd, &[]).await);
    let both = Client::new(&format!("{},{}", a.url, b.url)).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut registrars = Vec::new();
    // Heartbeats every 1.3 s (a third of the TTL): a slow machine may delay one by a
    // second or two without the lease running out.
    let lease = Duration::from_secs(4);
    for i in 0..3 {
        let registration = ttl(Registration::new(format!("10.0.0.{i}:4143")), lease);
        let registrar = Registrar::new(both.clone(), "web", &format!("web-{i}"), registration);
        let (_health_tx, health) = tokio::sync::watch::channel(Status::Passing);
        let mut stopped = stopped.clone();
        registrars.push(tokio::spawn(async move {
            let _keep = _health_tx;
            registrar
                .run(health, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    eventually(PATIENCE, "all three registered", async || {
        statuses(&b, "web").await.len() == 3
    })
    .await;

    // Every lease is A's; A dies without a word. Its etcd lease (10 s) and then the
    // instances' TTLs (4 s) run out in the window watched below: none may turn critical.
    a.kill();
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(10) + 2 * lease {
        let seen = statuses(&b, "web").await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.iter().all(|(_, s)| s == "passing"),
            "{:?} after the kill: {seen:?}",
            killed.elapsed()
        );
        // Looks at the listing throughout the window: the window is the scenario.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(both.base_url(), b.url, "the registrars moved to B");
    stop.send_replace(true);
    for registrar in registrars {
        registrar.await.unwrap();
    }
    assert!(
        statuses(&b, "web").await.is_empty(),
        "deregistered through B on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_etcd_quorum_reads_are_stale_and_writes_refused_until_etcd_returns() {
    let mut etcd = EtcdCluster::start(3).await;
    let (a, b) = (replica(&etcd, &[]).await, replica(&etcd, &[]).await);
    let to_a = Client::new(&a.url).unwrap();
    let register = |id: &'static str| {
        let url = format!("{}/v1/services/web/instances/{id}", a.url);
        async move {
            let body = Bytes::from(r#"{"address":"10.0.0.1:4143","ttl":"1h"}"#);
            request(Method::PUT, &url, &[JSON], body).await
        }
    };
    assert_eq!(register("web-1").await.status, StatusCode::OK);

    // One member of three lost: writes go on, once the two left have a leader (the lost
    // member may have been it, and an election takes a while on a loaded machine).
    etcd.kill(2);
    eventually(
        PATIENCE,
        "writes go on with two members of three",
        async || register("web-2").await.status == StatusCode::OK,
    )
    .await;

    // Two of three: no quorum. Reads answer from the last state, marked stale.
    etcd.kill(1);
    eventually(PATIENCE, "A marked stale", async || {
        let (_, _, ready) = get(&format!("{}/readyz", a.url)).await.unwrap();
        ready["status"] == "stale" && ready["store"]["stale"] == true
    })
    .await;
    let (status, headers, listing) = get(&format!("{}/v1/services/web", a.url)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-mesh-stale"], "true");
    assert_eq!(listing["instances"].as_array().unwrap().len(), 2);
    let refused = register("web-3").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "store_unavailable");
    assert!(
        refused.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("etcd"),
        "{}",
        refused.text
    );

    // etcd back: both replicas catch up without a restart.
    etcd.restart(1).await;
    etcd.restart(2).await;
    eventually(PATIENCE, "A writable again", async || {
        register("web-3").await.status == StatusCode::OK
    })
    .await;
    let (_, headers, _) = get(&format!("{}/v1/services/web", a.url)).await.unwrap();
    assert!(!headers.contains_key("x-mesh-stale"));
    eventually(PATIENCE, "B caught up", async || {
        statuses(&b, "web").await.len() == 3
    })
    .await;
    assert_eq!(to_a.service("web").await.unwrap().instances.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_reached_etcd_is_not_ready_and_lists_nothing() {
    // Nothing listens there: the replica cannot read the catalog. The port stays bound
    // (not listening) for the whole test, so no other socket can take it meanwhile.
    let nowhere = tokio::net::TcpSocket::new_v4().unwrap();
    nowhere.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let endpoint = format!("http://{}", nowhere.local_addr().unwrap());
    let replica = Replica::spawn(Path::new(BINARY), &endpoint, &[]);
    let ready = format!("{}/readyz", replica.url);
    let (status, _, body) = eventually_some(PATIENCE, "an answer from the replica", async || {
        get(&ready).await
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    // An empty listing would tell sidecars that every service is gone.
    let (status, _, body) = get(&format!("{}/v1/services/web", replica.url))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_into_etcd_by_hand_are_held_to_the_apis_rules() {
    use mesh_registry::etcd::client::{Etcd, Op};
    use mesh_registry::etcd::metrics::EtcdMetrics;

    let etcd = EtcdCluster::start(1).await;
    let a = replica(&etcd, &[]).await;
    let metrics = std::sync::Arc::new(EtcdMetrics::new(&mesh_registry::metrics::Metrics::new()));
    let by_hand = Etcd::new(vec![etcd.endpoint(0)], metrics);
    let put = |key: &str, value: &str| Op::Put {
        key: format!("/mesh/{key}"),
        value: value.as_bytes().to_vec(),
        lease: 0,
    };
    let times = r#""registered_at":"2026-12-02T00:00:00Z","last_heartbeat":"2026-12-02T00:00:00Z""#;
    let change = r#"{"kind":"registered","instance":"x","detail":"by hand"}"#;
    let ops = [
        // Refused by the API: an address that is not host:port, an id with a space, a
        // service name with capitals, and a record that is not one.
        put(
            "instances/web/web-1",
            &format!(r#"{{"address":"not an address",{times}}}"#),
        ),
        put(
            "instances/web/bad id",
            &format!(r#"{{"address":"10.0.0.2:4143",{times}}}"#),
        ),
        put(
            "instances/Web/web-3",
            &format!(r#"{{"address":"10.0.0.3:4143",{times}}}"#),
        ),
        put("instances/web/web-4", "{"),
        // An id of dots alone, and a sidecar admin address that is not host:port.
        put(
            "instances/web/..",
            &format!(r#"{{"address":"10.0.0.6:4143",{times}}}"#),
        ),
        put(
            "instances/web/web-6",
            &format!(
                r#"{{"address":"10.0.0.6:4143","metadata":{{"admin":"http://10.0.0.6:4191"}},{times}}}"#
            ),
        ),
        // What the API would have written.
        put(
            "instances/web/web-5",
            &format!(r#"{{"address":"10.0.0.5:4143",{times}}}"#),
        ),
        put("services/web", change),
        put(
            "services/db",
            r#"{"kind":"registered","instance":"..","detail":"by hand"}"#,
        ),
        // Names the API refuses in a service key, and in the instance its event names.
        put("services/Bad Name", change),
        put(
            "services/api",
            r#"{"kind":"registered","instance":"bad id","detail":"by hand"}"#,
        ),
    ];
    by_hand.txn(&[], &ops).await.unwrap();

    eventually(PATIENCE, "the valid record listed", async || {
        !statuses(&a, "web").await.is_empty()
    })
    .await;
    assert_eq!(
        statuses(&a, "web").await,
        vec![("web-5".into(), "passing".into())]
    );
    let (status, _, _) = get(&format!("{}/v1/services/Web", a.url)).await.unwrap();
    assert_eq!(status, 400, "the name itself is refused by the API");
    let (_, _, events) = get(&format!("{}/v1/events", a.url)).await.unwrap();
    let named: Vec<(&str, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["service"].as_str().unwrap(),
                e["instance"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [("web", "x")],
        "only the event the API could have made"
    );

    // A replica that starts afterwards reads the same keys and refuses the same records.
    let b = replica(&etcd, &[]).await;
    assert_eq!(
        statuses(&b, "web").await,
        vec![("web-5".into(), "passing".into())]
    );
}

/// Owners and generations are kept in etcd: what one replica knows of an instance's
/// owner and registration, every replica enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hold_every_writer_to_the_owner_and_generation_another_recorded() {
    let etcd = EtcdCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "web web-token\n").unwrap();
    let flags = ["--token", "op", "--tokens", tokens.to_str().unwrap()];
    let (a, b) = (replica(&etcd, &flags).await, replica(&etcd, &flags).await);
    let web_on_a = Client::new(&a.url).unwrap().with_token("web-token");
    let op_on_b = Client::new(&b.url).unwrap().with_token("op");

    let stored = web_on_a
        .register("web", "web-a", &Registration::new("10.0.0.1:4143"))
        .await
        .unwrap();
    assert_eq!(stored.owner, "token:web");
    let taken = op_on_b
        .register("web", "web-a", &Registration::new("10.6.6.6:4143"))
        .await
        .unwrap_err();
    assert!(taken.to_string().contains("owned by token:web"), "{taken}");

    // A heartbeat naming an older registration, on the other replica: 404.
    let web_on_b = Client::new(&b.url).unwrap().with_token("web-token");
    let replaced = web_on_a
        .register("web", "web-a", &Registration::new("10.0.0.2:4143"))
        .await
        .unwrap();
    assert_ne!(replaced.generation, stored.generation);
    eventually(PATIENCE, "B sees the new registration", async || {
        let listed = web_on_b.service_all("web").await.unwrap();
        listed.instances.first().map(|i| i.generation) == Some(replaced.generation)
    })
    .await;
    let stale = Heartbeat {
        generation: Some(stored.generation),
        ..Heartbeat::default()
    };
    let refused = web_on_b
        .heartbeat("web", "web-a", &stale)
        .await
        .unwrap_err();
    assert!(refused.is_not_found(), "{refused}");
    let current = Heartbeat {
        generation: Some(replaced.generation),
        ..Heartbeat::default()
    };
    web_on_b.heartbeat("web", "web-a", &current).await.unwrap();

    // The operator removes it, through either replica.
    op_on_b.deregister("web", "web-a").await.unwrap();
    eventually(PATIENCE, "web-a gone on A", async || {
        statuses(&a, "web").await.is_empty()
    })
    .await;
}
