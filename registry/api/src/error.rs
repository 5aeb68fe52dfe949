//! What can go wrong talking to the registry, and how an answer becomes the value asked
//! for or a [`ClientError`].
//!
//! Decoding sits with the error type because its one subtle rule is about errors: only
//! the registry's own `not_found` means "no such instance" (callers register again on
//! it); any other 404 means the registry URL is wrong.

use std::time::Duration;

use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::types::{ErrorBody, ErrorDetail};

/// What went wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Refused before sending: the server would reject it too.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("registry at {base} unreachable: {source}")]
    Transport {
        base: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("registry at {base} did not answer within {timeout:?}")]
    Timeout { base: String, timeout: Duration },
    /// The registry answered with an error body.
    #[error("registry answered {status}: {} ({})", detail.message, detail.code)]
    Api { status: u16, detail: ErrorDetail },
    #[error("registry answered {status} with an unreadable body: {reason}")]
    BadResponse { status: u16, reason: String },
    /// A 404 for the route itself rather than for an instance: whatever answered is not
    /// the registry API at that URL (a path prefix, another server on the port).
    #[error(
        "{url} answered 404 ({reason}): the registry URL looks wrong; it must be just \
         http://host:port"
    )]
    NoRoute { url: String, reason: String },
}

// === impl ClientError ===

impl ClientError {
    /// The registry does not know the instance (a heartbeat after its lease was dropped),
    /// or, on the CA routes, has no CA: a 404 whose code is `not_found`. A 404 for the
    /// route itself is [`ClientError::NoRoute`] instead.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, detail } if detail.code == "not_found")
    }

    /// The registry's error code (`not_found`, `unauthorized`, `sidecar_unreachable`, …),
    /// when the registry answered with an error body.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { detail, .. } => Some(&detail.code),
            _ => None,
        }
    }

    /// What answered has no such route: the registry URL is wrong (or, for a route newer
    /// than the registry, the registry is older than the caller).
    pub fn is_no_route(&self) -> bool {
        matches!(self, ClientError::NoRoute { .. })
    }

    /// Worth retrying later: the registry was unreachable, slow or failing, rather than
    /// rejecting what we sent.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            ClientError::Api { status, .. } | ClientError::BadResponse { status, .. } => {
                *status >= 500
            }
            ClientError::InvalidUrl { .. }
            | ClientError::InvalidArgument { .. }
            | ClientError::NoRoute { .. } => false,
        }
    }
}

/// The answer to a request for `url`.
pub(crate) fn decode<T: DeserializeOwned>(
    url: &str,
    status: StatusCode,
    bytes: &[u8],
) -> Result<T, ClientError> {
    // Trimmed: the text is quoted inside a one-line error.
    let shown = || {
        String::from_utf8_lossy(bytes)
            .trim()
            .chars()
            .take(200)
            .collect()
    };
    let bad = |reason: String| ClientError::BadResponse {
        status: status.as_u16(),
        reason,
    };
    if status.is_success() {
        // 204 has no body; callers that expect one never get a 204.
        let bytes = if bytes.is_empty() { b"null" } else { bytes };
        return serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()));
    }
    let body = serde_json::from_slice::<ErrorBody>(bytes);
    // Only the registry's own "no such instance" is one: re-registering on any other 404
    // would loop against a server that has no such route at all.
    if status == StatusCode::NOT_FOUND && !body.as_ref().is_ok_and(|b| b.error.code == "not_found")
    {
        let reason = match body {
            Ok(body) => format!("{}: {}", body.error.code, body.error.message),
            Err(_) if bytes.is_empty() => "an empty body".to_owned(),
            Err(_) => format!("not the registry's JSON: {}", shown()),
        };
        return Err(ClientError::NoRoute {
            url: url.to_owned(),
            reason,
        });
    }
    match body {
        Ok(body) => Err(ClientError::Api {
            status: status.as_u16(),
            detail: body.error,
        }),
        Err(_) => Err(bad(shown())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Lease;

    const URL: &str = "http://r:7700/v1/services/web/instances/a/heartbeat";

    #[test]
    fn error_bodies_become_api_errors() {
        let body = br#"{"error":{"code":"not_found","message":"no such instance"}}"#;
        let err = decode::<Lease>(URL, StatusCode::NOT_FOUND, body).unwrap_err();
        assert!(err.is_not_found());
        assert!(!err.is_transient());
        let err = decode::<Lease>(URL, StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert!(err.is_transient());
    }

    #[test]
    fn only_a_404_not_found_means_an_unknown_instance() {
        let no_route = br#"{"error":{"code":"no_route","message":"no route for /v1/v1"}}"#;
        for body in [&no_route[..], b"<html>Not Found</html>", b""] {
            let err = decode::<Lease>(URL, StatusCode::NOT_FOUND, body).unwrap_err();
            assert!(!err.is_not_found(), "{err}");
            assert!(
                err.to_string().contains("registry URL looks wrong"),
                "{err}"
            );
        }
    }
}
