//! The proxy's Prometheus metrics (names and labels are the contract in docs/proxy.md's
//! metrics table, which `tests/metrics_doc.rs` checks against `/metrics`), in one
//! registry served on the admin port. Each family takes one label set type ([`labels`]).

mod labels;
mod reach;
mod service;

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

pub use self::labels::{Closing, Transport};
use self::labels::{
    Denied, Detections, Ejections, Endpoints, Labels, Latency, Open, Requests, Responses, Retries,
    Service, SplicedBytes, SplicedClosed, Updates,
};
pub use self::reach::RegistryReach;
pub use self::service::{ConnectionGuard, ResponseTimer, ServiceMetrics};
use crate::breaker::Rule;
use crate::detect::Detected;
use crate::endpoint::Source;
use crate::observe::Observers;
use crate::retry::Reason;

/// Distinct service names used as label values; later ones are counted as `other`, so an
/// app calling many hosts cannot blow up Prometheus.
pub const MAX_SERVICE_LABELS: usize = 100;

/// Distinct policy rule names used as label values; later ones are counted as `other`.
/// A document holds at most 256 rules, and documents change.
pub const MAX_RULE_LABELS: usize = 100;

/// The `rule` label of denials by `--allow`.
pub const ALLOW_LIST_RULE: &str = "allow-list";

/// A metric's name and help text.
type Def = (&'static str, &'static str);

const REQUESTS: Def = (
    "mesh_requests_total",
    "Requests received, by direction and service.",
);
const RESPONSES: Def = (
    "mesh_responses_total",
    "Responses completed, by status code, gRPC status and classification.",
);
const LATENCY: Def = (
    "mesh_response_latency_seconds",
    "Time from request received to response stream completed.",
);
const RETRIES: Def = (
    "mesh_retries_total",
    "Retries sent, by destination service and reason.",
);
const BUDGET_EXHAUSTED: Def = (
    "mesh_retry_budget_exhausted_total",
    "Failures returned because the retry budget was spent.",
);
const ENDPOINTS: Def = (
    "mesh_endpoints",
    "Known endpoints by destination service and state.",
);
const EJECTIONS: Def = (
    "mesh_endpoint_ejections_total",
    "Endpoints ejected, by the rule that ejected them.",
);
const OPEN_CONNECTIONS: Def = (
    "mesh_tcp_open_connections",
    "Open client connections per listener direction.",
);
const DISCOVERY_UPDATES: Def = (
    "mesh_discovery_updates_total",
    "Endpoint set updates applied, by destination service and source.",
);
const INBOUND_CONNECTIONS: Def = (
    "mesh_inbound_connections_total",
    "Inbound connections accepted by transport: tls, plaintext (permissive mode) or refused.",
);
const POLICY_DENIED: Def = (
    "mesh_policy_denied_total",
    "Inbound requests denied, by mode (enforce: refused with 403 / PERMISSION_DENIED; shadow: let through) and rule (an intention, default, or allow-list for --allow).",
);
const RATE_LIMITED: Def = (
    "mesh_rate_limited_total",
    "Requests refused by a service's limits (429 / RESOURCE_EXHAUSTED): inbound, refused by this sidecar; outbound, answered so by the destination (never retried at once).",
);
const REGISTRY_CONNECTED: Def = (
    "mesh_registry_connected",
    "1 when the last call to the registry succeeded, else 0.",
);
const SPLICED_OPENED: Def = (
    "mesh_spliced_connections_total",
    "Connections carried as bytes (tcp services, upgraded HTTP/1.1), by direction and service.",
);
const SPLICED_OPEN: Def = (
    "mesh_spliced_open_connections",
    "Connections carried as bytes open now.",
);
const SPLICED_BYTES: Def = (
    "mesh_spliced_bytes_total",
    "Bytes carried by spliced connections, from the client (the side that connected) or the server.",
);
const SPLICED_DURATION: Def = (
    "mesh_spliced_connection_duration_seconds",
    "How long spliced connections stayed open.",
);
const SPLICED_CLOSED: Def = (
    "mesh_spliced_closed_total",
    "Spliced connections closed, by reason: closed, reset, idle (timeout), shutdown, denied (by --allow) or unreachable (nothing accepted it).",
);
const DETECTIONS: Def = (
    "mesh_protocol_detections_total",
    "Connections to undeclared protocols by what their first byte said: http, tls, opaque or silent.",
);
const CERT_EXPIRY: Def = (
    "mesh_tls_cert_expiry_timestamp_seconds",
    "Unix time the sidecar's certificate expires.",
);
const CERT_ROTATIONS: Def = (
    "mesh_tls_cert_rotations_total",
    "Certificates renewed since start.",
);

/// Spliced connection durations, from 10 ms to 1 h.
const DURATION_BUCKETS: [f64; 9] = [0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0];

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

/// Endpoint states for `mesh_endpoints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    Ready,
    Ejected,
}

/// A metric family (a prometheus vec `V`) whose series are told apart by the label set
/// `L`.
pub struct Family<L, V> {
    vec: V,
    labels: PhantomData<fn(&L)>,
}

pub struct Metrics {
    registry: prometheus::Registry,
    requests: Family<Requests, IntCounterVec>,
    responses: Family<Responses, IntCounterVec>,
    latency: Family<Latency, HistogramVec>,
    retries: Family<Retries, IntCounterVec>,
    retry_budget_exhausted: Family<Service, IntCounterVec>,
    endpoints: Family<Endpoints, IntGaugeVec>,
    endpoint_ejections: Family<Ejections, IntCounterVec>,
    tcp_open: Family<Open, IntGaugeVec>,
    discovery_updates: Family<Updates, IntCounterVec>,
    inbound_connections: Family<Transport, IntCounterVec>,
    policy_denied: Family<Denied, IntCounterVec>,
    rate_limited: Family<Requests, IntCounterVec>,
    spliced_opened: Family<Requests, IntCounterVec>,
    spliced_open: Family<Requests, IntGaugeVec>,
    spliced_bytes: Family<SplicedBytes, IntCounterVec>,
    spliced_duration: Family<Requests, HistogramVec>,
    spliced_closed: Family<SplicedClosed, IntCounterVec>,
    detections: Family<Detections, IntCounterVec>,
    /// Whether the registry answers (`mesh_registry_connected`).
    pub registry_connected: Arc<RegistryReach>,
    /// Unix time the sidecar's certificate expires (mTLS on).
    pub cert_expiry: IntGauge,
    pub cert_rotations: IntCounter,
    /// Service names admitted as label values (a std Mutex: no await while held).
    services: Mutex<HashSet<String>>,
    /// Rule names admitted as label values (a std Mutex: no await while held).
    rules: Mutex<HashSet<String>>,
    /// Traces, access log and tap: what sees each call, beside these totals.
    pub observers: Observers,
}

// === impl Direction ===

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

// === impl EndpointState ===

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::Ejected => "ejected",
        }
    }
}

// === impl Family ===

impl<L: Labels, P: MetricVecBuilder + 'static> Family<L, MetricVec<P>> {
    /// The series for `labels`.
    pub fn get(&self, labels: &L) -> P::M {
        labels.with_values(|values| self.vec.with_label_values(values))
    }

    /// A family made by `new` from its label names, in `registry`.
    fn registered(
        registry: &prometheus::Registry,
        new: impl FnOnce(&[&str]) -> prometheus::Result<MetricVec<P>>,
    ) -> Self {
        Family {
            vec: registered(registry, new(L::NAMES)),
            labels: PhantomData,
        }
    }
}

impl<L: Labels> Family<L, IntCounterVec> {
    fn counter(registry: &prometheus::Registry, (name, help): Def) -> Self {
        Self::registered(registry, |names| {
            IntCounterVec::new(Opts::new(name, help), names)
        })
    }
}

impl<L: Labels> Family<L, IntGaugeVec> {
    fn gauge(registry: &prometheus::Registry, (name, help): Def) -> Self {
        Self::registered(registry, |names| {
            IntGaugeVec::new(Opts::new(name, help), names)
        })
    }
}

impl<L: Labels> Family<L, HistogramVec> {
    fn histogram(registry: &prometheus::Registry, def: Def) -> Self {
        Self::histogram_of(registry, def, &LATENCY_BUCKETS)
    }

    fn histogram_of(registry: &prometheus::Registry, (name, help): Def, buckets: &[f64]) -> Self {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        Self::registered(registry, |names| HistogramVec::new(opts, names))
    }
}

// === impl Metrics ===

impl Metrics {
    /// The metrics of a sidecar whose observers (traces, access log, tap) are all off.
    pub fn new() -> Arc<Self> {
        Self::observed(Observers::off())
    }

    /// The metrics, with the observers that see each call and the observers' counters.
    pub fn observed(observers: Observers) -> Arc<Self> {
        let r = prometheus::Registry::new();
        for collector in observers.counters().collectors() {
            r.register(collector).expect("observer counters are unique");
        }
        let m = Metrics {
            requests: Family::counter(&r, REQUESTS),
            responses: Family::counter(&r, RESPONSES),
            latency: Family::histogram(&r, LATENCY),
            retries: Family::counter(&r, RETRIES),
            retry_budget_exhausted: Family::counter(&r, BUDGET_EXHAUSTED),
            endpoints: Family::gauge(&r, ENDPOINTS),
            endpoint_ejections: Family::counter(&r, EJECTIONS),
            tcp_open: Family::gauge(&r, OPEN_CONNECTIONS),
            discovery_updates: Family::counter(&r, DISCOVERY_UPDATES),
            inbound_connections: Family::counter(&r, INBOUND_CONNECTIONS),
            policy_denied: Family::counter(&r, POLICY_DENIED),
            rate_limited: Family::counter(&r, RATE_LIMITED),
            spliced_opened: Family::counter(&r, SPLICED_OPENED),
            spliced_open: Family::gauge(&r, SPLICED_OPEN),
            spliced_bytes: Family::counter(&r, SPLICED_BYTES),
            spliced_duration: Family::histogram_of(&r, SPLICED_DURATION, &DURATION_BUCKETS),
            spliced_closed: Family::counter(&r, SPLICED_CLOSED),
            detections: Family::counter(&r, DETECTIONS),
            registry_connected: Arc::new(RegistryReach::new(registered(
                &r,
                IntGauge::new(REGISTRY_CONNECTED.0, REGISTRY_CONNECTED.1),
            ))),
            cert_expiry: registered(&r, IntGauge::new(CERT_EXPIRY.0, CERT_EXPIRY.1)),
            cert_rotations: registered(&r, IntCounter::new(CERT_ROTATIONS.0, CERT_ROTATIONS.1)),
            registry: r,
            services: Mutex::new(HashSet::new()),
            rules: Mutex::new(HashSet::new()),
            observers,
        };
        // Both directions appear from the start, at zero.
        for direction in [Direction::Inbound, Direction::Outbound] {
            m.tcp_open.get(&Open { direction }).set(0);
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
            requests: self.requests.get(&Requests {
                direction,
                service: service.clone(),
            }),
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
        for reason in Reason::ALL {
            self.retries.get(&Retries {
                service: service.clone(),
                reason,
            });
        }
        for rule in Rule::ALL {
            self.endpoint_ejections.get(&Ejections {
                service: service.clone(),
                rule,
            });
        }
        self.rate_limited.get(&Requests {
            direction: Direction::Outbound,
            service: service.clone(),
        });
        let labels = Service { service };
        self.retry_budget_exhausted.get(&labels);
        self.set_endpoints(&labels.service, EndpointState::Ejected, 0);
    }

    /// Counts an inbound connection by how it was taken.
    pub fn inbound_connection(&self, transport: Transport) {
        self.inbound_connections.get(&transport).inc();
    }

    /// Makes the local service's allow-list denial counter visible at zero.
    pub fn policy_added(&self, service: &str) {
        self.policy_denied
            .get(&self.denied_labels(service, "enforce", ALLOW_LIST_RULE));
    }

    /// Counts a request the allow-list refused.
    pub fn denied(&self, service: &str) {
        self.policy_denial(service, "enforce", ALLOW_LIST_RULE);
    }

    /// Counts a request a policy rule denied, in `mode` (`enforce` or `shadow`).
    pub fn policy_denial(&self, service: &str, mode: &'static str, rule: &str) {
        self.policy_denied
            .get(&self.denied_labels(service, mode, rule))
            .inc();
    }

    /// Counts a request refused by a service's limits: by this sidecar (inbound), or by
    /// the destination (outbound).
    pub fn rate_limited(&self, direction: Direction, service: &str) {
        let service = self.service_label(service);
        self.rate_limited
            .get(&Requests { direction, service })
            .inc();
    }

    fn denied_labels(&self, service: &str, mode: &'static str, rule: &str) -> Denied {
        let rule = {
            let mut admitted = self.rules.lock().expect("rules lock");
            if admitted.contains(rule) || admitted.len() < MAX_RULE_LABELS {
                admitted.insert(rule.to_owned());
                rule.to_owned()
            } else {
                "other".to_owned()
            }
        };
        Denied {
            service: self.service_label(service),
            mode,
            rule,
        }
    }

    /// Counts a retry sent to `service`.
    pub fn retried(&self, service: &str, reason: Reason) {
        let service = self.service_label(service);
        self.retries.get(&Retries { service, reason }).inc();
    }

    /// Counts a failure returned because the retry budget was spent.
    pub fn budget_exhausted(&self, service: &str) {
        let labels = self.service_labels(service);
        self.retry_budget_exhausted.get(&labels).inc();
    }

    /// Counts an endpoint ejection, by the rule that ejected it.
    pub fn ejected(&self, service: &str, rule: Rule) {
        let service = self.service_label(service);
        self.endpoint_ejections
            .get(&Ejections { service, rule })
            .inc();
    }

    pub fn set_endpoints(&self, service: &str, state: EndpointState, n: usize) {
        let service = self.service_label(service);
        self.endpoints
            .get(&Endpoints { service, state })
            .set(n as i64);
    }

    pub fn discovery_update(&self, service: &str, source: Source) {
        let service = self.service_label(service);
        self.discovery_updates
            .get(&Updates { service, source })
            .inc();
    }

    /// Counts a connection whose protocol was detected, by what was detected.
    pub fn detected(&self, direction: Direction, detected: Detected) {
        self.detections
            .get(&Detections {
                direction,
                detected,
            })
            .inc();
    }

    /// Counts an accepted connection until the guard drops.
    pub fn connection_opened(&self, direction: Direction) -> ConnectionGuard {
        let gauge = self.tcp_open.get(&Open { direction });
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

    fn service_labels(&self, service: &str) -> Service {
        Service {
            service: self.service_label(service),
        }
    }
}

/// A metric without labels, registered.
fn registered<M: Collector + Clone + 'static>(
    registry: &prometheus::Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

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
    fn rule_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_RULE_LABELS + 5 {
            m.policy_denial("web", "shadow", &format!("r{i}"));
        }
        m.policy_denial("web", "shadow", "r0");
        let text = m.render();
        assert!(
            text.contains(
                r#"mesh_policy_denied_total{mode="shadow",rule="other",service="web"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"mesh_policy_denied_total{mode="shadow",rule="r0",service="web"} 2"#),
            "{text}"
        );
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
        // A gRPC status counts as the HTTP status it stands for: NOT_FOUND as a 404,
        // RESOURCE_EXHAUSTED as a 429, INTERNAL as a 500.
        web.request().finish(StatusCode::OK, Some(5), false);
        web.request().finish(StatusCode::OK, Some(8), false);
        web.request().finish(StatusCode::OK, Some(13), false);
        let text = m.render();
        assert!(
            text.contains(r#"mesh_requests_total{direction="outbound",service="web"} 8"#),
            "{text}"
        );
        assert!(text.contains(r#"classification="failure",direction="outbound",grpc_status="14",service="web",status_code="200"} 1"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="",service="web",status_code="404"} 1"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="",service="web",status_code="200"} 2"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="0",service="web",status_code="200"} 1"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="5",service="web",status_code="200"} 1"#), "{text}");
        assert!(text.contains(r#"classification="success",direction="outbound",grpc_status="8",service="web",status_code="200"} 1"#), "{text}");
        assert!(text.contains(r#"classification="failure",direction="outbound",grpc_status="13",service="web",status_code="200"} 1"#), "{text}");
        assert!(text.contains(r#"mesh_response_latency_seconds_count{classification="success",direction="outbound",service="web"} 6"#), "{text}");
        assert!(text.contains(r#"mesh_response_latency_seconds_count{classification="failure",direction="outbound",service="web"} 2"#), "{text}");
    }
}
