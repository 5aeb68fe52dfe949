//! The app's side: requests from the local app to other services.
//!
//! The request path, in order: find the destination (fixed for an upstream listener,
//! else from `Host` / `:authority`) → discovery gives its endpoints → the balancer picks
//! one per request → the request goes over a pooled connection → the answer streams back
//! while metrics and the endpoint's latency record it.

use std::sync::Arc;

use http::{Request, Response, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::{self, Strategy};
use crate::body::{self, BoxBody};
use crate::discover::Discovery;
use crate::error::{ErrorKind, ProxyError};
use crate::forward::{self, Clients, Wire};
use crate::grpc;
use crate::metrics::{Direction, Metrics};

/// How a listener names the destination of its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Every request goes to this service (an `--upstream NAME=ADDR` listener).
    Fixed { service: String, port: Option<u16> },
    /// The host part of `Host` / `:authority` is the service name; a port part only
    /// matters for names resolved through DNS.
    ByHost,
}

pub struct Outbound {
    pub discovery: Arc<Discovery>,
    pub clients: Clients,
    pub strategy: Strategy,
    pub metrics: Arc<Metrics>,
}

// === impl Route ===

impl Route {
    fn destination<B>(&self, request: &Request<B>) -> Option<(String, Option<u16>)> {
        match self {
            Route::Fixed { service, port } => Some((service.clone(), *port)),
            Route::ByHost => {
                let authority = request
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| {
                        request
                            .headers()
                            .get(header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned)
                    })?;
                let authority: http::uri::Authority = authority.parse().ok()?;
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                (!host.is_empty()).then(|| (host.to_ascii_lowercase(), authority.port_u16()))
            }
        }
    }
}

// === impl Outbound ===

impl Outbound {
    pub async fn handle(&self, route: &Route, request: Request<Incoming>) -> Response<BoxBody> {
        let grpc_caller = grpc::is_grpc(request.headers());
        let Some((service, port)) = route.destination(&request) else {
            let e = ProxyError::new(
                ErrorKind::BadRequest,
                "no Host header or :authority to route by: send the destination service name as the host",
            );
            tracing::info!(error = %e, "outbound request rejected");
            return e.into_response(grpc_caller);
        };
        let timer = self.metrics.request(Direction::Outbound, &service);
        let wire = Wire::of(&request);
        let request = request.map(body::boxed);

        let destination = self.discovery.destination(&service, port).await;
        let endpoints = destination.endpoints();
        let Some(endpoint) = balance::pick(
            self.strategy,
            &endpoints.endpoints,
            &destination.cursor,
            None,
        ) else {
            let why = destination
                .last_error()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            let e = ProxyError::new(
                ErrorKind::NoEndpoints,
                format!("no endpoints for {service}{why}"),
            );
            return fail(e, grpc_caller, timer);
        };

        let in_flight = endpoint.start();
        let started = Instant::now();
        match self.clients.send(request, &endpoint.address, wire).await {
            Ok(response) => {
                endpoint.observe(started.elapsed());
                endpoint.set_error(None);
                forward::observe(response, timer, Some(in_flight))
            }
            Err(e) => {
                tracing::warn!(%service, endpoint = %endpoint.address, error = %e, "outbound request failed");
                endpoint.set_error(Some(e.to_string()));
                fail(e, grpc_caller, timer)
            }
        }
    }
}

/// Answers with a proxy error and records it.
pub fn fail(
    e: ProxyError,
    grpc_caller: bool,
    timer: crate::metrics::ResponseTimer,
) -> Response<BoxBody> {
    let response = e.into_response(grpc_caller);
    timer.finish(
        response.status(),
        grpc::status_of(response.headers()),
        false,
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_host_names_the_service_and_its_port_is_kept_for_dns() {
        let r = Route::ByHost;
        assert_eq!(
            r.destination(&req("/", Some("recommendations"))),
            Some(("recommendations".into(), None))
        );
        assert_eq!(
            r.destination(&req("/", Some("Web:8080"))),
            Some(("web".into(), Some(8080)))
        );
        assert_eq!(
            r.destination(&req("http://api.example.com/x", None)),
            Some(("api.example.com".into(), None))
        );
        assert_eq!(r.destination(&req("/", None)), None);
        let fixed = Route::Fixed {
            service: "recommendations".into(),
            port: None,
        };
        assert_eq!(
            fixed.destination(&req("/", Some("localhost:50051"))),
            Some(("recommendations".into(), None))
        );
    }
}
