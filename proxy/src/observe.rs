//! Seeing single calls, beside the metrics' totals: OpenTelemetry traces ([`export`]),
//! an access log ([`access_log`]) and a live tap on the admin port ([`tap`]).
//!
//! Each is off until asked for, and costs a request nothing then but one check. When one
//! is on, a request gets a [`Record`] at arrival ([`Observers::begin`]), filled in along
//! the path (tries, endpoint) and completed when its answer's stream ends
//! ([`Observers::finish`], from the response timer). The observers queue what they are
//! given and do their work on tasks of their own: a full queue drops (and counts) rather
//! than making a request wait.
//!
//! Trace context follows W3C `traceparent` ([`context`]): with `--trace-collector` set,
//! each hop is a span, the child of the caller's; sampling follows the parent, and
//! `--trace-sample-ratio` decides for a trace that starts here.

pub mod access_log;
pub mod context;
pub mod export;
mod otlp;
pub mod record;
pub mod tap;

use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderName, Request, Uri};
use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::task::JoinHandle;

use self::access_log::AccessLog;
use self::context::{Parent, TRACEPARENT, Trace};
use self::export::Exporter;
pub use self::record::{Kind, Record};
use self::tap::Tap;
use crate::flags::Invalid;
use crate::metrics::Direction;

/// Traces, access log and tap.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Observability")]
pub struct ObserveConfig {
    /// OTLP/HTTP (protobuf) endpoint to send spans to, e.g.
    /// `http://otel-collector:4318/v1/traces` (`/v1/traces` is added to a URL without a
    /// path). Unset: no spans, and `traceparent` passes through untouched.
    #[arg(long, env = "MESH_TRACE_COLLECTOR")]
    pub trace_collector: Option<String>,

    /// Share of traces starting at this sidecar that are recorded, 0 to 1. A request
    /// that carries a `traceparent` follows its parent's decision instead.
    #[arg(long, env = "MESH_TRACE_SAMPLE_RATIO", default_value_t = 0.0)]
    pub trace_sample_ratio: f64,

    /// One JSON line per request or carried connection: `off`, `stdout`, or a file path
    /// (appended to).
    #[arg(
        long,
        env = "MESH_ACCESS_LOG",
        default_value = "off",
        value_name = "off|stdout|FILE"
    )]
    pub access_log: AccessLogTarget,

    /// Request headers whose values the tap shows; every other header's value is
    /// redacted. Comma-separated names.
    #[arg(
        long,
        env = "MESH_TAP_HEADERS",
        value_delimiter = ',',
        value_name = "NAME,NAME"
    )]
    pub tap_headers: Vec<String>,
}

/// Where access-log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

/// Who the spans are from (OpenTelemetry's resource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `service.name`: the local service, or `mesh-proxy` for a sidecar without one.
    pub service: String,
    /// `service.instance.id`, when registered.
    pub instance: Option<String>,
}

/// The observers this sidecar runs, and their counters.
pub struct Observers {
    tracer: Option<Tracer>,
    access_log: Option<AccessLog>,
    pub tap: Tap,
    trust_domain: String,
    counters: Counters,
}

struct Tracer {
    ratio: f64,
    exporter: Exporter,
}

/// What the observers drop and send, for `/metrics`.
#[derive(Clone)]
pub struct Counters {
    /// Spans the collector accepted.
    pub spans_exported: IntCounter,
    /// Spans lost, by `reason`: `queue_full` or `export_failed`.
    pub spans_dropped: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub tap_dropped: IntCounter,
}

/// The observers' tasks, ended by [`Observers::close`].
#[derive(Default)]
pub struct Tasks(Vec<JoinHandle<()>>);

// === impl ObserveConfig ===

impl Default for ObserveConfig {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl ObserveConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let ratio = self.trace_sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Invalid::new("--trace-sample-ratio", "must be from 0 to 1"));
        }
        if ratio > 0.0 && self.trace_collector.is_none() {
            return Err(Invalid::new(
                "--trace-sample-ratio",
                "needs --trace-collector: sampled spans need somewhere to go",
            ));
        }
        self.collector()?;
        self.tap_headers()?;
        Ok(())
    }

    /// The OTLP/HTTP traces URL, when set.
    pub fn collector(&self) -> Result<Option<Uri>, Invalid> {
        let Some(url) = &self.trace_collector else {
            return Ok(None);
        };
        let invalid = |why: &str| Invalid::new("--trace-collector", format!("{url:?} {why}"));
        let uri: Uri = url.parse().map_err(|_| invalid("is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(invalid("must be an http:// URL with a host"));
        }
        if matches!(uri.path(), "" | "/") {
            let authority = uri.authority().expect("a host").as_str();
            let full = format!("http://{authority}/v1/traces");
            return Ok(Some(full.parse().map_err(|_| invalid("is not a URL"))?));
        }
        Ok(Some(uri))
    }

    fn tap_headers(&self) -> Result<Vec<HeaderName>, Invalid> {
        let names = self
            .tap_headers
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty());
        names
            .map(|name| {
                HeaderName::try_from(name).map_err(|_| {
                    Invalid::new("--tap-headers", format!("{name:?} is not a header name"))
                })
            })
            .collect()
    }
}

// === impl AccessLogTarget ===

impl std::str::FromStr for AccessLogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(AccessLogTarget::Off),
            "stdout" | "-" => Ok(AccessLogTarget::Stdout),
            "" => Err("must be off, stdout or a file path".into()),
            path => Ok(AccessLogTarget::File(path.into())),
        }
    }
}

// === impl Observers ===

impl Observers {
    /// Every observer off.
    pub fn off() -> Observers {
        let counters = Counters::new();
        Observers {
            tracer: None,
            access_log: None,
            tap: Tap::new(Vec::new(), counters.tap_dropped.clone()),
            trust_domain: String::new(),
            counters,
        }
    }

    /// Starts the observers `config` turns on; an access-log file that cannot be opened
    /// is an error naming it.
    pub fn start(
        config: &ObserveConfig,
        resource: Resource,
        trust_domain: &str,
    ) -> Result<(Observers, Tasks), Invalid> {
        let counters = Counters::new();
        let mut tasks = Tasks::default();
        let tracer = match config.collector()? {
            Some(collector) => {
                let (exporter, task) = Exporter::start(collector, resource, counters.clone());
                tasks.0.push(task);
                Some(Tracer {
                    ratio: config.trace_sample_ratio,
                    exporter,
                })
            }
            None => None,
        };
        let access_log = match &config.access_log {
            AccessLogTarget::Off => None,
            target => {
                let dropped = counters.access_log_dropped.clone();
                let (log, task) = AccessLog::open(target, dropped).map_err(|e| {
                    Invalid::new("--access-log", format!("{target:?} cannot be opened: {e}"))
                })?;
                tasks.0.push(task);
                Some(log)
            }
        };
        let tap = Tap::new(config.tap_headers()?, counters.tap_dropped.clone());
        let observers = Observers {
            tracer,
            access_log,
            tap,
            trust_domain: trust_domain.to_owned(),
            counters,
        };
        Ok((observers, tasks))
    }

    /// At a request's arrival: this hop's trace context (written into the request for
    /// the next hop when tracing is on), and the request's record if any observer wants
    /// it. None costs nothing more.
    pub fn begin<B>(
        &self,
        direction: Direction,
        service: &str,
        request: &mut Request<B>,
    ) -> Option<Box<Record>> {
        let tapping = self.tap.active();
        let trace = match &self.tracer {
            Some(tracer) => {
                let parent = request.headers().get(TRACEPARENT).and_then(Parent::parse);
                let ratio = tracer.ratio;
                let trace = Trace::child_of(parent, |id| context::ratio_sampled(ratio, id));
                request.headers_mut().insert(TRACEPARENT, trace.header());
                Some(trace)
            }
            // Not tracing: the caller's trace id still names the request in logs.
            None if self.access_log.is_some() || tapping => {
                let parent = request.headers().get(TRACEPARENT).and_then(Parent::parse);
                parent.map(|p| Trace {
                    trace_id: p.trace_id,
                    span_id: p.span_id,
                    parent: None,
                    sampled: false,
                })
            }
            None => None,
        };
        let sampled = trace.is_some_and(|t| t.sampled);
        if !(sampled || self.access_log.is_some() || tapping) {
            return None;
        }
        let record = Record::request(direction, service, request, trace, tapping);
        Some(Box::new(record))
    }

    /// A record with no request (an opaque connection), if any observer wants one.
    pub fn connection(&self, direction: Direction, service: &str) -> Option<Box<Record>> {
        let wanted = self.access_log.is_some() || self.tap.active();
        wanted.then(|| Box::new(Record::new(direction, Kind::Tcp, service)))
    }

    /// A completed call, handed to every observer that is on.
    pub fn finish(&self, record: Box<Record>) {
        let record: Arc<Record> = Arc::from(record);
        if let Some(tracer) = &self.tracer
            && record.trace.is_some_and(|t| t.sampled)
        {
            tracer.exporter.send(record.clone());
        }
        if let Some(log) = &self.access_log {
            log.send(record.clone());
        }
        self.tap.publish(&record);
    }

    /// The SPIFFE ID of a service in this mesh (for a record's peer identity).
    pub fn spiffe_id(&self, service: &str) -> String {
        mesh_registry_api::spiffe_id(&self.trust_domain, service)
    }

    /// Whether spans are being recorded at all.
    pub fn tracing(&self) -> bool {
        self.tracer.is_some()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Sends what is queued and ends the observers' tasks: those still sending after
    /// `bound` are aborted, so none outlives the sidecar.
    pub async fn close(&self, tasks: Tasks, bound: std::time::Duration) {
        if let Some(tracer) = &self.tracer {
            tracer.exporter.close();
        }
        if let Some(log) = &self.access_log {
            log.close();
        }
        let deadline = tokio::time::Instant::now() + bound;
        for mut task in tasks.0 {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("an observer had not finished sending within {bound:?}; stopped");
                task.abort();
                let _ = task.await;
            }
        }
    }
}

// === impl Counters ===

impl Counters {
    fn new() -> Counters {
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help)).expect("a valid counter")
        };
        let dropped = Opts::new(
            "mesh_trace_spans_dropped_total",
            "Spans not sent, by reason: queue_full or export_failed.",
        );
        let spans_dropped = IntCounterVec::new(dropped, &["reason"]).expect("a valid counter");
        // Both reasons appear from the start, at zero.
        for reason in ["queue_full", "export_failed"] {
            spans_dropped.with_label_values(&[reason]);
        }
        Counters {
            spans_exported: counter(
                "mesh_trace_spans_exported_total",
                "Spans the trace collector accepted.",
            ),
            spans_dropped,
            access_log_dropped: counter(
                "mesh_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind.",
            ),
            tap_dropped: counter(
                "mesh_tap_events_dropped_total",
                "Tap events not sent: the reader fell behind or the tap's rate cap was reached.",
            ),
        }
    }

    /// The counters, for the sidecar's Prometheus registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.spans_exported.clone()),
            Box::new(self.spans_dropped.clone()),
            Box::new(self.access_log_dropped.clone()),
            Box::new(self.tap_dropped.clone()),
        ]
    }
}
