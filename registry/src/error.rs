//! The registry's errors: [`Error`] ends `run`, [`ApiError`] is one HTTP answer.

use std::path::PathBuf;

use http::{HeaderValue, Response, StatusCode, header};
use mesh_registry_api::{ErrorBody, ErrorDetail};

use crate::respond;

/// Why the registry could not start or keep serving. Each message carries its cause, so
/// none is marked as a `source`: printing the chain would say the cause twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the snapshot {path}: {cause}")]
    SnapshotRead {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the snapshot {path} is corrupt ({reason}); refusing to start with an empty catalog. \
         Move the file aside to start empty on purpose."
    )]
    SnapshotCorrupt { path: PathBuf, reason: String },
    #[error("cannot write the snapshot in {dir}: {cause}")]
    SnapshotWrite { dir: PathBuf, cause: std::io::Error },
    #[error("cannot use the CA: {0}")]
    Ca(String),
    /// A flag's value is unusable; the message names the flag.
    #[error("{0}")]
    Config(String),
    #[error("server error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// A request the registry refuses, with the field it blames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("{message}")]
    InvalidArgument { field: String, message: String },
    /// No such instance (or no CA, on the CA routes).
    #[error("{0}")]
    NotFound(String),
    /// No such route: a distinct code, so a client under a wrong base URL can tell it
    /// from an unknown instance (which it would answer by registering again).
    #[error("{0}")]
    NoRoute(String),
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed to do this with that value of `field`.
    #[error("{message}")]
    Forbidden { field: String, message: String },
    /// The instance belongs to another writer, or changed under the request.
    #[error("{0}")]
    Conflict(String),
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the registry is shutting down")]
    Unavailable,
    /// The store behind the catalog (etcd) cannot take writes, or has not been read yet.
    #[error("{0}")]
    StoreUnavailable(String),
    /// The instance registered no sidecar admin address (metadata `admin`).
    #[error("{0}")]
    NoAdmin(String),
    /// The sidecar's admin port refused, could not be reached, or answered badly.
    #[error("{0}")]
    SidecarUnreachable(String),
    /// The sidecar's admin port did not answer in time.
    #[error("{0}")]
    SidecarTimeout(String),
    /// As many sidecar admin pages are being relayed as `--max-admin-relays` allows.
    #[error("{0}")]
    RelaysBusy(String),
    /// The client already has `--max-parked-per-client` blocking queries parked.
    #[error("{0}")]
    TooManyBlockingQueries(String),
}

// === impl ApiError ===

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The one place an error becomes a status code and a JSON body.
    pub fn into_response(self) -> Response<respond::Body> {
        let (status, code, field) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                field: field.map(str::to_owned),
            },
        };
        let mut response = respond::json(status, &body);
        match self {
            ApiError::MethodNotAllowed { allow, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Soon, not at once: one of its parked queries or a relay will have ended.
            ApiError::RelaysBusy(_) | ApiError::TooManyBlockingQueries(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }

    /// The status, the error code (one of the document's `Error.code` values) and the
    /// field blamed.
    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            ApiError::InvalidArgument { field, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                Some(field.as_str()),
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route", None),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden { field, .. } => {
                (StatusCode::FORBIDDEN, "forbidden", Some(field.as_str()))
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            ApiError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Some("body"),
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                Some("content-type"),
            ),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::StoreUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None)
            }
            ApiError::NoAdmin(_) => (StatusCode::NOT_FOUND, "no_admin", None),
            ApiError::SidecarUnreachable(_) => {
                (StatusCode::BAD_GATEWAY, "sidecar_unreachable", None)
            }
            ApiError::SidecarTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "sidecar_timeout", None),
            ApiError::RelaysBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "relays_busy", None),
            ApiError::TooManyBlockingQueries(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_blocking_queries",
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients switch on the code, so each one the registry can send is in the document's
    /// enum (schemathesis reaches only the answers its fuzzing provokes).
    #[test]
    fn every_error_code_is_in_the_openapi_document() {
        let document: serde_json::Value = serde_json::from_str(crate::api::OPENAPI).unwrap();
        let documented = &document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
            ["code"]["enum"];
        let documented: Vec<&str> = documented
            .as_array()
            .expect("Error.code has an enum")
            .iter()
            .map(|code| code.as_str().unwrap())
            .collect();
        let message = String::new;
        let every = [
            ApiError::InvalidArgument {
                field: "f".into(),
                message: message(),
            },
            ApiError::NotFound(message()),
            ApiError::NoRoute(message()),
            ApiError::Unauthorized(message()),
            ApiError::Forbidden {
                field: "f".into(),
                message: message(),
            },
            ApiError::Conflict(message()),
            ApiError::MethodNotAllowed {
                method: "PATCH".into(),
                allow: "GET",
            },
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType(message()),
            ApiError::Unavailable,
            ApiError::StoreUnavailable(message()),
            ApiError::NoAdmin(message()),
            ApiError::SidecarUnreachable(message()),
            ApiError::SidecarTimeout(message()),
            ApiError::RelaysBusy(message()),
            ApiError::TooManyBlockingQueries(message()),
        ];
        for error in &every {
            let (_, code, _) = error.parts();
            assert!(
                documented.contains(&code),
                "{code} ({error:?}) is missing from Error.code in registry/openapi.json"
            );
        }
    }
}
