//! How an answer is judged, once: what the balancer, the breaker, the retry decision and
//! the metrics all read.
//!
//! An answer is judged on HTTP's scale. A gRPC status reads as the HTTP status it
//! corresponds to (the mapping Envoy and grpc-gateway use: `UNAVAILABLE` is a 503,
//! `INTERNAL` a 500, `NOT_FOUND` a 404, `RESOURCE_EXHAUSTED` a 429), so the same answer
//! counts the same over HTTP/1.1, HTTP/2 and gRPC:
//!
//! - a 5xx is a [`Class::ServerError`]: the endpoint failed the call;
//! - a 429 is [`Class::RateLimited`]: the server is alive but asks for less;
//! - anything else is a [`Class::Success`]: the app answered, even when its answer is
//!   "no" (a 404, `PERMISSION_DENIED`).
//!
//! Who reads it: the balancer's success estimate counts a server error or a rate-limited
//! answer against the endpoint (it should get less); the breaker ejects for server errors
//! only (ejecting an overloaded server would move its load onto its peers); the retry
//! decision never retries a rate-limited answer at once; the metrics' `classification`
//! is `failure` for server errors (and streams that broke).

use http::StatusCode;

use crate::grpc;

/// What an answer says of the endpoint that gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The app answered, whatever it answered (1xx to 4xx but 429).
    Success,
    /// The server refuses for now what it was sent too much of (429).
    RateLimited,
    /// The endpoint failed the call (5xx).
    ServerError,
}

/// An answer's statuses with their class, judged once and passed to every reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    pub status: StatusCode,
    pub grpc_status: Option<u32>,
    pub class: Class,
}

impl Judged {
    /// Judges an answer with `status` and, for gRPC, `grpc_status`.
    pub fn of(status: StatusCode, grpc_status: Option<u32>) -> Judged {
        Judged {
            status,
            grpc_status,
            class: Class::of(status, grpc_status),
        }
    }
}

// === impl Class ===

impl Class {
    /// The class of an answer with `status` and, for gRPC, `grpc_status` (from its
    /// trailers or a trailers-only head; None when it is not known or not gRPC).
    pub fn of(status: StatusCode, grpc_status: Option<u32>) -> Class {
        let status = match grpc_status {
            // A gRPC answer's HTTP status is 200 whatever happened; an HTTP failure
            // status around it is a failure all the same.
            Some(code) if !status.is_server_error() => grpc_as_http(code),
            _ => status.as_u16(),
        };
        match status {
            429 => Class::RateLimited,
            500..=599 => Class::ServerError,
            _ => Class::Success,
        }
    }

    /// Whether the metrics count the answer as a failure.
    pub fn is_failure(self) -> bool {
        self == Class::ServerError
    }
}

/// The HTTP status a gRPC status corresponds to; an unknown code is a 500, as `UNKNOWN`.
fn grpc_as_http(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,          // CANCELLED: the client gave up
        3 | 9 | 11 => 400, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        5 => 404,          // NOT_FOUND
        6 | 10 => 409,     // ALREADY_EXISTS, ABORTED
        grpc::PERMISSION_DENIED => 403,
        grpc::RESOURCE_EXHAUSTED => 429,
        16 => 401, // UNAUTHENTICATED
        grpc::DEADLINE_EXCEEDED => 504,
        grpc::UNIMPLEMENTED => 501,
        grpc::UNAVAILABLE => 503,
        // UNKNOWN, INTERNAL, DATA_LOSS and codes gRPC does not define.
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_are_judged_by_their_status() {
        for (status, class) in [
            (200, Class::Success),
            (101, Class::Success),
            (304, Class::Success),
            (404, Class::Success),
            (403, Class::Success),
            (429, Class::RateLimited),
            (500, Class::ServerError),
            (502, Class::ServerError),
            (503, Class::ServerError),
            (599, Class::ServerError),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(Class::of(status, None), class, "{status}");
        }
    }

    #[test]
    fn a_grpc_status_counts_as_the_http_status_it_stands_for() {
        let ok = StatusCode::OK;
        let success = [0, 1, 3, 5, 6, 7, 9, 10, 11, 16];
        let server_error = [2, 4, 12, 13, 14, 15, 17, 99, u32::MAX];
        for code in success {
            assert_eq!(Class::of(ok, Some(code)), Class::Success, "code {code}");
        }
        for code in server_error {
            assert_eq!(Class::of(ok, Some(code)), Class::ServerError, "code {code}");
        }
        assert_eq!(Class::of(ok, Some(8)), Class::RateLimited);
        // Every code lands in one class, and each class's failure flag follows it.
        for code in 0..=16 {
            let class = Class::of(ok, Some(code));
            assert_eq!(
                class.is_failure(),
                server_error.contains(&code),
                "code {code}"
            );
        }
    }

    #[test]
    fn a_failure_status_around_a_grpc_answer_is_a_failure() {
        assert_eq!(
            Class::of(StatusCode::BAD_GATEWAY, Some(0)),
            Class::ServerError
        );
        // A 4xx carrying a gRPC status is judged by the gRPC status, as gRPC clients do.
        assert_eq!(
            Class::of(StatusCode::NOT_FOUND, Some(14)),
            Class::ServerError
        );
    }
}
