//! One service's series in one direction, resolved once so that a request costs no label
//! lookup, and the timer that records each response when its stream ends.

use std::sync::{Arc, OnceLock};

use http::StatusCode;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::time::Instant;

use super::labels::{Closing, Latency, Requests, Responses, SplicedBytes, SplicedClosed};
use super::{Direction, Metrics};
use crate::classify::Class;
use crate::error::ErrorKind;
use crate::observe::Record;
use crate::splice::{Ending, Spliced};

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
            record: None,
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
    /// An opaque connection's record, when an observer wants it.
    record: Option<Box<Record>>,
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
            record: None,
        }
    }
}

impl SplicedGuard {
    /// The connection's record (an opaque connection's), completed when it closes.
    pub fn with_record(mut self, record: Option<Box<Record>>) -> Self {
        self.record = record;
        self
    }

    pub fn record_mut(&mut self) -> Option<&mut Record> {
        self.record.as_deref_mut()
    }

    /// Records the bytes each way, how long it was open and why it closed.
    pub fn closed(mut self, spliced: &Spliced) {
        if let Some(record) = self.record_mut() {
            record.request_bytes = spliced.a_to_b;
            record.response_bytes = spliced.b_to_a;
        }
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

    fn ended(mut self, closing: Closing) {
        let metrics = &self.service.metrics;
        let (direction, service) = (self.service.direction, self.service.service.clone());
        let duration = metrics.spliced_duration.get(&Requests {
            direction,
            service: service.clone(),
        });
        let elapsed = self.started.elapsed();
        duration.observe(elapsed.as_secs_f64());
        if let Some(mut record) = self.record.take() {
            record.duration = elapsed;
            record.failed = matches!(closing, Closing::Spliced(Ending::Reset));
            record.mesh_error = match closing {
                Closing::Denied => Some(ErrorKind::Forbidden.as_str().to_owned()),
                Closing::Unreachable => Some(ErrorKind::ConnectFailed.as_str().to_owned()),
                Closing::Spliced(_) => None,
            };
            metrics.observers.finish(record);
        }
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

/// Records one response when it completes, in the metrics and, when a record was
/// begun, for the observers.
pub struct ResponseTimer {
    service: Arc<ServiceMetrics>,
    started: Instant,
    record: Option<Box<Record>>,
}

// === impl ResponseTimer ===

impl ResponseTimer {
    /// `grpc_status` is that of the trailers (or trailers-only headers) when the call was
    /// gRPC; `failed` means the stream broke before its end.
    pub fn finish(self, status: StatusCode, grpc_status: Option<u32>, failed: bool) {
        let failure = failed || Class::of(status, grpc_status).is_failure();
        self.service.response(status, grpc_status, failure);
        let elapsed = self.started.elapsed();
        self.service.latency(failure).observe(elapsed.as_secs_f64());
        if let Some(mut record) = self.record {
            record.status = Some(status.as_u16());
            record.grpc_status = grpc_status;
            record.failed = failed;
            record.duration = elapsed;
            self.service.metrics.observers.finish(record);
        }
    }

    /// The request's record, kept until the response completes.
    pub fn with_record(mut self, record: Option<Box<Record>>) -> Self {
        self.record = record;
        self
    }

    /// The record being filled in, if any observer wants this request.
    pub fn record_mut(&mut self) -> Option<&mut Record> {
        self.record.as_deref_mut()
    }
}

/// An open connection, counted in `mesh_tcp_open_connections` while alive.
pub struct ConnectionGuard(pub(super) IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
