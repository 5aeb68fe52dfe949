//! In-process meshes for the tests: a registry, sidecars and apps on 127.0.0.1:0.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_proxy::config::Upstream;
use mesh_proxy::inbound::AppProtocol;
use mesh_proxy::{Config, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A registry serving in-process; stopped when dropped.
pub struct Registry {
    pub addr: SocketAddr,
    pub client: mesh_registry_api::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Holds the CA files of a registry that signs certificates.
    _ca_dir: Option<tempfile::TempDir>,
}

/// The join token of test registries with a CA.
pub const JOIN_TOKEN: &str = "join-the-mesh";

impl Registry {
    pub async fn start() -> Registry {
        Self::start_on(listener().await).await
    }

    /// A registry whose CA issues certificates valid for `cert_ttl`.
    pub async fn start_with_ca(cert_ttl: Duration) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_registry::ca::Ca::generate("mesh.local").unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca-key.pem"), &ca.key_pem).unwrap();
        let config = mesh_registry::Config {
            ca_cert: Some(dir.path().join("ca.pem")),
            ca_key: Some(dir.path().join("ca-key.pem")),
            join_token: Some(JOIN_TOKEN.into()),
            cert_ttl,
            ..mesh_registry::Config::default()
        };
        let mut registry = Self::start_configured(listener().await, config).await;
        registry._ca_dir = Some(dir);
        registry
    }

    pub async fn start_on(listener: TcpListener) -> Registry {
        Self::start_configured(listener, mesh_registry::Config::default()).await
    }

    async fn start_configured(listener: TcpListener, config: mesh_registry::Config) -> Registry {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mesh_registry::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Registry {
            addr,
            client: mesh_registry_api::Client::new(&format!("http://{addr}")).unwrap(),
            stop: Some(stop),
            task,
            _ca_dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and waits until it is gone.
    pub async fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = (&mut self.task).await;
    }

    /// Waits until `service` lists exactly `n` passing instances.
    pub async fn until_passing(&self, service: &str, n: usize) {
        for _ in 0..500 {
            if self.client.service(service).await.unwrap().instances.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{service} never had {n} passing instances");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A sidecar serving in-process, with the addresses of its listeners.
pub struct Sidecar {
    pub inbound: Option<SocketAddr>,
    pub outbound: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

pub struct SidecarSpec<'a> {
    pub registry: &'a str,
    /// `(service name, app address, app protocol)` for a sidecar that registers.
    pub app: Option<(&'a str, SocketAddr, Option<AppProtocol>)>,
    pub upstreams: Vec<&'a str>,
    pub extra: Vec<&'a str>,
}

impl<'a> SidecarSpec<'a> {
    pub fn client(registry: &'a str) -> Self {
        SidecarSpec {
            registry,
            app: None,
            upstreams: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn server(registry: &'a str, service: &'a str, app: SocketAddr) -> Self {
        SidecarSpec {
            app: Some((service, app, None)),
            ..Self::client(registry)
        }
    }
}

impl Sidecar {
    pub async fn start(spec: SidecarSpec<'_>) -> Sidecar {
        let inbound = match spec.app {
            Some(_) => Some(listener().await),
            None => None,
        };
        let outbound = listener().await;
        let admin = listener().await;
        let mut args: Vec<String> = vec![
            "mesh-proxy".into(),
            "--registry".into(),
            spec.registry.into(),
        ];
        args.extend([
            "--health-interval".into(),
            "100ms".into(),
            "--ttl".into(),
            "2s".into(),
        ]);
        if let (Some((service, app, protocol)), Some(inbound)) = (spec.app, &inbound) {
            let inbound_addr = inbound.local_addr().unwrap();
            args.extend([
                "--service".into(),
                service.into(),
                "--app".into(),
                app.to_string(),
                "--advertise".into(),
                inbound_addr.to_string(),
                "--inbound".into(),
                inbound_addr.to_string(),
                "--instance-id".into(),
                format!("{service}-{}", inbound_addr.port()),
            ]);
            if let Some(p) = protocol {
                let name = match p {
                    AppProtocol::Http => "http",
                    AppProtocol::H2 => "h2",
                    AppProtocol::Grpc => "grpc",
                };
                args.extend(["--app-protocol".into(), name.into()]);
            }
        }
        args.extend(spec.extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from_args(&args);
        let mut upstreams = Vec::new();
        let mut upstream_addrs = Vec::new();
        for name in spec.upstreams {
            let l = listener().await;
            let addr = l.local_addr().unwrap();
            upstream_addrs.push(addr);
            upstreams.push((
                Upstream {
                    service: name.into(),
                    port: None,
                    listen: addr,
                },
                l,
            ));
        }
        let addrs = (
            inbound.as_ref().map(|l| l.local_addr().unwrap()),
            outbound.local_addr().unwrap(),
            admin.local_addr().unwrap(),
        );
        let listeners = Listeners {
            inbound,
            outbound,
            upstreams,
            admin,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            mesh_proxy::run(listeners, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let sidecar = Sidecar {
            inbound: addrs.0,
            outbound: addrs.1,
            upstreams: upstream_addrs,
            admin: addrs.2,
            stop: Some(stop),
            task: Some(task),
        };
        sidecar.until_ready().await;
        sidecar
    }

    pub async fn until_ready(&self) {
        for _ in 0..500 {
            let r = get(&format!("http://{}/ready", self.admin)).await;
            if r.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sidecar never became ready");
    }

    /// Starts the shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.admin)).await.text
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// `Config::try_parse_from` without pulling clap into every test file.
trait ParseArgs {
    fn try_parse_from_args(args: &[String]) -> Config;
}

impl ParseArgs for Config {
    fn try_parse_from_args(args: &[String]) -> Config {
        <Config as clap::Parser>::try_parse_from(args).unwrap()
    }
}

/// A test app: HTTP/1.1 and h2c on one port.
///
/// - `/echo`: answers with the request body, its headers as `x-echo-<name>` headers, and
///   its trailers as trailers;
/// - `/whoami`: answers with the app's name;
/// - `/slow?ms=N`: answers after N ms;
/// - `/status/N`: answers status N.
pub struct App {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests the app is working on now.
    pub in_flight: Arc<AtomicUsize>,
    /// Requests the app received in all.
    pub received: Arc<AtomicUsize>,
    /// Headers of the last request received.
    pub last_headers: Arc<std::sync::Mutex<HeaderMap>>,
    stop: Option<oneshot::Sender<()>>,
}

impl App {
    pub async fn start(name: &str) -> App {
        Self::start_with_latency(name, Duration::ZERO).await
    }

    /// An app that adds `latency` to every answer.
    pub async fn start_with_latency(name: &str, latency: Duration) -> App {
        Self::serve(listener().await, name, latency)
    }

    /// An app on a given address (one that was free a moment ago).
    pub async fn start_on(addr: SocketAddr, name: &str) -> App {
        Self::serve(TcpListener::bind(addr).await.unwrap(), name, Duration::ZERO)
    }

    fn serve(l: TcpListener, name: &str, latency: Duration) -> App {
        let addr = l.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let app_name = name.to_owned();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = in_flight.clone();
        let received = Arc::new(AtomicUsize::new(0));
        let last_headers = Arc::new(std::sync::Mutex::new(HeaderMap::new()));
        let (received2, last2) = (received.clone(), last_headers.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = l.accept() => a.unwrap(),
                    _ = &mut stopped => return,
                };
                let name = app_name.clone();
                let counter = counter.clone();
                let (received, last) = (received2.clone(), last2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        let counter = counter.clone();
                        received.fetch_add(1, Ordering::SeqCst);
                        *last.lock().unwrap() = req.headers().clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(latency).await;
                            let response = app(req, &name).await;
                            counter.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            name: name.into(),
            in_flight,
            received,
            last_headers,
            stop: Some(stop),
        }
    }

    /// Stops accepting connections (open ones stay until they close).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn app(
    req: Request<Incoming>,
    name: &str,
) -> Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let boxed = |b: Full<Bytes>| b.map_err(|never| match never {}).boxed();
    if path == "/echo" {
        let (parts, body) = req.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        let mut builder = Response::builder().header("x-version", format!("{:?}", parts.version));
        for (k, v) in &parts.headers {
            builder = builder.header(format!("x-echo-{k}"), v);
        }
        let body = TestBody::new(bytes, trailers);
        return builder
            .body(body.map_err(|never| match never {}).boxed())
            .unwrap();
    }
    if path.starts_with("/grpc.") {
        // A gRPC-shaped answer with its status in the trailers, as grpcio sends it. An
        // app whose name contains "failing" answers UNAVAILABLE; "big" sends 100 KiB
        // first and then UNAVAILABLE.
        let (data, code) = if name.contains("big") {
            (Bytes::from(vec![0u8; 100 * 1024]), "14")
        } else if name.contains("failing") {
            (Bytes::new(), "14")
        } else {
            (Bytes::from(name.to_owned()), "0")
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", code.parse().unwrap());
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(
                TestBody::new(data, Some(trailers))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
    }
    if path == "/whoami" {
        return Response::new(boxed(Full::new(Bytes::from(name.to_owned()))));
    }
    if path == "/slow" {
        let ms: u64 = query.trim_start_matches("ms=").parse().unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Response::new(boxed(Full::new(Bytes::from(name.to_owned()))));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return Response::builder()
            .status(status)
            .body(boxed(Full::new(Bytes::new())))
            .unwrap();
    }
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(boxed(Full::new(Bytes::new())))
        .unwrap()
}

/// A body of one data frame, then trailers if any.
pub struct TestBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl TestBody {
    pub fn new(data: impl Into<Bytes>, trailers: Option<HeaderMap>) -> Self {
        TestBody {
            data: Some(data.into()),
            trailers,
        }
    }

    pub fn empty() -> Self {
        Self::new(Bytes::new(), None)
    }
}

impl hyper::body::Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
        }
        std::task::Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(hyper::body::Frame::trailers(t))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// An answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

pub async fn get(url: &str) -> Answer {
    send(
        &h1(),
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

pub fn h1() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send<B>(client: &Client<HttpConnector, B>, request: Request<B>) -> Answer
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read(client.request(request).await.unwrap()).await
}

/// Reads a whole answer, trailers included.
async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        text: String::from_utf8_lossy(&body).into_owned(),
        body,
        trailers,
    }
}

/// A GET over HTTP/1.1 to a listener at `addr`, naming `host` as the destination.
pub async fn get_h1(addr: SocketAddr, host: &str, path: &str) -> Answer {
    let request = Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&h1(), request).await
}

/// One HTTP/2 prior-knowledge connection to a listener; every request on it may name a
/// different destination in `:authority`.
#[derive(Clone)]
pub struct H2Conn(hyper::client::conn::http2::SendRequest<TestBody>);

impl H2Conn {
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2Conn(send)
    }

    pub async fn send(&self, request: Request<TestBody>) -> Answer {
        let mut send = self.0.clone();
        send.ready().await.unwrap();
        read(send.send_request(request).await.unwrap()).await
    }

    pub async fn get(&self, host: &str, path: &str) -> Answer {
        let request = Request::get(format!("http://{host}{path}"))
            .version(Version::HTTP_2)
            .body(TestBody::empty())
            .unwrap();
        self.send(request).await
    }
}

/// Metric value of one exact series line (`name{labels}`) in a Prometheus text body.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
}
