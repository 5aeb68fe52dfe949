//! The app's side: requests from the local app to other services.
//!
//! The request path, in order:
//! 1. refuse what must not be passed on (two `Host` headers, a bad deadline header, a
//!    request that has gone round proxies too often) and, with mTLS on, everything until
//!    this sidecar has its certificate;
//! 2. find the destination (fixed for an upstream listener, else `Host` / `:authority`);
//! 3. work out the request's deadlines and whether it may be retried;
//! 4. bound the destination's requests in flight (fast 503 instead of a queue);
//! 5. per try: discovery's endpoints minus ejected ones → the balancer picks one (never
//!    the previous try's when another is ready) → send over a pooled connection;
//! 6. judge the try ([`Verdict`]); a retryable failure is tried again elsewhere if the
//!    request may be repeated, and the retry budget, the attempt limit and the deadline
//!    allow, after a jittered backoff;
//! 7. the answer streams back while metrics and the endpoint's latency record it.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::{self, Strategy};
use crate::body::{self, BoxBody, CallerFault, FromCaller};
use crate::breaker::{Availability, EjectionConfig, Probe};
use crate::deadline::{self, Deadlines};
use crate::discover::{Destination, Discovery};
use crate::endpoint::{Endpoint, InFlight};
use crate::error::{ErrorKind, MESH_ERROR, ProxyError};
use crate::forward::{self, Clients, Wire};
use crate::metrics::{Direction, Metrics, ResponseTimer};
use crate::replay::ReplayBody;
use crate::retry::{self, RetryConfig, Verdict};
use crate::tls::IdentitySlot;
use crate::{grpc, headers, loops};

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
    /// With mTLS on: this sidecar's identity, used towards peers that have mTLS on.
    pub identity: Option<Arc<IdentitySlot>>,
}

/// One request on its way: what each of its tries needs.
struct Call<'a> {
    destination: &'a Destination,
    deadlines: Deadlines,
    wire: Wire,
    /// Idempotent or marked `mesh-retry`: failures that may have reached an app may
    /// still be retried.
    repeatable: bool,
    /// Set once the caller's own body broke.
    caller_fault: CallerFault,
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
    /// Failed; with a verdict if it is a failure worth retrying.
    Failed(Failure, Option<Verdict>),
}

// === impl Route ===

impl Route {
    /// The destination service (lowercased) and the port the caller named, if any.
    pub fn destination<B>(&self, request: &Request<B>) -> Option<(String, Option<u16>)> {
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
    pub async fn handle(&self, route: &Route, mut request: Request<Incoming>) -> Response<BoxBody> {
        let grpc_caller = grpc::is_grpc(request.headers());
        let refuse = |e: ProxyError| {
            tracing::info!(error = %e, "outbound request refused");
            e.into_response(grpc_caller)
        };
        if let Err(e) = headers::check_request(request.headers()) {
            return refuse(e);
        }
        let Some((service, port)) = route.destination(&request) else {
            return refuse(ProxyError::new(
                ErrorKind::BadRequest,
                "no Host header or :authority to route by: send the destination service name as the host",
            ));
        };
        if let Err(e) = loops::count_hop(request.headers_mut()) {
            return refuse(e);
        }
        let started = Instant::now();
        // Refused before a destination exists: counted under the service's name all the same.
        let unrouted = |e: ProxyError| {
            let service_metrics = self.metrics.service(Direction::Outbound, &service);
            fail(e, grpc_caller, service_metrics.request_since(started))
        };
        if let Some(slot) = &self.identity
            && slot.get().is_none()
        {
            return unrouted(slot.missing());
        }
        let destination = match self.discovery.destination(&service, port).await {
            Ok(destination) => destination,
            Err(e) => return unrouted(e),
        };
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

        let deadlines = match Deadlines::of(
            request.headers(),
            self.timeout,
            self.per_try_timeout,
            Instant::now(),
        ) {
            Ok(deadlines) => deadlines,
            Err(e) => {
                let e = ProxyError::new(ErrorKind::BadRequest, e.to_string());
                return fail(e, grpc_caller, timer);
            }
        };
        let (mut parts, incoming) = request.into_parts();
        let (incoming, caller_fault) = FromCaller::new(incoming);
        let call = Call {
            destination: &destination,
            deadlines,
            wire: Wire::of_version(parts.version),
            repeatable: retry::is_idempotent(&parts.method) || retry::is_marked(&parts.headers),
            caller_fault,
        };
        parts.headers.remove(retry::MESH_RETRY);
        let body = ReplayBody::new(body::boxed(incoming), self.retry.buffer_limit);

        let attempts = self.retry.max_attempts.max(1);
        let mut previous: Option<Arc<Endpoint>> = None;
        let mut last: Option<(Failure, Verdict)> = None;
        for attempt in 1..=attempts {
            if let Some((failure, verdict)) = last.take() {
                if let Err(stop) = self.may_retry(&call, &body, previous.as_deref()) {
                    return self.give_up(failure, stop, grpc_caller, timer, &service);
                }
                self.metrics.retried(&service, verdict.reason.as_str());
                tokio::time::sleep(self.backoff(attempt, &call.deadlines)).await;
                last = Some((failure, verdict));
            }
            let Some((endpoint, probe)) = self.choose(&destination, previous.as_deref()) else {
                return match last {
                    Some((failure, _)) => self.answer(failure, grpc_caller, timer),
                    None => fail(destination.no_endpoints(), grpc_caller, timer),
                };
            };
            let Some(attempt_body) = body.try_clone() else {
                // An earlier try still holds the body; may_retry checked it was whole.
                break;
            };
            let request = rebuild(&parts, attempt_body, &call.deadlines, grpc_caller);
            // Holding a gRPC answer back to read its status only pays if a retry could
            // still follow.
            let retry_left = grpc_caller && attempt < attempts && body.is_replayable();
            match self
                .try_once(&call, &endpoint, probe, request, retry_left)
                .await
            {
                Tried::Done(response, in_flight) => {
                    return forward::observe(response, timer, in_flight);
                }
                Tried::Failed(failure, verdict) => {
                    let Some(verdict) = verdict.filter(|v| v.retryable.allows(call.repeatable))
                    else {
                        return self.answer(failure, grpc_caller, timer);
                    };
                    last = Some((failure, verdict));
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

    /// One try against one endpoint, judged. `probe`: this try is the ejected endpoint's
    /// probe; it is settled whatever happens (dropped unsettled if the caller's own body
    /// broke, or if the try is cancelled). `retry_left`: a gRPC call that another try
    /// could still follow, worth peeking at for its status.
    async fn try_once(
        &self,
        call: &Call<'_>,
        endpoint: &Arc<Endpoint>,
        probe: Option<Probe>,
        request: Request<BoxBody>,
        retry_left: bool,
    ) -> Tried {
        let destination = call.destination;
        let in_flight = endpoint.start();
        let started = Instant::now();
        let try_deadline = call.deadlines.try_deadline(started);
        let tls_to = (self.identity.is_some() && endpoint.tls).then_some(destination.name.as_str());
        let sent = self
            .clients
            .send(request, &endpoint.pool, call.wire, tls_to);
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
                if let Some(e) = call.caller_fault.get().map(ProxyError::caller_body) {
                    // The caller broke its own body: the endpoint did nothing wrong.
                    tracing::debug!(endpoint = %endpoint.address, error = %e, "caller's body broke");
                    return Tried::Failed(Failure::Proxy(e), None);
                }
                tracing::debug!(endpoint = %endpoint.address, error = %e, "try failed");
                endpoint.set_error(Some(e.to_string()));
                // A slow answer alone does not eject; a probe that times out does.
                let counts = match e.kind {
                    ErrorKind::Timeout => probe.is_some(),
                    ErrorKind::Loop | ErrorKind::NoIdentity => false,
                    _ => true,
                };
                if counts {
                    self.record_failure(destination, endpoint, &e.message);
                }
                if let Some(probe) = probe {
                    probe.settle();
                }
                let verdict = Verdict::of_error(e.kind);
                return Tried::Failed(Failure::Proxy(e), Some(verdict));
            }
        };
        endpoint.observe(started.elapsed());

        // A gRPC status may be in the headers (trailers-only) or in the trailers, which
        // for a small answer are read before anything is passed on.
        let mut grpc_status = grpc::status_of(response.headers());
        let mut response = if retry_left && grpc_status.is_none() {
            let (peeked, status) =
                retry::peek_grpc(response, self.retry.buffer_limit, try_deadline).await;
            grpc_status = status;
            peeked
        } else {
            response.map(body::boxed)
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
        if let Some(probe) = probe {
            probe.settle();
        }
        let verdict =
            self.retry
                .classify_response(status, response.headers(), grpc_status, endpoint.sidecar);
        if !endpoint.sidecar {
            // Only sidecars speak for the mesh.
            response.headers_mut().remove(MESH_ERROR);
        }
        match verdict {
            Some(verdict) => Tried::Failed(Failure::Answer(response), Some(verdict)),
            None => Tried::Done(response, Some(in_flight)),
        }
    }

    /// Why another try may not be made, if it may not.
    fn may_retry(
        &self,
        call: &Call<'_>,
        body: &ReplayBody,
        previous: Option<&Endpoint>,
    ) -> Result<(), Stop> {
        if !body.is_replayable() {
            return Err(Stop::NotReplayable);
        }
        if let Some(remaining) = call.deadlines.remaining(Instant::now()) {
            // Deadline-aware: a retry that cannot finish in time only adds load.
            let expected = previous.map(Endpoint::ewma).unwrap_or_default();
            if remaining.is_zero() || remaining < expected {
                return Err(Stop::Deadline);
            }
        }
        if !call.destination.budget.withdraw() {
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
    /// is another); when every endpoint is ejected, the one ejected longest ago. With it,
    /// the probe claim if the try is an ejected endpoint's probe.
    fn choose(
        &self,
        destination: &Destination,
        previous: Option<&Endpoint>,
    ) -> Option<(Arc<Endpoint>, Option<Probe>)> {
        let now = Instant::now();
        let set = destination.endpoints();
        let ready: Vec<Arc<Endpoint>> = set
            .endpoints
            .iter()
            .filter(|e| !matches!(e.breaker.availability(now), Availability::Ejected { .. }))
            .cloned()
            .collect();
        if ready.is_empty() {
            let oldest = set
                .endpoints
                .iter()
                .min_by_key(|e| e.breaker.ejected_at())
                .cloned()?;
            return Some((oldest, None));
        }
        let chosen = balance::pick(self.strategy, &ready, &destination.cursor, previous)?;
        let probe = Probe::claim(&chosen, &self.ejection, now);
        if probe.is_some() {
            tracing::info!(endpoint = %chosen.address, "probing an ejected endpoint");
        }
        Some((chosen, probe))
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
