//! One service's series in one direction, resolved once so that a request costs no label
//! lookup, and the timer that records each response when its stream ends.

use std::sync::{Arc, OnceLock};

use http::StatusCode;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::time::Instant;

use super::labels::{Closing, Latency, Requests, Responses, SplicedBytes, SplicedClosed};
use super::{Direction, Metrics};
use crate::splice::Spliced;

/// One service's series in one direction. The request counter exists from the start;
/// the other series appear with their first response.
pub struct ServiceMetrics {
    pub(super) metrics: Arc<Metrics>,
    pub(super) direction: Direction,
    /// The label value (the name, or `other` past the cap).
    pub(super) service: String,
    pub(super) requests: IntCounter,
    /// Latency by classification: `[success, failure]`.
    pub(super) latency: [OnceLock<Histogram>; 2],
    /// `mesh_responses_total` for the common answers: 200 without, and with, gRPC status 0.
    pub(super) ok: [OnceLock<IntCounter>; 2],
}

// === impl ServiceMetrics ===

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
        let common = match (status, grpc_status, failure) {
            (StatusCode::OK, None, false) => Some(0),
            (StatusCode::OK, Some(0), false) => Some(1),
            _ => None,
        };
        let series = || {
            self.metrics.responses.get(&Responses {
                direction: self.direction,
                service: self.service.clone(),
                status: status.into(),
                grpc_status: grpc_status.into(),
                failure,
            })
        };
        match common {
            Some(i) => self.ok[i].get_or_init(series).inc(),
            None => series().inc(),
        }
    }

    fn latency(&self, failure: bool) -> &Histogram {
        self.latency[usize::from(failure)].get_or_init(|| {
            self.metrics.latency.get(&Latency {
                direction: self.direction,
                service: self.service.clone(),
                failure,
            })
        })
    }
}

/// A spliced connection, counted open while alive; [`closed`](Self::closed) records what
/// it carried.
pub struct SplicedGuard {
    service: Arc<ServiceMetrics>,
    open: IntGauge,
    started: Instant,
}

impl ServiceMetrics {
    /// Counts a connection that is now carried as bytes.
    pub fn spliced(self: &Arc<Self>) -> SplicedGuard {
        let labels = Requests {
            direction: self.direction,
            service: self.service.clone(),
        };
        self.metrics.spliced_opened.get(&labels).inc();
        let open = self.metrics.spliced_open.get(&labels);
        open.inc();
        SplicedGuard {
            service: self.clone(),
            open,
            started: Instant::now(),
        }
    }
}

impl SplicedGuard {
    /// Records the bytes each way, how long it was open and why it closed.
    pub fn closed(self, spliced: &Spliced) {
        let metrics = &self.service.metrics;
        for (from_client, bytes) in [(true, spliced.a_to_b), (false, spliced.b_to_a)] {
            let labels = SplicedBytes {
                direction: self.service.direction,
                service: self.service.service.clone(),
                from_client,
            };
            metrics.spliced_bytes.get(&labels).inc_by(bytes);
        }
        self.ended(Closing::Spliced(spliced.ending));
    }

    /// Records a connection that closed before any byte was carried, and why.
    pub fn not_carried(self, closing: Closing) {
        self.ended(closing);
    }

    fn ended(self, closing: Closing) {
        let metrics = &self.service.metrics;
        let (direction, service) = (self.service.direction, self.service.service.clone());
        let duration = metrics.spliced_duration.get(&Requests {
            direction,
            service: service.clone(),
        });
        duration.observe(self.started.elapsed().as_secs_f64());
        let closed = SplicedClosed {
            direction,
            service,
            closing,
        };
        metrics.spliced_closed.get(&closed).inc();
    }
}

impl Drop for SplicedGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Records one response when it completes.
pub struct ResponseTimer {
    service: Arc<ServiceMetrics>,
    started: Instant,
}

// === impl ResponseTimer ===

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
pub struct ConnectionGuard(pub(super) IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
