//! Retry policy: which failures are worth another endpoint, for which requests, and how
//! long to wait first.
//!
//! Safe by default: a failure before any request byte reached an app (connect refused,
//! HTTP/2 REFUSED_STREAM, a peer sidecar that could not reach its app) is retried for
//! every request; a failure status (502/503/504) only for idempotent requests or those
//! marked retryable; gRPC UNAVAILABLE always — including when it arrives in trailers,
//! which is why small gRPC responses are peeked at before being passed on.
//!
//! Every failed try ends in a [`Verdict`]: whether it may be tried again
//! ([`Retryable`]) and why (the metric's reason). Proxy errors get theirs from
//! [`ErrorKind::retryable`](crate::error::ErrorKind::retryable), answers from
//! [`RetryConfig::classify_response`]; the request decides with [`Retryable::allows`].
//! A `mesh-error` header only counts when a peer sidecar sent it on a failure status:
//! an app cannot make the mesh repeat its requests.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body::{Body, Frame, SizeHint};
use mesh_registry_api::Backoff;
use rand::Rng;
use tokio::time::Instant;

use crate::body::{self, BoxBody, BoxError};
use crate::budget::BudgetConfig;
use crate::classify::{Class, Judged};
use crate::error::{ErrorKind, MESH_ERROR, Retryable};
use crate::flags::Invalid;
use crate::grpc;

/// Header marking a request retryable whatever its method (`mesh-retry: true`).
pub const MESH_RETRY: http::HeaderName = http::HeaderName::from_static("mesh-retry");

/// How long peeking at a gRPC response waits for its first frame, and then for each
/// next one: the frames of a unary answer arrive together, a stream's messages need not,
/// and a stream must not be held back.
const PEEK_FIRST_WAIT: Duration = Duration::from_millis(20);
const PEEK_WAIT: Duration = Duration::from_millis(5);

/// Which failures are retried, how often and after what wait (flags `--retry-*`).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Retries")]
pub struct RetryConfig {
    /// Tries per request in total, the first included (1 disables retries).
    #[arg(
        id = "retry_attempts",
        long = "retry-attempts",
        value_name = "RETRY_ATTEMPTS",
        env = "MESH_RETRY_ATTEMPTS",
        default_value_t = 3
    )]
    pub attempts: u32,

    /// Backoff before the first retry; it doubles per retry (full jitter).
    #[arg(id = "retry_backoff", long = "retry-backoff",
        value_name = "RETRY_BACKOFF", env = "MESH_RETRY_BACKOFF", default_value = "25ms", value_parser = humantime::parse_duration)]
    pub backoff: Duration,

    /// Longest backoff between retries.
    #[arg(id = "retry_backoff_max", long = "retry-backoff-max",
        value_name = "RETRY_BACKOFF_MAX", env = "MESH_RETRY_BACKOFF_MAX", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// HTTP statuses retried for idempotent (or `mesh-retry: true`) requests.
    #[arg(
        long = "retry-statuses",
        value_name = "RETRY_STATUSES",
        env = "MESH_RETRY_STATUSES",
        value_delimiter = ',',
        default_value = "502,503,504"
    )]
    pub statuses: Vec<u16>,

    /// gRPC codes retried, as numbers or names (UNAVAILABLE is always retried).
    #[arg(long = "retry-grpc-codes",
        value_name = "RETRY_GRPC_CODES", env = "MESH_RETRY_GRPC_CODES", value_delimiter = ',', value_parser = grpc::parse_code)]
    pub grpc_codes: Vec<u32>,

    /// Bytes of a request body (and of a gRPC answer) kept to make a retry possible;
    /// larger ones stream through and are not retried.
    #[arg(id = "retry_buffer", long = "retry-buffer",
        value_name = "RETRY_BUFFER", env = "MESH_RETRY_BUFFER", default_value_t = 64 * 1024)]
    pub buffer: usize,

    #[command(flatten)]
    pub budget: BudgetConfig,
}

/// The end of a failed try: whether it may be retried, and why it would be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub retryable: Retryable,
    pub reason: Reason,
}

/// Why a try is retried; the `reason` label of `mesh_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No request byte reached an app (connect failed, stream refused).
    NotSent,
    /// A retryable HTTP status.
    Status,
    /// A retryable gRPC status.
    GrpcStatus,
    /// The connection broke mid-request, or the try timed out (idempotent requests).
    Failed,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::NotSent,
        Reason::Status,
        Reason::GrpcStatus,
        Reason::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotSent => "not-sent",
            Reason::Status => "status",
            Reason::GrpcStatus => "grpc-status",
            Reason::Failed => "failed",
        }
    }
}

// === impl Verdict ===

impl Verdict {
    /// The verdict on a try that ended in the proxy's own error.
    pub fn of_error(kind: ErrorKind) -> Verdict {
        let retryable = kind.retryable();
        let reason = match retryable {
            Retryable::Any => Reason::NotSent,
            Retryable::IdempotentOnly | Retryable::Never => Reason::Failed,
        };
        Verdict { retryable, reason }
    }
}

// === impl RetryConfig ===

impl Default for RetryConfig {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.attempts == 0 {
            return Err(Invalid::new(
                "--retry-attempts",
                "must be at least 1 (1 disables retries)",
            ));
        }
        if self.backoff > self.backoff_max {
            return Err(Invalid::new(
                "--retry-backoff",
                "must not exceed --retry-backoff-max",
            ));
        }
        self.budget.validate()
    }

    /// Whether a gRPC status is retried: UNAVAILABLE always (the server did not act on
    /// the call), others when `--retry-grpc-codes` names them.
    fn retries_grpc(&self, code: u32) -> bool {
        code == grpc::UNAVAILABLE || self.grpc_codes.contains(&code)
    }

    /// Backoff before try number `attempt` (2 for the first retry): full jitter under an
    /// exponential ceiling.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2);
        let ceiling = Backoff::ceiling(self.backoff, self.backoff_max, doublings);
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }

    /// The verdict on an answer, if it is a failure worth retrying. `from_sidecar`: the
    /// endpoint is a peer sidecar, whose `mesh-error` on a failure status is the mesh's
    /// own word that nothing was sent; anyone else's is ignored.
    pub fn classify_response(
        &self,
        answer: Judged,
        headers: &HeaderMap,
        from_sidecar: bool,
    ) -> Option<Verdict> {
        let Judged {
            status,
            grpc_status,
            class,
        } = answer;
        // The server asked for less: another try at once would only add to its load,
        // whatever `--retry-statuses` or `--retry-grpc-codes` say.
        if class == Class::RateLimited {
            return None;
        }
        let peer_error = (from_sidecar && !status.is_success())
            .then(|| headers.get(MESH_ERROR))
            .flatten()
            .and_then(ErrorKind::from_header);
        if let Some(kind) = peer_error
            && kind.retryable() == Retryable::Any
        {
            return Some(Verdict::of_error(kind));
        }
        if let Some(code) = grpc_status {
            return self.retries_grpc(code).then_some(Verdict {
                retryable: Retryable::Any,
                reason: Reason::GrpcStatus,
            });
        }
        self.statuses.contains(&status.as_u16()).then_some(Verdict {
            retryable: Retryable::IdempotentOnly,
            reason: Reason::Status,
        })
    }
}

/// Methods that may be repeated without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request asks to be retried whatever its method.
pub fn is_marked(headers: &HeaderMap) -> bool {
    headers
        .get(MESH_RETRY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Reads the start of a gRPC response to find its status before anything is passed on:
/// what arrives within a few milliseconds (never past `deadline`), up to `limit` bytes.
/// Returns the response with every frame still in it, and the status if the end was
/// reached. Only worth it while a retry is still possible.
pub async fn peek_grpc<B>(
    response: Response<B>,
    limit: usize,
    deadline: Option<Instant>,
) -> (Response<BoxBody>, Option<u32>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, rest) = response.into_parts();
    let mut rest = body::boxed(rest);
    let mut frames = VecDeque::new();
    let mut seen = 0usize;
    let mut status = None;
    let mut ended = false;
    let mut first = true;
    loop {
        let mut wait = if first { PEEK_FIRST_WAIT } else { PEEK_WAIT };
        if let Some(deadline) = deadline {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        first = false;
        let next = std::future::poll_fn(|cx| Pin::new(&mut rest).poll_frame(cx));
        let Ok(frame) = tokio::time::timeout(wait, next).await else {
            break;
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    status = grpc::status_of(trailers);
                }
                if let Some(data) = frame.data_ref() {
                    seen += data.len();
                }
                frames.push_back(frame);
                if seen > limit || status.is_some() {
                    break;
                }
            }
            Some(Err(e)) => {
                let failed = Peeked {
                    frames,
                    rest: None,
                    error: Some(e),
                };
                return (Response::from_parts(parts, body::boxed(failed)), None);
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    let peeked = Peeked {
        frames,
        rest: (!ended && status.is_none()).then_some(rest),
        error: None,
    };
    (Response::from_parts(parts, body::boxed(peeked)), status)
}

/// Frames already read, then the rest of the body.
struct Peeked {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<BoxBody>,
    error: Option<BoxError>,
}

impl Body for Peeked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn backoff_has_an_exponential_ceiling_and_a_cap() {
        let c = RetryConfig::default();
        for _ in 0..100 {
            assert!(c.backoff(2) <= Duration::from_millis(25));
            assert!(c.backoff(3) <= Duration::from_millis(50));
            assert!(c.backoff(10) <= Duration::from_millis(250));
        }
    }

    #[test]
    fn classification_follows_status_grpc_code_and_the_peers_word() {
        let c = RetryConfig::default();
        let none = HeaderMap::new();
        let verdict = |status, headers: &HeaderMap, grpc, sidecar| {
            c.classify_response(Judged::of(status, grpc), headers, sidecar)
                .map(|v| (v.retryable, v.reason))
        };
        assert_eq!(
            verdict(StatusCode::SERVICE_UNAVAILABLE, &none, None, true),
            Some((Retryable::IdempotentOnly, Reason::Status))
        );
        assert_eq!(
            verdict(StatusCode::INTERNAL_SERVER_ERROR, &none, None, true),
            None
        );
        assert_eq!(
            verdict(StatusCode::OK, &none, Some(14), false),
            Some((Retryable::Any, Reason::GrpcStatus))
        );
        assert_eq!(verdict(StatusCode::OK, &none, Some(5), false), None);

        let mut peer = HeaderMap::new();
        peer.insert(MESH_ERROR, "connect-failed".parse().unwrap());
        assert_eq!(
            verdict(StatusCode::BAD_GATEWAY, &peer, None, true),
            Some((Retryable::Any, Reason::NotSent)),
            "a peer sidecar that could not reach its app sent nothing on"
        );
        assert_eq!(
            verdict(StatusCode::BAD_GATEWAY, &peer, None, false),
            Some((Retryable::IdempotentOnly, Reason::Status)),
            "the same header from an endpoint that is no sidecar is just a 502"
        );
        assert_eq!(
            verdict(StatusCode::OK, &peer, None, true),
            None,
            "never on a success"
        );
        let configured = RetryConfig {
            statuses: vec![429, 503],
            grpc_codes: vec![8],
            ..RetryConfig::default()
        };
        let mut limited = HeaderMap::new();
        limited.insert(MESH_ERROR, "rate-limited".parse().unwrap());
        for (status, grpc) in [
            (StatusCode::TOO_MANY_REQUESTS, None),
            (StatusCode::OK, Some(8)),
        ] {
            assert_eq!(
                configured.classify_response(Judged::of(status, grpc), &limited, true),
                None,
                "a rate-limited answer is never retried at once"
            );
        }
        let mut upstream = HeaderMap::new();
        upstream.insert(MESH_ERROR, "upstream-failed".parse().unwrap());
        assert_eq!(
            verdict(StatusCode::BAD_GATEWAY, &upstream, None, true),
            Some((Retryable::IdempotentOnly, Reason::Status))
        );

        assert!(Retryable::Any.allows(false));
        assert!(Retryable::IdempotentOnly.allows(true) && !Retryable::IdempotentOnly.allows(false));
        assert!(!Retryable::Never.allows(true));
        assert!(is_idempotent(&Method::PUT) && !is_idempotent(&Method::POST));
        let mut marked = HeaderMap::new();
        marked.insert(MESH_RETRY, "true".parse().unwrap());
        assert!(is_marked(&marked));
    }
}
