//! Test apps behind the sidecars.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::listener;

/// A test app: HTTP/1.1 and h2c on one port.
///
/// - `/echo`: answers with the request body, its headers as `x-echo-<name>` headers, and
///   its trailers as trailers;
/// - `/len`: reads the whole body and answers with its length in bytes;
/// - `/whoami`: answers with the app's name;
/// - `/slow?ms=N`: answers after N ms;
/// - `/hold`: answers with the app's name once released ([`App::release`]), for a request
///   that must still be in flight whatever happens meanwhile;
/// - `/status/N`: answers status N;
/// - `/spoof?status=N&mesh-error=V`: answers status N carrying `mesh-error: V`, as an
///   app pretending to be a sidecar would;
/// - `/grpc.Stream/…`: a gRPC-shaped stream whose headers go at once and whose message
///   and trailers wait for [`App::release`].
///
/// [`App::set_mode`] makes every path fail with 503 or hang instead.
pub struct App {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests the app is working on now.
    pub in_flight: Arc<AtomicUsize>,
    /// Requests the app received in all.
    pub received: Arc<AtomicUsize>,
    /// Headers of the last request received.
    pub last_headers: Arc<std::sync::Mutex<HeaderMap>>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

/// How an app answers every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal = 0,
    /// 503 to everything.
    Failing = 1,
    /// Never answers.
    Hanging = 2,
    /// 503 to every third request it receives, the others answered as normal.
    Flaky = 3,
    /// A trailers-only gRPC INTERNAL (13) to everything, with HTTP status 200.
    GrpcInternal = 4,
    /// 429 to everything: a server asking for less.
    RateLimiting = 5,
}

struct Shared {
    name: String,
    latency: Duration,
    in_flight: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    last_headers: Arc<std::sync::Mutex<HeaderMap>>,
    mode: AtomicU8,
    released: watch::Sender<bool>,
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
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            latency,
            in_flight: Arc::default(),
            received: Arc::default(),
            last_headers: Arc::default(),
            mode: AtomicU8::new(Mode::Normal as u8),
            released: watch::Sender::new(false),
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = l.accept() => a.unwrap(),
                    _ = &mut stopped => return,
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        shared.received.fetch_add(1, Ordering::SeqCst);
                        *shared.last_headers.lock().unwrap() = req.headers().clone();
                        async move {
                            shared.in_flight.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(shared.latency).await;
                            let response = answer(req, &shared).await;
                            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
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
            in_flight: shared.in_flight.clone(),
            received: shared.received.clone(),
            last_headers: shared.last_headers.clone(),
            shared,
            stop: Some(stop),
        }
    }

    /// Stops accepting connections (open ones stay until they close).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Lets every `/grpc.Stream/…` answer (waiting now or later) send its message and
    /// trailers, and every `/hold` request be answered.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn answer(req: Request<Incoming>, shared: &Shared) -> Response<AppBody> {
    let boxed = |b: Full<Bytes>| b.map_err(|never| match never {}).boxed();
    let status = |code: StatusCode| {
        Response::builder()
            .status(code)
            .body(boxed(Full::new(Bytes::new())))
            .unwrap()
    };
    match shared.mode.load(Ordering::SeqCst) {
        1 => return status(StatusCode::SERVICE_UNAVAILABLE),
        2 => std::future::pending::<()>().await,
        3 if shared.received.load(Ordering::SeqCst).is_multiple_of(3) => {
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
        4 => {
            let mut answer = status(StatusCode::OK);
            let headers = answer.headers_mut();
            headers.insert("content-type", "application/grpc".parse().unwrap());
            headers.insert("grpc-status", "13".parse().unwrap());
            return answer;
        }
        5 => return status(StatusCode::TOO_MANY_REQUESTS),
        _ => {}
    }
    let name = shared.name.as_str();
    if req.uri().path().starts_with("/grpc.Stream/") {
        return stream(shared).await;
    }
    if req.uri().path() == "/hold" {
        let _ = shared.released.subscribe().wait_for(|r| *r).await;
        return Response::new(boxed(Full::new(Bytes::from(name.to_owned()))));
    }
    if req.uri().path() == "/len" {
        let len = req.into_body().collect().await.unwrap().to_bytes().len();
        return Response::new(boxed(Full::new(Bytes::from(len.to_string()))));
    }
    if req.uri().path() == "/spoof" {
        let query = req.uri().query().unwrap_or("").to_owned();
        let mut response = status(StatusCode::OK);
        for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            match key {
                "status" => {
                    *response.status_mut() = StatusCode::from_u16(value.parse().unwrap()).unwrap()
                }
                header => {
                    response.headers_mut().insert(
                        http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
                        value.parse().unwrap(),
                    );
                }
            }
        }
        return response;
    }
    app(req, name).await
}

/// Headers at once; the message and an OK status only once released.
async fn stream(shared: &Shared) -> Response<AppBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(2);
    let mut released = shared.released.subscribe();
    tokio::spawn(async move {
        let _ = released.wait_for(|r| *r).await;
        let _ = tx
            .send(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    Response::builder()
        .header("content-type", "application/grpc")
        .body(ChannelBody(rx).map_err(|never| match never {}).boxed())
        .unwrap()
}

/// A body fed frame by frame from a channel.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

async fn app(req: Request<Incoming>, name: &str) -> Response<AppBody> {
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
