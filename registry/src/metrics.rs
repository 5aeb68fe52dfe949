//! The registry's Prometheus metrics, all in one registry.

use std::collections::BTreeMap;
use std::sync::Mutex;

use mesh_registry_api::Status;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder};

use crate::catalog::Catalog;
use crate::server::connection::Expired;

/// Services named in `mesh_registry_instances`; the rest are summed under `other` so a
/// flood of service names cannot blow up Prometheus.
pub const MAX_SERVICE_LABELS: usize = 500;

/// The API routes, as the bounded `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Register,
    Heartbeat,
    Deregister,
    ListServices,
    GetService,
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
    PrometheusTargets,
    CaSign,
    CaBundle,
    Events,
    SidecarAdmin,
    GetPolicy,
    PutPolicy,
    DeletePolicy,
    /// The dashboard's files and the redirects to it.
    Ui,
    /// Anything that matched no route.
    Unknown,
}

// === impl Route ===

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Register => "register",
            Route::Heartbeat => "heartbeat",
            Route::Deregister => "deregister",
            Route::ListServices => "list_services",
            Route::GetService => "get_service",
            Route::Metrics => "metrics",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::OpenApi => "openapi",
            Route::PrometheusTargets => "prometheus_targets",
            Route::CaSign => "ca_sign",
            Route::CaBundle => "ca_bundle",
            Route::Events => "events",
            Route::SidecarAdmin => "sidecar_admin",
            Route::GetPolicy => "get_policy",
            Route::PutPolicy => "put_policy",
            Route::DeletePolicy => "delete_policy",
            Route::Ui => "ui",
            Route::Unknown => "unknown",
        }
    }
}

pub struct Metrics {
    registry: prometheus::Registry,
    instances: IntGaugeVec,
    http_requests: IntCounterVec,
    pub watchers: IntGauge,
    pub open_connections: IntGauge,
    connections_expired: IntCounterVec,
    pub lease_expirations: IntCounter,
    pub expiry_guard_spared: IntCounter,
    pub snapshot_failures: IntCounter,
    /// One render at a time: each resets the instance gauges and sets them again, and a
    /// concurrent scrape must not gather them half set. A std Mutex: no await under it.
    rendering: Mutex<()>,
}

/// The labels of `mesh_registry_http_requests_total`.
struct RequestLabels {
    route: Route,
    code: u16,
}

/// The labels of `mesh_registry_instances`.
struct InstanceLabels<'a> {
    service: &'a str,
    status: Status,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: prometheus::Registry::new(),
            instances: gauge_vec(
                "mesh_registry_instances",
                "Registered instances by service and status.",
                &InstanceLabels::NAMES,
            ),
            http_requests: counter_vec(
                "mesh_registry_http_requests_total",
                "HTTP requests answered, by route and status code.",
                &RequestLabels::NAMES,
            ),
            watchers: gauge(
                "mesh_registry_watchers",
                "Blocking queries waiting for a change.",
            ),
            open_connections: gauge(
                "mesh_registry_open_connections",
                "Client connections being served (at most --max-connections).",
            ),
            connections_expired: counter_vec(
                "mesh_registry_connections_expired_total",
                "Client connections the registry closed, by reason: no request within the \
                 header read timeout, none open for the idle timeout, or a client that \
                 stopped reading.",
                &["reason"],
            ),
            lease_expirations: counter(
                "mesh_registry_lease_expirations_total",
                "Leases that ran out without a heartbeat (the instance turned critical).",
            ),
            expiry_guard_spared: counter(
                "mesh_registry_expiry_guard_spared_total",
                "Leases extended by the mass-expiry guard instead of expiring.",
            ),
            snapshot_failures: counter(
                "mesh_registry_snapshot_failures_total",
                "Snapshot writes that failed (the catalog is still served from memory).",
            ),
            rendering: Mutex::new(()),
        };
        metrics.register_all();
        // Every reason from the start, so a rate over it starts from 0 rather than absent.
        for why in Expired::ALL {
            metrics
                .connections_expired
                .with_label_values(&[why.label()]);
        }
        metrics
    }

    fn register_all(&self) {
        for collector in [
            Box::new(self.instances.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.http_requests.clone()),
            Box::new(self.watchers.clone()),
            Box::new(self.open_connections.clone()),
            Box::new(self.connections_expired.clone()),
            Box::new(self.lease_expirations.clone()),
            Box::new(self.expiry_guard_spared.clone()),
            Box::new(self.snapshot_failures.clone()),
        ] {
            self.registry
                .register(collector)
                .expect("metric names are unique");
        }
    }

    /// Adds a collector of another part of the registry (the etcd store's) to `/metrics`.
    pub fn add(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .expect("metric names are unique");
    }

    /// Counts a connection the registry closed, by why.
    pub fn connection_expired(&self, why: Expired) {
        self.connections_expired
            .with_label_values(&[why.label()])
            .inc();
    }

    pub fn count_request(&self, route: Route, code: u16) {
        let labels = RequestLabels { route, code };
        self.http_requests.with_label_values(&labels.values()).inc();
    }

    /// Prometheus text exposition, with the instance gauges read from the catalog now.
    pub fn render(&self, catalog: &Catalog) -> String {
        let _rendering = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.instances.reset();
        for ((service, status), n) in fold_services(catalog.counts()) {
            let labels = InstanceLabels {
                service: &service,
                status,
            };
            self.instances
                .with_label_values(&labels.values())
                .set(n as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// === impl RequestLabels ===

impl RequestLabels {
    /// Names in the order of [`RequestLabels::values`].
    const NAMES: [&'static str; 2] = ["route", "code"];

    fn values(&self) -> [String; 2] {
        [self.route.label().to_owned(), self.code.to_string()]
    }
}

// === impl InstanceLabels ===

impl<'a> InstanceLabels<'a> {
    /// Names in the order of [`InstanceLabels::values`].
    const NAMES: [&'static str; 2] = ["service", "status"];

    fn values(&self) -> [&'a str; 2] {
        [self.service, self.status.as_str()]
    }
}

// The metrics' constructors fail only on invalid names, and ours are constants.

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// Keeps the first [`MAX_SERVICE_LABELS`] service names (alphabetically) and sums the
/// rest under `other`.
fn fold_services(counts: Vec<(String, Status, usize)>) -> BTreeMap<(String, Status), usize> {
    let mut names: Vec<&str> = counts.iter().map(|(s, _, _)| s.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let kept: std::collections::HashSet<String> = names
        .into_iter()
        .take(MAX_SERVICE_LABELS)
        .map(str::to_owned)
        .collect();
    let mut out = BTreeMap::new();
    for (service, status, n) in counts {
        let label = if kept.contains(&service) {
            service
        } else {
            "other".to_owned()
        };
        *out.entry((label, status)).or_insert(0) += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent scrapes each see every service: none gathers the gauges while another
    /// has reset them.
    #[test]
    fn concurrent_renders_each_show_every_service() {
        let catalog = Catalog::new(std::time::Duration::from_secs(30));
        let now = tokio::time::Instant::now();
        for i in 0..20 {
            let registration = mesh_registry_api::Registration::new("h:1");
            catalog
                .register(&format!("s{i:02}"), "a", registration, "o", now)
                .unwrap();
        }
        let metrics = Metrics::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        let text = metrics.render(&catalog);
                        let shown = text
                            .lines()
                            .filter(|l| l.starts_with("mesh_registry_instances{"))
                            .count();
                        assert!(shown >= 20, "a scrape saw {shown} of 20 services");
                    }
                });
            }
        });
    }

    #[test]
    fn services_past_the_cap_fold_into_other() {
        let counts = (0..MAX_SERVICE_LABELS + 3)
            .map(|i| (format!("s{i:04}"), Status::Passing, 2))
            .collect();
        let folded = fold_services(counts);
        assert_eq!(folded.len(), MAX_SERVICE_LABELS + 1);
        assert_eq!(folded[&("other".to_owned(), Status::Passing)], 6);
    }
}
