//! Opaque TCP: services whose protocol the mesh does not read (a database, a cache, a
//! broker), declared with protocol `tcp`. Their connections are carried as bytes
//! ([`splice`](crate::splice)), still with discovery, balancing, ejection, mTLS, the
//! allow list and metrics.
//!
//! - **Inbound** (`--app-protocol tcp`): each connection a peer opens, once mTLS and the
//!   allow list have let it in, is carried to the app on a connection of its own.
//! - **Outbound** (an `--upstream NAME=ADDR` listener whose destination's instances are
//!   all `tcp`): each connection the app opens is carried to one endpoint, chosen by the
//!   balancer (`p2c` weighs open connections), skipping ejected ones; a connect that
//!   fails is tried on another endpoint (nothing was sent yet) and counts towards the
//!   endpoint's ejection.
//!
//! Over mTLS the serving sidecar answers the caller's sidecar with one byte
//! ([`Reached`]) once it has let the connection in and reached its app, before any
//! byte of the app's: a caller whose chosen instance's app is gone (or not yet known to be)
//! tries another instance, and counts the failure, instead of handing its app a
//! connection that closes at once. A caller not on the allow list hears so and is not
//! tried elsewhere. In plaintext there is no such answer: the serving side cannot tell a
//! sidecar from any other client.
//!
//! Nothing waits for the client's first byte on a declared TCP path, so a protocol whose
//! server speaks first works. Only a permissive mTLS listener looks, for
//! [`DETECT_TIMEOUT`], to tell a TLS client from a plaintext one; a plaintext client
//! that waits for the server is let in when it runs out.
//!
//! Where no protocol is declared (an upstream listener whose service is not `tcp`, an
//! inbound listener without `--app-protocol`), the first byte decides, within
//! [`DETECT_TIMEOUT`] ([`detect`](crate::detect)): HTTP is served as such, the rest is
//! carried as bytes, counted and logged once per listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balance;
use crate::body::BoxBody;
use crate::destination::Destination;
use crate::detect::Detected;
use crate::endpoint::Endpoint;
use crate::error::{ErrorKind, ProxyError};
use crate::h1::upload::Upload;
use crate::io::Io;
use crate::listeners::H1Engine;
use crate::metrics::{Closing, Direction, Metrics, ServiceMetrics};
use crate::outbound::{Outbound, Route};
use crate::server::{Answer, Connection, Connections, Held, Http, Peer, h1};
use crate::splice::{self, Ending, Spliced};

/// How long a permissive mTLS listener carrying bytes waits for a client's first byte
/// before taking it as a plaintext client whose server speaks first.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the serving sidecar says first on a connection carried as bytes over mTLS
/// ([`OPAQUE_ALPN`](crate::tls::OPAQUE_ALPN)), in one byte, before any of the app's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// Connected to the app: the bytes that follow are the app's.
    App = 1,
    /// The caller is not on the allow list: closed.
    Denied = 2,
    /// The app did not accept the connection: closed.
    Unreachable = 3,
}

impl Reached {
    fn of(byte: u8) -> Option<Reached> {
        [Reached::App, Reached::Denied, Reached::Unreachable]
            .into_iter()
            .find(|r| *r as u8 == byte)
    }
}

/// The inbound listener of a `tcp` app: every connection to the app, as bytes.
#[derive(Clone)]
pub struct Inbound {
    pub inner: Arc<InboundTcp>,
}

pub struct InboundTcp {
    pub service: String,
    pub app: SocketAddr,
    pub connect_timeout: Duration,
    /// Services allowed to connect (by mTLS identity); empty allows every caller.
    pub allow: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub service_metrics: Arc<ServiceMetrics>,
}

impl Connections for Inbound {
    async fn serve(self, mut connection: Connection) {
        let Some((io, peer)) = connection.secure(Some(DETECT_TIMEOUT)).await else {
            return;
        };
        self.inner.carry(io, peer, connection.held().clone()).await;
    }
}

impl InboundTcp {
    /// Carries one secured connection to the app, if its caller may connect. A caller's
    /// sidecar (its ALPN says it carries bytes) hears first whether the app was reached.
    async fn carry(&self, mut io: Io, peer: Peer, held: Arc<Held>) {
        let observers = &self.metrics.observers;
        let record = observers.connection(Direction::Inbound, &self.service);
        let record = record.map(|mut record| {
            record.peer = Some(peer.addr);
            record.peer_identity = peer.identity.as_deref().map(|s| observers.spiffe_id(s));
            record
        });
        let counted = self.service_metrics.spliced().with_record(record);
        let answers = peer.opaque;
        if let Some(caller) = crate::inbound::refused(&self.allow, &peer) {
            tracing::info!(%caller, service = %self.service, "connection refused by policy");
            self.metrics.denied(&self.service);
            if answers {
                say(&mut io, Reached::Denied).await;
            }
            counted.not_carried(Closing::Denied);
            return;
        }
        let connected = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.app));
        let app = match connected.await {
            Ok(Ok(app)) => app,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.connect_timeout),
                };
                tracing::warn!(app = %self.app, %error, "cannot connect to the local app");
                if answers {
                    say(&mut io, Reached::Unreachable).await;
                }
                counted.not_carried(Closing::Unreachable);
                return;
            }
        };
        let _ = app.set_nodelay(true);
        if answers && !say(&mut io, Reached::App).await {
            counted.not_carried(Closing::Spliced(Ending::Reset));
            return;
        }
        let spliced = carry(io, app, &held).await;
        counted.closed(&spliced);
    }
}

/// Tells the caller's sidecar `reached`; whether it could be written.
async fn say(io: &mut Io, reached: Reached) -> bool {
    use tokio::io::AsyncWriteExt;
    let said = io.write_all(&[reached as u8]).await.and(io.flush().await);
    if reached != Reached::App {
        let _ = io.shutdown().await;
    }
    said.is_ok()
}

/// Reads what the serving sidecar says first, waiting at most `patience`.
async fn hear(io: &mut Io, patience: Duration) -> Result<Reached, String> {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(patience, io.read(&mut byte)).await {
        Ok(Ok(1)) => Reached::of(byte[0]).ok_or_else(|| format!("answered {:#04x}", byte[0])),
        Ok(Ok(_)) => Err("closed the connection".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("did not answer within {patience:?}")),
    }
}

/// `io`, once the serving sidecar at `endpoint` has said it reached its app (over mTLS it
/// answers first, giving its app `--connect-timeout`; the caller waits `patience`, twice
/// that). Its refusal of this service is a `Forbidden` error; anything else it says, or
/// its silence, a failed connect.
async fn reached(
    mut io: Io,
    destination: &Destination,
    endpoint: &Endpoint,
    patience: Duration,
) -> Result<Io, ProxyError> {
    let failed = |why: &str| {
        ProxyError::new(
            ErrorKind::ConnectFailed,
            format!("{}: its sidecar {why}", endpoint.address),
        )
    };
    match hear(&mut io, patience).await {
        Ok(Reached::App) => Ok(io),
        Ok(Reached::Denied) => Err(ProxyError::new(
            ErrorKind::Forbidden,
            format!(
                "{} does not let this service connect (its allow list)",
                destination.name
            ),
        )),
        Ok(Reached::Unreachable) => Err(failed("cannot reach its app")),
        Err(why) => Err(failed(&why)),
    }
}

/// An upstream listener: its connections are carried as bytes when its destination is a
/// `tcp` service, and served as HTTP otherwise, unless the client's first byte (or its
/// silence for [`DETECT_TIMEOUT`]) says it speaks something else ([`detect`]).
#[derive(Clone)]
pub struct Upstream<H> {
    pub outbound: Arc<Outbound>,
    pub route: Arc<Route>,
    pub http: Http<H>,
    /// What serves its HTTP/1.1.
    pub engine: H1Engine,
    /// Set once a connection here was found not to speak HTTP: logged once per listener.
    pub warned: Arc<AtomicBool>,
}

impl<H, F> Connections for Upstream<H>
where
    H: Fn(http::Request<hyper::body::Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    async fn serve(self, connection: Connection) {
        let Route::Fixed { service, port } = self.route.as_ref() else {
            return self.serve_http(connection).await;
        };
        let destination = self.outbound.discovery.destination(service, *port).await;
        if let Ok(destination) = &destination
            && destination.endpoints().opaque
        {
            let Some((stream, _, held)) = connection.plain() else {
                return;
            };
            return Box::pin(self.outbound.carry(destination, stream, &held)).await;
        }
        // Not declared `tcp`: HTTP, unless the client says otherwise.
        let Some(detected) = connection.detect(DETECT_TIMEOUT).await else {
            return;
        };
        self.outbound
            .metrics
            .detected(Direction::Outbound, detected);
        let destination = match (detected, destination) {
            (Detected::Http, _) | (_, Err(_)) => return self.serve_http(connection).await,
            (_, Ok(destination)) => destination,
        };
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %service,
                listener = %connection.local_addr(),
                detected = detected.as_str(),
                "a connection here does not speak HTTP: carried as bytes; register {service} \
                 with protocol tcp (--app-protocol tcp) to say so"
            );
        }
        let Some((stream, _, held)) = connection.plain() else {
            return;
        };
        Box::pin(self.outbound.carry(&destination, stream, &held)).await;
    }
}

impl<H, F> Upstream<H>
where
    H: Fn(http::Request<hyper::body::Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    /// Serves the connection's HTTP with the listener's HTTP/1.1 engine.
    async fn serve_http(self, connection: Connection) {
        match self.engine {
            // Boxed: the engine's connection stays as small as its own state.
            H1Engine::Hyper => Box::pin(self.http.clone().serve(connection)).await,
            H1Engine::Own => {
                let fallback = self.http.0.clone();
                connection.own(self, fallback).await;
            }
        }
    }
}

impl<H: Clone + Send + Sync + 'static> h1::Handler for Upstream<H> {
    fn handle(
        &self,
        request: http::Request<Upload>,
        peer: &Peer,
    ) -> impl Future<Output = http::Response<BoxBody>> + Send {
        let app = peer.addr;
        async move { self.outbound.handle(&self.route, request, app).await }
    }
}

/// The inbound listener of an app whose protocol is not declared: HTTP, except for what a
/// caller's sidecar carries as bytes (its ALPN says so) and, in plaintext, for a client
/// whose first byte (or silence) says it speaks something else.
#[derive(Clone)]
pub struct InboundDetect<H> {
    pub http: Http<H>,
    pub tcp: Arc<InboundTcp>,
    pub warned: Arc<AtomicBool>,
}

impl<H, F> Connections for InboundDetect<H>
where
    H: Fn(http::Request<hyper::body::Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    async fn serve(self, mut connection: Connection) {
        let Some((io, peer)) = connection.secure(Some(DETECT_TIMEOUT)).await else {
            return;
        };
        let detected = match &io {
            Io::Tls(_) if peer.opaque => Detected::Opaque,
            Io::Tls(_) => Detected::Http,
            Io::Plain(stream) => match crate::detect::first_byte(stream, DETECT_TIMEOUT).await {
                Some(detected) => detected,
                None => return,
            },
        };
        self.tcp.metrics.detected(Direction::Inbound, detected);
        if detected == Detected::Http {
            return connection.http(io, peer, self.http.0).await;
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                service = %self.tcp.service,
                detected = detected.as_str(),
                "a connection to the app does not speak HTTP: carried as bytes; declare \
                 --app-protocol tcp to say so"
            );
        }
        self.tcp.carry(io, peer, connection.held().clone()).await;
    }
}

impl Outbound {
    /// Carries one of the app's connections to an endpoint of `destination`.
    async fn carry(&self, destination: &Arc<Destination>, app: TcpStream, held: &Held) {
        let observers = &self.metrics.observers;
        let record = observers.connection(Direction::Outbound, &destination.name);
        let record = record.map(|mut record| {
            record.peer = app.peer_addr().ok();
            record
        });
        let mut counted = destination.metrics.spliced().with_record(record);
        let (io, endpoint) = match self.connect(destination).await {
            Ok(connected) => connected,
            Err(e) => {
                // Nothing was sent: the app sees its connection closed at once.
                tracing::info!(service = %destination.name, error = %e, "connection not carried");
                counted.not_carried(match e.kind {
                    ErrorKind::Forbidden => Closing::Denied,
                    _ => Closing::Unreachable,
                });
                return;
            }
        };
        if let Some(record) = counted.record_mut() {
            record.tries = 1;
            record.endpoint = Some(endpoint.address.clone());
        }
        let in_flight = endpoint.start().spliced();
        let spliced = carry(app, io, held).await;
        drop(in_flight);
        counted.closed(&spliced);
    }

    /// A connection to one endpoint of `destination`, trying others while connects fail
    /// (up to `--retry-attempts` in all).
    async fn connect(&self, destination: &Destination) -> Result<(Io, Arc<Endpoint>), ProxyError> {
        if let Some(slot) = &self.identity
            && slot.get().is_none()
        {
            return Err(slot.missing());
        }
        let mut previous: Option<Arc<Endpoint>> = None;
        let mut last = None;
        for _ in 0..self.retry.attempts.max(1) {
            // Routes are HTTP's: a connection carried as bytes has no request to match.
            let chosen = balance::choose(
                self.config.balancer,
                destination,
                None,
                previous.as_deref(),
                &self.ejection,
            );
            let Some(chosen) = chosen else {
                return Err(last.unwrap_or_else(|| destination.no_endpoints()));
            };
            let endpoint = chosen.endpoint;
            let tls_to =
                (self.identity.is_some() && endpoint.tls).then_some(destination.name.as_str());
            let started = Instant::now();
            let connected = match self.clients.connect_opaque(&endpoint.pool, tls_to).await {
                Ok(io) if tls_to.is_some() => {
                    let patience = 2 * self.clients.connect_timeout();
                    reached(io, destination, &endpoint, patience).await
                }
                connected => connected,
            };
            match connected {
                Ok(io) => {
                    endpoint.succeeded(started.elapsed(), Instant::now());
                    endpoint.set_error(None);
                    if let Some(probe) = chosen.probe {
                        probe.settle();
                    }
                    if endpoint.breaker.success(Instant::now()) {
                        destination.refresh_gauges(&self.metrics);
                    }
                    return Ok((io, endpoint));
                }
                // The service's own answer, the same at every instance: neither tried
                // elsewhere nor held against the endpoint (a probe claim goes back unused).
                Err(e) if e.kind == ErrorKind::Forbidden => return Err(e),
                Err(e) => {
                    tracing::debug!(endpoint = %endpoint.address, error = %e, "connect failed");
                    endpoint.set_error(Some(e.to_string()));
                    if e.kind != ErrorKind::NoIdentity {
                        endpoint.failed(started.elapsed(), Instant::now());
                        self.record_failure(destination, &endpoint, &e.message);
                    }
                    if let Some(probe) = chosen.probe {
                        probe.settle();
                    }
                    last = Some(e);
                    previous = Some(endpoint);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }
}

/// Splices `client` and `server` with the listener's idle timeout, until the listener's
/// drain ends it.
async fn carry<A, B>(client: A, server: B, held: &Held) -> Spliced
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let spliced = splice::splice(client, server, held.idle, held.drained()).await;
    if spliced.ending == Ending::Reset {
        tracing::debug!(?spliced, "carried connection reset");
    }
    spliced
}
