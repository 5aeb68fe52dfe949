//! One request on its way (step 3 of the request path), with its deadlines, whether it
//! may be repeated, and the request each try sends.

use http::Request;
use http::request::Parts;
use tokio::time::Instant;

use super::OutboundConfig;
use crate::body::{self, BoxBody, CallerBody, CallerFault, FromCaller};
use crate::deadline::{self, Deadlines};
use crate::destination::Destination;
use crate::error::{ErrorKind, ProxyError};
use crate::forward::Wire;
use crate::headers;
use crate::policy::routes::Routed;
use crate::replay::ReplayBody;
use crate::retry::{self, RetryConfig, Verdict};
use mesh_registry_api::policy::Selector;

/// One request on its way: what each of its tries needs but the body, which one try at
/// a time reads (a [`TryBody`] that tries share).
pub(super) struct Call<'a> {
    pub destination: &'a Destination,
    /// The caller's request head, copied into every try.
    head: Parts,
    pub deadlines: Deadlines,
    pub wire: Wire,
    /// The caller speaks gRPC: errors are answered with a gRPC status.
    pub grpc: bool,
    /// Idempotent or marked `mesh-retry`: failures that may have reached an app may
    /// still be retried.
    pub repeatable: bool,
    /// Set once the caller's own body broke.
    pub caller_fault: CallerFault,
    /// What the destination's routes say of this request: the subset every try goes
    /// to, the timeout and retries. None: no rule matched (or there are no routes).
    pub route: Option<Routed>,
}

// === impl Call ===

impl<'a> Call<'a> {
    /// The request's deadlines and whether it may be repeated; its body, kept
    /// replayable up to the retry buffer.
    pub fn new<B: CallerBody>(
        destination: &'a Destination,
        request: Request<B>,
        grpc: bool,
        config: &OutboundConfig,
        retry: &RetryConfig,
    ) -> Result<(Self, TryBody), ProxyError> {
        let now = Instant::now();
        let route = destination
            .policy
            .in_force()
            .routes
            .as_ref()
            .and_then(|routes| routes.route(&request));
        let timeout = route.as_ref().and_then(|r| r.timeout).or(config.timeout);
        let deadlines = Deadlines::of(request.headers(), timeout, config.per_try_timeout, now)
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        let (mut head, incoming) = request.into_parts();
        let (body, caller_fault) = TryBody::of(incoming, retry.buffer);
        let repeatable = retry::is_idempotent(&head.method) || retry::is_marked(&head.headers);
        headers::remove(&mut head.headers, &retry::MESH_RETRY);
        let call = Call {
            destination,
            wire: Wire::of_version(head.version),
            head,
            deadlines,
            grpc,
            repeatable,
            caller_fault,
            route,
        };
        Ok((call, body))
    }

    /// Tries in all, the first included: the route's retries, or the sidecar's.
    pub fn attempts(&self, retry: &RetryConfig) -> u32 {
        match self.route.as_ref().and_then(|r| r.retries.as_ref()) {
            Some((retries, _)) => retries + 1,
            None => retry.attempts.max(1),
        }
    }

    /// The subset of the destination's endpoints every try goes to.
    pub fn subset(&self) -> Option<&Selector> {
        self.route.as_ref().map(|r| r.subset.as_ref())
    }

    /// The error for a try that found no endpoint (in the route's subset, if any).
    pub fn no_endpoints(&self) -> ProxyError {
        match &self.route {
            Some(route) => self.destination.no_endpoints_in(&route.subset, &route.rule),
            None => self.destination.no_endpoints(),
        }
    }

    /// A verdict that a failed try may be retried, unless the route retries other
    /// failures only. `kind`: the proxy's error, when the try got no answer.
    pub fn retried(
        &self,
        verdict: Option<Verdict>,
        kind: Option<ErrorKind>,
        grpc_status: Option<u32>,
    ) -> Option<Verdict> {
        let route = self.route.as_ref();
        verdict.filter(|v| route.is_none_or(|r| r.retries_on(*v, kind, grpc_status)))
    }

    /// The request for one more try: the caller's head, the replayable body, and for
    /// gRPC the deadline that is left. None while an earlier try still holds the body.
    pub fn request(&self, body: &TryBody) -> Option<Request<BoxBody>> {
        let mut request = Request::new(body.for_try()?);
        *request.method_mut() = self.head.method.clone();
        *request.uri_mut() = self.head.uri.clone();
        *request.version_mut() = self.head.version;
        *request.headers_mut() = self.head.headers.clone();
        if self.grpc
            && let Some(remaining) = self.deadlines.remaining(Instant::now())
        {
            request
                .headers_mut()
                .insert(deadline::GRPC_TIMEOUT, deadline::grpc_timeout(remaining));
        }
        Some(request)
    }
}

/// The request's body for its tries.
pub(super) enum TryBody {
    /// No body (most requests): every try sends none, with nothing to allocate, copy or
    /// watch.
    Empty,
    /// A body the tries share, replayable up to the retry buffer (boxed: it is large, and
    /// a request with a body costs more than one allocation anyway).
    Replay(Box<ReplayBody>),
}

// === impl TryBody ===

impl TryBody {
    /// The body of `incoming`, and what notes the caller breaking it.
    fn of<B: CallerBody>(caller: B, limit: usize) -> (TryBody, CallerFault) {
        if caller.is_end_stream() {
            return (TryBody::Empty, CallerFault::default());
        }
        let (caller, fault) = FromCaller::new(caller);
        let body = ReplayBody::new(body::boxed(caller), limit);
        (TryBody::Replay(Box::new(body)), fault)
    }

    /// Another try could still send the whole body.
    pub fn is_replayable(&self) -> bool {
        match self {
            TryBody::Empty => true,
            TryBody::Replay(body) => body.is_replayable(),
        }
    }

    /// The body for one more try; None while an earlier try still holds it.
    fn for_try(&self) -> Option<BoxBody> {
        match self {
            TryBody::Empty => Some(body::empty()),
            TryBody::Replay(body) => Some(body::boxed(body.try_clone()?)),
        }
    }
}
