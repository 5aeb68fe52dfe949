"""Calls a recommendations server with Python's grpcio, an independent gRPC implementation.

Run by tests/python_interop.rs, which generates the stubs into a temporary directory on
PYTHONPATH and checks the JSON this prints:

    python3 interop_client.py HOST:PORT
"""

import json
import sys

import grpc

import recommendations_pb2
import recommendations_pb2_grpc


def metadata_value(metadata, key):
    for item in metadata or ():
        if item.key == key:
            return item.value
    return None


def main():
    address = sys.argv[1]
    result = {}
    with grpc.insecure_channel(address) as channel:
        stub = recommendations_pb2_grpc.RecommendationsStub(channel)

        request = recommendations_pb2.RecommendationRequest(
            user_id=1, category=recommendations_pb2.SCIENCE_FICTION, max_results=3
        )
        response, call = stub.Recommend.with_call(request, timeout=10)
        result["success"] = {
            "books": [[book.id, book.title] for book in response.recommendations],
            "served_by": metadata_value(call.initial_metadata(), "x-served-by"),
        }

        # proto3 enums are open: 7 goes on the wire although BookCategory has no such value.
        unknown = recommendations_pb2.RecommendationRequest(
            user_id=1, category=7, max_results=3
        )
        try:
            stub.Recommend(unknown, timeout=10)
            result["not_found"] = {"code": "OK"}
        except grpc.RpcError as error:
            result["not_found"] = {
                "code": error.code().name,
                "details": error.details(),
                "served_by": metadata_value(error.trailing_metadata(), "x-served-by"),
            }

    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
