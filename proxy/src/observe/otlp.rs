//! Spans as OTLP protobuf: one `ExportTraceServiceRequest` (opentelemetry-proto v1) per
//! batch, written by hand. The few messages OTLP needs do not justify a protobuf code
//! generator and its build step; the tests decode what is written here, and the trace
//! tests have a real OTLP receiver read it.
//!
//! ```text
//! ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
//! ResourceSpans   { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
//! Resource        { repeated KeyValue attributes = 1; }
//! ScopeSpans      { InstrumentationScope scope = 1; repeated Span spans = 2; }
//! InstrumentationScope { string name = 1; string version = 2; }
//! Span            { bytes trace_id = 1; bytes span_id = 2; bytes parent_span_id = 4;
//!                   string name = 5; SpanKind kind = 6;
//!                   fixed64 start_time_unix_nano = 7; fixed64 end_time_unix_nano = 8;
//!                   repeated KeyValue attributes = 9; Status status = 15;
//!                   fixed32 flags = 16; }
//! Status          { string message = 2; StatusCode code = 3; }
//! KeyValue        { string key = 1; AnyValue value = 2; }
//! AnyValue        { oneof { string string_value = 1; int64 int_value = 3;
//!                           ArrayValue array_value = 5; } }
//! ArrayValue      { repeated AnyValue values = 1; }
//! ```
//!
//! Span names and attributes follow OpenTelemetry's HTTP and RPC semantic conventions,
//! with `mesh.*` attributes for what only the mesh knows (tries, endpoint, its errors).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Resource;
use super::context::Trace;
use super::record::{Kind, Record};
use crate::metrics::Direction;

/// The instrumentation scope every span is reported under.
const SCOPE: &str = "mesh-proxy";

/// `SpanKind`.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// `StatusCode::STATUS_CODE_ERROR`; a span without a status is UNSET.
const ERROR: u64 = 2;

/// Span `flags` bits above the W3C trace flags: whether the parent is remote is known
/// (bit 8), and it is (bit 9). A parent here is always another process's span.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The encoding of `records` (those with a trace; the others are left out) as one
/// export request from `resource`.
pub(super) fn encode(resource: &Resource, records: &[Arc<Record>]) -> Vec<u8> {
    let mut request = Writer::default();
    request.message(1, |resource_spans| {
        resource_spans.message(1, |r| {
            attribute(r, 1, "service.name", Value::Str(&resource.service));
            if let Some(instance) = &resource.instance {
                attribute(r, 1, "service.instance.id", Value::Str(instance));
            }
            attribute(r, 1, "telemetry.sdk.name", Value::Str(SCOPE));
            attribute(r, 1, "telemetry.sdk.language", Value::Str("rust"));
            let version = env!("CARGO_PKG_VERSION");
            attribute(r, 1, "telemetry.sdk.version", Value::Str(version));
        });
        resource_spans.message(2, |scope_spans| {
            scope_spans.message(1, |scope| {
                scope.string(1, SCOPE);
                scope.string(2, env!("CARGO_PKG_VERSION"));
            });
            for record in records {
                if let Some(trace) = &record.trace {
                    scope_spans.message(2, |s| span(s, record, trace));
                }
            }
        });
    });
    request.buf
}

/// One record as a `Span`.
fn span(s: &mut Writer, record: &Record, trace: &Trace) {
    s.bytes(1, &trace.trace_id);
    s.bytes(2, &trace.span_id);
    if let Some(parent) = &trace.parent {
        s.bytes(4, parent);
    }
    let rpc = record
        .path
        .as_deref()
        .filter(|_| record.grpc)
        .and_then(rpc_of);
    let name = match (rpc, &record.method) {
        (Some((service, method)), _) => format!("{service}/{method}"),
        (None, Some(method)) => method.as_str().to_owned(),
        (None, None) => record.kind.as_str().to_owned(),
    };
    s.string(5, &name);
    s.uint(
        6,
        match record.direction {
            Direction::Outbound => CLIENT,
            Direction::Inbound => SERVER,
        },
    );
    let start = unix_nanos(record.time);
    s.fixed64(7, start);
    s.fixed64(8, start.saturating_add(nanos(record.duration)));
    attributes(s, record, rpc);
    if let Some(message) = error(record) {
        s.message(15, |status| {
            status.string(2, &message);
            status.uint(3, ERROR);
        });
    }
    let mut flags = u32::from(trace.sampled) | HAS_IS_REMOTE;
    if trace.parent.is_some() {
        flags |= IS_REMOTE;
    }
    s.fixed32(16, flags);
}

/// The span's attributes (field 9): the semantic conventions' first, then the mesh's.
fn attributes(s: &mut Writer, record: &Record, rpc: Option<(&str, &str)>) {
    let mut attr = |key: &str, value: Value<'_>| attribute(s, 9, key, value);
    if let Some(method) = &record.method {
        attr("http.request.method", Value::Str(method.as_str()));
    }
    if let Some(path) = &record.path {
        attr("url.path", Value::Str(path));
    }
    let authority = record.authority.as_deref();
    if let Some(authority) = authority.and_then(|a| a.parse::<http::uri::Authority>().ok()) {
        // `server.address` is the bare host: an IPv6 address without its brackets.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        attr("server.address", Value::Str(host));
        if let Some(port) = authority.port_u16() {
            attr("server.port", Value::Int(port.into()));
        }
    }
    if let Some(status) = record.status {
        attr("http.response.status_code", Value::Int(status.into()));
    }
    if let Some((service, method)) = rpc {
        attr("rpc.system", Value::Str("grpc"));
        attr("rpc.service", Value::Str(service));
        attr("rpc.method", Value::Str(method));
    }
    if let Some(code) = record.grpc_status {
        attr("rpc.grpc.status_code", Value::Int(code.into()));
    }
    if let Some(peer) = record.peer {
        attr("network.peer.address", Value::Str(&peer.ip().to_string()));
        attr("network.peer.port", Value::Int(peer.port().into()));
    }
    attr("mesh.direction", Value::Str(record.direction.as_str()));
    attr("mesh.service", Value::Str(&record.service));
    if let Some(identity) = &record.peer_identity {
        attr("mesh.peer.identity", Value::Str(identity));
    }
    if let Some(endpoint) = &record.endpoint {
        attr("mesh.endpoint", Value::Str(endpoint));
    }
    if record.tries > 0 {
        attr("mesh.tries", Value::Int(record.tries.into()));
    }
    if !record.retry_reasons.is_empty() {
        attr("mesh.retry_reasons", Value::Strs(&record.retry_reasons));
    }
    if let Some(error) = &record.mesh_error {
        attr("mesh.error", Value::Str(error));
    }
    if record.kind != Kind::Request {
        attr("mesh.kind", Value::Str(record.kind.as_str()));
    }
    let bytes = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    attr("mesh.request_bytes", bytes(record.request_bytes));
    attr("mesh.response_bytes", bytes(record.response_bytes));
}

/// Why the call failed, when it did: the span's ERROR status message. The mesh's own
/// error says most, so it comes first.
fn error(record: &Record) -> Option<String> {
    if let Some(error) = &record.mesh_error {
        return Some(format!("mesh-error: {error}"));
    }
    if let Some(code) = record.grpc_status.filter(|c| *c != 0) {
        return Some(format!("grpc-status {code}"));
    }
    if let Some(status) = record.status.filter(|s| *s >= 500) {
        return Some(format!("HTTP status {status}"));
    }
    record
        .failed
        .then(|| "the stream broke before its end".to_owned())
}

/// `(rpc.service, rpc.method)` of a gRPC path, `/pkg.Service/Method`.
fn rpc_of(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let valid = !service.is_empty() && !method.is_empty() && !method.contains('/');
    valid.then_some((service, method))
}

fn unix_nanos(time: SystemTime) -> u64 {
    nanos(time.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An attribute's value: the kinds of `AnyValue` spans use here.
#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Strs(&'a [&'a str]),
}

/// A `KeyValue` as field `field` of the message `w` writes.
fn attribute(w: &mut Writer, field: u32, key: &str, value: Value<'_>) {
    w.message(field, |kv| {
        kv.string(1, key);
        kv.message(2, |any| any_value(any, value));
    });
}

/// The fields of an `AnyValue`.
fn any_value(any: &mut Writer, value: Value<'_>) {
    match value {
        Value::Str(s) => any.string(1, s),
        // int64 is the varint of its two's complement.
        Value::Int(n) => any.uint(3, n as u64),
        Value::Strs(items) => any.message(5, |array| {
            for item in items {
                array.message(1, |any| any_value(any, Value::Str(item)));
            }
        }),
    }
}

/// Protobuf wire types (the low three bits of a field's key).
#[derive(Clone, Copy)]
enum Wire {
    Varint = 0,
    Fixed64 = 1,
    Len = 2,
    Fixed32 = 5,
}

/// Protobuf fields written one after another into a buffer.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

// === impl Writer ===

impl Writer {
    /// Seven bits a byte, least significant first; the high bit says more follow.
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: Wire) {
        self.varint(u64::from(field) << 3 | wire as u64);
    }

    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, Wire::Varint);
        self.varint(v);
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, Wire::Fixed64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn fixed32(&mut self, field: u32, v: u32) {
        self.key(field, Wire::Fixed32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, Wire::Len);
        self.varint(bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// An embedded message: written apart first, since its length comes before it.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        body(&mut inner);
        self.bytes(field, &inner.buf);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::Method;

    use super::*;

    fn written(write: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::default();
        write(&mut w);
        w.buf
    }

    #[test]
    fn varints_are_seven_bits_a_byte_least_significant_first() {
        for (v, bytes) in [
            (0, &[0x00][..]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (16_384, &[0x80, 0x80, 0x01]),
        ] {
            assert_eq!(written(|w| w.varint(v)), bytes, "{v}");
        }
        let max = written(|w| w.varint(u64::MAX));
        assert_eq!(max.len(), 10);
        assert_eq!(max[9], 0x01);
        // A negative int64 takes all ten bytes.
        assert_eq!(written(|w| any_value(w, Value::Int(-1))).len(), 11);
    }

    #[test]
    fn keys_and_fixed_width_fields_match_hand_checked_bytes() {
        // Field 7, wire type 1: (7 << 3) | 1 = 0x39.
        assert_eq!(written(|w| w.fixed64(7, 1)), [0x39, 1, 0, 0, 0, 0, 0, 0, 0]);
        // Field 16, wire type 5: (16 << 3) | 5 = 133, a two-byte varint.
        assert_eq!(
            written(|w| w.fixed32(16, 0x101)),
            [0x85, 0x01, 0x01, 0x01, 0, 0]
        );
        // Field 15, wire type 2: 0x7a, then the length.
        assert_eq!(
            written(|w| w.message(15, |s| s.uint(3, ERROR))),
            [0x7a, 0x02, 0x18, 0x02]
        );
    }

    #[test]
    fn attributes_match_hand_checked_bytes() {
        // KeyValue{key "a", value AnyValue{string_value "b"}} as a span attribute.
        assert_eq!(
            written(|w| attribute(w, 9, "a", Value::Str("b"))),
            [0x4a, 0x08, 0x0a, 0x01, b'a', 0x12, 0x03, 0x0a, 0x01, b'b']
        );
        // int_value 300 is field 3 (0x18), a varint.
        assert_eq!(
            written(|w| attribute(w, 9, "n", Value::Int(300))),
            [0x4a, 0x08, 0x0a, 0x01, b'n', 0x12, 0x03, 0x18, 0xac, 0x02]
        );
        // array_value (field 5) holds ArrayValue{values = [AnyValue{string_value "x"}]}.
        assert_eq!(
            written(|w| attribute(w, 1, "r", Value::Strs(&["x"]))),
            [
                0x0a, 0x0c, 0x0a, 0x01, b'r', 0x12, 0x07, 0x2a, 0x05, 0x0a, 0x03, 0x0a, 0x01, b'x'
            ]
        );
    }

    /// A decoded field.
    #[derive(Clone, Debug, PartialEq)]
    enum Field {
        Varint(u64),
        Fixed64(u64),
        Fixed32(u32),
        Len(Vec<u8>),
    }

    /// The fields of one message, in order.
    fn decode(mut b: &[u8]) -> Vec<(u32, Field)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0;
            for shift in (0..64).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut fields = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = match key & 7 {
                0 => Field::Varint(varint(&mut b)),
                1 => {
                    let (v, rest) = b.split_at(8);
                    b = rest;
                    Field::Fixed64(u64::from_le_bytes(v.try_into().unwrap()))
                }
                2 => {
                    let len = varint(&mut b) as usize;
                    let (v, rest) = b.split_at(len);
                    b = rest;
                    Field::Len(v.to_vec())
                }
                5 => {
                    let (v, rest) = b.split_at(4);
                    b = rest;
                    Field::Fixed32(u32::from_le_bytes(v.try_into().unwrap()))
                }
                wire => panic!("wire type {wire}"),
            };
            fields.push(((key >> 3) as u32, field));
        }
        fields
    }

    fn all(fields: &[(u32, Field)], n: u32) -> Vec<Field> {
        let matching = fields.iter().filter(|(f, _)| *f == n);
        matching.map(|(_, v)| v.clone()).collect()
    }

    fn one(fields: &[(u32, Field)], n: u32) -> Field {
        let found = all(fields, n);
        assert_eq!(found.len(), 1, "field {n} of {fields:?}");
        found[0].clone()
    }

    fn len(field: Field) -> Vec<u8> {
        match field {
            Field::Len(b) => b,
            other => panic!("{other:?} is not length-delimited"),
        }
    }

    fn text(field: Field) -> String {
        String::from_utf8(len(field)).unwrap()
    }

    /// An AnyValue, as text: strings as they are, ints in decimal, arrays in brackets.
    fn any(bytes: Vec<u8>) -> String {
        let fields = decode(&bytes);
        match &fields[..] {
            [(1, s)] => text(s.clone()),
            [(3, Field::Varint(n))] => (*n as i64).to_string(),
            [(5, a)] => {
                let items = all(&decode(&len(a.clone())), 1);
                let items: Vec<String> = items.into_iter().map(|i| any(len(i))).collect();
                format!("[{}]", items.join(","))
            }
            other => panic!("an AnyValue {other:?}"),
        }
    }

    fn attributes_of(fields: &[(u32, Field)], n: u32) -> BTreeMap<String, String> {
        let pairs = all(fields, n).into_iter().map(|kv| {
            let kv = decode(&len(kv));
            (text(one(&kv, 1)), any(len(one(&kv, 2))))
        });
        pairs.collect()
    }

    /// The resource's attributes, the scope's fields and the spans of an encoding.
    fn spans_of(encoded: &[u8]) -> (BTreeMap<String, String>, Vec<String>, Vec<Vec<u8>>) {
        let request = decode(encoded);
        let resource_spans = decode(&len(one(&request, 1)));
        let resource = attributes_of(&decode(&len(one(&resource_spans, 1))), 1);
        let scope_spans = decode(&len(one(&resource_spans, 2)));
        let scope = decode(&len(one(&scope_spans, 1)));
        let scope = vec![text(one(&scope, 1)), text(one(&scope, 2))];
        let spans = all(&scope_spans, 2).into_iter().map(len).collect();
        (resource, scope, spans)
    }

    fn trace(parent: Option<[u8; 8]>) -> Trace {
        Trace {
            trace_id: [0x4b; 16],
            span_id: [0x01, 2, 3, 4, 5, 6, 7, 8],
            parent,
            sampled: true,
        }
    }

    #[test]
    fn a_failed_grpc_client_call_is_a_client_span_with_rpc_attributes_and_an_error() {
        let mut record = Record::new(Direction::Outbound, Kind::Request, "books");
        record.time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        record.duration = Duration::from_millis(3);
        record.method = Some(Method::POST);
        record.path = Some("/books.Catalog/Get".into());
        record.authority = Some("books:8080".into());
        record.grpc = true;
        record.peer = Some("127.0.0.1:40000".parse().unwrap());
        record.endpoint = Some("10.0.0.7:4143".into());
        record.peer_identity = Some("spiffe://mesh.local/books".into());
        record.tries = 2;
        record.retry_reasons = vec!["grpc-status"];
        record.status = Some(200);
        record.grpc_status = Some(14);
        record.request_bytes = 5;
        record.trace = Some(trace(Some([9; 8])));
        let resource = Resource {
            service: "web".into(),
            instance: Some("web-1".into()),
        };
        let (resource, scope, spans) = spans_of(&encode(&resource, &[Arc::new(record)]));
        assert_eq!(resource["service.name"], "web");
        assert_eq!(resource["service.instance.id"], "web-1");
        assert_eq!(resource["telemetry.sdk.name"], "mesh-proxy");
        assert_eq!(resource["telemetry.sdk.language"], "rust");
        assert_eq!(scope, ["mesh-proxy", env!("CARGO_PKG_VERSION")]);
        let [span] = &spans[..] else {
            panic!("one span: {spans:?}")
        };
        let span = decode(span);
        assert_eq!(len(one(&span, 1)), [0x4b; 16]);
        assert_eq!(len(one(&span, 2)), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(len(one(&span, 4)), [9; 8]);
        assert_eq!(text(one(&span, 5)), "books.Catalog/Get");
        assert_eq!(one(&span, 6), Field::Varint(CLIENT));
        let start = 1_700_000_000 * 1_000_000_000;
        assert_eq!(one(&span, 7), Field::Fixed64(start));
        assert_eq!(one(&span, 8), Field::Fixed64(start + 3_000_000));
        assert_eq!(one(&span, 16), Field::Fixed32(0x301));
        let status = decode(&len(one(&span, 15)));
        assert_eq!(text(one(&status, 2)), "grpc-status 14");
        assert_eq!(one(&status, 3), Field::Varint(ERROR));
        let attributes = attributes_of(&span, 9);
        let expected = [
            ("http.request.method", "POST"),
            ("url.path", "/books.Catalog/Get"),
            ("server.address", "books"),
            ("server.port", "8080"),
            ("http.response.status_code", "200"),
            ("rpc.system", "grpc"),
            ("rpc.service", "books.Catalog"),
            ("rpc.method", "Get"),
            ("rpc.grpc.status_code", "14"),
            ("network.peer.address", "127.0.0.1"),
            ("network.peer.port", "40000"),
            ("mesh.direction", "outbound"),
            ("mesh.service", "books"),
            ("mesh.peer.identity", "spiffe://mesh.local/books"),
            ("mesh.endpoint", "10.0.0.7:4143"),
            ("mesh.tries", "2"),
            ("mesh.retry_reasons", "[grpc-status]"),
            ("mesh.request_bytes", "5"),
            ("mesh.response_bytes", "0"),
        ];
        let expected: BTreeMap<String, String> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(attributes, expected);
    }

    #[test]
    fn a_successful_http_server_call_is_a_server_span_named_by_its_method_without_status() {
        let mut record = Record::new(Direction::Inbound, Kind::Upgrade, "web");
        record.method = Some(Method::GET);
        record.path = Some("/chat".into());
        record.authority = Some("[::1]:9000".into());
        record.peer = Some("[::1]:5000".parse().unwrap());
        record.status = Some(101);
        record.trace = Some(trace(None));
        let resource = Resource {
            service: "mesh-proxy".into(),
            instance: None,
        };
        let (resource, _, spans) = spans_of(&encode(&resource, &[Arc::new(record)]));
        assert!(!resource.contains_key("service.instance.id"));
        let span = decode(&spans[0]);
        assert_eq!(text(one(&span, 5)), "GET");
        assert_eq!(one(&span, 6), Field::Varint(SERVER));
        assert!(all(&span, 4).is_empty(), "a root span has no parent");
        assert!(all(&span, 15).is_empty(), "UNSET: no status");
        assert_eq!(one(&span, 16), Field::Fixed32(0x101));
        let attributes = attributes_of(&span, 9);
        assert_eq!(attributes["server.address"], "::1");
        assert_eq!(attributes["server.port"], "9000");
        assert_eq!(attributes["network.peer.address"], "::1");
        assert_eq!(attributes["mesh.kind"], "upgrade");
        for absent in [
            "mesh.tries",
            "mesh.retry_reasons",
            "mesh.error",
            "rpc.system",
        ] {
            assert!(!attributes.contains_key(absent), "{absent}: {attributes:?}");
        }
    }

    #[test]
    fn the_mesh_error_then_5xx_then_a_broken_stream_make_an_error_status() {
        let mut record = Record::new(Direction::Outbound, Kind::Request, "web");
        assert_eq!(error(&record), None);
        record.status = Some(404);
        assert_eq!(error(&record), None);
        record.failed = true;
        assert_eq!(
            error(&record).as_deref(),
            Some("the stream broke before its end")
        );
        record.status = Some(503);
        assert_eq!(error(&record).as_deref(), Some("HTTP status 503"));
        record.mesh_error = Some("connect-failed".into());
        assert_eq!(
            error(&record).as_deref(),
            Some("mesh-error: connect-failed")
        );
    }

    #[test]
    fn records_without_a_trace_are_left_out() {
        let resource = Resource {
            service: "web".into(),
            instance: None,
        };
        let untraced = Arc::new(Record::new(Direction::Inbound, Kind::Tcp, "web"));
        let (_, _, spans) = spans_of(&encode(&resource, &[untraced]));
        assert!(spans.is_empty());
    }

    #[test]
    fn only_well_formed_grpc_paths_name_a_service_and_method() {
        assert_eq!(rpc_of("/pkg.Svc/Get"), Some(("pkg.Svc", "Get")));
        for bad in [
            "/",
            "//Get",
            "/pkg.Svc/",
            "/pkg.Svc/Get/more",
            "pkg.Svc/Get",
        ] {
            assert_eq!(rpc_of(bad), None, "{bad}");
        }
    }
}
