//! Errors the proxy itself produces, told apart from the app's by a `mesh-error` header.
//!
//! One type carries what kind of failure happened and whether the request may be tried
//! again elsewhere; [`ProxyError::into_response`] is the one place it becomes a status
//! code (or a gRPC status).

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, BoxBody};
use crate::grpc;

/// Header naming the cause of an answer the proxy made itself.
pub const MESH_ERROR: http::HeaderName = http::HeaderName::from_static("mesh-error");

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
    /// The request could not be routed (no Host / `:authority`).
    BadRequest,
    /// The peer refused the HTTP/2 stream before processing it (REFUSED_STREAM).
    Refused,
    /// Retries were needed but the destination's retry budget is spent.
    BudgetExhausted,
    /// The destination already has the most requests in flight it may have.
    Overloaded,
    /// The caller's identity is not on this service's allow-list.
    Forbidden,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
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
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::Refused => "refused",
            ErrorKind::BudgetExhausted => "budget-exhausted",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Forbidden => "forbidden",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoEndpoints | ErrorKind::BudgetExhausted | ErrorKind::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::ConnectFailed | ErrorKind::UpstreamFailed | ErrorKind::Refused => {
                StatusCode::BAD_GATEWAY
            }
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    pub fn grpc_status(self) -> u32 {
        match self {
            ErrorKind::NoEndpoints
            | ErrorKind::ConnectFailed
            | ErrorKind::UpstreamFailed
            | ErrorKind::Refused
            | ErrorKind::BudgetExhausted
            | ErrorKind::Overloaded => grpc::UNAVAILABLE,
            ErrorKind::Timeout => grpc::DEADLINE_EXCEEDED,
            ErrorKind::Forbidden => grpc::PERMISSION_DENIED,
            ErrorKind::BadRequest => grpc::INTERNAL,
        }
    }

    /// Nothing of the request reached an app, so another endpoint may be tried whatever
    /// the request is.
    pub fn is_safe_to_retry(self) -> bool {
        matches!(self, ErrorKind::ConnectFailed | ErrorKind::Refused)
    }
}

// === impl ProxyError ===

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            message: message.into(),
        }
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
        response
            .headers_mut()
            .insert(MESH_ERROR, HeaderValue::from_static(self.kind.as_str()));
        response
    }
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
}
