//! One request on its way (step 3 of the request path), with its deadlines, whether it
//! may be repeated, and the request each try sends.

use http::Request;
use http::request::Parts;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::OutboundConfig;
use crate::body::{self, BoxBody, CallerFault, FromCaller};
use crate::deadline::{self, Deadlines};
use crate::discover::Destination;
use crate::error::{ErrorKind, ProxyError};
use crate::forward::Wire;
use crate::headers;
use crate::replay::ReplayBody;
use crate::retry::{self, RetryConfig};

/// One request on its way: what each of its tries needs but the body, which one try at
/// a time reads (a [`ReplayBody`] that tries share).
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
}

// === impl Call ===

impl<'a> Call<'a> {
    /// The request's deadlines and whether it may be repeated; its body, kept
    /// replayable up to the retry buffer.
    pub fn new(
        destination: &'a Destination,
        request: Request<Incoming>,
        grpc: bool,
        config: &OutboundConfig,
        retry: &RetryConfig,
    ) -> Result<(Self, ReplayBody), ProxyError> {
        let now = Instant::now();
        let deadlines = Deadlines::of(
            request.headers(),
            config.timeout,
            config.per_try_timeout,
            now,
        )
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
        let (mut head, incoming) = request.into_parts();
        let (incoming, caller_fault) = FromCaller::new(incoming);
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
        };
        Ok((
            call,
            ReplayBody::new(body::boxed(incoming), retry.buffer_limit),
        ))
    }

    /// The request for one more try: the caller's head, the replayable body, and for
    /// gRPC the deadline that is left. None while an earlier try still holds the body.
    pub fn request(&self, body: &ReplayBody) -> Option<Request<BoxBody>> {
        let mut request = Request::new(body::boxed(body.try_clone()?));
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
