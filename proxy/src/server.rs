//! Serving one listener: HTTP/1.1 and HTTP/2 prior knowledge on the same port (told apart
//! by the first bytes), with connection and header limits and a graceful drain.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::body::BoxBody;
use crate::metrics::{Direction, Metrics};

/// Protections every listener applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// A client that has not sent its request head by then is dropped (slowloris).
    /// Only the head: open streams and idle connections have no timer of ours.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

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
}

/// Serves `listener` with `handler` until `stop` turns true, then stops accepting and
/// waits up to `drain` for open requests to finish.
pub async fn serve<H, F>(
    serve: Serve,
    listener: TcpListener,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<BoxBody>> + Send + 'static,
{
    let Serve {
        name,
        direction,
        metrics,
        limits,
        drain,
    } = serve;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));

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
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        let open = direction.map(|d| metrics.connection_opened(d));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Malformed requests end here (hyper has answered 400 where it could).
                tracing::debug!(listener = name, %peer, error = %crate::forward::source_chain(e.as_ref()), "connection closed with an error");
            }
            drop((open, permit));
        });
    }

    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            ?drain,
            "requests still open after the drain timeout; closing"
        );
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
