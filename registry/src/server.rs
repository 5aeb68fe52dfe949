//! Accepting connections and serving HTTP/1.1 and HTTP/2 on them, at most
//! `--max-connections` at once (both listeners together), each closed when it holds the
//! registry up for nothing ([`connection`]), with a graceful drain.
//!
//! Past the cap the registry stops accepting rather than closing what it accepts: new
//! connections wait in the kernel's listen backlog, costing the registry no file
//! descriptor, and are served in turn as slots free up. Connections that send nothing
//! free their slot after the header read timeout, so a flood of idle sockets delays a
//! sidecar's registration by that much instead of failing it (closing at once would fail
//! every client that arrives during the flood, and a flood is when they arrive).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::api::State;
use crate::auth::Peer;
use crate::respond::Body;
use crate::tls::TlsListener;

pub mod connection;

use connection::Ended;
pub use connection::Limits;

/// A client that stops reading its answer is cut off after this long without progress.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors the registry needs besides its clients' connections: the listeners, the
/// snapshot, etcd, sidecar relays.
const OTHER_DESCRIPTORS: u64 = 256;

/// How much of the registry its clients' connections may hold, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Connections served at once, both listeners together (`--max-connections`).
    pub max_connections: usize,
    /// How long each may do nothing useful.
    pub limits: Limits,
    /// How long shutdown waits for in-flight requests (`--drain-timeout`).
    pub drain: Duration,
}

/// Serves `listener`, and `tls` (the TLS listener) when given, within `bounds`, until
/// `shutdown` resolves; then raises `stopping` (which releases blocking queries and fails
/// `/readyz`), stops accepting, and waits up to the drain timeout for in-flight requests
/// to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<TlsListener>)>,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
    stopping: &watch::Sender<bool>,
    bounds: Bounds,
) {
    let Bounds {
        max_connections,
        limits,
        drain,
    } = bounds;
    warn_if_short_of_descriptors(max_connections);
    let builder = connection::builder(&limits);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);

    let tls_listener = tls.as_ref().map(|(listener, _)| listener);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (accepted, secure) = tokio::select! {
            accepted = listener.accept() => (accepted, false),
            accepted = accept(tls_listener) => (accepted, true),
            () = &mut shutdown => break,
        };
        let (stream, address) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let builder = builder.clone();
        let stopping = stopping.subscribe();
        let tls = tls.as_ref().filter(|_| secure).map(|(_, tls)| tls.clone());
        tokio::spawn(async move {
            let metrics = state.metrics.clone();
            metrics.open_connections.inc();
            let client = address.ip();
            let ended = match tls {
                None => {
                    let api = api(state, None, client);
                    connection::serve(&builder, stream, api, limits, stopping).await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok((stream, peer)) => {
                        let api = api(state, peer, client);
                        connection::serve(&builder, stream, api, limits, stopping).await
                    }
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "TLS connection refused");
                        Ok(Ended::Closed)
                    }
                },
            };
            match ended {
                Ok(Ended::Closed) => {}
                Ok(Ended::Expired(why)) => {
                    tracing::debug!(%address, why = why.label(), "connection closed by the registry");
                    metrics.connection_expired(why);
                }
                Err(e) => tracing::debug!(%address, error = %e, "connection ended with an error"),
            }
            metrics.open_connections.dec();
            drop(slot);
        });
    }

    tracing::info!("shutting down: no new connections, draining in-flight requests");
    stopping.send_replace(true);
    drop(listener);
    drop(tls);
    // Every connection holds a slot until it ends: all of them back means all ended.
    let all = u32::try_from(max_connections).expect("--max-connections fits in u32");
    if tokio::time::timeout(drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain timeout; closing them"
        );
    }
}

/// The next connection on the TLS listener; never, without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The API as a hyper service for a connection from `client`; requests on a connection
/// whose client certificate proved a service carry it as a [`Peer`] extension, which only
/// this function sets.
fn api(
    state: Arc<State>,
    peer: Option<Peer>,
    client: IpAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ Sync
+ 'static {
    service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        let state = state.clone();
        // A client cannot smuggle one in: extensions never come from the wire, and this
        // replaces whatever is there.
        request.extensions_mut().remove::<Peer>();
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        async move { Ok::<_, Infallible>(state.handle(request, client).await) }
    })
}

/// Says so when the open-file limit is below what `--max-connections` needs: accepting
/// would fail (EMFILE) before the cap is reached, and with it the snapshot, etcd and
/// relays.
fn warn_if_short_of_descriptors(max_connections: usize) {
    let Some(limit) = open_file_limit() else {
        return;
    };
    let needed = max_connections as u64 + OTHER_DESCRIPTORS;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below --max-connections plus what the registry needs \
             besides: raise it (ulimit -n, LimitNOFILE=) or lower --max-connections"
        );
    }
}

/// This process's open-file limit (the soft one), where the system says (Linux).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files   <soft>   <hard>   files"; "unlimited" is no limit.
    line.split_whitespace().nth(3)?.parse().ok()
}
