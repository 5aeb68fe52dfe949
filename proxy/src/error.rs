//! Errors the proxy itself produces, told apart from the app's by a `mesh-error` header.
//!
//! One type carries what kind of failure happened, and so whether the request may be
//! tried again elsewhere ([`ErrorKind::retryable`]); [`ProxyError::into_response`] is the
//! one place it becomes a status code (or a gRPC status).

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, BoxBody};
use crate::grpc;

/// Header naming the cause of an answer the proxy made itself.
pub const MESH_ERROR: http::HeaderName = http::HeaderName::from_static("mesh-error");

/// The methods a `405` names: those RFC 9110 and RFC 5789 define, but CONNECT. (Others
/// are forwarded too; no list could name them all.)
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Discovery knows no ready endpoint for the destination.
    NoEndpoints,
    /// The TCP connection to the endpoint could not be made.
    ConnectFailed,
    /// A deadline ran out.
    Timeout,
    /// The connection failed after the request was sent, or the answer was malformed.
    UpstreamFailed,
    /// The request is malformed: nothing to route by, two `Host` headers, a bad deadline
    /// header, a body the caller broke.
    BadRequest,
    /// The request asks for a tunnel (`CONNECT`), which the mesh does not open
    /// ([`headers::refuse_tunnel`](crate::headers::refuse_tunnel)).
    Tunnel,
    /// The peer refused the HTTP/2 stream before processing it (REFUSED_STREAM).
    Refused,
    /// Retries were needed but the destination's retry budget is spent.
    BudgetExhausted,
    /// The destination already has the most requests in flight it may have.
    Overloaded,
    /// The caller's identity is not on this service's allow-list.
    Forbidden,
    /// The service's intentions deny the caller this call.
    Denied,
    /// The service's limits refuse the call for now (its answer says when to try again).
    RateLimited,
    /// Strict mTLS: the destination's endpoints cannot be reached over mTLS, and
    /// plaintext to it was not allowed (`--plaintext-to`).
    Insecure,
    /// The request would come back to a proxy it already went through.
    Loop,
    /// mTLS is on but this sidecar has no certificate yet.
    NoIdentity,
}

/// Whether a failed try may be made again on another endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retryable {
    /// Nothing of the request was acted on (never sent, refused, or a gRPC status that
    /// says so): any request may go elsewhere.
    Any,
    /// It may have reached the app: only requests that are safe to repeat (idempotent,
    /// or marked `mesh-retry: true`).
    IdempotentOnly,
    /// Never: another endpoint would not change the answer.
    Never,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
    /// `Retry-After`, in whole seconds: when a refused caller may come back.
    pub retry_after: Option<u64>,
}

// === impl ErrorKind ===

impl ErrorKind {
    /// The `mesh-error` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoEndpoints => "no-endpoints",
            ErrorKind::ConnectFailed => "connect-failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::UpstreamFailed => "upstream-failed",
            ErrorKind::BadRequest | ErrorKind::Tunnel => "bad-request",
            ErrorKind::Refused => "refused",
            ErrorKind::BudgetExhausted => "budget-exhausted",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Forbidden | ErrorKind::Insecure => "forbidden",
            ErrorKind::Denied => "denied",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::Loop => "loop",
            ErrorKind::NoIdentity => "no-identity",
        }
    }

    /// The kind a `mesh-error` value names (as a peer sidecar sends it).
    pub fn from_header(value: &HeaderValue) -> Option<ErrorKind> {
        const ALL: [ErrorKind; 13] = [
            ErrorKind::NoEndpoints,
            ErrorKind::ConnectFailed,
            ErrorKind::Timeout,
            ErrorKind::UpstreamFailed,
            ErrorKind::BadRequest,
            ErrorKind::Refused,
            ErrorKind::BudgetExhausted,
            ErrorKind::Overloaded,
            ErrorKind::Forbidden,
            ErrorKind::Denied,
            ErrorKind::RateLimited,
            ErrorKind::Loop,
            ErrorKind::NoIdentity,
        ];
        ALL.into_iter()
            .find(|kind| value.as_bytes() == kind.as_str().as_bytes())
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoEndpoints
            | ErrorKind::BudgetExhausted
            | ErrorKind::Overloaded
            | ErrorKind::NoIdentity => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ConnectFailed | ErrorKind::UpstreamFailed | ErrorKind::Refused => {
                StatusCode::BAD_GATEWAY
            }
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Forbidden | ErrorKind::Insecure | ErrorKind::Denied => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            // Not a 5xx: a caller's sidecar would count that against the endpoint.
            ErrorKind::Tunnel => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Loop => StatusCode::LOOP_DETECTED,
        }
    }

    pub fn grpc_status(self) -> u32 {
        match self {
            ErrorKind::NoEndpoints
            | ErrorKind::ConnectFailed
            | ErrorKind::UpstreamFailed
            | ErrorKind::Refused
            | ErrorKind::BudgetExhausted
            | ErrorKind::Overloaded
            | ErrorKind::Insecure
            | ErrorKind::NoIdentity => grpc::UNAVAILABLE,
            ErrorKind::Timeout => grpc::DEADLINE_EXCEEDED,
            ErrorKind::Forbidden | ErrorKind::Denied => grpc::PERMISSION_DENIED,
            ErrorKind::RateLimited => grpc::RESOURCE_EXHAUSTED,
            ErrorKind::BadRequest | ErrorKind::Loop => grpc::INTERNAL,
            ErrorKind::Tunnel => grpc::UNIMPLEMENTED,
        }
    }

    /// Whether a try that failed this way may be made again on another endpoint.
    pub fn retryable(self) -> Retryable {
        match self {
            // Nothing of the request reached an app.
            ErrorKind::ConnectFailed | ErrorKind::Refused => Retryable::Any,
            // It may have: the app could have acted before the connection broke or the
            // deadline ran out.
            ErrorKind::UpstreamFailed | ErrorKind::Timeout => Retryable::IdempotentOnly,
            // Another endpoint would not change the answer.
            ErrorKind::NoEndpoints
            | ErrorKind::BadRequest
            | ErrorKind::Tunnel
            | ErrorKind::BudgetExhausted
            | ErrorKind::Overloaded
            | ErrorKind::Forbidden
            | ErrorKind::Denied
            | ErrorKind::Insecure
            | ErrorKind::Loop
            | ErrorKind::NoIdentity => Retryable::Never,
            // Not at once: the server asked for less, and says when to come back.
            ErrorKind::RateLimited => Retryable::Never,
        }
    }
}

// === impl Retryable ===

impl Retryable {
    /// May a request that is `repeatable` (idempotent or marked) be tried again?
    pub fn allows(self, repeatable: bool) -> bool {
        match self {
            Retryable::Any => true,
            Retryable::IdempotentOnly => repeatable,
            Retryable::Never => false,
        }
    }
}

// === impl ProxyError ===

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A call the service's limits refuse; the caller may come back after
    /// `retry_after_secs`.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ProxyError {
            retry_after: Some(retry_after_secs),
            ..ProxyError::new(ErrorKind::RateLimited, message)
        }
    }

    /// The answer for a request whose body the caller broke (`why`, from
    /// [`CallerFault`](crate::body::CallerFault)): a 400, never the endpoint's or the
    /// app's fault.
    pub fn caller_body(why: &str) -> Self {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!("the request body could not be read: {why}"),
        )
    }

    /// The answer for the caller: a trailers-only status for gRPC callers, otherwise the
    /// HTTP status with a plain-text explanation. Both carry `mesh-error`.
    pub fn into_response(self, grpc_caller: bool) -> Response<BoxBody> {
        let mut response = if grpc_caller {
            grpc::trailers_only(self.kind.grpc_status(), &self.message)
        } else {
            let mut r = Response::new(body::full(format!("{}\n", self.message)));
            *r.status_mut() = self.kind.status();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        let headers = response.headers_mut();
        if self.kind == ErrorKind::Tunnel {
            // A 405 says which methods are served (RFC 9110 §15.5.6): all but CONNECT.
            headers.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        headers.insert(MESH_ERROR, HeaderValue::from_static(self.kind.as_str()));
        response
    }
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
    fn plain_and_grpc_callers_get_matching_answers() {
        let e = || ProxyError::new(ErrorKind::Timeout, "deadline of 1s exceeded");
        let plain = e().into_response(false);
        assert_eq!(plain.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(plain.headers()[MESH_ERROR], "timeout");
        let g = e().into_response(true);
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "4");
        assert_eq!(g.headers()[MESH_ERROR], "timeout");
    }

    #[test]
    fn header_values_name_their_kind() {
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            ErrorKind::from_header(&value("connect-failed")),
            Some(ErrorKind::ConnectFailed)
        );
        assert_eq!(
            ErrorKind::from_header(&value("loop")),
            Some(ErrorKind::Loop)
        );
        assert_eq!(ErrorKind::from_header(&value("Connect-Failed")), None);
        assert_eq!(ErrorKind::from_header(&value("nonsense")), None);
        assert_eq!(ErrorKind::Refused.retryable(), Retryable::Any);
        assert_eq!(ErrorKind::Timeout.retryable(), Retryable::IdempotentOnly);
        assert_eq!(ErrorKind::BadRequest.retryable(), Retryable::Never);
    }

    #[test]
    fn policy_refusals_answer_403_and_429_or_their_grpc_statuses() {
        let denied = || ProxyError::new(ErrorKind::Denied, "no-batch denies batch");
        let plain = denied().into_response(false);
        assert_eq!(plain.status(), StatusCode::FORBIDDEN);
        assert_eq!(plain.headers()[MESH_ERROR], "denied");
        assert_eq!(denied().into_response(true).headers()["grpc-status"], "7");
        let limited = || ProxyError::rate_limited("over the limit", 2);
        let plain = limited().into_response(false);
        assert_eq!(plain.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(plain.headers()[header::RETRY_AFTER], "2");
        assert_eq!(plain.headers()[MESH_ERROR], "rate-limited");
        let g = limited().into_response(true);
        assert_eq!(
            (g.status(), &g.headers()["grpc-status"]),
            (StatusCode::OK, &HeaderValue::from_static("8"))
        );
        assert_eq!(g.headers()[header::RETRY_AFTER], "2");
        for kind in [ErrorKind::Denied, ErrorKind::RateLimited] {
            let value = HeaderValue::from_static(kind.as_str());
            assert_eq!(ErrorKind::from_header(&value), Some(kind));
            assert_eq!(kind.retryable(), Retryable::Never);
        }
    }

    #[test]
    fn a_refused_tunnel_is_a_405_naming_the_methods_served() {
        let refused = ProxyError::new(ErrorKind::Tunnel, "CONNECT is not proxied");
        let answer = refused.into_response(false);
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers()[MESH_ERROR], "bad-request");
        assert!(
            !answer.headers()[header::ALLOW]
                .to_str()
                .unwrap()
                .contains("CONNECT")
        );
        assert_eq!(ErrorKind::Tunnel.retryable(), Retryable::Never);
    }
}
