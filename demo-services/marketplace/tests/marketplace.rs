//! The marketplace against a real in-process recommendations server, over real sockets.

use std::net::SocketAddr;

use axum::http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use marketplace::Config;
use recommendations::{
    FailRate, RecommendationsService, pb::recommendations_server::RecommendationsServer,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tonic::transport::server::TcpIncoming;

/// Serves recommendations with `config` on `listener`; stops when the sender is dropped.
fn serve_recommendations(
    listener: TcpListener,
    config: recommendations::Config,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(recommendations::run(listener, config, async move {
        let _ = stopped.await;
    }));
    stop
}

async fn start_recommendations(
    config: recommendations::Config,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (address, serve_recommendations(listener, config))
}

/// Starts a marketplace that dials recommendations at `recommendations`.
async fn start_marketplace(recommendations: SocketAddr) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = Config {
        recommendations_host: recommendations.ip().to_string(),
        recommendations_port: recommendations.port(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(marketplace::run(listener, config, async move {
        let _ = stopped.await;
    }));
    (address, stop)
}

/// An address where nothing listens: bound, then released.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body.
async fn send(address: SocketAddr, method: Method, path: &str) -> (StatusCode, String) {
    send_with(address, method, path, &[]).await
}

/// [`send`] with extra request headers.
async fn send_with(
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", address.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn get(address: SocketAddr, path: &str) -> (StatusCode, String) {
    send(address, Method::GET, path).await
}

const MYSTERY: [&str; 3] = [
    "The Maltese Falcon",
    "Murder on the Orient Express",
    "The Hound of the Baskervilles",
];

fn list_items(page: &str) -> Vec<&str> {
    page.split("<li>")
        .skip(1)
        .map(|rest| rest.split_once("</li>").unwrap().0)
        .collect()
}

#[tokio::test]
async fn page_lists_three_mystery_books() {
    let config = recommendations::Config {
        instance_name: "reco-1".parse().unwrap(),
        ..recommendations::Config::default()
    };
    let (recommendations, _stop_recommendations) = start_recommendations(config).await;
    let (marketplace, _stop) = start_marketplace(recommendations).await;

    let (status, page) = get(marketplace, "/").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("<title>Online Books For You</title>"),
        "{page}"
    );
    assert!(
        page.contains("<h1>Mystery books you may like</h1>"),
        "{page}"
    );
    let mut books = list_items(&page);
    books.sort_unstable();
    let mut expected = MYSTERY.map(|title| title.to_owned());
    expected.sort_unstable();
    assert_eq!(books, expected, "{page}");
    assert!(page.contains("<code>reco-1</code>"), "{page}");
}

/// The trace context a recommendations call arrived with.
#[derive(Debug, PartialEq, Eq)]
struct Context {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// A real recommendations service behind an interceptor that reports the trace context
/// of every call it receives.
async fn start_recording_recommendations() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Context>,
    oneshot::Sender<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (seen, calls) = mpsc::unbounded_channel();
    let record = move |request: tonic::Request<()>| {
        let get = |name| {
            let value = request.metadata().get(name)?;
            Some(value.to_str().unwrap().to_owned())
        };
        let _ = seen.send(Context {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        });
        Ok(request)
    };
    let service = RecommendationsServer::with_interceptor(
        RecommendationsService::new(recommendations::Config::default()),
        record,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                let _ = stopped.await;
            }),
    );
    (address, calls, stop)
}

#[tokio::test]
async fn the_page_passes_its_trace_context_on_to_recommendations() {
    let (recommendations, mut calls, _stop_recommendations) =
        start_recording_recommendations().await;
    let (marketplace, _stop) = start_marketplace(recommendations).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let state = "congo=t61rcWkgMzE";

    let headers = [("traceparent", parent), ("tracestate", state)];
    let (status, page) = send_with(marketplace, Method::GET, "/", &headers).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        calls.recv().await.unwrap(),
        Context {
            traceparent: Some(parent.to_owned()),
            tracestate: Some(state.to_owned()),
        }
    );

    // A page request without trace context starts none: the call carries no made-up one.
    let (status, page) = get(marketplace, "/").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        calls.recv().await.unwrap(),
        Context {
            traceparent: None,
            tracestate: None,
        }
    );
}

#[tokio::test]
async fn recommendations_down_is_a_502_naming_the_grpc_status() {
    let (marketplace, _stop) = start_marketplace(closed_port().await).await;

    let (status, page) = get(marketplace, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{page}");
    assert!(page.contains("UNAVAILABLE (14)"), "{page}");
    assert!(list_items(&page).is_empty(), "{page}");
}

#[tokio::test]
async fn recommendations_errors_are_relayed_in_the_502_page() {
    let config = recommendations::Config {
        fail_rate: FailRate::new(1.0).unwrap(),
        ..recommendations::Config::default()
    };
    let (recommendations, _stop_recommendations) = start_recommendations(config).await;
    let (marketplace, _stop) = start_marketplace(recommendations).await;

    let (status, page) = get(marketplace, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{page}");
    assert!(page.contains("UNAVAILABLE (14)"), "{page}");
    assert!(page.contains("injected failure"), "{page}");
}

#[tokio::test]
async fn marketplace_starts_before_recommendations_and_recovers() {
    let address = closed_port().await;
    let (marketplace, _stop) = start_marketplace(address).await;
    let (status, _) = get(marketplace, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // Recommendations comes up later on the address the marketplace was given; the same
    // lazily connected channel reaches it on the next page view.
    let listener = TcpListener::bind(address).await.unwrap();
    let _stop_recommendations = serve_recommendations(listener, recommendations::Config::default());
    let (status, page) = get(marketplace, "/").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(list_items(&page).len(), 3, "{page}");
}

#[tokio::test]
async fn healthz_unknown_paths_and_methods() {
    let (marketplace, _stop) = start_marketplace(closed_port().await).await;

    assert_eq!(
        get(marketplace, "/healthz").await,
        (StatusCode::OK, "ok".to_owned())
    );
    assert_eq!(get(marketplace, "/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(marketplace, Method::POST, "/").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        send(marketplace, Method::DELETE, "/healthz").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn invalid_recommendations_host_is_refused_at_start() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config {
        recommendations_host: "bad host/".to_owned(),
        recommendations_port: 50051,
    };
    let error = marketplace::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("--recommendations-host"),
        "{error}"
    );
}
