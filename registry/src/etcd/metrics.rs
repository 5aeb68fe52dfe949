//! The metrics of the etcd store, exported beside the registry's own on `/metrics`.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};

use crate::metrics::Metrics;

pub struct EtcdMetrics {
    /// Round trips to etcd by operation, with their latency.
    requests: HistogramVec,
    /// Failed round trips by operation.
    errors: IntCounterVec,
    /// From etcd accepting one of this replica's writes to this replica's catalog
    /// showing it (through the watch).
    pub watch_lag: Histogram,
    /// 1 while the replica cannot reach an etcd quorum and serves its last state.
    pub stale: IntGauge,
    /// The etcd revision this replica's catalog reflects.
    pub revision: IntGauge,
}

// === impl EtcdMetrics ===

impl EtcdMetrics {
    /// Creates the metrics and adds them to the registry's `/metrics`.
    pub fn new(registry: &Metrics) -> Self {
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let metrics = EtcdMetrics {
            requests: HistogramVec::new(
                HistogramOpts::new(
                    "mesh_registry_etcd_request_duration_seconds",
                    "Round trips to etcd by operation (txn is a write), successful or not.",
                )
                .buckets(buckets.clone()),
                &["op"],
            )
            .expect("valid metric"),
            errors: IntCounterVec::new(
                Opts::new(
                    "mesh_registry_etcd_errors_total",
                    "Round trips to etcd that failed (no member answered, or etcd refused).",
                ),
                &["op"],
            )
            .expect("valid metric"),
            watch_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "mesh_registry_etcd_watch_lag_seconds",
                    "From etcd accepting a write of this replica to its catalog showing it.",
                )
                .buckets(buckets),
            )
            .expect("valid metric"),
            stale: IntGauge::new(
                "mesh_registry_store_stale",
                "1 while etcd is unreachable and this replica answers from its last state.",
            )
            .expect("valid metric"),
            revision: IntGauge::new(
                "mesh_registry_etcd_revision",
                "The etcd revision this replica's catalog reflects.",
            )
            .expect("valid metric"),
        };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.errors.clone()),
            Box::new(metrics.watch_lag.clone()),
            Box::new(metrics.stale.clone()),
            Box::new(metrics.revision.clone()),
        ] {
            registry.add(collector);
        }
        metrics
    }

    pub fn observe(&self, op: &str, took: Duration, ok: bool) {
        self.requests
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
        if !ok {
            self.errors.with_label_values(&[op]).inc();
        }
    }
}
