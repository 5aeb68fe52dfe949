//! The proxy's Prometheus metrics (names and labels are the contract in
//! `ARCHITECTURE.md`), in one registry served on the admin port.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, TextEncoder,
};
use tokio::time::Instant;

/// Distinct service names used as label values; later ones are counted as `other`, so an
/// app calling many hosts cannot blow up Prometheus.
pub const MAX_SERVICE_LABELS: usize = 100;

/// Latency buckets from 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From a peer to the local app.
    Inbound,
    /// From the local app to a destination service.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Endpoint states for `mesh_endpoints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    Ready,
    Ejected,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::Ejected => "ejected",
        }
    }
}

pub struct Metrics {
    registry: prometheus::Registry,
    requests: IntCounterVec,
    responses: IntCounterVec,
    latency: HistogramVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    endpoints: IntGaugeVec,
    endpoint_ejections: IntCounterVec,
    tcp_open: IntGaugeVec,
    discovery_updates: IntCounterVec,
    pub registry_connected: IntGauge,
    inbound_connections: IntCounterVec,
    policy_denied: IntCounterVec,
    /// Unix time the sidecar's certificate expires (mTLS on).
    pub cert_expiry: IntGauge,
    pub cert_rotations: prometheus::IntCounter,
    /// Service names admitted as label values (a std Mutex: no await while held).
    services: Mutex<HashSet<String>>,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Arc<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let m = Metrics {
            registry: prometheus::Registry::new(),
            requests: counter(
                "mesh_requests_total",
                "Requests received, by direction and service.",
                &["direction", "service"],
            ),
            responses: counter(
                "mesh_responses_total",
                "Responses completed, by status code, gRPC status and classification.",
                &[
                    "direction",
                    "service",
                    "status_code",
                    "grpc_status",
                    "classification",
                ],
            ),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "mesh_response_latency_seconds",
                    "Time from request received to response stream completed.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["direction", "service", "classification"],
            )
            .expect("valid metric"),
            retries: counter(
                "mesh_retries_total",
                "Retries sent, by destination service and reason.",
                &["service", "reason"],
            ),
            retry_budget_exhausted: counter(
                "mesh_retry_budget_exhausted_total",
                "Failures returned because the retry budget was spent.",
                &["service"],
            ),
            endpoints: IntGaugeVec::new(
                Opts::new(
                    "mesh_endpoints",
                    "Known endpoints by destination service and state.",
                ),
                &["service", "state"],
            )
            .expect("valid metric"),
            endpoint_ejections: counter(
                "mesh_endpoint_ejections_total",
                "Endpoints ejected for failing.",
                &["service"],
            ),
            tcp_open: IntGaugeVec::new(
                Opts::new(
                    "mesh_tcp_open_connections",
                    "Open client connections per listener direction.",
                ),
                &["direction"],
            )
            .expect("valid metric"),
            discovery_updates: counter(
                "mesh_discovery_updates_total",
                "Endpoint set updates applied, by destination service and source.",
                &["service", "source"],
            ),
            registry_connected: IntGauge::new(
                "mesh_registry_connected",
                "1 when the last call to the registry succeeded, else 0.",
            )
            .expect("valid metric"),
            inbound_connections: counter(
                "mesh_inbound_connections_total",
                "Inbound connections accepted by transport: tls, plaintext (permissive mode) or refused.",
                &["tls"],
            ),
            policy_denied: counter(
                "mesh_policy_denied_total",
                "Inbound requests refused by the caller allow-list (403 / PERMISSION_DENIED).",
                &["service"],
            ),
            cert_expiry: IntGauge::new(
                "mesh_tls_cert_expiry_timestamp_seconds",
                "Unix time the sidecar's certificate expires.",
            )
            .expect("valid metric"),
            cert_rotations: prometheus::IntCounter::new(
                "mesh_tls_cert_rotations_total",
                "Certificates renewed since start.",
            )
            .expect("valid metric"),
            services: Mutex::new(HashSet::new()),
        };
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.responses.clone()),
            Box::new(m.latency.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.retry_budget_exhausted.clone()),
            Box::new(m.endpoints.clone()),
            Box::new(m.endpoint_ejections.clone()),
            Box::new(m.tcp_open.clone()),
            Box::new(m.discovery_updates.clone()),
            Box::new(m.registry_connected.clone()),
            Box::new(m.inbound_connections.clone()),
            Box::new(m.policy_denied.clone()),
            Box::new(m.cert_expiry.clone()),
            Box::new(m.cert_rotations.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        // Both directions appear from the start, at zero.
        for d in [Direction::Inbound, Direction::Outbound] {
            m.tcp_open.with_label_values(&[d.as_str()]).set(0);
        }
        Arc::new(m)
    }

    /// The label value for a service: its name while under the cap, else `other`.
    pub fn service_label(&self, service: &str) -> String {
        let mut admitted = self.services.lock().expect("services lock");
        if admitted.contains(service) {
            return service.to_owned();
        }
        if admitted.len() < MAX_SERVICE_LABELS {
            admitted.insert(service.to_owned());
            return service.to_owned();
        }
        "other".to_owned()
    }

    /// The metric handles of one service in one direction, resolved once: a request
    /// then costs no label lookup.
    pub fn service(self: &Arc<Self>, direction: Direction, service: &str) -> Arc<ServiceMetrics> {
        let service = self.service_label(service);
        Arc::new(ServiceMetrics {
            requests: self
                .requests
                .with_label_values(&[direction.as_str(), &service]),
            latency: Default::default(),
            ok: Default::default(),
            metrics: self.clone(),
            direction,
            service,
        })
    }

    /// Makes a new destination's per-service series visible at zero, so dashboards and
    /// alerts see them before the first event.
    pub fn destination_added(&self, service: &str) {
        let service = self.service_label(service);
        self.retry_budget_exhausted.with_label_values(&[&service]);
        for reason in crate::retry::Reason::ALL {
            self.retries.with_label_values(&[&service, reason.as_str()]);
        }
        self.endpoint_ejections.with_label_values(&[&service]);
        self.endpoints
            .with_label_values(&[&service, EndpointState::Ejected.as_str()])
            .set(0);
    }

    /// Counts an inbound connection by transport (`tls`, `plaintext`, `refused`).
    pub fn inbound_connection(&self, kind: &'static str) {
        self.inbound_connections.with_label_values(&[kind]).inc();
    }

    /// Makes the local service's denial counter visible at zero (with an allow-list).
    pub fn policy_added(&self, service: &str) {
        let service = self.service_label(service);
        self.policy_denied.with_label_values(&[&service]);
    }

    /// Counts a request the allow-list refused.
    pub fn denied(&self, service: &str) {
        let service = self.service_label(service);
        self.policy_denied.with_label_values(&[&service]).inc();
    }

    /// Counts a retry sent to `service`.
    pub fn retried(&self, service: &str, reason: &str) {
        let service = self.service_label(service);
        self.retries.with_label_values(&[&service, reason]).inc();
    }

    /// Counts a failure returned because the retry budget was spent.
    pub fn budget_exhausted(&self, service: &str) {
        let service = self.service_label(service);
        self.retry_budget_exhausted
            .with_label_values(&[&service])
            .inc();
    }

    /// Counts an endpoint ejection.
    pub fn ejected(&self, service: &str) {
        let service = self.service_label(service);
        self.endpoint_ejections.with_label_values(&[&service]).inc();
    }

    pub fn set_endpoints(&self, service: &str, state: EndpointState, n: usize) {
        let service = self.service_label(service);
        self.endpoints
            .with_label_values(&[&service, state.as_str()])
            .set(n as i64);
    }

    pub fn discovery_update(&self, service: &str, source: crate::endpoint::Source) {
        let service = self.service_label(service);
        self.discovery_updates
            .with_label_values(&[&service, source.as_str()])
            .inc();
    }

    /// Counts an accepted connection until the guard drops.
    pub fn connection_opened(self: &Arc<Self>, direction: Direction) -> ConnectionGuard {
        let gauge = self.tcp_open.with_label_values(&[direction.as_str()]);
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// One service's series in one direction. The request counter exists from the start;
/// the other series appear with their first response.
pub struct ServiceMetrics {
    metrics: Arc<Metrics>,
    direction: Direction,
    /// The label value (the name, or `other` past the cap).
    service: String,
    requests: IntCounter,
    /// Latency by classification: `[success, failure]`.
    latency: [OnceLock<Histogram>; 2],
    /// `mesh_responses_total` for the common answers: 200 without, and with, gRPC status 0.
    ok: [OnceLock<IntCounter>; 2],
}

impl ServiceMetrics {
    /// Counts a request and returns the timer that records its response.
    pub fn request(self: &Arc<Self>) -> ResponseTimer {
        self.request_since(Instant::now())
    }

    /// As [`request`](Self::request), for a request that arrived at `started`.
    pub fn request_since(self: &Arc<Self>, started: Instant) -> ResponseTimer {
        self.requests.inc();
        ResponseTimer {
            service: self.clone(),
            started,
        }
    }

    fn response(&self, status: StatusCode, grpc_status: Option<u32>, failure: bool) {
        let classification = classification(failure);
        let common = match (status, grpc_status, failure) {
            (StatusCode::OK, None, false) => Some(0),
            (StatusCode::OK, Some(0), false) => Some(1),
            _ => None,
        };
        let labels = |grpc: &str| {
            self.metrics.responses.with_label_values(&[
                self.direction.as_str(),
                &self.service,
                status.as_str(),
                grpc,
                classification,
            ])
        };
        match common {
            Some(i) => self.ok[i]
                .get_or_init(|| labels(if i == 0 { "" } else { "0" }))
                .inc(),
            None => labels(&grpc_status.map(|c| c.to_string()).unwrap_or_default()).inc(),
        }
    }

    fn latency(&self, failure: bool) -> &Histogram {
        self.latency[usize::from(failure)].get_or_init(|| {
            self.metrics.latency.with_label_values(&[
                self.direction.as_str(),
                &self.service,
                classification(failure),
            ])
        })
    }
}

/// The `classification` label value.
fn classification(failure: bool) -> &'static str {
    if failure { "failure" } else { "success" }
}

/// Records one response when it completes.
pub struct ResponseTimer {
    service: Arc<ServiceMetrics>,
    started: Instant,
}

impl ResponseTimer {
    /// `grpc_status` is that of the trailers (or trailers-only headers) when the call was
    /// gRPC; `failed` means the stream broke before its end.
    pub fn finish(self, status: StatusCode, grpc_status: Option<u32>, failed: bool) {
        let failure =
            failed || status.is_server_error() || grpc_status.is_some_and(|code| code != 0);
        self.service.response(status, grpc_status, failure);
        self.service
            .latency(failure)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// An open connection, counted in `mesh_tcp_open_connections` while alive.
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_SERVICE_LABELS {
            assert_eq!(m.service_label(&format!("s{i}")), format!("s{i}"));
        }
        assert_eq!(m.service_label("one-too-many"), "other");
        assert_eq!(m.service_label("s0"), "s0");
    }

    #[test]
    fn responses_are_classified_by_http_and_grpc_status() {
        let m = Metrics::new();
        let web = m.service(Direction::Outbound, "web");
        web.request().finish(StatusCode::OK, None, false);
        web.request().finish(StatusCode::OK, Some(14), false);
        web.request().finish(StatusCode::NOT_FOUND, None, false);
        web.request().finish(StatusCode::OK, None, false);
        web.request().finish(StatusCode::OK, Some(0), false);
        let text = m.render();
        assert!(
            text.contains(r#"mesh_requests_total{direction="outbound",service="web"} 5"#),
            "{text}"
        );
        assert!(text.contains(r#"classification="failure",direction="outbound",grpc_status="14",service="web",status_code="200"} 1"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="",service="web",status_code="404"} 1"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="",service="web",status_code="200"} 2"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="0",service="web",status_code="200"} 1"#), "{text}");
        assert!(text.contains(r#"mesh_response_latency_seconds_count{classification="success",direction="outbound",service="web"} 4"#), "{text}");
        assert!(text.contains(r#"mesh_response_latency_seconds_count{classification="failure",direction="outbound",service="web"} 1"#), "{text}");
    }
}
