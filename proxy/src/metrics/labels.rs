//! The label sets of the proxy's metric families, one type each: the label names and the
//! values that tell series apart are declared side by side, and a family only takes its
//! own type, so no call site can pass values in the wrong order, forget one, or give one
//! family another's labels.
//!
//! Values are owned: series handles are looked up once and kept (see
//! [`ServiceMetrics`](super::ServiceMetrics)), so building a label set is off the
//! per-request path.

use http::StatusCode;

use super::{Direction, EndpointState};
use crate::breaker::Rule;
use crate::detect::Detected;
use crate::endpoint::Source;
use crate::retry::Reason;
use crate::splice::Ending;

/// A set of label values for one family.
pub trait Labels {
    /// The label names, in the order `with_values` gives the values.
    const NAMES: &'static [&'static str];

    /// Calls `f` with the values, in the order of [`NAMES`](Self::NAMES).
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R;
}

/// `mesh_requests_total`, `mesh_rate_limited_total`, and the spliced connections' series
/// kept per direction and service.
pub struct Requests {
    pub direction: Direction,
    pub service: String,
}

/// `mesh_responses_total`.
pub struct Responses {
    pub direction: Direction,
    pub service: String,
    pub status: HttpStatus,
    pub grpc_status: GrpcStatus,
    pub failure: bool,
}

/// The `status_code` label: the status when it is one HTTP defines a class for
/// (100–599), else `other`. An app may answer with any three digits, and each would be a
/// series of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpStatus(StatusCode);

/// The `grpc_status` label: empty for an answer without a gRPC status, the code for one
/// gRPC defines (0–16), else `other`. An app may send any number, and each would be a
/// series of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcStatus {
    None,
    /// 0–16.
    Code(u8),
    Other,
}

/// `mesh_response_latency_seconds`.
pub struct Latency {
    pub direction: Direction,
    pub service: String,
    pub failure: bool,
}

/// `mesh_retries_total`.
pub struct Retries {
    pub service: String,
    pub reason: Reason,
}

/// Families counted per service alone: `mesh_retry_budget_exhausted_total`.
pub struct Service {
    pub service: String,
}

/// `mesh_policy_denied_total`: the rule that denied, and whether it was enforced.
pub struct Denied {
    pub service: String,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// The rule's name (capped: see [`MAX_RULE_LABELS`](super::MAX_RULE_LABELS)).
    pub rule: String,
}

/// `mesh_endpoint_ejections_total`: the rule that ejected the endpoint.
pub struct Ejections {
    pub service: String,
    pub rule: Rule,
}

/// `mesh_endpoints`.
pub struct Endpoints {
    pub service: String,
    pub state: EndpointState,
}

/// `mesh_discovery_updates_total`.
pub struct Updates {
    pub service: String,
    pub source: Source,
}

/// `mesh_tcp_open_connections`.
pub struct Open {
    pub direction: Direction,
}

/// `mesh_spliced_bytes_total`: the bytes one side of a spliced connection sent.
pub struct SplicedBytes {
    pub direction: Direction,
    pub service: String,
    /// From the client (the side that connected), else from the server.
    pub from_client: bool,
}

/// `mesh_spliced_closed_total`: why a spliced connection closed.
pub struct SplicedClosed {
    pub direction: Direction,
    pub service: String,
    pub closing: Closing,
}

/// Why a connection to carry as bytes closed: its splice ended, or it never began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    Spliced(Ending),
    /// The caller is not on `--allow`: closed before any byte reached the app.
    Denied,
    /// No endpoint (or, inbound, not the app) accepted the connection.
    Unreachable,
}

/// `mesh_protocol_detections_total`.
pub struct Detections {
    pub direction: Direction,
    pub detected: Detected,
}

/// `mesh_inbound_connections_total`: how an inbound connection was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tls,
    /// Plaintext, let in by permissive mode.
    Plaintext,
    /// Refused: plaintext under strict mode, a failed handshake, or no certificate yet.
    Refused,
}

// === impl HttpStatus ===

impl HttpStatus {
    pub fn as_str(&self) -> &str {
        if (100..600).contains(&self.0.as_u16()) {
            self.0.as_str()
        } else {
            "other"
        }
    }
}

impl From<StatusCode> for HttpStatus {
    fn from(status: StatusCode) -> Self {
        HttpStatus(status)
    }
}

// === impl GrpcStatus ===

impl GrpcStatus {
    /// The codes gRPC defines, as label values.
    const CODES: [&'static str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrpcStatus::None => "",
            GrpcStatus::Code(code) => Self::CODES[usize::from(code)],
            GrpcStatus::Other => "other",
        }
    }
}

impl From<Option<u32>> for GrpcStatus {
    fn from(status: Option<u32>) -> Self {
        match status {
            None => GrpcStatus::None,
            Some(code) => match u8::try_from(code) {
                Ok(code) if usize::from(code) < Self::CODES.len() => GrpcStatus::Code(code),
                _ => GrpcStatus::Other,
            },
        }
    }
}

/// The `classification` label value.
fn classification(failure: bool) -> &'static str {
    if failure { "failure" } else { "success" }
}

// === impl Labels ===

impl Labels for Requests {
    const NAMES: &'static [&'static str] = &["direction", "service"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[self.direction.as_str(), &self.service])
    }
}

impl Labels for Responses {
    const NAMES: &'static [&'static str] = &[
        "direction",
        "service",
        "status_code",
        "grpc_status",
        "classification",
    ];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[
            self.direction.as_str(),
            &self.service,
            self.status.as_str(),
            self.grpc_status.as_str(),
            classification(self.failure),
        ])
    }
}

impl Labels for Latency {
    const NAMES: &'static [&'static str] = &["direction", "service", "classification"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[
            self.direction.as_str(),
            &self.service,
            classification(self.failure),
        ])
    }
}

impl Labels for Retries {
    const NAMES: &'static [&'static str] = &["service", "reason"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[&self.service, self.reason.as_str()])
    }
}

impl Labels for Service {
    const NAMES: &'static [&'static str] = &["service"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[&self.service])
    }
}

impl Labels for Denied {
    const NAMES: &'static [&'static str] = &["service", "mode", "rule"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[&self.service, self.mode, &self.rule])
    }
}

impl Labels for Ejections {
    const NAMES: &'static [&'static str] = &["service", "reason"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[&self.service, self.rule.as_str()])
    }
}

impl Labels for Endpoints {
    const NAMES: &'static [&'static str] = &["service", "state"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[&self.service, self.state.as_str()])
    }
}

impl Labels for Updates {
    const NAMES: &'static [&'static str] = &["service", "source"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[&self.service, self.source.as_str()])
    }
}

impl Labels for SplicedBytes {
    const NAMES: &'static [&'static str] = &["direction", "service", "from"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        let from = if self.from_client { "client" } else { "server" };
        f(&[self.direction.as_str(), &self.service, from])
    }
}

impl Labels for SplicedClosed {
    const NAMES: &'static [&'static str] = &["direction", "service", "reason"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        let reason = match self.closing {
            Closing::Spliced(Ending::Closed) => "closed",
            Closing::Spliced(Ending::Reset) => "reset",
            Closing::Spliced(Ending::Idle) => "idle",
            Closing::Spliced(Ending::Stopped) => "shutdown",
            Closing::Denied => "denied",
            Closing::Unreachable => "unreachable",
        };
        f(&[self.direction.as_str(), &self.service, reason])
    }
}

impl Labels for Detections {
    const NAMES: &'static [&'static str] = &["direction", "result"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[self.direction.as_str(), self.detected.as_str()])
    }
}

impl Labels for Open {
    const NAMES: &'static [&'static str] = &["direction"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[self.direction.as_str()])
    }
}

impl Labels for Transport {
    const NAMES: &'static [&'static str] = &["tls"];
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[match self {
            Transport::Tls => "tls",
            Transport::Plaintext => "plaintext",
            Transport::Refused => "refused",
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_take_a_bounded_set_of_values() {
        let http = |code: u16| HttpStatus::from(StatusCode::from_u16(code).unwrap());
        assert_eq!(http(100).as_str(), "100");
        assert_eq!(http(200).as_str(), "200");
        assert_eq!(http(599).as_str(), "599");
        assert_eq!(http(600).as_str(), "other");
        assert_eq!(http(999).as_str(), "other");

        let grpc = |code| GrpcStatus::from(code).as_str();
        assert_eq!(grpc(None), "");
        for code in 0..=16 {
            assert_eq!(grpc(Some(code)), code.to_string());
        }
        for code in [17, 255, 256, 1 << 16, u32::MAX] {
            assert_eq!(grpc(Some(code)), "other");
        }
    }
}
