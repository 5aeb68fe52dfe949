//! Serving one listener: HTTP/1.1 and HTTP/2 prior knowledge on the same port (told apart
//! by the first bytes), with connection and header limits and a graceful drain; and
//! [`Servers`], the listeners of one shutdown stage.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::body::BoxBody;
use crate::error::source_chain;
use crate::io::Io;
use crate::metrics::{ConnectionGuard, Direction, Metrics, Transport};
use crate::tls::{IdentitySlot, TlsMode};

mod idle;

/// What a listener's handler answers with. hyper's services may fail; ours never do
/// (every error is an answer), and return their future as hyper polls it, with no
/// wrapper around it: a layer more would copy every request's future once more.
pub type Answer = Result<Response<BoxBody>, Infallible>;

/// Protections every listener applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// A client that has not sent its request head by then is dropped (slowloris), as
    /// is a new connection that sends nothing at all. Only the head: open streams have
    /// no timer of ours.
    pub header_read_timeout: Duration,
    /// An HTTP/1.1 connection waiting this long for its next request is closed; `None`
    /// never closes one.
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
    /// Serves `listener` with `handler` in a task of its own, until [`stop`](Self::stop).
    pub fn serve<H, F>(&mut self, serve: Serve, listener: TcpListener, handler: H)
    where
        H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let stop = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(self::serve(serve, listener, handler, stop)));
    }

    /// Stops accepting on every listener and waits until each has drained.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Serves `listener` with `handler` until `stop` turns true, then stops accepting and
/// waits up to `drain` for open requests to finish.
pub async fn serve<H, F>(
    serve: Serve,
    listener: TcpListener,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let builder = connection_builder(&serve.limits);
    let graceful = GracefulShutdown::new();
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
        let connection = Connection {
            serve: serve.clone(),
            builder: builder.clone(),
            open: serve.direction.map(|d| serve.metrics.connection_opened(d)),
        };
        let watcher = graceful.watcher();
        tokio::spawn(connection.run(stream, peer, handler.clone(), watcher, permit));
    }
    drop(listener);
    if tokio::time::timeout(serve.drain, graceful.shutdown())
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

/// One accepted connection, counted open while it lives.
struct Connection {
    serve: Serve,
    builder: auto::Builder<TokioExecutor>,
    open: Option<ConnectionGuard>,
}

impl Connection {
    /// Secures the connection (or refuses it), then serves its requests until it
    /// closes or the drain ends it.
    async fn run<H, F>(
        self,
        stream: TcpStream,
        addr: SocketAddr,
        handler: H,
        watcher: Watcher,
        permit: OwnedSemaphorePermit,
    ) where
        H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let serve = &self.serve;
        let timeout = serve.limits.header_read_timeout;
        let Some((io, peer)) =
            secure(stream, addr, serve.tls.as_ref(), timeout, &serve.metrics).await
        else {
            return;
        };
        let service = service_fn(move |request| handler(request, peer.clone()));
        let watch = idle::Watch::new(timeout, serve.limits.idle_timeout);
        let mut builder = self.builder;
        builder.http1().timer(watch.timer());
        let connection = builder.serve_connection(TokioIo::new(watch.io(io)), service);
        tokio::select! {
            biased;
            served = watcher.watch(connection.into_owned()) => if let Err(e) = served {
                // Malformed requests end here (hyper has answered 400 where it could).
                tracing::debug!(listener = serve.name, error = %source_chain(e.as_ref()), "connection closed with an error");
            },
            expired = watch.expired() => {
                tracing::debug!(listener = serve.name, why = %expired, "connection closed");
            }
        }
        drop((self.open, permit));
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
    metrics: &Metrics,
) -> Option<(Io, Peer)> {
    // A client that sends nothing would otherwise hold its connection forever: HTTP
    // version detection waits for the first bytes without a timer.
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(timeout, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        tracing::debug!(%addr, "connection closed: nothing sent within the header read timeout");
        return None;
    }
    let plain = |stream| Some((Io::Plain(stream), Peer::plaintext(addr)));
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
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| crate::tls::peer_service(cert, trust_domain));
    let peer = Peer {
        addr,
        identity,
        tls: true,
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
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
