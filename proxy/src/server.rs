//! Serving one listener: HTTP/1.1 and HTTP/2 prior knowledge on the same port (told apart
//! by the first bytes), with connection and header limits, connections closed when they
//! do nothing ([`idle`]), and a graceful drain; and [`Servers`], the listeners of one
//! shutdown stage.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::body::{BoxBody, BoxError};
use crate::detect::Detected;
use crate::error::source_chain;
use crate::io::Io;
use crate::metrics::{ConnectionGuard, Direction, Metrics, Transport};
use crate::tls::{IdentitySlot, TlsMode};

pub mod h1;
mod idle;
mod requests;

/// What a listener's handler answers with. hyper's services may fail; ours never do
/// (every error is an answer). hyper polls their futures inside one wrapper, which counts
/// the request in progress on its connection (see [`idle`]); keep it the only one: each
/// layer copies every request's future once more.
pub type Answer = Result<Response<BoxBody>, Infallible>;

/// Protections every listener applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// A client that has not sent its request head by then is dropped (slowloris), as
    /// is a new connection that sends nothing at all, and an HTTP/2 one that opens no
    /// stream. Only the head: open streams have no timer of ours.
    pub header_read_timeout: Duration,
    /// An HTTP/1.1 connection waiting this long for its next request, or an HTTP/2 one
    /// with no stream open this long, is closed; `None` never closes one.
    pub idle_timeout: Option<Duration>,
}

/// Largest request head every listener takes: no flag sets it.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How one listener is served.
#[derive(Clone)]
pub struct Serve {
    /// Listener name, for logs.
    pub name: &'static str,
    /// Counted in `mesh_tcp_open_connections` under this direction (not for admin).
    pub direction: Option<Direction>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// How long open requests may take to finish after `stop`.
    pub drain: Duration,
    /// TLS for this listener (the inbound one, with mTLS on).
    pub tls: Option<InboundTls>,
}

/// Inbound TLS: this sidecar's identity (whose acceptor exists once it has a
/// certificate), and whether plaintext is still let in.
#[derive(Clone)]
pub struct InboundTls {
    pub identity: Arc<IdentitySlot>,
    pub mode: TlsMode,
    pub trust_domain: String,
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The caller's service, proven by its certificate (mTLS only).
    pub identity: Option<String>,
    pub tls: bool,
    /// The caller's sidecar said (by ALPN) that it carries the connection as bytes.
    pub opaque: bool,
}

/// Listeners served together and stopped together: one stage of the shutdown.
pub struct Servers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

// === impl Servers ===

impl Default for Servers {
    fn default() -> Self {
        Servers {
            stop: watch::Sender::new(false),
            tasks: Vec::new(),
        }
    }
}

impl Servers {
    /// Serves `listener` with `handler` (HTTP) in a task of its own, until
    /// [`stop`](Self::stop).
    pub fn serve<H, F>(&mut self, serve: Serve, listener: TcpListener, handler: H)
    where
        H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        self.serve_with(serve, listener, Http(handler));
    }

    /// Serves `listener`, each connection as `connections` says, in a task of its own,
    /// until [`stop`](Self::stop).
    pub fn serve_with<C: Connections>(
        &mut self,
        serve: Serve,
        listener: TcpListener,
        connections: C,
    ) {
        let stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(self::serve(
            serve,
            listener,
            connections,
            stop,
        )));
    }

    /// Stops accepting on every listener and waits until each has drained.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Serves `listener` with `connections` until `stop` turns true, then stops accepting
/// and waits up to `drain` for open requests to finish.
pub async fn serve<C: Connections>(
    serve: Serve,
    listener: TcpListener,
    connections: C,
    mut stop: watch::Receiver<bool>,
) {
    let builder = connection_builder(&serve.limits);
    // Every connection holds a receiver until it has ended: the drain waits for none to
    // be left.
    let (open, _) = watch::channel(());
    let slots = Arc::new(Semaphore::new(serve.limits.max_connections));
    let name = serve.name;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let held = Held {
            idle: serve.limits.idle_timeout,
            drain: serve.drain,
            stop: stop.clone(),
            _open: serve.direction.map(|d| serve.metrics.connection_opened(d)),
            _slot: (open.subscribe(), permit),
        };
        let connection = Connection {
            serve: serve.clone(),
            builder: builder.clone(),
            stop: stop.clone(),
            held: Arc::new(held),
            stream: Some(stream),
            addr: peer,
        };
        tokio::spawn(connections.clone().serve(connection));
    }
    drop(listener);
    if tokio::time::timeout(serve.drain, open.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            drain = ?serve.drain,
            "requests still open after the drain timeout; closing"
        );
    }
}

/// HTTP/1.1 and HTTP/2 on one connection, with the listener's limits. HTTP/1.1's timer
/// is the connection's own (see [`idle`]).
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// What a listener does with each connection it accepts: serve HTTP on it ([`Http`]), or
/// carry it as bytes, or choose between them.
pub trait Connections: Clone + Send + Sync + 'static {
    /// Serves one accepted connection until it has ended.
    fn serve(self, connection: Connection) -> impl Future<Output = ()> + Send;
}

/// Every connection served as HTTP by a handler.
#[derive(Clone)]
pub struct Http<H>(pub H);

impl<H, F> Connections for Http<H>
where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    async fn serve(self, mut connection: Connection) {
        let Some((io, peer)) = connection.secure(None).await else {
            return;
        };
        connection.http(io, peer, self.0).await;
    }
}

/// One accepted connection, counted open while it lives.
pub struct Connection {
    serve: Serve,
    builder: auto::Builder<TokioExecutor>,
    /// The listener's stop: the connection then drains.
    stop: watch::Receiver<bool>,
    held: Arc<Held>,
    /// Until it is secured (or taken plain).
    stream: Option<TcpStream>,
    addr: SocketAddr,
}

/// What an accepted connection holds of its listener until it has ended, whether hyper
/// serves it or, once upgraded, a splice ([`upgrade`](crate::upgrade)) carries it: its
/// slot under `--max-connections`, its place in `mesh_tcp_open_connections`, and the
/// listener's drain, which waits for it. An upgrade request carries it (a request
/// extension) to the task that splices the connection.
pub struct Held {
    /// How long an upgraded connection may carry nothing.
    pub idle: Option<Duration>,
    drain: Duration,
    stop: watch::Receiver<bool>,
    _open: Option<ConnectionGuard>,
    _slot: (watch::Receiver<()>, OwnedSemaphorePermit),
}

impl Held {
    /// Resolves once the listener has stopped and its drain time has passed.
    pub async fn drained(&self) {
        let mut stop = self.stop.clone();
        stopped(&mut stop).await;
        tokio::time::sleep(self.drain).await;
    }
}

impl Connection {
    /// The connection, not secured: a listener without TLS carrying it as bytes takes it
    /// as it is (a server-speaks-first client sends nothing first).
    pub fn plain(mut self) -> Option<(TcpStream, Peer, Arc<Held>)> {
        let stream = self.stream.take()?;
        Some((stream, Peer::plaintext(self.addr), self.held))
    }

    /// What the client's first byte says it speaks, waiting at most `wait` for it; `None`
    /// if the connection closed or failed first.
    pub async fn detect(&self, wait: Duration) -> Option<Detected> {
        let stream = self.stream.as_ref()?;
        crate::detect::first_byte(stream, wait).await
    }

    /// The address the connection was accepted on.
    pub fn local_addr(&self) -> String {
        let addr = self.stream.as_ref().and_then(|s| s.local_addr().ok());
        addr.map(|a| a.to_string()).unwrap_or_default()
    }

    /// Whose hold on the listener the connection is.
    pub fn held(&self) -> &Arc<Held> {
        &self.held
    }

    /// Waits for the connection's first byte, then completes the TLS handshake when the
    /// listener has TLS, or lets plaintext through when the mode permits it; `None`: it
    /// is refused (and closed). `detect` bounds the wait for a first byte on a
    /// permissive listener carrying bytes: a plaintext client that sends nothing first
    /// is let in when it runs out. Otherwise the wait is the header read timeout.
    pub async fn secure(&mut self, detect: Option<Duration>) -> Option<(Io, Peer)> {
        let serve = &self.serve;
        let timeout = serve.limits.header_read_timeout;
        let stream = self.stream.take()?;
        secure(
            stream,
            self.addr,
            serve.tls.as_ref(),
            timeout,
            detect,
            &serve.metrics,
        )
        .await
    }

    /// Serves HTTP requests on the secured connection with `handler` until it closes,
    /// the watchdog closes it, or the drain ends it.
    pub async fn http<T, H, F>(mut self, io: T, peer: Peer, handler: H)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let serve = &self.serve;
        let timeout = serve.limits.header_read_timeout;
        let watch = idle::Watch::new(timeout, serve.limits.idle_timeout);

        // Each request is in progress for the watchdog from its head until its answer's
        // body is dropped, which is when its HTTP/2 stream ends.
        let (requests, held) = (watch.clone(), self.held.clone());
        let service = service_fn(move |mut request: Request<Incoming>| {
            // hyper marks a request that asks to upgrade; only those carry the hold on.
            if request.extensions().get::<OnUpgrade>().is_some() {
                request.extensions_mut().insert(held.clone());
            }
            let in_progress = requests.request();
            let answer = handler(request, peer.clone());
            async move {
                let answer = answer.await?;
                Ok::<_, Infallible>(answer.map(|body| in_progress.answering(body)))
            }
        });
        let mut builder = self.builder;
        builder.http1().timer(watch.timer());
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(watch.io(io)), service);
        tokio::pin!(connection);
        let name = serve.name;
        let closing = tokio::select! {
            biased;
            served = connection.as_mut() => {
                ended(name, served);
                return;
            }
            () = stopped(&mut self.stop) => None,
            expired = watch.expired() => Some(expired),
        };
        if let Some(expired) = closing {
            tracing::debug!(listener = name, why = %expired, "closing the connection");
            if !expired.graceful() {
                return;
            }
        }
        // HTTP/2 sends a GOAWAY and ends once the streams it let in have; HTTP/1.1 closes
        // once the request in progress, if any, is answered.
        connection.as_mut().graceful_shutdown();
        let (drain, mut stop) = (serve.drain, self.stop.clone());
        let bound = async {
            match closing {
                // Draining: the listener's drain time.
                None => tokio::time::sleep(drain).await,
                // Closing for the watchdog: until the client has had time to take its
                // part, or the listener drains.
                Some(_) => tokio::select! {
                    () = watch.quiet() => {}
                    () = async {
                        stopped(&mut stop).await;
                        tokio::time::sleep(drain).await;
                    } => {}
                },
            }
        };
        tokio::select! {
            biased;
            served = connection.as_mut() => ended(name, served),
            () = bound => tracing::debug!(listener = name, "connection dropped: still open after closing"),
        }
    }
}

/// Logs how a connection ended by itself.
fn ended(listener: &str, served: Result<(), BoxError>) {
    if let Err(e) = served {
        // Malformed requests end here (hyper has answered 400 where it could).
        tracing::debug!(listener, error = %source_chain(e.as_ref()), "connection closed with an error");
    }
}

/// Waits (up to `timeout`) for the connection's first byte, then completes the TLS
/// handshake when the listener has TLS, or lets plaintext through when the mode permits
/// it. `None`: the connection is refused.
async fn secure(
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<&InboundTls>,
    timeout: Duration,
    detect: Option<Duration>,
    metrics: &Metrics,
) -> Option<(Io, Peer)> {
    let plain = |stream| Some((Io::Plain(stream), Peer::plaintext(addr)));
    // Bytes without TLS: nothing to look at, and the client may wait for the server.
    if detect.is_some() && tls.is_none() {
        return plain(stream);
    }
    // A client that sends nothing would otherwise hold its connection forever: HTTP
    // version detection waits for the first bytes without a timer. Carrying bytes on a
    // permissive listener, a plaintext client that waits for the server is let in once
    // `detect` has passed.
    let permissive = tls.is_some_and(|tls| tls.mode != TlsMode::Strict);
    let wait = match detect {
        Some(detect) if permissive => detect,
        _ => timeout,
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(wait, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) => {}
        Err(_) if wait < timeout => {
            tracing::debug!(%addr, "nothing sent first: carried as plaintext");
            metrics.inbound_connection(Transport::Plaintext);
            return plain(stream);
        }
        _ => {
            tracing::debug!(%addr, "connection closed: nothing sent within the header read timeout");
            return None;
        }
    }
    let Some(tls) = tls else {
        return plain(stream);
    };
    let Some(acceptor) = tls.identity.acceptor() else {
        tracing::info!(%addr, why = %tls.identity.why_missing(), "connection refused: no certificate yet");
        metrics.inbound_connection(Transport::Refused);
        return None;
    };
    // A TLS connection starts with a handshake record (0x16); anything else is plaintext.
    if first[0] != 0x16 {
        if tls.mode == TlsMode::Strict {
            tracing::info!(%addr, "plaintext connection refused: inbound is strict mTLS");
            metrics.inbound_connection(Transport::Refused);
            return None;
        }
        metrics.inbound_connection(Transport::Plaintext);
        return plain(stream);
    }
    let accepted = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
    let peer = match accepted {
        Ok(Ok(stream)) => Some(handshaken(stream, addr, &tls.trust_domain)),
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::info!(%addr, "TLS handshake timed out");
            None
        }
    };
    let transport = if peer.is_some() {
        Transport::Tls
    } else {
        Transport::Refused
    };
    metrics.inbound_connection(transport);
    peer
}

/// A connection whose TLS handshake succeeded, and the caller its certificate proves.
fn handshaken(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    addr: SocketAddr,
    trust_domain: &str,
) -> (Io, Peer) {
    let session = stream.get_ref().1;
    let identity = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| crate::tls::peer_service(cert, trust_domain));
    let peer = Peer {
        addr,
        identity,
        tls: true,
        opaque: session.alpn_protocol() == Some(crate::tls::OPAQUE_ALPN),
    };
    (Io::Tls(Box::new(stream.into())), peer)
}

// === impl Peer ===

impl Peer {
    fn plaintext(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            identity: None,
            tls: false,
            opaque: false,
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
