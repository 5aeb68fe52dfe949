//! The client crate's registration loop against a real registry.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{PATIENCE, Registry, RegistryExt, eventually, metric_sum};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_registry_api::{Backoff, Client, Registrar, Registration, Status};
use tokio::sync::{oneshot, watch};

/// Waits until `check` holds for the service's full listing (all statuses).
async fn until(r: &Registry, service: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let what = format!("the condition on {service}'s listing");
    eventually(PATIENCE, &what, async || {
        check(&r.all_instances(service).await)
    })
    .await;
}

#[tokio::test]
async fn registers_reports_health_comes_back_after_being_forgotten_and_deregisters() {
    let r = Registry::start().await;
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
    // The registry's port, where nothing answers yet: each connection is closed at once,
    // and counted, until the registry starts on that same listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (attempts_tx, mut attempts) = watch::channel(0usize);
    let (stop_refusing, mut refusing_stopped) = oneshot::channel::<()>();
    let refusing = tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    drop(accepted.unwrap());
                    attempts_tx.send_modify(|n| *n += 1);
                }
                _ = &mut refusing_stopped => return listener,
            }
        }
    });
    let client = mesh_registry_api::Client::new(&format!("127.0.0.1:{port}")).unwrap();
    let registrar = Registrar::new(client, "web", "web-1", Registration::new("127.0.0.1:1"));
    let mut registered = registrar.subscribe_registered();
    let (_health_tx, health) = watch::channel(Status::Passing);
    let task = tokio::spawn(registrar.run(health, std::future::pending()));

    // Two attempts failed: it retried, and is still not registered.
    tokio::time::timeout(PATIENCE, attempts.wait_for(|n| *n >= 2))
        .await
        .expect("the registrar tried twice")
        .unwrap();
    assert!(!*registered.borrow());

    stop_refusing.send(()).unwrap();
    let listener = refusing.await.unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(mesh_registry::run(listener, Default::default(), async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(PATIENCE, registered.wait_for(|r| *r))
        .await
        .expect("registered once the registry came up")
        .unwrap();
    task.abort();
}

/// An HTTP server on 127.0.0.1:0 that counts the requests it gets and answers each with
/// what `answer` makes of its method and path.
async fn counting_server<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Method, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (StatusCode, String)> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (answer, count) = (answer.clone(), counted.clone());
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                count.fetch_add(1, Ordering::SeqCst);
                let (answer, method) = (answer.clone(), request.method().clone());
                let path = request.uri().path().to_owned();
                async move {
                    let _ = request.into_body().collect().await;
                    let (status, body) = answer(method, path).await;
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, count)
}

/// Runs a registrar (TTL 3 s, so a beat every second) against `addr` for `run_for`, and
/// returns how many requests `count` saw meanwhile.
async fn requests_in(addr: SocketAddr, count: &AtomicUsize, run_for: Duration) -> usize {
    let client = Client::new(&format!("http://{addr}")).unwrap();
    let mut registration = Registration::new("127.0.0.1:4143");
    registration.ttl = Duration::from_secs(3);
    let registrar = Registrar::new(client, "web", "web-1", registration);
    let (_health_tx, health) = watch::channel(Status::Passing);
    let task = tokio::spawn(registrar.run(health, tokio::time::sleep(run_for)));
    task.await.unwrap();
    count.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_registry_url_that_404s_everything_is_retried_with_backoff_not_in_a_loop() {
    // What a registry mounted under a prefix answers: the real registry, reached with
    // every path prefixed by /v1 (as `--registry http://host:7700/v1` did).
    let r = Registry::start().await;
    let base = r.url_for("/v1");
    let (prefixed, prefixed_count) = counting_server(move |method, path| {
        let url = format!("{base}{path}");
        async move {
            let answer = common::request(method, &url, &[common::JSON], Bytes::new()).await;
            (answer.status, answer.text)
        }
    })
    .await;
    // Something that says "not_found" to everything, in the registry's own words.
    let (not_found, not_found_count) = counting_server(|_, path| async move {
        let body = format!(r#"{{"error":{{"code":"not_found","message":"{path}"}}}}"#);
        (StatusCode::NOT_FOUND, body)
    })
    .await;
    // A plain web server.
    let (html, html_count) = counting_server(|_, _| async {
        (StatusCode::NOT_FOUND, "<html>Not Found</html>".to_owned())
    })
    .await;

    let run_for = Duration::from_secs(3);
    let counts = tokio::join!(
        requests_in(prefixed, &prefixed_count, run_for),
        requests_in(not_found, &not_found_count, run_for),
        requests_in(html, &html_count, run_for),
    );
    // Backoff from 100 ms doubling: about ten attempts in 3 s at the very most, where a
    // loop without delay makes thousands. The final deregistration is one more.
    for (what, n) in [
        ("prefixed", counts.0),
        ("not_found", counts.1),
        ("html", counts.2),
    ] {
        assert!(n <= 12, "{what}: {n} requests in {run_for:?}");
        assert!(n >= 2, "{what}: {n} requests: the registrar kept trying");
    }
    // Nothing was registered through the wrong URL.
    assert!(r.client.services().await.unwrap().services.is_empty());
}

/// Heartbeats the registry answered, from its own metrics.
async fn heartbeats(r: &Registry) -> f64 {
    let metrics = r.metrics().await;
    metric_sum(
        &metrics,
        "mesh_registry_http_requests_total",
        r#"route="heartbeat""#,
    )
}

/// A registrar of web-1 (TTL 3 s: a beat every second) running against `r`, once it has
/// registered; and the sender of its health.
async fn registered(r: &Registry) -> (tokio::task::JoinHandle<()>, watch::Sender<Status>) {
    let mut registration = Registration::new("127.0.0.1:4143");
    registration.ttl = Duration::from_secs(3);
    let registrar = Registrar::new(r.client.clone(), "web", "web-1", registration);
    let mut registered = registrar.subscribe_registered();
    let (health_tx, health) = watch::channel(Status::Passing);
    let task = tokio::spawn(registrar.run(health, std::future::pending()));
    registered.wait_for(|r| *r).await.unwrap();
    (task, health_tx)
}

#[tokio::test]
async fn an_unchanged_health_status_re_sent_does_not_cause_heartbeats() {
    let r = Registry::start().await;
    let (task, health_tx) = registered(&r).await;

    // A health checker that publishes its (unchanged) verdict every 50 ms.
    let resend = tokio::spawn(async move {
        loop {
            health_tx.send_replace(Status::Passing);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // A beat every TTL/3 = 1 s, not one per re-send: three beats take over two seconds.
    // (Each is counted before it is answered, and the next is sent a beat after the
    // answer, so three beats counted after `started` cannot take less.)
    let started = std::time::Instant::now();
    let before = heartbeats(&r).await;
    eventually(PATIENCE, "three heartbeats", async || {
        heartbeats(&r).await >= before + 3.0
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "three heartbeats in {took:?}"
    );
    assert_eq!(r.all_instances("web").await[0]["status"], "passing");
    resend.abort();
    task.abort();
}

/// The registrar's beat under tokio's paused clock: the registry serves on the test's
/// runtime, so a minute of heartbeats takes no time and each lands on its second.
#[tokio::test(start_paused = true)]
async fn a_beat_every_third_of_the_ttl_and_a_forgotten_instance_is_back_after_the_base_delay() {
    let r = Registry::start().await;
    let (task, _health_tx) = registered(&r).await;
    let started = tokio::time::Instant::now();
    let at = |ms: u64| tokio::time::sleep_until(started + Duration::from_millis(ms));

    // A minute: a heartbeat every second, and the lease never runs out.
    for second in 1..=60 {
        at(second * 1_000 + 500).await;
        let all = r.all_instances("web").await;
        assert_eq!(all[0]["status"], "passing", "after {second} s: {all}");
    }
    assert_eq!(heartbeats(&r).await, 60.0);
    let expired = r.metric("mesh_registry_lease_expirations_total").await;
    assert_eq!(expired.unwrap_or(0.0), 0.0);

    // The registry forgets it: the next beat (at 61 s) gets 404, and it registers again
    // after the backoff's base (100 ms), not a beat later.
    r.client.deregister("web", "web-1").await.unwrap();
    let listed = async || {
        let all = r.all_instances("web").await;
        all.as_array().is_some_and(|a| !a.is_empty())
    };
    at(61_050).await;
    assert!(!listed().await, "registered again before its 404");
    at(61_150).await;
    assert!(listed().await, "not registered again 100 ms after its 404");
    task.abort();
}

/// The backoff against a registry that fails every call, under tokio's paused clock:
/// each wait measured exactly, between the arrivals of two attempts.
#[tokio::test(start_paused = true)]
async fn retries_wait_from_the_base_doubling_up_to_the_beat_never_less_than_half_the_ceiling() {
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = arrivals.clone();
    let (addr, _) = counting_server(move |_, _| {
        recorded.lock().unwrap().push(tokio::time::Instant::now());
        async { (StatusCode::SERVICE_UNAVAILABLE, String::new()) }
    })
    .await;
    let client = Client::new(&format!("http://{addr}")).unwrap();
    let mut registration = Registration::new("127.0.0.1:4143");
    // A beat every second: the backoff's cap.
    registration.ttl = Duration::from_secs(3);
    let registrar = Registrar::new(client, "web", "web-1", registration);
    let (_health_tx, health) = watch::channel(Status::Passing);
    let run_for = Duration::from_secs(20);
    registrar.run(health, tokio::time::sleep(run_for)).await;

    let arrivals = arrivals.lock().unwrap().clone();
    // The last request is the deregistration, when the run ends.
    let (deregistration, attempts) = arrivals.split_last().unwrap();
    assert_eq!(*deregistration - attempts[0], run_for);
    let waits: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    let (base, beat) = (Duration::from_millis(100), Duration::from_secs(1));
    for (n, wait) in waits.iter().enumerate() {
        let ceiling = Backoff::ceiling(base, beat, n as u32);
        let floor = (ceiling / 2).max(base);
        assert!(
            (floor..=ceiling).contains(wait),
            "wait {n} of {wait:?} not within {floor:?}..={ceiling:?}: {waits:?}"
        );
    }
    // At most 0.8 s for the first four waits then 0.5 s each; at least 1.5 s, then 1 s.
    assert!(
        (23..=43).contains(&attempts.len()),
        "{} attempts in {run_for:?}",
        attempts.len()
    );
}
