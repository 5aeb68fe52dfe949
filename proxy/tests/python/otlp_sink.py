"""An OTLP/HTTP receiver for the tests of the sidecar's traces: oteltest's HTTP sink
(the one `otelsink --http` runs) on a free loopback port, decoding each export request
with opentelemetry-proto and printing it as one JSON line.

Run with: python otlp_sink.py   (prints "ready PORT", then one line per export request;
ends when its standard input closes)

`otelsink` itself listens on every interface at the fixed port 4318; tests run in
parallel, so this uses its sink class on a port the system picks, on loopback only.
"""

import http.server
import json
import logging
import sys
import time

import oteltest.sink
from oteltest.sink.handler import RequestHandler


class LoopbackServer(http.server.HTTPServer):
    """The sink's server, on 127.0.0.1 whatever interface it asks for."""

    def __init__(self, address, handler):
        super().__init__(("127.0.0.1", address[1]), handler)


# The sink looks its server class up in its module when it starts.
oteltest.sink.HTTPServer = LoopbackServer


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
    logging.basicConfig(level=logging.WARNING)
    sink = oteltest.sink.HttpSink(Printer(), logging.getLogger("otlp_sink"), port=0)
    sink.start()
    # The server exists, bound and listening, once the sink's thread has made it.
    while sink.httpd is None:
        time.sleep(0.01)
    print("ready", sink.httpd.server_address[1], flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
