"""An OTLP/HTTP receiver for the tests of the sidecars' traces: oteltest's HTTP sink
(the one `otelsink --http` runs) on a port the system picks, decoding each export request
with opentelemetry-proto and printing what it holds.

Run with: python otlp_sink.py [--host ADDR] [--format json|spans]

It prints "ready PORT", then, for each export request, either (`json`, the default) one
JSON line:

    {"content_type", "unknown_bytes", "spans": [{"resource", "scope", "trace_id",
     "span_id", "parent_span_id", "name", "kind", "start", "end", "flags",
     "attributes", "status": {"code", "message"}}]}

or (`spans`) one line per span: `span SERVICE KIND TRACE_ID SPAN_ID PARENT_ID|- NAME`.
It ends when its standard input closes.

`otelsink` itself listens on every interface at the fixed port 4318; tests run in
parallel, so this uses its sink class on a port the system picks, on ADDR only
(127.0.0.1 unless --host says otherwise: the compose test gives docker0's address).
"""

import argparse
import http.server
import json
import logging
import sys
import time

import oteltest.sink
from oteltest.sink.handler import RequestHandler


HOST = "127.0.0.1"


class HostServer(http.server.HTTPServer):
    """The sink's server, on HOST whatever interface it asks for."""

    def __init__(self, address, handler):
        super().__init__((HOST, address[1]), handler)


# The sink looks its server class up in its module when it starts.
oteltest.sink.HTTPServer = HostServer
# Its output only on stdout: no line per request on stderr.
http.server.BaseHTTPRequestHandler.log_message = lambda self, *args: None


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind) if kind else None


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


class Printer(RequestHandler):
    def __init__(self, spans_only):
        super().__init__()
        self.spans_only = spans_only

    def handle_trace(self, request, headers):
        encoded = len(request.SerializeToString())
        # Fields of a wrong number or wire type decode as unknown fields, not errors.
        request.DiscardUnknownFields()
        unknown_bytes = encoded - len(request.SerializeToString())
        spans = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                scope = {
                    "name": scope_spans.scope.name,
                    "version": scope_spans.scope.version,
                }
                for span in scope_spans.spans:
                    spans.append(
                        {
                            "resource": resource,
                            "scope": scope,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "flags": span.flags,
                            "attributes": attributes(span.attributes),
                            "status": {
                                "code": span.status.code,
                                "message": span.status.message,
                            },
                        }
                    )
        if self.spans_only:
            for span in spans:
                print(
                    "span",
                    span["resource"].get("service.name", "-"),
                    span["kind"],
                    span["trace_id"],
                    span["span_id"],
                    span["parent_span_id"] or "-",
                    span["name"],
                    flush=True,
                )
            return
        line = {
            # Header names as sent: case varies.
            "content_type": next(
                (v for k, v in headers.items() if k.lower() == "content-type"), None
            ),
            "unknown_bytes": unknown_bytes,
            "spans": spans,
        }
        print(json.dumps(line), flush=True)

    def handle_metrics(self, request, headers):
        pass

    def handle_logs(self, request, headers):
        pass


def main():
    global HOST
    parser = argparse.ArgumentParser(description="An OTLP/HTTP receiver for tests.")
    parser.add_argument("--host", default=HOST, help="the address to listen on")
    parser.add_argument("--format", choices=["json", "spans"], default="json")
    args = parser.parse_args()
    HOST = args.host
    logging.basicConfig(level=logging.WARNING)
    printer = Printer(spans_only=args.format == "spans")
    sink = oteltest.sink.HttpSink(printer, logging.getLogger("otlp_sink"), port=0)
    sink.start()
    # The server exists, bound and listening, once the sink's thread has made it.
    while sink.httpd is None:
        time.sleep(0.01)
    print("ready", sink.httpd.server_address[1], flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
