"""A recommendations server in Python's grpcio, which sends every status in trailers.

Run by tests/python_interop.rs with the generated stubs on PYTHONPATH:

    python3 recommendations_server.py PORT ok|unavailable|flaky NAME

`ok` answers one book; `unavailable` aborts every call with UNAVAILABLE; `flaky` aborts
3 calls in every 10 with UNAVAILABLE (the 3rd, 6th and 9th) and answers the others. It
prints "ready" once serving and stops when its standard input closes.
"""

import itertools
import sys
import threading
from concurrent import futures

import grpc

import recommendations_pb2
import recommendations_pb2_grpc


class Recommendations(recommendations_pb2_grpc.RecommendationsServicer):
    def __init__(self, mode, name):
        self.mode = mode
        self.name = name
        self.calls = itertools.count(1)
        self.lock = threading.Lock()

    def Recommend(self, request, context):
        context.set_trailing_metadata((("x-served-by", self.name),))
        with self.lock:
            call = next(self.calls)
        failing = self.mode == "unavailable" or (self.mode == "flaky" and call % 10 in (3, 6, 9))
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this instance is failing on purpose")
        book = recommendations_pb2.BookRecommendation(id=1, title="The Maltese Falcon")
        return recommendations_pb2.RecommendationResponse(recommendations=[book])


def main():
    port, mode, name = sys.argv[1], sys.argv[2], sys.argv[3]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recommendations_pb2_grpc.add_RecommendationsServicer_to_server(Recommendations(mode, name), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
