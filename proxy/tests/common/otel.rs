//! A real OTLP/HTTP receiver for the trace tests: oteltest's sink (PyPI `oteltest`, in
//! requirements-test.txt), run by `tests/python/otlp_sink.py` on a free loopback port.
//! It decodes each export request with opentelemetry-proto; the spans it printed are
//! kept here for the tests to wait for and read.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{PATIENCE, eventually};

/// OTLP's `SpanKind` and `StatusCode` values, as their proto names them.
pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
pub const STATUS_CODE_UNSET: i32 = 0;
pub const STATUS_CODE_ERROR: i32 = 2;

/// The receiver, stopped when dropped.
pub struct OtlpSink {
    /// Its OTLP/HTTP traces URL, for `--trace-collector`.
    pub url: String,
    exports: Arc<Mutex<Vec<OtlpExport>>>,
    stderr: Arc<Mutex<String>>,
    _child: Child,
}

/// One export request the receiver decoded.
#[derive(Clone, Debug, Deserialize)]
pub struct OtlpExport {
    pub content_type: Option<String>,
    /// Bytes the receiver could not place in a known field (a wrong field number or
    /// wire type decodes as unknown, not as an error).
    pub unknown_bytes: u64,
    pub spans: Vec<Span>,
}

/// A span as decoded, its ids in hex (empty when absent).
#[derive(Clone, Debug, Deserialize)]
pub struct Span {
    pub resource: Map<String, Value>,
    pub scope: SpanScope,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    pub flags: u32,
    pub attributes: Map<String, Value>,
    pub status: SpanStatus,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SpanScope {
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SpanStatus {
    pub code: i32,
    pub message: String,
}

/// The interpreter: `$PYTHON` (as the README's test command sets it), else `python3`.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

// === impl OtlpSink ===

impl OtlpSink {
    /// Starts the receiver and waits until it listens.
    pub async fn start() -> OtlpSink {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/otlp_sink.py");
        let probe = Command::new(python())
            .args(["-c", "import oteltest.sink"])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; install Python 3", python()));
        assert!(
            probe.status.success(),
            "this test needs Python's oteltest, and $PYTHON pointing at it: see the README's \
             test command (a virtualenv in .venv)\n{}",
            String::from_utf8_lossy(&probe.stderr),
        );
        let mut child = Command::new(python())
            .arg(script)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        // Its log (a line per request) is kept for the messages of failed waits.
        let mut errors = child.stderr.take().unwrap();
        let written = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = errors.read(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                written.lock().unwrap().push_str(&text);
            }
        });
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the OTLP receiver started")
            .unwrap()
            .unwrap_or_else(|| panic!("the OTLP receiver ended: {}", stderr.lock().unwrap()));
        let port: u16 = first
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver said {first:?}"));
        let exports = Arc::new(Mutex::new(Vec::new()));
        let received = exports.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let export: OtlpExport = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the OTLP receiver printed {line:?}: {e}"));
                received.lock().unwrap().push(export);
            }
        });
        OtlpSink {
            url: format!("http://127.0.0.1:{port}/v1/traces"),
            exports,
            stderr,
            _child: child,
        }
    }

    /// The export requests received so far.
    pub fn exports(&self) -> Vec<OtlpExport> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far, in order.
    pub fn spans(&self) -> Vec<Span> {
        let exports = self.exports();
        exports.into_iter().flat_map(|e| e.spans).collect()
    }

    /// Waits until the spans received satisfy `done`; returns them.
    pub async fn until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        eventually(PATIENCE, what, async || done(&self.spans())).await;
        self.spans()
    }

    /// Waits until trace `trace_id` has `n` spans; returns them, and fails if it has
    /// more.
    pub async fn until_trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        let of_trace = |spans: Vec<Span>| -> Vec<Span> {
            spans
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect()
        };
        let what = format!("{n} spans of trace {trace_id}");
        let spans = self.until(&what, |s| of_trace(s.to_vec()).len() >= n).await;
        let spans = of_trace(spans);
        assert_eq!(spans.len(), n, "{spans:#?}");
        spans
    }

    /// What the receiver logged (a line per request it answered).
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

// === impl Span ===

impl Span {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key)?.as_str()
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        self.attributes.get(key)?.as_i64()
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key)?.as_str()
    }
}
