//! One call as a sidecar saw it: the JSON line of its access log and of its live tap
//! (`GET /tap` on its admin port), written by the proxy and read by `meshctl tap` and
//! the dashboard. docs/observability.md spells each field out.
//!
//! [`TapFilter`] is the tap's query (`?service=&direction=&…`): parsed by the sidecar,
//! written by the tools that ask for a tap, so both agree on its names and bounds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The value a tapped header carries unless the sidecar names it in `--tap-headers`.
pub const REDACTED: &str = "[redacted]";

/// The most events a tap sends per second unless its query asks for fewer.
pub const MAX_TAP_RPS: u32 = 100;

/// One completed request, or one connection carried as bytes, as one sidecar saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    /// When the request (or connection) arrived, RFC 3339 in UTC.
    pub time: String,
    /// `inbound` (a peer's call to the local app) or `outbound` (the app's call).
    pub direction: String,
    /// `request`, `upgrade` (an HTTP upgrade, e.g. a WebSocket) or `tcp` (opaque bytes).
    pub kind: String,
    /// The destination service (outbound) or the local service (inbound).
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The request's path, query removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The HTTP status answered to the caller; none for opaque TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// From arrival to the end of the answer's stream (or of the connection).
    pub duration_ms: f64,
    /// Body bytes from the caller: Content-Length for a request; bytes for TCP.
    pub request_bytes: u64,
    /// Body bytes to the caller (bytes for TCP).
    pub response_bytes: u64,
    /// Tries made (outbound; 1 when none was retried, 0 when none could be made).
    #[serde(default)]
    pub tries: u32,
    /// Why each retry was made, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_reasons: Vec<String>,
    /// The endpoint of the last try (outbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The caller's address (inbound) or the app's (outbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The SPIFFE ID proven by mTLS: the caller's (inbound) or the endpoint's (outbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    /// The `mesh-error` of an answer the mesh itself made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_error: Option<String>,
    /// The stream broke (reset, connection lost) before its end.
    #[serde(default)]
    pub failed: bool,
    /// W3C trace id (32 hex digits), when the request carried or was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// This hop's span id (16 hex digits), when the sidecar traced the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// Request headers, tap only: values [`REDACTED`] unless named in `--tap-headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Which calls a tap streams, and how many per second at most.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapFilter {
    /// The destination (outbound) or local (inbound) service.
    pub service: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    pub path_prefix: Option<String>,
    /// Upper case, as sent (`GET`, `POST`).
    pub method: Option<String>,
    /// An exact status (`503`) or a class (`5xx`).
    pub status: Option<String>,
    /// At most this many events per second, 1 to [`MAX_TAP_RPS`].
    pub max_rps: Option<u32>,
}

/// A tap query the sidecar refuses, naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {why}")]
pub struct BadFilter {
    pub param: String,
    pub why: String,
}

// === impl CallEvent ===

impl CallEvent {
    /// One line of NDJSON (newline included).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a call event serializes");
        line.push(b'\n');
        line
    }
}

// === impl TapFilter ===

impl TapFilter {
    /// Parses a tap query string (without `?`). Unknown parameters are refused, so a typo
    /// never silently widens a tap.
    pub fn parse(query: &str) -> Result<TapFilter, BadFilter> {
        let mut filter = TapFilter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(raw).ok_or_else(|| bad(name, "is not valid percent-encoding"))?;
            if value.is_empty() {
                continue;
            }
            match name {
                "service" => filter.service = Some(value),
                "direction" => match value.as_str() {
                    "inbound" | "outbound" => filter.direction = Some(value),
                    _ => return Err(bad(name, "must be inbound or outbound")),
                },
                "path_prefix" => {
                    if !value.starts_with('/') {
                        return Err(bad(name, "must start with /"));
                    }
                    filter.path_prefix = Some(value);
                }
                "method" => {
                    if !value.bytes().all(|b| b.is_ascii_alphabetic()) || value.len() > 32 {
                        return Err(bad(name, "must be an HTTP method such as GET"));
                    }
                    filter.method = Some(value.to_ascii_uppercase());
                }
                "status" => {
                    if !status_pattern(&value) {
                        return Err(bad(name, "must be a status (503) or a class (5xx)"));
                    }
                    filter.status = Some(value.to_ascii_lowercase());
                }
                "max_rps" => match value.parse::<u32>() {
                    Ok(n @ 1..=MAX_TAP_RPS) => filter.max_rps = Some(n),
                    _ => {
                        let why = format!("must be a whole number from 1 to {MAX_TAP_RPS}");
                        return Err(bad(name, &why));
                    }
                },
                _ => {
                    let known = "service, direction, path_prefix, method, status, max_rps";
                    return Err(bad(name, &format!("unknown parameter; known: {known}")));
                }
            }
        }
        Ok(filter)
    }

    /// The query string (without `?`) that [`parse`](Self::parse) reads back.
    pub fn to_query(&self) -> String {
        let mut query = String::new();
        let pairs = [
            ("service", self.service.clone()),
            ("direction", self.direction.clone()),
            ("path_prefix", self.path_prefix.clone()),
            ("method", self.method.clone()),
            ("status", self.status.clone()),
            ("max_rps", self.max_rps.map(|n| n.to_string())),
        ];
        for (name, value) in pairs {
            if let Some(value) = value {
                if !query.is_empty() {
                    query.push('&');
                }
                let _ = write!(query, "{name}={}", encode(&value));
            }
        }
        query
    }

    /// Events per second this tap may send.
    pub fn rate(&self) -> u32 {
        self.max_rps.unwrap_or(MAX_TAP_RPS)
    }

    /// Whether a call matches every condition given.
    pub fn matches(&self, event: &CallEvent) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let status_matches = match (&self.status, event.status) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(status)) => {
                let have = status.to_string();
                match want.strip_suffix("xx") {
                    Some(class) => have.starts_with(class),
                    None => *want == have,
                }
            }
        };
        is(&self.service, &event.service)
            && is(&self.direction, &event.direction)
            && is(&self.method, event.method.as_deref().unwrap_or(""))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| event.path.as_deref().is_some_and(|p| p.starts_with(prefix)))
            && status_matches
    }
}

fn bad(param: &str, why: &str) -> BadFilter {
    BadFilter {
        param: param.chars().take(64).collect(),
        why: why.to_owned(),
    }
}

/// `503` or `5xx`.
fn status_pattern(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 3
        && (b'1'..=b'5').contains(&b[0])
        && ((b[1].is_ascii_digit() && b[2].is_ascii_digit())
            || value[1..].eq_ignore_ascii_case("xx"))
}

/// Percent-decoding (`+` is a space); None when a `%` is not followed by two hex digits
/// or the bytes are not UTF-8.
fn decode(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_round_trips_through_its_query() {
        let filter = TapFilter {
            service: Some("recommendations".into()),
            direction: Some("outbound".into()),
            path_prefix: Some("/a b&c".into()),
            method: Some("POST".into()),
            status: Some("5xx".into()),
            max_rps: Some(7),
        };
        assert_eq!(TapFilter::parse(&filter.to_query()), Ok(filter));
    }

    #[test]
    fn bad_queries_are_refused_naming_the_parameter() {
        for (query, param) in [
            ("direction=sideways", "direction"),
            ("status=6xx", "status"),
            ("status=20", "status"),
            ("max_rps=0", "max_rps"),
            ("max_rps=100000", "max_rps"),
            ("path_prefix=api", "path_prefix"),
            ("method=G%20T", "method"),
            ("servce=a", "servce"),
            ("service=%zz", "service"),
        ] {
            let e = TapFilter::parse(query).unwrap_err();
            assert_eq!(e.param, param, "{query}");
        }
    }

    #[test]
    fn a_filter_matches_on_every_condition() {
        let event = CallEvent {
            service: "recommendations".into(),
            direction: "outbound".into(),
            method: Some("POST".into()),
            path: Some("/recommendations.Recommendations/Recommend".into()),
            status: Some(503),
            ..CallEvent::default()
        };
        let matches = |q: &str| TapFilter::parse(q).unwrap().matches(&event);
        assert!(matches(""));
        assert!(matches("service=recommendations&status=5xx&method=post"));
        assert!(matches("path_prefix=/recommendations.&status=503"));
        assert!(!matches("status=2xx"));
        assert!(!matches("direction=inbound"));
        assert!(!matches("path_prefix=/other"));
        assert!(!matches("service=marketplace"));
    }
}
