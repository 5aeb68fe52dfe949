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
use crate::endpoint::Source;
use crate::retry::Reason;

/// A set of label values for one family.
pub trait Labels {
    /// The label names, in the order `with_values` gives the values.
    const NAMES: &'static [&'static str];

    /// Calls `f` with the values, in the order of [`NAMES`](Self::NAMES).
    fn with_values<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R;
}

/// `mesh_requests_total`.
pub struct Requests {
    pub direction: Direction,
    pub service: String,
}

/// `mesh_responses_total`.
pub struct Responses {
    pub direction: Direction,
    pub service: String,
    pub status: StatusCode,
    /// Empty for an answer without a gRPC status.
    pub grpc_status: String,
    pub failure: bool,
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

/// Families counted per service alone: `mesh_retry_budget_exhausted_total`,
/// `mesh_policy_denied_total`.
pub struct Service {
    pub service: String,
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

/// `mesh_inbound_connections_total`: how an inbound connection was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tls,
    /// Plaintext, let in by permissive mode.
    Plaintext,
    /// Refused: plaintext under strict mode, a failed handshake, or no certificate yet.
    Refused,
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
            &self.grpc_status,
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
