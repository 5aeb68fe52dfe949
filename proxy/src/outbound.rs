//! The app's side: requests from the local app to other services.
//!
//! The request path, in order:
//! 1. find the destination (fixed for an upstream listener, else `Host` / `:authority`);
//! 2. work out the request's deadlines and whether it may be retried;
//! 3. bound the destination's requests in flight (fast 503 instead of a queue);
//! 4. per try: discovery's endpoints minus ejected ones → the balancer picks one (never
//!    the previous try's when another is ready) → send over a pooled connection;
//! 5. classify the answer; a retryable failure is tried again elsewhere if the retry
//!    budget, the attempt limit and the deadline allow, after a jittered backoff;
//! 6. the answer streams back while metrics and the endpoint's latency record it.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::{self, Strategy};
use crate::body::{self, BoxBody};
use crate::breaker::{Availability, EjectionConfig};
use crate::deadline::{self, Deadlines};
use crate::discover::{Destination, Discovery};
use crate::endpoint::{Endpoint, InFlight};
use crate::error::{ErrorKind, MESH_ERROR, ProxyError};
use crate::forward::{self, Clients, Wire};
use crate::grpc;
use crate::metrics::{Metrics, ResponseTimer};
use crate::replay::ReplayBody;
use crate::retry::{self, Reason, RetryConfig};

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
    pub retry: RetryConfig,
    pub ejection: EjectionConfig,
    /// Default total deadline (requests may shorten it with headers).
    pub timeout: Option<Duration>,
    /// Default deadline per try.
    pub per_try_timeout: Option<Duration>,
    /// Requests in flight per destination before new ones are refused.
    pub max_pending: usize,
    /// mTLS to peer sidecars that have it on.
    pub tls: bool,
}

/// What a try that did not succeed left us with.
enum Failure {
    /// The proxy's own error (nothing usable came back).
    Proxy(ProxyError),
    /// The app's (or a peer sidecar's) failing answer, to pass on if no retry succeeds.
    Answer(Response<BoxBody>),
}

/// The outcome of one try.
enum Tried {
    /// Pass this answer on; the endpoint counts it in flight until its stream ends.
    Done(Response<BoxBody>, Option<InFlight>),
    /// Failed; `Some(reason)` if another endpoint may be tried.
    Failed(Failure, Option<Reason>),
}

// === impl Route ===

impl Route {
    fn destination<B>(&self, request: &Request<B>) -> Option<(String, Option<u16>)> {
        match self {
            Route::Fixed { service, port } => Some((service.clone(), *port)),
            Route::ByHost => {
                let from_host;
                let authority = match request.uri().authority() {
                    Some(authority) => authority,
                    None => {
                        let host = request.headers().get(header::HOST)?;
                        from_host = http::uri::Authority::try_from(host.as_bytes()).ok()?;
                        &from_host
                    }
                };
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
        let started = Instant::now();
        let destination = self.discovery.destination(&service, port).await;
        let timer = destination.metrics.request_since(started);
        let Some(_pending) = destination.try_begin(self.max_pending) else {
            let e = ProxyError::new(
                ErrorKind::Overloaded,
                format!(
                    "{service} already has {} requests in flight",
                    self.max_pending
                ),
            );
            return fail(e, grpc_caller, timer);
        };
        destination.budget.deposit();

        let deadlines = Deadlines::of(
            request.headers(),
            self.timeout,
            self.per_try_timeout,
            Instant::now(),
        );
        // Failure statuses are retried only where repeating the request is harmless.
        let retry_failures =
            retry::is_idempotent(request.method()) || retry::is_marked(request.headers());
        let wire = Wire::of(&request);
        let (mut parts, body) = request.into_parts();
        parts.headers.remove(retry::MESH_RETRY);
        let body = ReplayBody::new(body::boxed(body), self.retry.buffer_limit);

        let mut previous: Option<Arc<Endpoint>> = None;
        let mut last: Option<(Failure, Reason)> = None;
        for attempt in 1..=self.retry.max_attempts.max(1) {
            if let Some((failure, reason)) = last.take() {
                if let Err(stop) =
                    self.may_retry(&destination, &body, &deadlines, previous.as_deref())
                {
                    return self.give_up(failure, stop, grpc_caller, timer, &service);
                }
                self.metrics.retried(&service, reason.as_str());
                tokio::time::sleep(self.backoff(attempt, &deadlines)).await;
                last = Some((failure, reason));
            }
            let Some(endpoint) = self.choose(&destination, previous.as_deref()) else {
                let why = destination
                    .last_error()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                let e = ProxyError::new(
                    ErrorKind::NoEndpoints,
                    format!("no endpoints for {service}{why}"),
                );
                return match last {
                    Some((failure, _)) => self.answer(failure, grpc_caller, timer),
                    None => fail(e, grpc_caller, timer),
                };
            };
            let Some(attempt_body) = body.try_clone() else {
                // Unreachable for the first try; later tries checked replayability.
                break;
            };
            let request = rebuild(&parts, attempt_body, &deadlines, grpc_caller);
            match self
                .try_once(
                    &destination,
                    &endpoint,
                    request,
                    wire,
                    &deadlines,
                    grpc_caller,
                    retry_failures,
                )
                .await
            {
                Tried::Done(response, in_flight) => {
                    return forward::observe(response, timer, in_flight);
                }
                Tried::Failed(failure, reason) => {
                    let Some(reason) = reason else {
                        return self.answer(failure, grpc_caller, timer);
                    };
                    last = Some((failure, reason));
                    previous = Some(endpoint);
                }
            }
        }
        match last {
            Some((failure, _)) => self.answer(failure, grpc_caller, timer),
            None => fail(
                ProxyError::new(
                    ErrorKind::UpstreamFailed,
                    "the request body could not be sent again",
                ),
                grpc_caller,
                timer,
            ),
        }
    }

    /// One try against one endpoint, classified.
    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        destination: &Destination,
        endpoint: &Arc<Endpoint>,
        request: Request<BoxBody>,
        wire: Wire,
        deadlines: &Deadlines,
        grpc_caller: bool,
        retry_failures: bool,
    ) -> Tried {
        let in_flight = endpoint.start();
        let started = Instant::now();
        let try_deadline = deadlines.try_deadline(started);
        let tls_to = (self.tls && endpoint.tls).then_some(destination.name.as_str());
        let sent = self.clients.send(request, &endpoint.pool, wire, tls_to);
        let result = match try_deadline {
            Some(at) => match tokio::time::timeout_at(at, sent).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::new(
                    ErrorKind::Timeout,
                    format!("no answer from {} within the deadline", endpoint.address),
                )),
            },
            None => sent.await,
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.address, error = %e, "try failed");
                endpoint.set_error(Some(e.to_string()));
                if e.kind != ErrorKind::Timeout {
                    self.record_failure(destination, endpoint, &e.message);
                }
                let reason = if e.kind.is_safe_to_retry() {
                    Some(Reason::NotSent)
                } else {
                    retry_failures.then_some(Reason::Failed)
                };
                return Tried::Failed(Failure::Proxy(e), reason);
            }
        };
        endpoint.observe(started.elapsed());

        // A gRPC status may be in the headers (trailers-only) or in the trailers, which
        // for a small answer are read before anything is passed on.
        let mut grpc_status = grpc::status_of(response.headers());
        let (response, in_flight) = if grpc_caller && grpc_status.is_none() {
            let (peeked, status) =
                retry::peek_grpc(response, self.retry.buffer_limit, try_deadline).await;
            grpc_status = status;
            (peeked, Some(in_flight))
        } else {
            (response.map(body::boxed), Some(in_flight))
        };
        let status = response.status();
        let unavailable = status.is_server_error() || grpc_status == Some(grpc::UNAVAILABLE);
        if unavailable {
            endpoint.set_error(Some(format!(
                "answered {status}{}",
                grpc_status
                    .map(|c| format!(" grpc-status {c}"))
                    .unwrap_or_default()
            )));
            self.record_failure(destination, endpoint, "failure status");
        } else {
            endpoint.set_error(None);
            if endpoint.breaker.success() {
                tracing::info!(endpoint = %endpoint.address, "probe succeeded; endpoint back in rotation");
                destination.refresh_gauges(&self.metrics);
            }
        }
        match self
            .retry
            .classify_response(status, response.headers(), grpc_status, retry_failures)
        {
            Some(reason) => Tried::Failed(Failure::Answer(response), Some(reason)),
            None => Tried::Done(response, in_flight),
        }
    }

    /// Why another try may not be made, if it may not.
    fn may_retry(
        &self,
        destination: &Destination,
        body: &ReplayBody,
        deadlines: &Deadlines,
        previous: Option<&Endpoint>,
    ) -> Result<(), Stop> {
        if !body.is_replayable() {
            return Err(Stop::NotReplayable);
        }
        if let Some(remaining) = deadlines.remaining(Instant::now()) {
            // Deadline-aware: a retry that cannot finish in time only adds load.
            let expected = previous.map(Endpoint::ewma).unwrap_or_default();
            if remaining.is_zero() || remaining < expected {
                return Err(Stop::Deadline);
            }
        }
        if !destination.budget.withdraw() {
            return Err(Stop::Budget);
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32, deadlines: &Deadlines) -> Duration {
        let wait = self.retry.backoff(attempt);
        match deadlines.remaining(Instant::now()) {
            Some(remaining) => wait.min(remaining / 2),
            None => wait,
        }
    }

    /// An endpoint for the next try: the ready ones minus the previous try's (when there
    /// is another); when every endpoint is ejected, the one ejected longest ago.
    fn choose(
        &self,
        destination: &Destination,
        previous: Option<&Endpoint>,
    ) -> Option<Arc<Endpoint>> {
        let now = Instant::now();
        let set = destination.endpoints();
        let ready: Vec<Arc<Endpoint>> = set
            .endpoints
            .iter()
            .filter(|e| !matches!(e.breaker.availability(now), Availability::Ejected { .. }))
            .cloned()
            .collect();
        if ready.is_empty() {
            return set
                .endpoints
                .iter()
                .min_by_key(|e| e.breaker.ejected_at())
                .cloned();
        }
        let chosen = balance::pick(self.strategy, &ready, &destination.cursor, previous)?;
        if chosen.breaker.availability(now) == Availability::Probe
            && chosen.breaker.claim_probe(now)
        {
            tracing::info!(endpoint = %chosen.address, "probing an ejected endpoint");
        }
        Some(chosen)
    }

    fn record_failure(&self, destination: &Destination, endpoint: &Endpoint, reason: &str) {
        let now = Instant::now();
        let set = destination.endpoints();
        let total = set.endpoints.len();
        let ejected = set
            .endpoints
            .iter()
            .filter(|e| e.breaker.is_ejected(now))
            .count();
        let may_eject = (ejected + 1) * 100 <= total * self.ejection.max_percent as usize;
        if endpoint
            .breaker
            .failure(&self.ejection, reason, may_eject, now)
        {
            tracing::warn!(service = %destination.name, endpoint = %endpoint.address, %reason, "endpoint ejected");
            self.metrics.ejected(&destination.name);
            destination.refresh_gauges(&self.metrics);
        }
    }

    /// No more tries: pass on the last failure, saying why retrying stopped.
    fn give_up(
        &self,
        failure: Failure,
        stop: Stop,
        grpc_caller: bool,
        timer: ResponseTimer,
        service: &str,
    ) -> Response<BoxBody> {
        match stop {
            Stop::Budget => {
                self.metrics.budget_exhausted(service);
                match failure {
                    Failure::Proxy(e) => fail(
                        ProxyError::new(
                            ErrorKind::BudgetExhausted,
                            format!(
                                "retry budget for {service} exhausted; last error: {}",
                                e.message
                            ),
                        ),
                        grpc_caller,
                        timer,
                    ),
                    Failure::Answer(mut response) => {
                        response
                            .headers_mut()
                            .insert(MESH_ERROR, HeaderValue::from_static("budget-exhausted"));
                        forward::observe(response, timer, None)
                    }
                }
            }
            Stop::Deadline => match failure {
                Failure::Proxy(e) if e.kind == ErrorKind::Timeout => fail(e, grpc_caller, timer),
                Failure::Proxy(_) => fail(
                    ProxyError::new(
                        ErrorKind::Timeout,
                        format!("deadline exceeded calling {service}"),
                    ),
                    grpc_caller,
                    timer,
                ),
                Failure::Answer(response) => forward::observe(response, timer, None),
            },
            Stop::NotReplayable => self.answer(failure, grpc_caller, timer),
        }
    }

    fn answer(
        &self,
        failure: Failure,
        grpc_caller: bool,
        timer: ResponseTimer,
    ) -> Response<BoxBody> {
        match failure {
            Failure::Proxy(e) => fail(e, grpc_caller, timer),
            Failure::Answer(response) => forward::observe(response, timer, None),
        }
    }
}

/// Why retrying stopped.
enum Stop {
    Budget,
    Deadline,
    NotReplayable,
}

/// The request for one try: the caller's head, the replayable body, and for gRPC the
/// deadline that is left.
fn rebuild(
    parts: &Parts,
    body: ReplayBody,
    deadlines: &Deadlines,
    grpc_caller: bool,
) -> Request<BoxBody> {
    let mut request = Request::new(body::boxed(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    if grpc_caller && let Some(remaining) = deadlines.remaining(Instant::now()) {
        request
            .headers_mut()
            .insert(deadline::GRPC_TIMEOUT, deadline::grpc_timeout(remaining));
    }
    request
}

/// Answers with a proxy error and records it.
pub fn fail(e: ProxyError, grpc_caller: bool, timer: ResponseTimer) -> Response<BoxBody> {
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
