//! gRPC through a sidecar pair with tonic on both ends: unary calls, statuses in
//! trailers, metadata, and a server stream that stays open.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{PATIENCE, Registry, Sidecar, SidecarSpec};
use http_body_util::BodyExt;
use mesh_proxy::inbound::AppProtocol;
use recommendations::pb::recommendations_client::RecommendationsClient;
use recommendations::pb::{BookCategory, RecommendationRequest};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct GrpcMesh {
    registry: Registry,
    _server: Sidecar,
    client: Sidecar,
    stop_app: Option<oneshot::Sender<()>>,
}

async fn mesh() -> GrpcMesh {
    mesh_with(|_| {}).await
}

/// [`mesh`], with both sidecars' settings tuned by `tune`.
async fn mesh_with(tune: impl Fn(&mut mesh_proxy::Config)) -> GrpcMesh {
    let registry = Registry::start().await;
    let app_listener = common::listener().await;
    let app = app_listener.local_addr().unwrap();
    let (stop_app, app_stopped) = oneshot::channel::<()>();
    let config = recommendations::Config {
        instance_name: "rec-a".parse().unwrap(),
        ..Default::default()
    };
    tokio::spawn(recommendations::run(app_listener, config, async {
        let _ = app_stopped.await;
    }));
    let url = registry.url();
    let mut spec = SidecarSpec::server(&url, "recommendations", app);
    spec.app = Some(("recommendations", app, Some(AppProtocol::Grpc)));
    tune(&mut spec.config);
    let server = Sidecar::start(spec).await;
    registry.until_passing("recommendations", 1).await;
    let mut spec = SidecarSpec::client(&url);
    spec.upstreams = vec!["recommendations"];
    tune(&mut spec.config);
    let client = Sidecar::start(spec).await;
    GrpcMesh {
        registry,
        _server: server,
        client,
        stop_app: Some(stop_app),
    }
}

/// A channel to the client sidecar's upstream listener, as the marketplace dials it.
async fn upstream_channel(m: &GrpcMesh) -> Channel {
    Endpoint::from_shared(format!("http://{}", m.client.upstreams[0]))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn unary_calls_and_their_statuses_pass_through_unchanged() {
    let m = mesh().await;
    let mut client = RecommendationsClient::new(upstream_channel(&m).await);

    let response = client
        .recommend(RecommendationRequest {
            user_id: 1,
            category: BookCategory::Mystery as i32,
            max_results: 3,
        })
        .await
        .unwrap();
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "rec-a");
    let books = response.into_inner().recommendations;
    assert_eq!(books.len(), 3);
    assert!(books.iter().all(|b| (1..=3).contains(&b.id)));

    let status = client
        .recommend(RecommendationRequest {
            user_id: 1,
            category: 7,
            max_results: 3,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "Category not found");
    assert!(
        status.metadata().get("mesh-error").is_none(),
        "an app's status is the app's, not the proxy's"
    );

    let metrics = m.client.metrics().await;
    // NOT_FOUND is the app's answer, as a 404 would be: no failure of the service.
    let answered = r#"mesh_responses_total{classification="success",direction="outbound",grpc_status="5",service="recommendations",status_code="200"}"#;
    assert_eq!(common::metric(&metrics, answered), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn the_host_routed_listener_takes_the_service_from_the_authority() {
    let m = mesh().await;
    let channel = Endpoint::from_shared(format!("http://{}", m.client.outbound))
        .unwrap()
        .origin("http://recommendations".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let books = RecommendationsClient::new(channel)
        .recommend(RecommendationRequest {
            user_id: 1,
            category: BookCategory::SelfHelp as i32,
            max_results: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .recommendations;
    assert_eq!(books.len(), 2);
    assert!(books.iter().all(|b| (7..=9).contains(&b.id)));
}

/// An HTTP/2 connection to `addr` that has carried one request and then sits without a
/// stream; resolves once the sidecar has closed it.
async fn idle_h2_connection(addr: SocketAddr) -> impl Future<Output = ()> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get("http://recommendations/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    let _ = response.into_body().collect().await;
    async move {
        // Held until the end: a client whose last handle is dropped closes the connection
        // itself.
        let _send = send;
        let _ = conn.await;
    }
}

#[tokio::test]
async fn a_server_stream_stays_open_and_delivers_every_message() {
    // Connections without an open stream are closed after 500 ms: the stream's must not be.
    let idle = Duration::from_millis(500);
    let mut m = mesh_with(|c| c.listen.idle_timeout = idle).await;
    let mut health = HealthClient::new(upstream_channel(&m).await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: "Recommendations".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // The stream sits quiet until the idle timeout has closed another connection, opened
    // after it, whose one request is done: the timer ran, and did not cut the stream.
    let witness = idle_h2_connection(m.client.upstreams[0]).await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(PATIENCE, witness)
        .await
        .expect("the idle connection was closed");
    assert!(started.elapsed() >= idle / 2, "{:?}", started.elapsed());

    // Stopping the app makes it report NOT_SERVING on the open stream.
    let _ = m.stop_app.take().unwrap().send(());
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream delivered the change")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(stream);
    drop(m.registry);
}

#[tokio::test]
async fn large_messages_cross_the_mesh() {
    let m = mesh().await;
    // A 3 MiB health-check request: the service name is bogus, the size is the point.
    let mut health = HealthClient::new(upstream_channel(&m).await)
        .max_decoding_message_size(8 * 1024 * 1024)
        .max_encoding_message_size(8 * 1024 * 1024);
    let status = health
        .check(HealthCheckRequest {
            service: "x".repeat(3 * 1024 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}
