//! `CONNECT` (an app with `HTTPS_PROXY` pointed at its sidecar) is answered by the proxy
//! itself on every listener, over HTTP/1.1 and HTTP/2: it reaches no app and counts
//! against no endpoint, however many come.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{H2Conn, Registry, Sidecar, SidecarSpec, TestBody};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// An app that answers `200 web-1` to every request but CONNECT, on which it drops the
/// connection (HTTP/1.1) or resets the stream (HTTP/2), as servers that know nothing of
/// tunnels do; it counts the requests it receives, and the CONNECTs among them.
struct App {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    connects: Arc<AtomicUsize>,
}

async fn catch_all_app() -> App {
    let listener = common::listener().await;
    let addr = listener.local_addr().unwrap();
    let (received, connects) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
    let counts = (received.clone(), connects.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = counts.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                counts.0.fetch_add(1, Ordering::SeqCst);
                let connect = request.method() == Method::CONNECT;
                if connect {
                    counts.1.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if connect {
                        return Err("no tunnels here");
                    }
                    Ok(Response::new(Full::new(Bytes::from("web-1"))))
                }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    App {
        addr,
        received,
        connects,
    }
}

/// The proxy's answer to `CONNECT web:443` on the listener at `addr`, over `version`:
/// its status and `mesh-error`.
async fn connect(addr: SocketAddr, version: Version) -> (StatusCode, Option<String>) {
    let (status, headers) = if version == Version::HTTP_2 {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri("web:443")
            .version(Version::HTTP_2)
            .body(TestBody::empty())
            .unwrap();
        let answer = H2Conn::connect(addr).await.send(request).await;
        (answer.status, answer.headers)
    } else {
        // No pooling client sends CONNECT on a connection of its own: hyper's own
        // connection does.
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri("web:443")
            .header("host", "web:443")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let _ = body.collect().await;
        (parts.status, parts.headers)
    };
    let mesh_error = headers
        .get("mesh-error")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, mesh_error)
}

#[tokio::test]
async fn connect_is_refused_by_the_proxy_and_never_ejects_an_endpoint() {
    let registry = Registry::start().await;
    let app = catch_all_app().await;
    let server = Sidecar::start(SidecarSpec::server(&registry.url(), "web", app.addr)).await;
    registry.until_passing("web", 1).await;
    let url = registry.url();
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["web"];
    let client = Sidecar::start(spec).await;
    // The destination is followed, and its one endpoint known, before the CONNECTs.
    let first = common::get_h1(client.outbound, "web", "/whoami").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);

    let listeners = [
        ("outbound", client.outbound),
        ("upstream", client.upstreams[0]),
        ("inbound", server.inbound.unwrap()),
    ];
    for i in 0..20 {
        for (name, addr) in listeners {
            let version = if i % 2 == 0 {
                Version::HTTP_11
            } else {
                Version::HTTP_2
            };
            let answer = connect(addr, version).await;
            let refused = (
                StatusCode::METHOD_NOT_ALLOWED,
                Some("bad-request".to_owned()),
            );
            assert_eq!(answer, refused, "CONNECT #{i} on {name} over {version:?}");
        }
    }
    assert_eq!(
        app.connects.load(Ordering::SeqCst),
        0,
        "CONNECTs the app saw"
    );
    assert_eq!(app.received.load(Ordering::SeqCst), 1);

    let after = common::get_h1(client.outbound, "web", "/whoami").await;
    assert_eq!(
        (after.status, after.text.as_str()),
        (StatusCode::OK, "web-1")
    );
    let metrics = client.metrics().await;
    let ejections = common::metric_sum(
        &metrics,
        "mesh_endpoint_ejections_total",
        r#"service="web""#,
    );
    assert_eq!(ejections, 0.0, "{metrics}");
    assert_eq!(
        common::metric(&metrics, r#"mesh_endpoints{service="web",state="ejected"}"#),
        Some(0.0),
        "{metrics}"
    );
    // No try went to the endpoint but the two calls: it carries no error.
    let debug = common::get(&format!("http://{}/debug/endpoints", client.admin)).await;
    let destinations: Vec<serde_json::Value> = serde_json::from_slice(&debug.body).unwrap();
    let endpoints: Vec<&serde_json::Value> = destinations
        .iter()
        .filter(|d| d["service"] == "web")
        .flat_map(|d| d["endpoints"].as_array().unwrap())
        .collect();
    assert!(!endpoints.is_empty(), "{}", debug.text);
    for endpoint in endpoints {
        assert_eq!(endpoint["state"], "ready", "{}", debug.text);
        assert!(endpoint["last_error"].is_null(), "{}", debug.text);
    }
}
