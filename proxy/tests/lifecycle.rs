//! Self-registration and shutdown: the app's health becomes the instance's status, and
//! on shutdown the sidecar deregisters before it drains in-flight requests.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{App, PATIENCE, Registry, Sidecar, SidecarSpec, eventually};
use http::StatusCode;
use mesh_registry_api::Status;

async fn status_of(registry: &Registry, service: &str) -> Option<Status> {
    first_instance(registry, service).await["status"]
        .as_str()
        .map(|s| serde_json::from_value(serde_json::Value::String(s.into())).unwrap())
}

/// The first instance of `service` the registry lists, whatever its status.
async fn first_instance(registry: &Registry, service: &str) -> serde_json::Value {
    let all = common::get(&format!(
        "{}/v1/services/{service}?all=true",
        registry.url()
    ))
    .await;
    let json: serde_json::Value = serde_json::from_slice(&all.body).unwrap();
    json["instances"][0].clone()
}

async fn until_status(registry: &Registry, service: &str, want: Option<Status>) {
    let what = format!("{service} {want:?}");
    eventually(PATIENCE, &what, async || {
        status_of(registry, service).await == want
    })
    .await;
}

#[tokio::test]
async fn the_apps_health_is_the_registered_status() {
    let registry = Registry::start().await;
    let url = registry.url();
    let mut app = App::start("web-1").await;
    let _sidecar = Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await;
    until_status(&registry, "web", Some(Status::Passing)).await;

    app.stop();
    until_status(&registry, "web", Some(Status::Critical)).await;
    // The heartbeat that said so carried what the health check saw.
    let instance = first_instance(&registry, "web").await;
    let output = instance["output"].as_str().unwrap_or_default();
    assert!(
        output.starts_with("cannot connect to 127.0.0.1:"),
        "{instance}"
    );
    assert!(
        registry
            .client
            .service("web")
            .await
            .unwrap()
            .instances
            .is_empty()
    );
}

#[tokio::test]
async fn a_forgotten_instance_registers_again() {
    let registry = Registry::start().await;
    let url = registry.url();
    let app = App::start("web-1").await;
    let sidecar = Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let id = format!("web-{}", sidecar.inbound.unwrap().port());
    let first = registry.client.service("web").await.unwrap().instances[0]
        .registered_at
        .clone();
    registry.client.deregister("web", &id).await.unwrap();
    eventually(PATIENCE, "the instance registered again", async || {
        let listing = registry.client.service("web").await.unwrap();
        listing
            .instances
            .first()
            .is_some_and(|i| i.registered_at != first)
    })
    .await;
    assert_eq!(
        registry.client.service("web").await.unwrap().instances[0].id,
        id
    );
}

#[tokio::test]
async fn shutdown_deregisters_first_then_drains_in_flight_requests() {
    let registry = Registry::start().await;
    let url = registry.url();
    let mut app = App::start("web-1").await;
    let mut server = Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&url)).await;

    let outbound = client.outbound;
    // A request the app holds until the test lets it answer.
    let slow = tokio::spawn(async move { common::get_h1(outbound, "web", "/hold").await });
    eventually(PATIENCE, "the request in flight at the app", async || {
        app.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;

    server.begin_shutdown();
    // Deregistered while the request is still being served...
    registry.until_passing("web", 0).await;
    assert!(!registry.client.service("web").await.unwrap().exists);
    assert_eq!(
        app.in_flight.load(Ordering::SeqCst),
        1,
        "deregistration came first"
    );
    // ...which then completes normally.
    app.release();
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text, "web-1");
    // The sidecar keeps the app's own listeners open until the app has exited.
    app.stop();
    tokio::time::timeout(Duration::from_secs(10), server.task.take().unwrap())
        .await
        .expect("the sidecar exits once drained")
        .unwrap();
}

#[tokio::test]
async fn prometheus_finds_the_sidecar_through_the_registry() {
    let registry = Registry::start().await;
    let url = registry.url();
    let app = App::start("web-1").await;
    let sidecar = Sidecar::start(SidecarSpec::server(&url, "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let sd = common::get(&format!("{url}/v1/prometheus/targets")).await;
    let groups: serde_json::Value = serde_json::from_slice(&sd.body).unwrap();
    let admin = format!("127.0.0.1:{}", sidecar.admin.port());
    assert_eq!(groups[0]["targets"][0], admin.as_str(), "{}", sd.text);
    assert_eq!(groups[0]["labels"]["service"], "web");
    // The advertised address really serves the metrics.
    let metrics = common::get(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.text.contains("mesh_requests_total")
            || metrics.text.contains("mesh_registry_connected")
    );
}

async fn heartbeats(registry: &Registry) -> f64 {
    let m = common::get(&format!("{}/metrics", registry.url()))
        .await
        .text;
    common::metric(
        &m,
        r#"mesh_registry_http_requests_total{code="200",route="heartbeat"}"#,
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn heartbeats_go_at_a_third_of_the_ttl_however_often_health_is_checked() {
    let registry = Registry::start().await;
    let url = registry.url();
    let app = App::start("web-1").await;
    let mut spec = SidecarSpec::server(&url, "web", app.addr);
    spec.config.registration.health_interval = Duration::from_millis(50);
    spec.config.registration.ttl = Duration::from_secs(3);
    let _sidecar = Sidecar::start(spec).await;
    registry.until_passing("web", 1).await;
    // One a second (a third of 3 s), not one per 50 ms health check: three heartbeats
    // take over two seconds. (The registry counts each before it answers, and the next
    // is sent a beat after the answer, so three counted after `started` cannot take less.)
    let started = std::time::Instant::now();
    let before = heartbeats(&registry).await;
    eventually(PATIENCE, "three heartbeats", async || {
        heartbeats(&registry).await >= before + 3.0
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "three heartbeats in {took:?}"
    );
}

#[tokio::test]
async fn an_app_that_comes_up_after_its_sidecar_is_routable_at_once() {
    let registry = Registry::start().await;
    let url = registry.url();
    // The app's port, free until the app starts.
    let port = common::closed_port();
    let mut spec = SidecarSpec::server(&url, "web", port);
    spec.config.registration.health_interval = Duration::from_secs(30);
    let sidecar = Sidecar::start(spec).await;
    until_status(&registry, "web", Some(Status::Critical)).await;
    let ready = common::get(&format!("http://{}/ready", sidecar.admin)).await;
    let body: serde_json::Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(
        (&body["registered"], &body["status"], &body["passing"]),
        (&true.into(), &"critical".into(), &false.into()),
        "{body}"
    );

    let _app = App::start_on(port, "web-1").await;
    // Health is checked every 30 s once the app has passed, but quickly until then: at
    // intervals doubling from 100 ms, so the app is seen within about as long as it took
    // to come up. 15 s leaves a slow machine room, and is still half the interval.
    tokio::time::timeout(Duration::from_secs(15), registry.until_passing("web", 1))
        .await
        .expect("the late app waited for a full health interval");
    let ready = common::get(&format!("http://{}/ready", sidecar.admin)).await;
    let body: serde_json::Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(body["passing"], true, "{body}");
}

/// Counts the connections a listener accepts (the app's health probes, which here are
/// TCP connects) and, forwarding to `to`, the bytes sent through it.
struct Counting {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Counting {
    async fn start(to: Option<std::net::SocketAddr>) -> Counting {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, AtomicUsize};
        let listener = common::listener().await;
        let addr = listener.local_addr().unwrap();
        let (accepted, bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
        let (counted, carried) = (accepted.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let Some(to) = to else { continue };
                let carried = carried.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut from_client, mut to_server) = (client.split(), server.split());
                    let up = async {
                        let mut buf = [0u8; 8192];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            match from_client.0.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    carried.fetch_add(n as u64, Ordering::SeqCst);
                                    if to_server.1.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut to_server.0, &mut from_client.1);
                    tokio::select! {
                        () = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Counting {
            addr,
            accepted,
            bytes,
        }
    }
}

/// A sidecar of `service` in front of `app`, with a certificate (permissive mTLS) and a
/// short drain, reaching the registry at `registry`.
fn counted<'a>(registry: &'a str, service: &'a str, app: &Counting) -> SidecarSpec<'a> {
    let mut spec = SidecarSpec::server(registry, service, app.addr);
    spec.config.tls.mode = mesh_proxy::tls::TlsMode::Permissive;
    spec.config.tls.join_token = Some(common::JOIN_TOKEN.to_owned());
    spec.config.listen.drain_timeout = Duration::from_millis(200);
    spec
}

/// `run` returns only once everything it started has ended: after it, the app sees no
/// health probe and the registry no request (no renewal, heartbeat or watch).
#[tokio::test]
async fn once_run_returns_nothing_it_started_probes_the_app_or_calls_the_registry() {
    // Certificates valid 3 s are renewed every second.
    let registry = Registry::start_with_ca(Duration::from_secs(3)).await;
    let rotations = async |sidecar: &Sidecar| {
        common::metric(&sidecar.metrics().await, "mesh_tls_cert_rotations_total").unwrap_or(0.0)
    };
    // Each sidecar reaches its app and the registry through counters of its own.
    let to_registry = Counting::start(Some(registry.addr)).await;
    let app = Counting::start(None).await;
    let registry_url = format!("http://{}", to_registry.addr);
    let mut sidecar = Sidecar::start(counted(&registry_url, "web", &app)).await;
    // The witness: a sidecar set up alike that keeps running.
    let (witness_registry, witness_app) = (
        Counting::start(Some(registry.addr)).await,
        Counting::start(None).await,
    );
    let witness_url = format!("http://{}", witness_registry.addr);
    let witness = Sidecar::start(counted(&witness_url, "witness", &witness_app)).await;
    // A destination followed too: its watch must end with the sidecar.
    let _ = common::get_h1(sidecar.outbound, "web", "/").await;
    eventually(PATIENCE, "a certificate renewal", async || {
        rotations(&sidecar).await >= 1.0
    })
    .await;
    assert!(
        app.accepted.load(Ordering::SeqCst) > 0,
        "the app was probed"
    );

    sidecar.begin_shutdown();
    let run = sidecar.task.take().unwrap();
    tokio::time::timeout(PATIENCE, run).await.unwrap().unwrap();
    // A probe or renewal already under way when run returned may still land (the kernel
    // completed its connection, and the counting servers accept it later): the counts are
    // taken once they stay the same over one of the witness's health intervals.
    let counts = || {
        (
            app.accepted.load(Ordering::SeqCst),
            to_registry.bytes.load(Ordering::SeqCst),
        )
    };
    let mut settled = None;
    for _ in 0..20 {
        let before = counts();
        let witnessed = witness_app.accepted.load(Ordering::SeqCst);
        eventually(PATIENCE, "a probe by the witness", async || {
            witness_app.accepted.load(Ordering::SeqCst) > witnessed
        })
        .await;
        if counts() == before {
            settled = Some(before);
            break;
        }
    }
    let (probes, sent) = settled.expect("probes and registry requests go on after run returned");
    // Ten health intervals and two renewal periods, as the witness lives them (a loaded
    // machine slows its timers as it would slow a task left behind): such a task would
    // have shown by then.
    let (witness_probes, witness_rotations) = (
        witness_app.accepted.load(Ordering::SeqCst),
        rotations(&witness).await,
    );
    eventually(
        PATIENCE,
        "ten probes and two renewals by the witness",
        async || {
            witness_app.accepted.load(Ordering::SeqCst) >= witness_probes + 10
                && rotations(&witness).await >= witness_rotations + 2.0
        },
    )
    .await;
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        probes,
        "health probes after run returned"
    );
    assert_eq!(
        to_registry.bytes.load(Ordering::SeqCst),
        sent,
        "registry requests after run returned"
    );
}
