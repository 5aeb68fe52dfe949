//! The client crate's registration loop against a real registry.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{PATIENCE, TestRegistry, eventually};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_registry_api::{Client, Registrar, Registration, Status};
use tokio::sync::{oneshot, watch};

/// Waits until `check` holds for the service's full listing (all statuses).
async fn until(r: &TestRegistry, service: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let what = format!("the condition on {service}'s listing");
    eventually(PATIENCE, &what, async || {
        check(&r.all_instances(service).await)
    })
    .await;
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
    let r = TestRegistry::start_default().await;
    let base = r.url("/v1");
    let (prefixed, prefixed_count) = counting_server(move |method, path| {
        let url = format!("{base}{path}");
        async move {
            let answer = common::raw(method, &url, &[common::JSON], Bytes::new()).await;
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
async fn heartbeats(r: &TestRegistry) -> f64 {
    r.metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("mesh_registry_http_requests_total{")
                && l.contains(r#"route="heartbeat""#)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn an_unchanged_health_status_re_sent_does_not_cause_heartbeats() {
    let r = TestRegistry::start_default().await;
    let mut registration = Registration::new("127.0.0.1:4143");
    registration.ttl = Duration::from_secs(3);
    let registrar = Registrar::new(r.client.clone(), "web", "web-1", registration);
    let mut registered = registrar.subscribe_registered();
    let (health_tx, health) = watch::channel(Status::Passing);
    let task = tokio::spawn(registrar.run(health, std::future::pending()));
    registered.wait_for(|r| *r).await.unwrap();

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
