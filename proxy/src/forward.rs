//! Sending a request on to its next hop over pooled connections: plaintext or mTLS,
//! HTTP/1.1 or HTTP/2, with hop-by-hop headers removed both ways.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{BoxBody, BoxError};
use crate::error::{ErrorKind, ProxyError, source_chain};
use crate::h1;
use crate::io::Io;
use crate::listeners::H1Engine;
use crate::loops::OwnListeners;
use crate::pool::Pool;
use crate::tls::{Identity, IdentitySlot};
use crate::{headers, upgrade};

/// On an answer that came over a connection opened for its request: how long opening it
/// (TCP, then TLS) took. The balancer weighs an endpoint by its answers, not by that.
#[derive(Clone, Copy, Debug)]
pub struct Connected(pub Duration);

/// HTTP version spoken to the next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    Http1,
    /// HTTP/2 with prior knowledge; one connection per peer multiplexes every call.
    Http2,
}

impl Wire {
    /// The version the caller used.
    pub fn of<B>(request: &Request<B>) -> Wire {
        Self::of_version(request.version())
    }

    pub fn of_version(version: Version) -> Wire {
        if version == Version::HTTP_2 {
            Wire::Http2
        } else {
            Wire::Http1
        }
    }

    /// The one ALPN protocol offered in a TLS handshake for this wire.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Wire::Http1 => b"http/1.1",
            Wire::Http2 => b"h2",
        }
    }
}

/// Opens connections to next hops and sends requests over a [`Pool`]'s connections.
#[derive(Clone)]
pub struct Clients {
    connect_timeout: Duration,
    /// With mTLS on: this sidecar's identity (once it has one).
    identity: Option<Arc<IdentitySlot>>,
    /// A connection that lands on one of these is a loop, and is dropped.
    own: OwnListeners,
    /// What sends plaintext HTTP/1.1 requests without a body on.
    engine: H1Engine,
}

/// An answer's body, as the engine that sent the request reads it.
pub enum UpstreamBody {
    Hyper(Incoming),
    Own(h1::client::Answer),
}

// === impl Clients ===

impl Clients {
    /// `--connect-timeout`.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn new(
        connect_timeout: Duration,
        identity: Option<Arc<IdentitySlot>>,
        own: OwnListeners,
    ) -> Self {
        Clients {
            connect_timeout,
            identity,
            own,
            engine: H1Engine::default(),
        }
    }

    /// The same, with `engine` sending plaintext HTTP/1.1 requests without a body
    /// (`--h1-engine`).
    pub fn with_h1_engine(mut self, engine: H1Engine) -> Self {
        self.engine = engine;
        self
    }

    /// Sends `request` to the pool's address over `wire`, over mTLS when `tls_to` names
    /// the service whose identity must answer. Hop-by-hop headers are removed both ways
    /// and `x-request-id` is added when missing; the answer is HTTP/1.1 (or 2) whatever
    /// version the next hop spoke.
    pub async fn send(
        &self,
        request: Request<BoxBody>,
        pool: &Pool,
        wire: Wire,
        tls_to: Option<&str>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let tls = match (tls_to, &self.identity) {
            (Some(service), Some(slot)) => match slot.get() {
                Some(identity) => Some((service, identity)),
                None => return Err(slot.missing()),
            },
            _ => None,
        };
        // An upgrade travels over HTTP/1.1 on a connection of its own, with its pair of
        // hop-by-hop headers.
        let upgrade = upgrade::requested(&request).cloned();
        let wire = if upgrade.is_some() { Wire::Http1 } else { wire };
        let mut request = prepare(request, pool, wire, tls.is_some())?;
        let hyper = |answered: Result<Response<Incoming>, hyper::Error>| {
            answered.map(|response| response.map(UpstreamBody::Hyper))
        };
        let result = match (wire, upgrade.clone()) {
            (_, Some(protocol)) => {
                upgrade::restore(request.headers_mut(), protocol);
                hyper(Box::pin(self.send_upgrade(request, pool, tls)).await?)
            }
            (Wire::Http1, None)
                if self.engine == H1Engine::Own && tls.is_none() && h1::client::sends(&request) =>
            {
                Ok(self.send_own(request, pool).await?)
            }
            (Wire::Http1, None) => hyper(self.send_h1(request, pool, tls).await?),
            (Wire::Http2, None) => hyper(self.send_h2(request, pool, tls).await?),
        };
        match result {
            Ok(mut response) => {
                let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let switched_to = switched
                    .then(|| response.headers().get(header::UPGRADE).cloned())
                    .flatten();
                headers::strip_hop_by_hop(response.headers_mut());
                match (switched, upgrade) {
                    (true, None) => return Err(upgrade::unasked(pool.address())),
                    (true, Some(asked)) => {
                        upgrade::restore(response.headers_mut(), switched_to.unwrap_or(asked));
                    }
                    (false, _) => {}
                }
                // An HTTP/1.0 app's answer must not make our own server speak 1.0.
                if response.version() < Version::HTTP_11 {
                    *response.version_mut() = Version::HTTP_11;
                }
                Ok(response)
            }
            Err(e) => {
                let kind = if refused_stream(&e) {
                    ErrorKind::Refused
                } else {
                    ErrorKind::UpstreamFailed
                };
                Err(ProxyError::new(
                    kind,
                    format!("request to {} failed: {}", pool.address(), source_chain(&e)),
                ))
            }
        }
    }

    /// HTTP/1.1: a ready pooled connection, else a new one. A pooled connection that
    /// closed before the request went out hands it back, and it goes on another.
    async fn send_h1(
        &self,
        mut request: Request<BoxBody>,
        pool: &Pool,
        tls: Option<(&str, &Arc<Identity>)>,
    ) -> Result<Result<Response<Incoming>, hyper::Error>, ProxyError> {
        let secure = tls.is_some();
        loop {
            let (mut sender, opened) = match pool.take_h1(secure) {
                Some(sender) => (sender, None),
                // Boxed: the rare path's futures would otherwise make every request's
                // future (moved several times per request) over twice as large.
                None => {
                    let started = tokio::time::Instant::now();
                    let sender = Box::pin(self.open_h1(pool, tls)).await?;
                    (sender, Some(Connected(started.elapsed())))
                }
            };
            match sender.try_send_request(request).await {
                Ok(mut response) => {
                    pool.put_h1(secure, sender);
                    if let Some(opened) = opened {
                        response.extensions_mut().insert(opened);
                    }
                    return Ok(Ok(response));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if opened.is_none() => request = unsent,
                    _ => return Ok(Err(e.into_error())),
                },
            }
        }
    }

    /// HTTP/1.1 by the proxy's own engine: a pooled connection that is still open, else a
    /// new one.
    async fn send_own(
        &self,
        request: Request<BoxBody>,
        pool: &Pool,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let idle = pool.own();
        let (conn, opened) = match idle.take(crate::pool::IDLE_TIMEOUT) {
            Some(conn) => (conn, None),
            None => {
                let started = tokio::time::Instant::now();
                let Io::Plain(stream) = Box::pin(self.connect(pool, Wire::Http1, None)).await?
                else {
                    unreachable!("a connection without TLS is plaintext");
                };
                (
                    h1::client::Conn::new(stream),
                    Some(Connected(started.elapsed())),
                )
            }
        };
        match h1::client::send(conn, request, idle).await {
            Ok(response) => {
                let mut response = response.map(UpstreamBody::Own);
                if let Some(opened) = opened {
                    response.extensions_mut().insert(opened);
                }
                Ok(response)
            }
            Err(e) => Err(ProxyError::new(
                ErrorKind::UpstreamFailed,
                format!("request to {} failed: {e}", pool.address()),
            )),
        }
    }

    /// An upgrade request: on a new HTTP/1.1 connection, which its answer takes over (a
    /// `101`) or which closes after it.
    async fn send_upgrade(
        &self,
        request: Request<BoxBody>,
        pool: &Pool,
        tls: Option<(&str, &Arc<Identity>)>,
    ) -> Result<Result<Response<Incoming>, hyper::Error>, ProxyError> {
        let started = tokio::time::Instant::now();
        let mut sender = self.open_h1(pool, tls).await?;
        let opened = Connected(started.elapsed());
        Ok(sender.send_request(request).await.map(|mut response| {
            response.extensions_mut().insert(opened);
            response
        }))
    }

    /// HTTP/2: every call shares one connection per peer, opened on first use.
    async fn send_h2(
        &self,
        mut request: Request<BoxBody>,
        pool: &Pool,
        tls: Option<(&str, &Arc<Identity>)>,
    ) -> Result<Result<Response<Incoming>, hyper::Error>, ProxyError> {
        let secure = tls.is_some();
        loop {
            let (mut sender, opened) = match pool.h2(secure) {
                Some(sender) => (sender, None),
                None => {
                    let started = tokio::time::Instant::now();
                    let _connecting = pool.h2_connecting(secure).await;
                    match pool.h2(secure) {
                        Some(sender) => (sender, None),
                        None => {
                            let sender = Box::pin(self.open_h2(pool, tls)).await?;
                            pool.set_h2(secure, sender.clone());
                            (sender, Some(Connected(started.elapsed())))
                        }
                    }
                }
            };
            match sender.try_send_request(request).await {
                Ok(mut response) => {
                    if let Some(opened) = opened {
                        response.extensions_mut().insert(opened);
                    }
                    return Ok(Ok(response));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if opened.is_none() => request = unsent,
                    _ => return Ok(Err(e.into_error())),
                },
            }
        }
    }

    /// A new HTTP/1.1 connection, driven by a task of its own.
    async fn open_h1(
        &self,
        pool: &Pool,
        tls: Option<(&str, &Arc<Identity>)>,
    ) -> Result<http1::SendRequest<BoxBody>, ProxyError> {
        let io = self.connect(pool, Wire::Http1, tls).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| handshake_failed(pool, &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %source_chain(&e), "upstream connection closed");
            }
        });
        Ok(sender)
    }

    /// A new HTTP/2 connection, driven by a task of its own.
    async fn open_h2(
        &self,
        pool: &Pool,
        tls: Option<(&str, &Arc<Identity>)>,
    ) -> Result<http2::SendRequest<BoxBody>, ProxyError> {
        let io = self.connect(pool, Wire::Http2, tls).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| handshake_failed(pool, &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %source_chain(&e), "upstream connection closed");
            }
        });
        Ok(sender)
    }

    /// A new connection to carry as bytes to the pool's address, over mTLS when `tls_to`
    /// names the service whose identity must answer.
    pub async fn connect_opaque(
        &self,
        pool: &Pool,
        tls_to: Option<&str>,
    ) -> Result<Io, ProxyError> {
        let tls = match (tls_to, &self.identity) {
            (Some(service), Some(slot)) => match slot.get() {
                Some(identity) => Some((service, identity)),
                None => return Err(slot.missing()),
            },
            _ => None,
        };
        self.connect_alpn(pool, crate::tls::OPAQUE_ALPN, tls).await
    }

    /// A new connection to the pool's address: TCP, then the TLS handshake when `tls`.
    async fn connect(
        &self,
        pool: &Pool,
        wire: Wire,
        tls: Option<(&str, &Arc<Identity>)>,
    ) -> Result<Io, ProxyError> {
        self.connect_alpn(pool, wire.alpn(), tls).await
    }

    async fn connect_alpn(
        &self,
        pool: &Pool,
        alpn: &'static [u8],
        tls: Option<(&str, &Arc<Identity>)>,
    ) -> Result<Io, ProxyError> {
        let address = pool.address();
        let failed = |why: String| {
            ProxyError::new(
                ErrorKind::ConnectFailed,
                format!("cannot connect to {address}: {why}"),
            )
        };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| failed(format!("no answer within {:?}", self.connect_timeout)))?
            .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        if let Ok(peer) = stream.peer_addr() {
            self.own.check(peer)?;
        }
        let Some((service, identity)) = tls else {
            return Ok(Io::Plain(stream));
        };
        let config = identity.client_config(service, alpn);
        // The peer proves its service by its certificate's SPIFFE ID; the name below
        // only fills the handshake.
        let host = pool.authority().map(Authority::host).unwrap_or("peer");
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| failed(e.to_string()))?;
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(config).connect(name, stream),
        )
        .await
        .map_err(|_| failed("TLS handshake timed out".into()))?
        .map_err(|e| failed(format!("TLS handshake failed: {e}")))?;
        Ok(Io::Tls(Box::new(stream.into())))
    }
}

// === impl UpstreamBody ===

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamBody::Hyper(_) => "UpstreamBody::Hyper",
            UpstreamBody::Own(_) => "UpstreamBody::Own",
        })
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(body) => {
                std::pin::Pin::new(body).poll_frame(cx).map_err(Into::into)
            }
            UpstreamBody::Own(body) => std::pin::Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::Own(body) => body.size_hint(),
        }
    }
}

/// The peer reset the HTTP/2 stream with REFUSED_STREAM: it did not process the request
/// (RFC 9113 §8.7), so it may go elsewhere whatever it is.
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = cause.source();
    }
    false
}

fn handshake_failed(pool: &Pool, e: &hyper::Error) -> ProxyError {
    ProxyError::new(
        ErrorKind::ConnectFailed,
        format!("cannot connect to {}: {}", pool.address(), source_chain(e)),
    )
}

/// Adapts the request to the wire version, for the pool's address. The host the caller
/// named travels on unchanged, so the app sees the same one whichever version its caller
/// spoke: HTTP/1.1 gets it as `Host` with an origin-form target, HTTP/2 as `:authority`.
/// The address dialled stands in only for a request that names no host.
fn prepare(
    request: Request<BoxBody>,
    pool: &Pool,
    wire: Wire,
    tls: bool,
) -> Result<Request<BoxBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let address = pool.authority().ok_or_else(|| {
        ProxyError::new(
            ErrorKind::ConnectFailed,
            format!("endpoint address {:?} is not host:port", pool.address()),
        )
    })?;
    let mut uri = parts.uri.into_parts();
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // An HTTP/2 caller names the host in `:authority` only, and an absolute-form target's
    // host replaces any `Host` the caller sent (RFC 9112 §3.2.2), as it did for routing.
    let named = match uri.authority.take() {
        Some(target) => Some(target),
        None => parts
            .headers
            .get(header::HOST)
            .filter(|host| !host.is_empty())
            .and_then(|host| Authority::try_from(host.as_bytes()).ok()),
    };
    match wire {
        Wire::Http1 => {
            // An empty `Host` (a target without a host, RFC 9112 §3.2) stays as it was.
            let host = match named {
                Some(named) => Some(named),
                None if !parts.headers.contains_key(header::HOST) => Some(address.clone()),
                None => None,
            };
            if let Some(host) = host.and_then(|h| HeaderValue::from_str(h.as_str()).ok()) {
                parts.headers.insert(header::HOST, host);
            }
            uri.scheme = None;
            parts.version = Version::HTTP_11;
        }
        Wire::Http2 => {
            // `:authority` says it; a `Host` beside it could only disagree (RFC 9113
            // §8.3.1).
            parts.headers.remove(header::HOST);
            uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
            uri.authority = Some(named.unwrap_or_else(|| address.clone()));
            parts.version = Version::HTTP_2;
        }
    }
    parts.uri = Uri::from_parts(uri).map_err(|e| {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!("cannot build the upstream URI: {e}"),
        )
    })?;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::ensure_request_id(&mut parts.headers);
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 and HTTP/2 server on 127.0.0.1 answering `ok` to everything.
    async fn server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(Response::new(crate::body::full("ok")))
                });
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_answer_over_a_new_connection_says_how_long_opening_it_took() {
        let addr = server().await;
        let clients = Clients::new(Duration::from_secs(2), None, OwnListeners::default());
        let get = || {
            Request::get("http://web/")
                .body(crate::body::empty())
                .unwrap()
        };
        for wire in [Wire::Http1, Wire::Http2] {
            let pool = Pool::new(addr.to_string());
            let first = clients.send(get(), &pool, wire, None).await.unwrap();
            let opened = first.extensions().get::<Connected>();
            assert!(
                opened.is_some(),
                "{wire:?}: the first answer opened the connection"
            );
            if wire == Wire::Http2 {
                // The shared connection carries the next call: nothing was opened for it.
                let second = clients.send(get(), &pool, wire, None).await.unwrap();
                assert!(second.extensions().get::<Connected>().is_none());
            }
        }
    }

    #[test]
    fn requests_are_re_aimed_and_hosts_kept_for_http1() {
        let mut request = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://recommendations/Recommendations/Recommend?x=1")
            .header(header::CONNECTION, "close")
            .body(crate::body::empty())
            .unwrap();
        request
            .headers_mut()
            .insert("traceparent", "00-a-b-01".parse().unwrap());
        let pool = Pool::new("10.0.0.7:4143");
        let out = prepare(request, &pool, Wire::Http1, false).unwrap();
        assert_eq!(out.uri(), "/Recommendations/Recommend?x=1");
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.headers()[header::HOST], "recommendations");
        assert!(!out.headers().contains_key(header::CONNECTION));
        assert_eq!(out.headers()["traceparent"], "00-a-b-01");
        assert!(out.headers().contains_key(headers::REQUEST_ID));
    }

    #[test]
    fn an_absolute_form_target_replaces_the_callers_host() {
        let request = Request::builder()
            .uri("http://web/x")
            .header(header::HOST, "elsewhere")
            .body(crate::body::empty())
            .unwrap();
        let out = prepare(request, &Pool::new("10.0.0.7:4143"), Wire::Http1, false).unwrap();
        assert_eq!(out.headers()[header::HOST], "web");
        assert_eq!(out.uri(), "/x");
    }

    #[test]
    fn the_callers_host_is_the_http2_authority_and_never_the_address_dialled() {
        let pool = Pool::new("10.0.0.7:4143");
        let h1_caller = Request::get("/x?y=1")
            .header(header::HOST, "web:8080")
            .body(crate::body::empty())
            .unwrap();
        let out = prepare(h1_caller, &pool, Wire::Http2, true).unwrap();
        assert_eq!(out.uri(), "https://web:8080/x?y=1");
        assert!(!out.headers().contains_key(header::HOST));

        let h2_caller = || {
            Request::get("http://web/x")
                .version(Version::HTTP_2)
                .body(crate::body::empty())
                .unwrap()
        };
        let out = prepare(h2_caller(), &pool, Wire::Http2, false).unwrap();
        assert_eq!(out.uri(), "http://web/x");
        let out = prepare(h2_caller(), &pool, Wire::Http1, false).unwrap();
        assert_eq!(out.headers()[header::HOST], "web");

        // Only a request naming no host is sent the address dialled.
        let nameless = Request::get("/")
            .version(Version::HTTP_10)
            .body(crate::body::empty())
            .unwrap();
        let out = prepare(nameless, &pool, Wire::Http2, false).unwrap();
        assert_eq!(out.uri(), "http://10.0.0.7:4143/");
    }
}
