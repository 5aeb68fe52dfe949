//! Single calls through the whole demo: with `--trace-collector`, a page view is one trace
//! whose spans come from both sidecars on the call (the marketplace's CLIENT span, the
//! recommendations instance's SERVER span, its child), a page request's own `traceparent`
//! is followed (its trace id kept, its sampling decision obeyed), and every sidecar's access
//! log has a JSON line for each call.
//!
//! The collector is a real OTLP/HTTP receiver: `oteltest`'s sink, in Python (`$PYTHON`, as
//! the README's test command sets it), on a free port of 127.0.0.1. Needs the other
//! programs built next to `mesh-demo` (see `support`).

mod support;

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use mesh_test_support::{ChildGuard, blocking};
use support::{Launcher, Ports, READY, bin_dir};

/// How long a span or an access-log line may take to show up: both are sent in batches
/// (spans at least once a second), so this is generous.
const ARRIVAL: Duration = Duration::from_secs(30);

/// OTLP span kinds.
const SERVER: u32 = 2;
const CLIENT: u32 = 3;

/// `oteltest`'s OTLP/HTTP sink, the proxy's tests' receiver, on 127.0.0.1 and a port of the
/// system's choosing, which it prints first (`ready PORT`); with `--format spans`, then one
/// line per span it receives, decoded by the OTLP protobuf definitions:
/// `span SERVICE KIND TRACE_ID SPAN_ID PARENT_ID|- NAME`. It ends when its stdin closes.
const SINK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../proxy/tests/python/otlp_sink.py"
);

/// Reads an access log: one line per complete line of the file, each parsed as JSON (a
/// line that is not fails the run), as `DIRECTION SERVICE STATUS GRPC_STATUS TRACE_ID`.
const ACCESS_LOG: &str = r#"
import json, sys
with open(sys.argv[1]) as log:
    for line in log:
        if not line.endswith("\n"):
            break
        event = json.loads(line)
        print(event["direction"], event["service"], event.get("status", "-"),
              event.get("grpc_status", "-"), event.get("trace_id", "-"))
"#;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    service: String,
    kind: u32,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    name: String,
}

/// The OTLP receiver, and every span it has printed so far.
struct Sink {
    /// Killed when the sink is dropped.
    _child: ChildGuard,
    port: u16,
    lines: mpsc::Receiver<String>,
    spans: Vec<Span>,
}

impl Sink {
    fn start() -> Sink {
        let mut child = Command::new(python())
            .args([SINK, "--format", "spans"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // Kept open while the sink runs: it ends when its stdin closes.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(ARRIVAL).unwrap_or_else(|_| {
            panic!(
                "the OTLP sink did not start: is `oteltest` installed for {}? (see the \
                 README's test command)",
                python()
            )
        });
        let port = first
            .strip_prefix("ready ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP sink said {first:?}"));
        Sink {
            _child: child.into(),
            port,
            lines,
            spans: Vec::new(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Every span received so far.
    fn spans(&mut self) -> &[Span] {
        while let Ok(line) = self.lines.try_recv() {
            let fields: Vec<&str> = line.splitn(8, ' ').collect();
            let ["span", service, kind, trace_id, span_id, parent, name] = fields[..] else {
                panic!("the OTLP sink printed {line:?}")
            };
            self.spans.push(Span {
                service: service.to_owned(),
                kind: kind.parse().unwrap(),
                trace_id: trace_id.to_owned(),
                span_id: span_id.to_owned(),
                parent: parent.trim_start_matches('-').to_owned(),
                name: name.to_owned(),
            });
        }
        &self.spans
    }

    /// The spans of trace `trace_id` received so far.
    fn trace(&mut self, trace_id: &str) -> Vec<Span> {
        let spans = self.spans().iter();
        spans.filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    /// The spans of `trace_id` once both hops have reported: the marketplace's CLIENT span
    /// and a recommendations SERVER span that is its child.
    fn whole_trace(&mut self, trace_id: &str) -> Vec<Span> {
        let whole = |spans: &[Span]| {
            spans.iter().any(|client| {
                client.service == "marketplace"
                    && client.kind == CLIENT
                    && spans.iter().any(|server| {
                        server.service == "recommendations"
                            && server.kind == SERVER
                            && server.parent == client.span_id
                    })
            })
        };
        let arrived = blocking::within(ARRIVAL, || Some(self.trace(trace_id)).filter(|s| whole(s)));
        arrived.unwrap_or_else(|| {
            panic!(
                "trace {trace_id} did not arrive whole; its spans: {:#?}\nall: {:#?}",
                self.trace(trace_id),
                self.spans
            )
        })
    }
}

/// One line of an access log.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    direction: String,
    service: String,
    status: String,
    grpc_status: String,
    trace_id: String,
}

/// The complete lines of the access log at `path`, none while it does not exist yet.
fn calls(path: &Path) -> Vec<Call> {
    if !path.exists() {
        return Vec::new();
    }
    let output = Command::new(python())
        .args(["-c", ACCESS_LOG])
        .arg(path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} is not one JSON object per line: {}\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [direction, service, status, grpc_status, trace_id] = fields[..] else {
                panic!("{line:?}")
            };
            Call {
                direction: direction.to_owned(),
                service: service.to_owned(),
                status: status.to_owned(),
                grpc_status: grpc_status.to_owned(),
                trace_id: trace_id.to_owned(),
            }
        })
        .collect()
}

/// A successful call to recommendations as `direction` in trace `trace_id`.
fn recommend(direction: &str, trace_id: &str) -> Call {
    Call {
        direction: direction.to_owned(),
        service: "recommendations".to_owned(),
        status: "200".to_owned(),
        grpc_status: "0".to_owned(),
        trace_id: trace_id.to_owned(),
    }
}

/// Polls `check` until it gives a value, failing with `what` after [`ARRIVAL`].
fn until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    blocking::eventually_some(ARRIVAL, what, check)
}

/// GETs the page on a fresh connection, with `traceparent` when given; it must be whole.
fn load_page(port: u16, traceparent: Option<&str>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let context = traceparent
        .map(|value| format!("traceparent: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{context}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert_eq!(response.matches("<li>").count(), 3, "{response}");
}

/// A fresh random trace id: 32 hex digits, never all zeros.
fn new_trace_id() -> String {
    let random = RandomState::new();
    format!("{:016x}{:016x}", random.hash_one(1) | 1, random.hash_one(2))
}

#[test]
fn a_page_view_is_one_trace_across_both_sidecars_and_a_line_in_their_access_logs() {
    let mut sink = Sink::start();
    let ports = Ports::free();
    let logs = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "--bin-dir",
        &bin_dir().display().to_string(),
        "--ready-timeout",
        "60s",
        "--trace-collector",
        &sink.url(),
        "--trace-sample-ratio",
        "1",
        "--log-dir",
        &logs.path().display().to_string(),
    ]
    .map(str::to_owned)
    .into();
    args.extend(ports.flags());
    let mut launcher = Launcher::start(&args);
    launcher.wait_ready(READY);
    let banner = launcher.transcript();
    let pattern = logs.path().join("sidecar-*.access.log");
    assert!(
        banner.contains(&format!("  access     {} ", pattern.display())),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("  traces     {} ", sink.url())),
        "{banner}"
    );
    let marketplace_log = logs.path().join("sidecar-marketplace.access.log");
    let recommendations_logs: Vec<PathBuf> = (1..=3)
        .map(|n| {
            let name = format!("sidecar-recommendations-{n}.access.log");
            logs.path().join(name)
        })
        .collect();
    // Whether one of the recommendations sidecars logged the call of `trace_id`.
    let inbound = |trace_id: &str| {
        let wanted = recommend("inbound", trace_id);
        let logged = recommendations_logs
            .iter()
            .any(|log| calls(log).contains(&wanted));
        logged.then_some(())
    };

    // A page request carrying a sampled trace context: its trace goes on through both
    // sidecars, the marketplace's span the child of the page's.
    let parented = new_trace_id();
    let page_span = "00f067aa0ba902b7";
    load_page(
        ports.marketplace(),
        Some(&format!("00-{parented}-{page_span}-01")),
    );
    let spans = sink.whole_trace(&parented);
    let client: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "marketplace")
        .collect();
    assert_eq!(client.len(), 1, "{spans:#?}");
    assert_eq!(
        (client[0].kind, client[0].parent.as_str()),
        (CLIENT, page_span),
        "{spans:#?}"
    );
    // The calls' access-log lines are written in the order the calls ended, so once this
    // one is there, every call made while the mesh came up is too.
    until("the marketplace's access log has the call", || {
        let wanted = recommend("outbound", &parented);
        calls(&marketplace_log).contains(&wanted).then_some(())
    });
    until(
        "a recommendations sidecar's access log has the call",
        || inbound(&parented),
    );

    // A page request without trace context: the marketplace's sidecar starts a trace,
    // sampled at ratio 1, and the recommendations sidecar's span is its child.
    let before = calls(&marketplace_log).len();
    load_page(ports.marketplace(), None);
    let call = until("the marketplace's access log has the new call", || {
        calls(&marketplace_log).get(before).cloned()
    });
    let started = call.trace_id.clone();
    assert_eq!(call, recommend("outbound", &started));
    assert_eq!(started.len(), 32, "{call:?}");
    let spans = sink.whole_trace(&started);
    let (client, servers): (Vec<&Span>, Vec<&Span>) =
        spans.iter().partition(|s| s.service == "marketplace");
    assert_eq!(client.len(), 1, "{spans:#?}");
    let client = client[0];
    assert_eq!(
        (client.kind, client.parent.as_str()),
        (CLIENT, ""),
        "{client:?}"
    );
    assert!(
        client.name.contains("Recommend"),
        "the span names the call: {client:?}"
    );
    assert!(!servers.is_empty(), "{spans:#?}");
    for server in servers {
        assert_eq!(server.service, "recommendations", "{spans:#?}");
        assert_eq!(
            (server.kind, server.parent.as_str()),
            (SERVER, client.span_id.as_str()),
            "{spans:#?}"
        );
    }
    until(
        "a recommendations sidecar's access log has the call",
        || inbound(&started),
    );

    // A page request whose trace context says "not sampled": the sidecars follow the
    // parent's decision over their own ratio, so no span of it is sent; the access logs
    // still name its trace. A sampled page view after it proves the exporters have sent
    // everything before.
    let unsampled = new_trace_id();
    load_page(
        ports.marketplace(),
        Some(&format!("00-{unsampled}-{page_span}-00")),
    );
    let after = new_trace_id();
    load_page(
        ports.marketplace(),
        Some(&format!("00-{after}-{page_span}-01")),
    );
    sink.whole_trace(&after);
    until("the unsampled call in the marketplace's access log", || {
        let wanted = recommend("outbound", &unsampled);
        calls(&marketplace_log).contains(&wanted).then_some(())
    });
    until(
        "the unsampled call in a recommendations sidecar's access log",
        || inbound(&unsampled),
    );
    assert_eq!(sink.trace(&unsampled), Vec::<Span>::new());

    let transcript = launcher.interrupt();
    // Named with --log-dir, the access logs stay.
    assert!(marketplace_log.is_file(), "{transcript}");
}
