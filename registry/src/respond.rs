//! Building answers: JSON and text bodies, and the header carrying the catalog index.
//!
//! A module of its own because both the handlers ([`crate::api`]) and the one mapping of
//! errors to answers ([`crate::error`]) build responses; with the helpers here, neither
//! has to reach into the other.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use serde::Serialize;

use crate::sidecar::RelayBody;

/// Response header carrying the index of the state an answer shows.
pub const INDEX_HEADER: &str = "x-mesh-index";

/// The body of every answer: whole (`Left`), or a sidecar's page relayed as it arrives
/// (`Right`).
pub type Body = Either<Full<Bytes>, RelayBody>;

/// A whole body.
pub fn whole(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("API types serialize");
    let mut response = Response::new(whole(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A 200 answer whose body is not JSON (the metrics, the PEM bundle, the OpenAPI file).
pub fn text_response(content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(whole(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A 204 answer: a deregistration has nothing to show but its index.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(whole(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

pub fn set_index(response: &mut Response<Body>, index: u64) {
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
}

/// A duration as operators write the flags: hours at most (`24h`, `1h 30m`, `45s`), where
/// humantime would say `1day`. Parses back with humantime; below a millisecond is dropped.
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let parts: Vec<String> = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(d.subsec_millis()), "ms"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, unit)| format!("{n}{unit}"))
    .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations_stop_at_hours_and_parse_back() {
        for (d, text) in [
            (Duration::from_secs(24 * 3600), "24h"),
            (Duration::from_secs(5400), "1h 30m"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_millis(1500), "1s 500ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(short_duration(d), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), d);
        }
    }
}
