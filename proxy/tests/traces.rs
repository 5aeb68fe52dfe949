//! Traces end to end: sidecars send their spans to a real OTLP/HTTP receiver (oteltest's
//! sink, decoding with opentelemetry-proto), and the spans of one call make one trace:
//! the client span of the caller's sidecar, the server span of each try under it, and
//! the app told its parent is the server span. Sampling follows the caller's
//! `traceparent`; a collector that is down costs spans, counted, never a call.
//!
//! Needs Python with oteltest (`$PYTHON`, as the README's test command sets it).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{
    Answer, App, Mode, OtlpSink, PATIENCE, Registry, SPAN_KIND_CLIENT, SPAN_KIND_SERVER,
    STATUS_CODE_ERROR, STATUS_CODE_UNSET, Sidecar, SidecarSpec, Span, eventually, metric,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use mesh_proxy::balance::Strategy;

const EXPORTED: &str = "mesh_trace_spans_exported_total";
const EXPORT_FAILED: &str = r#"mesh_trace_spans_dropped_total{reason="export_failed"}"#;
const QUEUE_FULL: &str = r#"mesh_trace_spans_dropped_total{reason="queue_full"}"#;

/// A registry, `web` served by `apps` (each behind a sidecar), and a client sidecar with
/// no service of its own that balances round-robin; every sidecar sends its spans to
/// `collector` and samples the traces it starts at `ratio`.
async fn mesh(collector: &str, ratio: f64, apps: &[&App]) -> (Registry, Vec<Sidecar>, Sidecar) {
    let registry = Registry::start().await;
    let url = registry.url();
    let traced = |spec: &mut SidecarSpec<'_>| {
        spec.config.observe.trace_collector = Some(collector.to_owned());
        spec.config.observe.trace_sample_ratio = ratio;
    };
    let mut servers = Vec::new();
    for app in apps {
        let mut spec = SidecarSpec::server(&url, "web", app.addr);
        traced(&mut spec);
        servers.push(Sidecar::start(spec).await);
    }
    registry.until_passing("web", apps.len()).await;
    let mut spec = SidecarSpec::client(&url);
    spec.config.outbound.balancer = Strategy::RoundRobin;
    traced(&mut spec);
    let client = Sidecar::start(spec).await;
    (registry, servers, client)
}

/// `GET path` to `web` through the client sidecar, with `traceparent` if given.
async fn call(client: &Sidecar, path: &str, traceparent: Option<&str>) -> Answer {
    let mut request =
        Request::get(format!("http://{}{path}", client.outbound)).header("host", "web");
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    common::send(&common::h1(), request).await
}

/// A sampled `traceparent` from the app, in trace `trace_id`.
fn sampled(trace_id: &str) -> String {
    format!("00-{trace_id}-00f067aa0ba902b7-01")
}

fn one_of_kind(spans: &[Span], kind: i32) -> &Span {
    let mut of_kind = spans.iter().filter(|s| s.kind == kind);
    let span = of_kind
        .next()
        .unwrap_or_else(|| panic!("no span of kind {kind}: {spans:#?}"));
    assert!(
        of_kind.next().is_none(),
        "two spans of kind {kind}: {spans:#?}"
    );
    span
}

async fn counter(sidecar: &Sidecar, series: &str) -> f64 {
    let metrics = sidecar.metrics().await;
    metric(&metrics, series).unwrap_or_else(|| panic!("no {series}: {metrics}"))
}

/// Waits until `sidecar` has counted `n` spans exported, then checks it counted no more
/// and dropped none.
async fn until_exported(sidecar: &Sidecar, n: f64) {
    eventually(
        PATIENCE,
        "the sidecar to count its spans exported",
        async || counter(sidecar, EXPORTED).await >= n,
    )
    .await;
    assert_eq!(counter(sidecar, EXPORTED).await, n);
    assert_eq!(counter(sidecar, EXPORT_FAILED).await, 0.0);
    assert_eq!(counter(sidecar, QUEUE_FULL).await, 0.0);
}

/// Every export request was OTLP protobuf that the receiver decoded whole.
fn well_formed(sink: &OtlpSink) {
    for export in sink.exports() {
        assert_eq!(
            export.content_type.as_deref(),
            Some("application/x-protobuf")
        );
        assert_eq!(
            export.unknown_bytes, 0,
            "fields the receiver did not know: {export:#?}"
        );
    }
}

#[tokio::test]
async fn a_call_through_a_sidecar_pair_is_one_trace_of_a_client_span_and_its_server_span() {
    let sink = OtlpSink::start().await;
    let app = App::start("web-1").await;
    let (_registry, servers, client) = mesh(&sink.url, 1.0, &[&app]).await;
    let server = &servers[0];

    let answer = call(&client, "/echo", None).await;
    assert_eq!(answer.status, StatusCode::OK);

    let spans = sink
        .until("a client and a server span", |s| s.len() >= 2)
        .await;
    let trace_id = spans[0].trace_id.clone();
    let spans = sink.until_trace(&trace_id, 2).await;
    let (caller, callee) = (
        one_of_kind(&spans, SPAN_KIND_CLIENT),
        one_of_kind(&spans, SPAN_KIND_SERVER),
    );
    well_formed(&sink);
    until_exported(&client, 1.0).await;
    until_exported(server, 1.0).await;
    assert_eq!(
        sink.spans().len(),
        2,
        "one trace, two spans: {:#?}",
        sink.spans()
    );

    // The client span starts the trace; the server span is its child; the app is told
    // its parent is the server span.
    assert_eq!(
        caller.parent_span_id, "",
        "a root: the app sent no traceparent"
    );
    assert_eq!(callee.parent_span_id, caller.span_id);
    assert_ne!(callee.span_id, caller.span_id);
    assert_eq!(
        answer.headers["x-echo-traceparent"],
        format!("00-{trace_id}-{}-01", callee.span_id)
    );
    assert!(
        caller.start <= callee.start && callee.end <= caller.end,
        "{spans:#?}"
    );
    for span in [caller, callee] {
        assert_eq!(span.name, "GET");
        assert_eq!(span.flags & 0xff, 1, "sampled");
        assert_eq!(span.status.code, STATUS_CODE_UNSET);
        assert_eq!(span.scope.name, "mesh-proxy");
        assert!(!span.scope.version.is_empty());
        assert_eq!(span.resource_str("telemetry.sdk.name"), Some("mesh-proxy"));
        assert_eq!(span.resource_str("telemetry.sdk.language"), Some("rust"));
        assert_eq!(span.str("http.request.method"), Some("GET"));
        assert_eq!(span.str("url.path"), Some("/echo"));
        assert_eq!(span.str("server.address"), Some("web"));
        assert_eq!(span.int("http.response.status_code"), Some(200));
        assert_eq!(span.str("network.peer.address"), Some("127.0.0.1"));
        assert!(span.int("network.peer.port").is_some());
        assert_eq!(span.str("mesh.service"), Some("web"));
        assert!(span.int("mesh.response_bytes").is_some());
        assert!(span.attributes.get("mesh.retry_reasons").is_none());
    }

    // The caller's sidecar has no service: its spans are from `mesh-proxy`.
    assert_eq!(caller.resource_str("service.name"), Some("mesh-proxy"));
    assert_eq!(caller.resource_str("service.instance.id"), None);
    assert_eq!(caller.str("mesh.direction"), Some("outbound"));
    assert_eq!(caller.int("mesh.tries"), Some(1));
    let endpoint = server.inbound.unwrap();
    assert_eq!(
        caller.str("mesh.endpoint"),
        Some(endpoint.to_string().as_str())
    );

    assert_eq!(callee.resource_str("service.name"), Some("web"));
    let instance = format!("web-{}", endpoint.port());
    assert_eq!(
        callee.resource_str("service.instance.id"),
        Some(instance.as_str())
    );
    assert_eq!(callee.str("mesh.direction"), Some("inbound"));
}

#[tokio::test]
async fn a_sampled_traceparent_from_the_app_makes_the_client_span_its_child_even_at_ratio_zero() {
    let sink = OtlpSink::start().await;
    let app = App::start("web-1").await;
    let (_registry, _servers, client) = mesh(&sink.url, 0.0, &[&app]).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = call(&client, "/echo", Some(&sampled(trace_id))).await;
    assert_eq!(answer.status, StatusCode::OK);

    let spans = sink.until_trace(trace_id, 2).await;
    let (caller, callee) = (
        one_of_kind(&spans, SPAN_KIND_CLIENT),
        one_of_kind(&spans, SPAN_KIND_SERVER),
    );
    assert_eq!(
        caller.parent_span_id, "00f067aa0ba902b7",
        "the app's span is the parent"
    );
    assert_eq!(callee.parent_span_id, caller.span_id);
    assert_eq!(
        answer.headers["x-echo-traceparent"],
        format!("00-{trace_id}-{}-01", callee.span_id)
    );
    well_formed(&sink);
}

#[tokio::test]
async fn at_ratio_zero_a_call_without_traceparent_sends_no_span() {
    let sink = OtlpSink::start().await;
    let app = App::start("web-1").await;
    let (_registry, servers, client) = mesh(&sink.url, 0.0, &[&app]).await;

    for _ in 0..5 {
        let answer = call(&client, "/echo", None).await;
        assert_eq!(answer.status, StatusCode::OK);
        // Context is still passed on, marked not sampled.
        let traceparent = answer.headers["x-echo-traceparent"].to_str().unwrap();
        assert!(traceparent.ends_with("-00"), "{traceparent}");
    }
    assert!(sink.exports().is_empty(), "{:#?}", sink.exports());

    // Then a sampled call: once its spans have arrived, anything queued before them has
    // too (one queue per sidecar, sent in order), so they must be all there is.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let answer = call(&client, "/echo", Some(&sampled(trace_id))).await;
    assert_eq!(answer.status, StatusCode::OK);
    sink.until_trace(trace_id, 2).await;
    until_exported(&client, 1.0).await;
    until_exported(&servers[0], 1.0).await;
    let spans = sink.spans();
    assert!(spans.iter().all(|s| s.trace_id == trace_id), "{spans:#?}");
    assert_eq!(spans.len(), 2, "{spans:#?}");
}

#[tokio::test]
async fn each_try_of_a_retried_call_is_a_server_span_under_its_one_client_span() {
    let sink = OtlpSink::start().await;
    let (bad, good) = (App::start("bad").await, App::start("good").await);
    let (_registry, servers, client) = mesh(&sink.url, 1.0, &[&bad, &good]).await;
    bad.set_mode(Mode::Failing);

    // Round-robin: within two calls, one tries `bad` first and is retried on `good`.
    let mut retried = None;
    for i in 1..=4u32 {
        let trace_id = format!("{i:032x}");
        let answer = call(&client, "/whoami", Some(&sampled(&trace_id))).await;
        assert_eq!(
            (answer.status, answer.text.as_str()),
            (StatusCode::OK, "good")
        );
        if bad.received.load(Ordering::SeqCst) > 0 {
            retried = Some(trace_id);
            break;
        }
    }
    let trace_id = retried.expect("a call tried the failing instance");

    let spans = sink.until_trace(&trace_id, 3).await;
    well_formed(&sink);
    let caller = one_of_kind(&spans, SPAN_KIND_CLIENT);
    assert_eq!(caller.int("mesh.tries"), Some(2));
    assert_eq!(
        caller.attributes["mesh.retry_reasons"],
        serde_json::json!(["status"])
    );
    assert_eq!(caller.int("http.response.status_code"), Some(200));
    assert_eq!(caller.status.code, STATUS_CODE_UNSET);
    let good_endpoint = servers[1].inbound.unwrap().to_string();
    assert_eq!(caller.str("mesh.endpoint"), Some(good_endpoint.as_str()));

    let tries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_SERVER)
        .collect();
    assert_eq!(tries.len(), 2, "{spans:#?}");
    for server_span in &tries {
        assert_eq!(server_span.parent_span_id, caller.span_id);
    }
    let instance = |sidecar: &Sidecar| format!("web-{}", sidecar.inbound.unwrap().port());
    let of = |sidecar: &Sidecar| {
        let instance = instance(sidecar);
        let mut found = tries
            .iter()
            .filter(|s| s.resource_str("service.instance.id") == Some(&instance));
        *found
            .next()
            .unwrap_or_else(|| panic!("no span from {instance}: {tries:#?}"))
    };
    let (failed, answered) = (of(&servers[0]), of(&servers[1]));
    assert_eq!(failed.int("http.response.status_code"), Some(503));
    assert_eq!(failed.status.code, STATUS_CODE_ERROR);
    assert_eq!(failed.status.message, "HTTP status 503");
    assert_eq!(answered.int("http.response.status_code"), Some(200));
    assert_eq!(answered.status.code, STATUS_CODE_UNSET);
}

/// Every span `sidecar` lost, whatever the reason.
async fn lost(sidecar: &Sidecar) -> f64 {
    counter(sidecar, EXPORT_FAILED).await + counter(sidecar, QUEUE_FULL).await
}

#[tokio::test]
async fn a_collector_refusing_connections_fails_no_call_and_its_spans_are_counted_dropped() {
    // A port held bound but not listening: every connection to it is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let collector = format!("http://{}/v1/traces", socket.local_addr().unwrap());
    let app = App::start("web-1").await;
    let (_registry, servers, client) = mesh(&collector, 1.0, &[&app]).await;

    for _ in 0..20 {
        assert_eq!(call(&client, "/whoami", None).await.status, StatusCode::OK);
    }
    eventually(PATIENCE, "every span counted dropped", async || {
        lost(&client).await == 20.0 && lost(&servers[0]).await == 20.0
    })
    .await;
    assert_eq!(counter(&client, EXPORT_FAILED).await, 20.0);
    assert_eq!(counter(&client, EXPORTED).await, 0.0);
}

#[tokio::test]
async fn a_collector_that_never_answers_fails_no_call_and_its_spans_are_counted_dropped() {
    // Accepts connections, reads nothing, answers nothing.
    let listener = common::listener().await;
    let collector = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let app = App::start("web-1").await;
    let (_registry, _servers, client) = mesh(&collector, 1.0, &[&app]).await;

    for _ in 0..10 {
        assert_eq!(call(&client, "/whoami", None).await.status, StatusCode::OK);
    }
    // With an export waiting on the collector, calls go on and their spans queue.
    eventually(PATIENCE, "an export to the collector", async || {
        accepted.load(Ordering::SeqCst) > 0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(call(&client, "/whoami", None).await.status, StatusCode::OK);
    }
    // Each export gives up at its timeout, and its spans are counted.
    eventually(PATIENCE, "every span counted dropped", async || {
        lost(&client).await == 20.0
    })
    .await;
    assert_eq!(counter(&client, EXPORT_FAILED).await, 20.0);
    assert_eq!(counter(&client, EXPORTED).await, 0.0);
}
