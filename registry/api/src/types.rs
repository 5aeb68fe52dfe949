//! The JSON bodies of the registry API v1, shared by the server and its clients.
//!
//! Field names and value spellings are the contract in `docs/registry-api.md` (and
//! `registry/openapi.json`); durations travel
//! as humantime strings (`"10s"`, `"250ms"`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Lease length when a registration names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Shortest lease a registration may ask for.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lease a registration may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Weight when a registration names none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight a registration may carry.
pub const MAX_WEIGHT: u32 = 1000;

/// Registration metadata key naming the address of an instance's sidecar admin port
/// (its `/metrics`), which the registry offers to Prometheus for discovery.
pub const ADMIN_METADATA: &str = "admin";

/// How peers talk to an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP: the sidecars carry its connections as bytes.
    Tcp,
}

impl Protocol {
    /// Every protocol, in the order the API documents them.
    pub const ALL: [Protocol; 4] = [Protocol::Http, Protocol::H2, Protocol::Grpc, Protocol::Tcp];

    /// The protocol's name on the wire (`http`, `h2`, `grpc`, `tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::H2 => "h2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| "must be http, h2, grpc or tcp".to_owned())
    }
}

/// Health of an instance. Only `passing` instances are listed by default.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `PUT /v1/services/{service}/instances/{id}`. Only `address` is required.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// `host:port` peers dial: the instance's sidecar inbound listener.
    pub address: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic, 1–1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Lease length, 1 s–1 h: without a heartbeat for this long the instance turns critical.
    #[serde(default = "default_ttl", with = "duration_str")]
    pub ttl: Duration,
    #[serde(default)]
    pub status: Status,
}

impl Registration {
    /// A passing HTTP/1.1 registration with the default weight and lease.
    pub fn new(address: impl Into<String>) -> Self {
        Registration {
            address: address.into(),
            protocol: Protocol::default(),
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            weight: DEFAULT_WEIGHT,
            ttl: DEFAULT_TTL,
            status: Status::default(),
        }
    }
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn default_ttl() -> Duration {
    DEFAULT_TTL
}

/// Optional body of `PUT …/heartbeat`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Free text explaining the status (last health-check output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The registration this heartbeat renews, as `PUT` returned it. When the instance
    /// has been registered again since (another generation), the heartbeat gets 404, so
    /// its sender registers again at once instead of keeping someone else's entry alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// Answer to a heartbeat: the renewed lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub service: String,
    pub id: String,
    pub status: Status,
    #[serde(with = "duration_str")]
    pub ttl: Duration,
}

/// One instance as listed by `GET /v1/services/{service}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub address: String,
    pub protocol: Protocol,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub weight: u32,
    pub status: Status,
    /// RFC 3339 wall-clock time of the first registration.
    pub registered_at: String,
    /// RFC 3339 wall-clock time of the last registration or heartbeat.
    pub last_heartbeat: String,
    /// Output of the last health check, when the instance reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Who registered it, and alone may renew or replace it: `spiffe://…` (a client
    /// certificate from the mesh CA), `token:SERVICES` (a service token), `operator`
    /// (the operator token), or `anonymous` (a registry with no credentials).
    #[serde(default)]
    pub owner: String,
    /// Which registration this is: every `PUT` that changes an instance gives it a new
    /// one, which heartbeats name.
    #[serde(default)]
    pub generation: u64,
}

/// Answer to `GET /v1/services/{service}`: always the full state of the service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceListing {
    pub service: String,
    /// False when the registry has no instance of this name, in any state: callers may
    /// fall back to DNS.
    pub exists: bool,
    pub index: u64,
    pub instances: Vec<Instance>,
}

/// One row of `GET /v1/services`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceSummary {
    pub name: String,
    /// Instances in any state.
    pub instances: usize,
    /// Instances whose status is `passing`.
    pub passing: usize,
    /// The service's own index, as its listing carries it: a client holding listings
    /// reads again only those whose index moved. 0 from a registry that predates it.
    #[serde(default)]
    pub index: u64,
}

/// Answer to `GET /v1/services`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceList {
    pub index: u64,
    pub services: Vec<ServiceSummary>,
}

/// Body of every error answer: `{"error": {...}}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Machine-readable kind: `invalid_argument`, `not_found`, `unauthorized`, …
    pub code: String,
    pub message: String,
    /// The request field (body key, path segment or query parameter) that was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Serde adapter for durations written as humantime strings.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_defaults_fill_everything_but_address() {
        let r: Registration = serde_json::from_str(r#"{"address":"10.0.0.1:4143"}"#).unwrap();
        assert_eq!(r, Registration::new("10.0.0.1:4143"));
    }

    #[test]
    fn durations_round_trip_as_strings() {
        let mut r = Registration::new("a:1");
        r.ttl = Duration::from_millis(1500);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ttl"], "1s 500ms");
        let back: Registration = serde_json::from_value(json).unwrap();
        assert_eq!(back.ttl, Duration::from_millis(1500));
    }
}

/// Body of `POST /v1/ca/sign`: a PEM certificate signing request for one service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignRequest {
    pub service: String,
    /// PEM `CERTIFICATE REQUEST` whose only subject alternative name is the service's
    /// SPIFFE ID (see [`spiffe_id`]).
    pub csr: String,
}

/// Answer to `POST /v1/ca/sign`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignedCertificate {
    /// PEM leaf certificate.
    pub certificate: String,
    /// PEM certificate of the CA that signed it: the mesh's trust bundle.
    pub ca: String,
    /// RFC 3339 end of validity.
    pub not_after: String,
    #[serde(with = "duration_str")]
    pub ttl: Duration,
}

/// The SPIFFE ID of a service: `spiffe://<trust domain>/service/<name>`.
pub fn spiffe_id(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/service/{service}")
}

/// The service named by a SPIFFE ID of `trust_domain`, if it is one.
pub fn service_of(trust_domain: &str, id: &str) -> Option<String> {
    let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let service = rest.strip_prefix("/service/")?;
    crate::validate::service_name(service).ok()?;
    Some(service.to_owned())
}
