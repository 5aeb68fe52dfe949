//! Only the mesh's own errors steer retries: an app (or an endpoint that is no sidecar)
//! that answers with a `mesh-error` header cannot make a sidecar repeat a request, while
//! a real peer sidecar that could not reach its app still gets the request retried.

mod common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{App, H2Conn, Registry, Sidecar, SidecarSpec, TestBody, metric_or_zero};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;
use mesh_registry_api::Registration;

fn post(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("host", "web")
        .body(Full::new(Bytes::from_static(b"charge 10 EUR")))
        .unwrap()
}

#[tokio::test]
async fn an_app_answering_with_mesh_error_cannot_make_the_mesh_repeat_a_post() {
    let registry = Registry::start().await;
    let a = App::start("web-a").await;
    let b = App::start("web-b").await;
    let _sa = Sidecar::start(SidecarSpec::server(&registry.url(), "web", a.addr)).await;
    let _sb = Sidecar::start(SidecarSpec::server(&registry.url(), "web", b.addr)).await;
    registry.until_passing("web", 2).await;
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;

    for (path, sent) in [
        ("/spoof?status=503&mesh-error=connect-failed", 10),
        ("/spoof?status=502&mesh-error=refused", 10),
        ("/spoof?status=200&mesh-error=refused", 3),
    ] {
        let before = a.received.load(Ordering::SeqCst) + b.received.load(Ordering::SeqCst);
        for _ in 0..sent {
            let answer = common::send(&common::h1(), post(client.outbound, path)).await;
            assert!(
                !answer.headers.contains_key("mesh-error"),
                "the app's mesh-error is not passed off as the mesh's: {:?}",
                answer.headers
            );
        }
        let after = a.received.load(Ordering::SeqCst) + b.received.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            sent,
            "{path}: each POST reached an app once"
        );
    }
    let m = client.metrics().await;
    assert_eq!(
        metric_or_zero(&m, r#"mesh_retries_total{reason="not-sent",service="web"}"#),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_endpoint_that_is_no_sidecar_is_not_trusted_with_mesh_error_either() {
    let registry = Registry::start().await;
    let app = App::start("web-a").await;
    // Registered straight at the app: no sidecar strips the app's headers on the way.
    let reg = Registration::new(app.addr.to_string());
    registry
        .client
        .register("web", "web-a", &reg)
        .await
        .unwrap();
    registry.until_passing("web", 1).await;
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;

    let before = app.received.load(Ordering::SeqCst);
    for _ in 0..5 {
        let answer = common::send(
            &common::h1(),
            post(
                client.outbound,
                "/spoof?status=503&mesh-error=connect-failed",
            ),
        )
        .await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !answer.headers.contains_key("mesh-error"),
            "{:?}",
            answer.headers
        );
    }
    assert_eq!(app.received.load(Ordering::SeqCst) - before, 5);
}

#[tokio::test]
async fn a_peer_sidecar_whose_app_is_down_gets_a_post_retried_elsewhere() {
    let registry = Registry::start().await;
    let good = App::start("web-good").await;
    let mut gone = App::start("web-gone").await;
    let gone_addr = gone.addr;
    let _sg = Sidecar::start(SidecarSpec::server(&registry.url(), "web", good.addr)).await;
    let _sd = Sidecar::start(SidecarSpec::server(&registry.url(), "web", gone_addr)).await;
    registry.until_passing("web", 2).await;
    gone.stop();
    drop(gone);
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;

    for _ in 0..10 {
        let answer = common::send(&common::h1(), post(client.outbound, "/whoami")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.text, "web-good");
    }
}

#[tokio::test]
async fn a_stream_refused_by_its_error_code_is_retried_for_any_request() {
    // An HTTP/2 server that resets every stream with REFUSED_STREAM, registered beside a
    // good instance.
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = refusing.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let registry = Registry::start().await;
    let good = App::start("web-good").await;
    let _sg = Sidecar::start(SidecarSpec::server(&registry.url(), "web", good.addr)).await;
    let reg = Registration::new(refusing_addr.to_string());
    registry
        .client
        .register("web", "web-refusing", &reg)
        .await
        .unwrap();
    registry.until_passing("web", 2).await;
    let client = Sidecar::start(SidecarSpec::client(&registry.url())).await;
    let conn = H2Conn::connect(client.outbound).await;

    for _ in 0..20 {
        let call = Request::builder()
            .method(Method::POST)
            .version(Version::HTTP_2)
            .uri("http://web/whoami")
            .body(TestBody::new(Bytes::from_static(b"x"), None))
            .unwrap();
        let answer = conn.send(call).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.text, "web-good");
    }
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the refusing instance was tried"
    );
    let m = client.metrics().await;
    assert!(
        metric_or_zero(&m, r#"mesh_retries_total{reason="not-sent",service="web"}"#) >= 1.0,
        "{m}"
    );
}
