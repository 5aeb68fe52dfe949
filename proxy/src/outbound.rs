//! The app's side: requests from the local app to other services.
//!
//! The request path, in the order [`Outbound::handle`] takes it:
//! 1. **admit**: refuse what must not be passed on (a tunnel, two `Host` headers, a
//!    request that has gone round proxies too often, one with nothing to route by) and,
//!    with mTLS on, everything until this sidecar has its certificate;
//! 2. **destination**: the destination's name (fixed for an upstream listener, else
//!    `Host` / `:authority`) → discovery's state for it; from here on the answer is
//!    counted in the destination's metrics;
//! 3. **begin**: bound the destination's requests in flight (a fast 503 rather than a
//!    queue), then find the destination's route for the request (its first matching
//!    `routes` rule: a subset of endpoints drawn by weight, a timeout, retries), work
//!    out the request's deadlines (a bad deadline header is refused) and whether it may
//!    be repeated ([`call`]);
//! 4. **tries**: discovery's endpoints (of the route's subset) minus ejected ones → the
//!    balancer picks one
//!    (never the previous try's when another is ready) → [`attempt`] sends the request
//!    over a pooled connection and judges the outcome ([`Verdict`]); a retryable
//!    failure is tried again elsewhere if the request may be repeated, and the retry
//!    budget, the attempt limit and the deadline allow, after a jittered backoff;
//! 5. **answer**: the answer streams back while metrics and the endpoint's in-flight
//!    count follow it to its end ([`respond`]).
//!
//! The steps are plain functions where they can be: each async layer would make every
//! request's future larger and every poll longer.

mod attempt;
mod call;
mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;

use self::call::{Call, TryBody};
pub use self::route::Route;
use crate::balance::{self, Strategy};
use crate::body::{BoxBody, CallerBody};
use crate::breaker::EjectionConfig;
use crate::deadline::{self, Deadlines};
use crate::destination::Destination;
use crate::destination::Pending;
use crate::discover::Discovery;
use crate::endpoint::{Endpoint, InFlight};
use crate::error::{ErrorKind, MESH_ERROR, ProxyError};
use crate::flags::Invalid;
use crate::forward::Clients;
use crate::metrics::{Direction, Metrics};
use crate::observe::{Kind, Record};
use crate::retry::{RetryConfig, Verdict};
use crate::tls::IdentitySlot;
use crate::upgrade::Accepted;
use crate::{grpc, headers, loops, respond};

/// How the app's calls are balanced, bounded and timed (retries and ejection have
/// groups of their own).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Outbound calls")]
pub struct OutboundConfig {
    /// Load-balancing strategy.
    #[arg(long, env = "MESH_BALANCER", value_enum, default_value = "p2c")]
    pub balancer: Strategy,

    /// Total deadline per request (none by default: long polls and streams are common);
    /// the `mesh-timeout` and `grpc-timeout` headers shorten it per request.
    #[arg(long, env = "MESH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Deadline per try; the `mesh-per-try-timeout` header shortens it.
    #[arg(long, env = "MESH_PER_TRY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub per_try_timeout: Option<Duration>,

    /// Requests in flight per destination before new ones get a fast 503 (`overloaded`).
    #[arg(long, env = "MESH_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,
}

pub struct Outbound {
    pub discovery: Arc<Discovery>,
    pub clients: Clients,
    pub metrics: Arc<Metrics>,
    /// With mTLS on: this sidecar's identity, used towards peers that have mTLS on.
    pub identity: Option<Arc<IdentitySlot>>,
    pub config: OutboundConfig,
    pub retry: RetryConfig,
    pub ejection: EjectionConfig,
}

/// One try: the endpoint the balancer chose, and the request for it.
struct Try {
    chosen: balance::Chosen,
    request: Request<BoxBody>,
    /// A gRPC call that another try could still follow: worth peeking at for its status.
    retry_left: bool,
}

/// An answer to pass on; the endpoint counts it in flight until its stream ends.
type Answered = (Response<BoxBody>, InFlight);

/// What a request (or a try) that did not succeed left us with.
enum Failure {
    /// The proxy's own error (nothing usable came back).
    Proxy(ProxyError),
    /// The app's (or a peer sidecar's) failing answer, to pass on if no retry succeeds.
    Answer(Response<BoxBody>),
}

/// The outcome of one try.
enum Tried {
    Done(Answered),
    /// Failed; with a verdict if it is a failure worth retrying.
    Failed(Failure, Option<Verdict>),
}

/// Why retrying stopped.
enum Stop {
    Budget,
    Deadline,
    NotReplayable,
}

// === impl OutboundConfig ===

impl Default for OutboundConfig {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl OutboundConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_pending == 0 {
            return Err(Invalid::new("--max-pending", "must be at least 1"));
        }
        let longest = deadline::MAX_DEADLINE;
        for (flag, value) in [
            ("--timeout", self.timeout),
            ("--per-try-timeout", self.per_try_timeout),
        ] {
            if value.is_some_and(|d| d > longest) {
                let longest = humantime::format_duration(longest);
                return Err(Invalid::new(flag, format!("must be at most {longest}")));
            }
        }
        Ok(())
    }
}

// === impl Outbound ===

impl Outbound {
    pub async fn handle<B: CallerBody>(
        &self,
        route: &Route,
        mut request: Request<B>,
        app: SocketAddr,
    ) -> Response<BoxBody> {
        let grpc = grpc::is_grpc(request.headers());
        let upgrade = Accepted::take(&mut request);
        let (service, port) = match self.admit(route, &mut request) {
            Ok(name) => name,
            Err(e) => {
                tracing::info!(error = %e, "outbound request refused");
                return e.into_response(grpc);
            }
        };
        let started = Instant::now();
        // This hop's span (a client span) and its record, when traced, logged or tapped.
        let observers = &self.metrics.observers;
        let mut record = observers.begin(Direction::Outbound, &service, &mut request);
        if let Some(record) = record.as_deref_mut() {
            record.peer = Some(app);
            record.kind = upgrade.as_ref().map_or(Kind::Request, |_| Kind::Upgrade);
        }
        let found = match self.identity_missing() {
            Some(e) => Err(e),
            None => self.discovery.destination(&service, port).await,
        };
        let destination = match found {
            Ok(destination) => destination,
            Err(e) => {
                // Refused before a destination exists: counted under its name all the same.
                let metrics = self.metrics.service(Direction::Outbound, &service);
                let timer = metrics.request_since(started).with_record(record);
                return respond::fail(e, grpc, timer);
            }
        };
        let mut timer = destination
            .metrics
            .request_since(started)
            .with_record(record);
        let upgrading = upgrade.is_some();
        let answered = match self.begin(&destination, request, grpc, upgrading) {
            Ok((call, body, _pending)) => self.tries(&call, body, timer.record_mut()).await,
            Err(e) => Err(Failure::Proxy(e)),
        };
        match answered {
            Ok((mut response, in_flight)) => {
                let in_flight = match upgrade {
                    Some(upgrade) => {
                        let metrics = &destination.metrics;
                        upgrade.answered(&mut response, Some(in_flight), metrics)
                    }
                    None => Some(in_flight),
                };
                respond::observe(response, timer, in_flight)
            }
            Err(Failure::Answer(response)) => respond::observe(response, timer, None),
            Err(Failure::Proxy(e)) => respond::fail(e, grpc, timer),
        }
    }

    /// Step 1: the request may be passed on; the destination's name and the port the
    /// caller named.
    fn admit<B>(
        &self,
        route: &Route,
        request: &mut Request<B>,
    ) -> Result<(String, Option<u16>), ProxyError> {
        headers::check_request(request)?;
        let destination = route.destination(request).ok_or_else(|| {
            ProxyError::new(
                ErrorKind::BadRequest,
                "no Host header or :authority to route by: send the destination service name as the host",
            )
        })?;
        loops::count_hop(request.headers_mut())?;
        Ok(destination)
    }

    /// Step 2 may not be taken before this sidecar has its certificate (mTLS on): the
    /// error saying why, if so.
    fn identity_missing(&self) -> Option<ProxyError> {
        let slot = self.identity.as_ref()?;
        slot.get().is_none().then(|| slot.missing())
    }

    /// Step 3, for a request whose destination is known: it is counted in flight (or
    /// refused), and set on its way.
    fn begin<'d, B: CallerBody>(
        &self,
        destination: &'d Arc<Destination>,
        request: Request<B>,
        grpc: bool,
        upgrading: bool,
    ) -> Result<(Call<'d>, TryBody, Pending), ProxyError> {
        let Some(pending) = destination.try_begin(self.config.max_pending) else {
            return Err(ProxyError::new(
                ErrorKind::Overloaded,
                format!(
                    "{} already has {} requests in flight",
                    destination.name, self.config.max_pending
                ),
            ));
        };
        destination.budget.deposit();
        let (mut call, body) = Call::new(destination, request, grpc, &self.config, &self.retry)?;
        // Once an upgrade is sent, its connection may belong to the app: never again.
        call.repeatable &= !upgrading;
        Ok((call, body, pending))
    }

    /// Step 4: tries until one answers, or no other may be made.
    /// `record`, when the call is observed, learns each try's endpoint and each retry's
    /// reason.
    async fn tries(
        &self,
        call: &Call<'_>,
        body: TryBody,
        mut record: Option<&mut Record>,
    ) -> Result<Answered, Failure> {
        let attempts = call.attempts(&self.retry);
        let mut previous: Option<Arc<Endpoint>> = None;
        let mut last: Option<(Failure, Verdict)> = None;
        for attempt in 1..=attempts {
            if let Some((failure, verdict)) = last.take() {
                if let Err(stop) = self.may_retry(call, &body, previous.as_deref()) {
                    return Err(self.give_up(failure, stop, &call.destination.name));
                }
                self.metrics.retried(&call.destination.name, verdict.reason);
                if let Some(record) = record.as_deref_mut() {
                    record.retry_reasons.push(verdict.reason.as_str());
                }
                tokio::time::sleep(self.backoff(attempt, &call.deadlines)).await;
                last = Some((failure, verdict));
            }
            let strategy = self.config.balancer;
            let previous_endpoint = previous.as_deref();
            // A route's subset holds for every try: retries stay in it.
            let chosen = balance::choose(
                strategy,
                call.destination,
                call.subset(),
                previous_endpoint,
                &self.ejection,
            );
            let Some(chosen) = chosen else {
                let none = || Failure::Proxy(call.no_endpoints());
                return Err(last.map_or_else(none, |(failure, _)| failure));
            };
            // None: an earlier try still holds the body; may_retry checked it was whole.
            let Some(request) = call.request(&body) else {
                break;
            };
            // Holding a gRPC answer back to read its status only pays if a retry could
            // still follow.
            let retry_left = call.grpc && attempt < attempts && body.is_replayable();
            let endpoint = chosen.endpoint.clone();
            if let Some(record) = record.as_deref_mut() {
                self.tried(record, attempt, &endpoint, &call.destination.name);
            }
            let next = Try {
                chosen,
                request,
                retry_left,
            };
            match self.try_once(call, next).await {
                Tried::Done(answered) => return Ok(answered),
                Tried::Failed(failure, Some(v)) if v.retryable.allows(call.repeatable) => {
                    last = Some((failure, v));
                }
                Tried::Failed(failure, _) => return Err(failure),
            }
            previous = Some(endpoint);
        }
        let unsent = || {
            let why = "the request body could not be sent again";
            Failure::Proxy(ProxyError::new(ErrorKind::UpstreamFailed, why))
        };
        Err(last.map_or_else(unsent, |(failure, _)| failure))
    }

    /// The record of a call learns of its `attempt`th try, to `endpoint`.
    fn tried(&self, record: &mut Record, attempt: u32, endpoint: &Endpoint, service: &str) {
        record.tries = attempt;
        record.endpoint = Some(endpoint.address.clone());
        // The endpoint must prove this identity to be reached over mTLS.
        record.peer_identity = (endpoint.tls && self.identity.is_some())
            .then(|| self.metrics.observers.spiffe_id(service));
    }

    /// Why another try may not be made, if it may not.
    fn may_retry(
        &self,
        call: &Call<'_>,
        body: &TryBody,
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

    /// No more tries: the last failure, saying why retrying stopped.
    fn give_up(&self, failure: Failure, stop: Stop, service: &str) -> Failure {
        match (stop, failure) {
            (Stop::Budget, Failure::Proxy(e)) => {
                self.metrics.budget_exhausted(service);
                Failure::Proxy(ProxyError::new(
                    ErrorKind::BudgetExhausted,
                    format!(
                        "retry budget for {service} exhausted; last error: {}",
                        e.message
                    ),
                ))
            }
            (Stop::Budget, Failure::Answer(mut response)) => {
                self.metrics.budget_exhausted(service);
                response.headers_mut().insert(
                    MESH_ERROR,
                    HeaderValue::from_static(ErrorKind::BudgetExhausted.as_str()),
                );
                Failure::Answer(response)
            }
            (Stop::Deadline, Failure::Proxy(e)) if e.kind != ErrorKind::Timeout => {
                Failure::Proxy(ProxyError::new(
                    ErrorKind::Timeout,
                    format!("deadline exceeded calling {service}"),
                ))
            }
            (_, failure) => failure,
        }
    }
}
