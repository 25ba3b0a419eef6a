"""An OTLP/gRPC trace receiver that counts spans and drops them: the collector stand-in for
benchmarks of the service with tracing on (`python bench/otlp_sink.py PORT`)."""

from __future__ import annotations

import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc


class Sink(otlp_grpc.TraceServiceServicer):
    spans = 0

    def Export(self, request, context):
        Sink.spans += sum(len(scope.spans) for resource in request.resource_spans
                          for scope in resource.scope_spans)
        return otlp.ExportTraceServiceResponse()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(1))
    otlp_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
    server.start()
    try:
        server.wait_for_termination()
    finally:
        print(f"otlp sink: {Sink.spans} spans received", file=sys.stderr)


if __name__ == "__main__":
    main()
