//! Sidecars' admin pages relayed by the registry:
//! `GET /v1/services/{service}/instances/{id}/admin/{path}`.
//!
//! Operators' tools run where the registry is reachable, but sidecars' admin ports often
//! are not (compose publishes the registry's port only). The registry fetches
//! `http://<instance metadata "admin">/<path>` and answers with the sidecar's status and
//! body, so one reachable address is enough to inspect the whole mesh. The content type is
//! the page's own ([`AdminPath::content_type`]), whatever the sidecar said: the registry
//! serves its dashboard from the same origin, and a relayed page must never be one a
//! browser renders there.
//!
//! The live tap (`admin/tap?service=&…`) is relayed too, as a stream of NDJSON lines:
//! [`Client::tap_url`] says where to open it, and [`ClientError::from_relay`] reads the
//! registry's answer when it is not the stream. Reading a stream is left to the caller, since
//! [`Client`]'s requests are read whole.

use std::fmt;

use bytes::Bytes;
use http::{Method, StatusCode, header};

use crate::call::TapFilter;
use crate::client::{Answer, REQUEST_TIMEOUT, check_names};
use crate::types::ErrorBody;
use crate::{Client, ClientError};

/// The admin pages the registry relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdminPath {
    /// `/ready`: readiness JSON (200 ready, 503 not yet).
    Ready,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/debug/endpoints`: JSON, every destination the sidecar follows.
    DebugEndpoints,
    /// `/debug/policy`: JSON, the traffic policy in force (its own, and each
    /// destination's routes).
    DebugPolicy,
    /// `/tap`: NDJSON, one [`crate::call::CallEvent`] per completed call matching a
    /// [`TapFilter`], for as long as the tap is open.
    Tap,
}

// === impl AdminPath ===

impl AdminPath {
    /// The path under the sidecar's admin address, without the leading `/`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminPath::Ready => "ready",
            AdminPath::Metrics => "metrics",
            AdminPath::DebugEndpoints => "debug/endpoints",
            AdminPath::DebugPolicy => "debug/policy",
            AdminPath::Tap => "tap",
        }
    }

    /// The content type of the page, as a mesh-proxy serves it and the registry relays it.
    pub fn content_type(self) -> &'static str {
        match self {
            AdminPath::Ready | AdminPath::DebugEndpoints | AdminPath::DebugPolicy => {
                "application/json"
            }
            AdminPath::Metrics => "text/plain; version=0.0.4; charset=utf-8",
            AdminPath::Tap => "application/x-ndjson",
        }
    }

    /// The registry's route relaying this page of instance `id` of `service`.
    pub fn route(self, service: &str, id: &str) -> String {
        format!(
            "/v1/services/{service}/instances/{id}/admin/{}",
            self.as_str()
        )
    }
}

impl fmt::Display for AdminPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.as_str())
    }
}

/// A sidecar's answer, whatever its status: a sidecar that is not ready answers `/ready`
/// with 503, and that is an answer, not a failure to get one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl AdminAnswer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

// === impl Client ===

impl Client {
    /// The sidecar page `path` of instance `id` of `service`, fetched by the registry from
    /// the address in the instance's `admin` metadata.
    ///
    /// The registry's own refusals are errors: [`ClientError::Api`] with code `no_admin`
    /// (404: the instance names no admin address), `sidecar_unreachable` (502),
    /// `relays_busy` (503: the registry relays as many pages as it may already) or
    /// `sidecar_timeout` (504, after 2 s); [`ClientError::NoRoute`] from a registry that
    /// has no relay (older releases), where callers may dial the sidecar themselves.
    pub async fn admin(
        &self,
        service: &str,
        id: &str,
        path: AdminPath,
    ) -> Result<AdminAnswer, ClientError> {
        check_names(service, id)?;
        if path == AdminPath::Tap {
            return Err(ClientError::InvalidArgument {
                field: "path",
                message: "a tap is a stream that does not end: open Client::tap_url".into(),
            });
        }
        let route = path.route(service, id);
        let answer = self
            .exchange(Method::GET, &route, None, REQUEST_TIMEOUT, None)
            .await?;
        relayed(&self.url(&route), answer)
    }

    /// Where the registry relays the tap of instance `id` of `service` with `filter`:
    /// the URL to GET (with the operator token as `Authorization: Bearer` when the
    /// registry has credentials). A 200 answer is the stream; any other is the registry's
    /// refusal, which [`ClientError::from_relay`] reads.
    pub fn tap_url(
        &self,
        service: &str,
        id: &str,
        filter: &TapFilter,
    ) -> Result<String, ClientError> {
        check_names(service, id)?;
        let mut route = AdminPath::Tap.route(service, id);
        let query = filter.to_query();
        if !query.is_empty() {
            route = format!("{route}?{query}");
        }
        Ok(self.url(&route))
    }
}

// === impl ClientError ===

impl ClientError {
    /// The registry's refusal to relay `url`, from a failing answer's status and body:
    /// its error JSON as [`ClientError::Api`], or [`ClientError::NoRoute`] from a
    /// registry that has no such relay (older releases). `None` when the body is not the
    /// registry's error (a sidecar's own answer, passed on).
    pub fn from_relay(url: &str, status: u16, body: &[u8]) -> Option<ClientError> {
        if (200..300).contains(&status) {
            return None;
        }
        let detail = serde_json::from_slice::<ErrorBody>(body).ok()?.error;
        if status == StatusCode::NOT_FOUND.as_u16() && detail.code == "no_route" {
            return Some(ClientError::NoRoute {
                url: url.to_owned(),
                reason: format!("{}: {}", detail.code, detail.message),
            });
        }
        Some(ClientError::Api { status, detail })
    }
}

/// The sidecar's answer, or the registry's refusal. No sidecar page is shaped like the
/// registry's error JSON, so a failing answer in that shape is the registry speaking.
fn relayed(url: &str, answer: Answer) -> Result<AdminAnswer, ClientError> {
    if let Some(refused) = ClientError::from_relay(url, answer.status.as_u16(), &answer.body) {
        return Err(refused);
    }
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(AdminAnswer {
        status: answer.status.as_u16(),
        content_type,
        body: answer.body,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    const URL: &str = "http://r:7700/v1/services/web/instances/a/admin/ready";

    fn answer(status: u16, body: &'static str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn sidecar_answers_pass_through_whatever_their_status() {
        let ready = relayed(URL, answer(200, r#"{"ready":true}"#)).unwrap();
        assert!(ready.is_success());
        assert_eq!(ready.content_type.as_deref(), Some("application/json"));
        let unready = relayed(URL, answer(503, r#"{"ready":false,"reason":"x"}"#)).unwrap();
        assert_eq!(unready.status, 503);
        let missing = relayed(URL, answer(404, "not found; try /metrics\n")).unwrap();
        assert_eq!(missing.status, 404);
    }

    #[test]
    fn the_registrys_refusals_are_errors() {
        let body = r#"{"error":{"code":"sidecar_unreachable","message":"refused"}}"#;
        let err = relayed(URL, answer(502, body)).unwrap_err();
        assert!(
            matches!(&err, ClientError::Api { status: 502, detail } if detail.code == "sidecar_unreachable")
        );
        let body = r#"{"error":{"code":"no_admin","message":"no admin metadata"}}"#;
        let err = relayed(URL, answer(404, body)).unwrap_err();
        assert!(!err.is_no_route(), "{err}");
    }

    #[test]
    fn a_tap_is_opened_at_its_url_with_the_filter_as_its_query() {
        let client = Client::new("http://r:7700").unwrap();
        let filter = TapFilter {
            path_prefix: Some("/api".into()),
            status: Some("5xx".into()),
            ..TapFilter::default()
        };
        assert_eq!(
            client.tap_url("web", "a", &filter).unwrap(),
            "http://r:7700/v1/services/web/instances/a/admin/tap?path_prefix=/api&status=5xx"
        );
        assert_eq!(
            client.tap_url("web", "a", &TapFilter::default()).unwrap(),
            "http://r:7700/v1/services/web/instances/a/admin/tap"
        );
        assert!(client.tap_url("Web", "a", &filter).is_err());
        assert_eq!(AdminPath::Tap.content_type(), "application/x-ndjson");
    }

    #[test]
    fn a_registry_without_the_relay_says_no_route() {
        let body = r#"{"error":{"code":"no_route","message":"no route for /v1/…"}}"#;
        assert!(relayed(URL, answer(404, body)).unwrap_err().is_no_route());
    }
}
