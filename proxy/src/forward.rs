//! Sending a request on to its next hop over pooled connections, and handing the answer
//! back with its completion observed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{self, BoxBody, Observed};
use crate::endpoint::InFlight;
use crate::error::{ErrorKind, ProxyError};
use crate::headers;
use crate::metrics::ResponseTimer;
use crate::tls::Identity;

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
        if request.version() == Version::HTTP_2 {
            Wire::Http2
        } else {
            Wire::Http1
        }
    }
}

/// Connection pools to next hops: one for HTTP/1.1 (keep-alive) and one for HTTP/2.
#[derive(Clone)]
pub struct Clients {
    h1: Client<HttpConnector, BoxBody>,
    h2: Client<HttpConnector, BoxBody>,
    connector: HttpConnector,
    /// With mTLS on: this sidecar's identity, and TLS pools per peer service and wire.
    identity: Option<Arc<Identity>>,
    tls: Arc<Mutex<HashMap<(String, Wire), TlsClient>>>,
}

type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, BoxBody>;

// === impl Clients ===

impl Clients {
    pub fn new(connect_timeout: Duration, identity: Option<Arc<Identity>>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        Clients {
            h1,
            h2,
            connector,
            identity,
            tls: Arc::default(),
        }
    }

    /// The TLS pool for calls to `service` over `wire`: ALPN offers only that wire's
    /// protocol, so the peer forwards in the caller's HTTP version.
    fn tls_client(&self, identity: &Arc<Identity>, service: &str, wire: Wire) -> TlsClient {
        let mut pools = self.tls.lock().expect("tls pools lock");
        pools
            .entry((service.to_owned(), wire))
            .or_insert_with(|| {
                let mut connector = self.connector.clone();
                connector.enforce_http(false);
                let config = (*identity.client_config(service)).clone();
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only();
                let mut client = Client::builder(TokioExecutor::new());
                client
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new());
                match wire {
                    Wire::Http1 => client.build(https.enable_http1().wrap_connector(connector)),
                    Wire::Http2 => client
                        .http2_only(true)
                        .build(https.enable_http2().wrap_connector(connector)),
                }
            })
            .clone()
    }

    /// Sends `request` to `address` (`host:port`) over `wire`, over mTLS when `tls_to`
    /// names the service whose identity must answer. Hop-by-hop headers are removed both
    /// ways and `x-request-id` is added when missing.
    pub async fn send(
        &self,
        request: Request<BoxBody>,
        address: &str,
        wire: Wire,
        tls_to: Option<&str>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let tls = tls_to.zip(self.identity.as_ref());
        let request = prepare(request, address, wire, tls.is_some())?;
        let result = match (tls, wire) {
            (Some((service, identity)), wire) => {
                self.tls_client(identity, service, wire)
                    .request(request)
                    .await
            }
            (None, Wire::Http1) => self.h1.request(request).await,
            (None, Wire::Http2) => self.h2.request(request).await,
        };
        match result {
            Ok(mut response) => {
                headers::strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            Err(e) if e.is_connect() => Err(ProxyError::new(
                ErrorKind::ConnectFailed,
                format!("cannot connect to {address}: {}", source_chain(&e)),
            )),
            Err(e) => {
                let why = source_chain(&e);
                // hyper exposes HTTP/2 reset reasons only through the error chain.
                let kind = if why.contains("refused stream") {
                    ErrorKind::Refused
                } else {
                    ErrorKind::UpstreamFailed
                };
                Err(ProxyError::new(
                    kind,
                    format!("request to {address} failed: {why}"),
                ))
            }
        }
    }
}

/// Points the request at `address` and adapts it to the wire version.
fn prepare(
    request: Request<BoxBody>,
    address: &str,
    wire: Wire,
    tls: bool,
) -> Result<Request<BoxBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let authority: Authority = address.parse().map_err(|_| {
        ProxyError::new(
            ErrorKind::ConnectFailed,
            format!("endpoint address {address:?} is not host:port"),
        )
    })?;
    // An HTTP/2 caller names the host in `:authority` only; HTTP/1.1 peers want `Host`.
    if wire == Wire::Http1
        && !parts.headers.contains_key(header::HOST)
        && let Some(original) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(original.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let mut uri = parts.uri.into_parts();
    uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    uri.authority = Some(authority);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some("/".parse().expect("valid path"));
    }
    parts.uri = Uri::from_parts(uri).map_err(|e| {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!("cannot build the upstream URI: {e}"),
        )
    })?;
    parts.version = match wire {
        Wire::Http1 => Version::HTTP_11,
        Wire::Http2 => Version::HTTP_2,
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::ensure_request_id(&mut parts.headers);
    Ok(Request::from_parts(parts, body))
}

/// The answer for the caller: the next hop's response, streamed, with the metrics and the
/// endpoint's in-flight count settled when the stream ends.
pub fn observe<B>(
    response: Response<B>,
    timer: ResponseTimer,
    in_flight: Option<InFlight>,
) -> Response<BoxBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let status = response.status();
    // A trailers-only gRPC answer carries its status in the headers.
    let header_status = crate::grpc::status_of(response.headers());
    response.map(|incoming| {
        body::boxed(Observed::new(incoming, move |ending| {
            drop(in_flight);
            timer.finish(status, ending.grpc_status.or(header_status), ending.failed);
        }))
    })
}

/// An error and its causes on one line: hyper's outer errors say little by themselves.
pub fn source_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_re_aimed_and_hosts_kept_for_http1() {
        let mut request = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://recommendations/Recommendations/Recommend?x=1")
            .header(header::CONNECTION, "close")
            .body(body::empty())
            .unwrap();
        request
            .headers_mut()
            .insert("traceparent", "00-a-b-01".parse().unwrap());
        let out = prepare(request, "10.0.0.7:4143", Wire::Http1, false).unwrap();
        assert_eq!(
            out.uri(),
            "http://10.0.0.7:4143/Recommendations/Recommend?x=1"
        );
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.headers()[header::HOST], "recommendations");
        assert!(!out.headers().contains_key(header::CONNECTION));
        assert_eq!(out.headers()["traceparent"], "00-a-b-01");
        assert!(out.headers().contains_key(headers::REQUEST_ID));
    }
}
