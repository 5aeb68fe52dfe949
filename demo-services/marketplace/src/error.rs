//! What can go wrong, and the one place it becomes an HTTP response.

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};

use crate::page;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--recommendations-host` and `--recommendations-port` make no valid URI.
    #[error(
        "--recommendations-host/--recommendations-port give {uri:?}, which is not a valid address"
    )]
    RecommendationsAddress {
        uri: String,
        #[source]
        source: tonic::transport::Error,
    },

    /// The `Recommend` call failed: refused, timed out, or answered with an error status.
    #[error("recommendations call failed: {}: {}", .0.code(), .0.message())]
    Recommend(#[from] tonic::Status),

    /// The HTTP server itself stopped on an I/O error.
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            // The page depends on an upstream that failed: a gateway error, not ours.
            Error::Recommend(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "recommend failed");
                (StatusCode::BAD_GATEWAY, Html(page::upstream_error(&status))).into_response()
            }
            // Start-up and server errors never reach a handler; listed so the mapping stays
            // total.
            other => {
                tracing::error!(error = %other, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}
