"""OpenTelemetry tracing, exported for real over OTLP (gRPC and HTTP/protobuf) to a receiver
the test runs on 127.0.0.1, as a collector would receive it: each call's span continues the
caller's trace (W3C traceparent in gRPC metadata or an HTTP header), its steps are children,
and each run's span links to every call it served."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.errors import ServiceError
from service.edge.tracing import Tracing
from service.process.config import ServeConfig
from service.process.server import create_server


class _GrpcReceiver(otlp_grpc.TraceServiceServicer):
    def __init__(self):
        self.requests: list[otlp.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return otlp.ExportTraceServiceResponse()


@pytest.fixture
def receiver(request):
    """An OTLP trace receiver on 127.0.0.1 speaking `request.param`; yields (endpoint,
    protocol, the export requests it got)."""
    protocol = request.param
    got: list[otlp.ExportTraceServiceRequest] = []
    if protocol == "grpc":
        server = grpc.server(futures.ThreadPoolExecutor(2))
        servicer = _GrpcReceiver()
        otlp_grpc.add_TraceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        yield f"http://127.0.0.1:{port}", protocol, servicer.requests
        server.stop(0)
        return

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            assert self.path == "/v1/traces" and \
                self.headers["Content-Type"] == "application/x-protobuf"
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(otlp.ExportTraceServiceRequest.FromString(body))
            answer = otlp.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", protocol, got
    server.shutdown()


def _traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def _spans(requests) -> list:
    return [span for request in requests for resource in request.resource_spans
            for scope in resource.scope_spans for span in scope.spans]


def _attributes(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


@pytest.mark.parametrize("receiver", ["grpc", "http/protobuf"], indirect=True)
def test_calls_and_runs_are_traced_through_otlp(receiver, tiny_onnx, monkeypatch):
    endpoint, protocol, got = receiver
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "digits-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    # Calls that arrive together wait up to 100 ms for each other: they share runs.
    running = create_server(ServeConfig(host="127.0.0.1", port=0, http_port=0, metrics_port=-1,
                                        models=(("m", str(tiny_onnx)),), device="cpu",
                                        batch_max_delay_ms=100))
    callers = {}  # our span id -> (trace id, what the call was)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            callers[0xA1] = (0xA1A1, "grpc png")
            stub.Generate(pb.GenerateRequest(seeds=[1, 2, 3], format=pb.IMAGE_FORMAT_PNG),
                          metadata=[("traceparent", _traceparent(0xA1A1, 0xA1))], timeout=10)

            def together(i: int) -> None:
                stub.Generate(pb.GenerateRequest(seeds=[10 + i, 20 + i]), timeout=10,
                              metadata=[("traceparent", _traceparent(0xB000 + i, 0xB0 + i))])
            for i in range(6):
                callers[0xB0 + i] = (0xB000 + i, "grpc together")
            with futures.ThreadPoolExecutor(6) as pool:
                list(pool.map(together, range(6)))
        callers[0xC1] = (0xC1C1, "http")
        http_request = urllib.request.Request(
            f"http://127.0.0.1:{running.http_port}/v1/models/m/images/7.png",
            headers={"traceparent": _traceparent(0xC1C1, 0xC1)})
        assert urllib.request.urlopen(http_request, timeout=10).status == 200
        # The Open Inference Protocol over both transports, traced the same way.
        callers[0xE1] = (0xE1E1, "v2 grpc")
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            infer = v2.ModelInferRequest(model_name="m", inputs=[
                v2.ModelInferRequest.InferInputTensor(name="seeds", datatype="UINT64", shape=[2],
                                                      contents={"uint64_contents": [4, 5]})])
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer, metadata=[("traceparent", _traceparent(0xE1E1, 0xE1))], timeout=10)
        callers[0xF1] = (0xF1F1, "v2 rest")
        rest = urllib.request.Request(
            f"http://127.0.0.1:{running.http_port}/v2/models/m/infer",
            data=json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [2],
                                         "data": [4, 5]}]}).encode(),
            headers={"traceparent": _traceparent(0xF1F1, 0xF1),
                     "Content-Type": "application/json"})
        assert urllib.request.urlopen(rest, timeout=10).status == 200
        with pytest.raises(grpc.RpcError):  # a refused call is traced, with its status
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                pb_grpc.GeneratorServiceStub(channel).Generate(
                    pb.GenerateRequest(model="nope", seeds=[1]), timeout=10,
                    metadata=[("traceparent", _traceparent(0xD1D1, 0xD1))])
    finally:
        running.stop(grace=1)  # flushes the exporter

    spans = _spans(got)
    resource = {a.key: a.value.string_value for a in got[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "digits-under-test"
    calls = {int.from_bytes(s.parent_span_id, "big"): s for s in spans
             if int.from_bytes(s.parent_span_id, "big") in callers | {0xD1: None}}
    assert set(calls) == set(callers) | {0xD1}
    children = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    for caller, (trace_id, what) in callers.items():
        call = calls[caller]
        # The caller's trace continues: same trace id, our span as the parent.
        assert int.from_bytes(call.trace_id, "big") == trace_id, what
        assert call.kind == call.SPAN_KIND_SERVER
        attributes = _attributes(call)
        assert attributes["dcgan.model"] == "m" and attributes["dcgan.images"] >= 1
        assert attributes["dcgan.model.version"]
        steps = [s.name for s in sorted(children[call.span_id],
                                        key=lambda s: s.start_time_unix_nano)]
        expected = ["admission", "queue wait", "onnxruntime run"] + (["encode"] if "png" in what
                                                                   or what == "http" else [])
        assert steps == expected, (what, steps)
        for step in children[call.span_id]:
            assert call.start_time_unix_nano <= step.start_time_unix_nano \
                <= step.end_time_unix_nano <= call.end_time_unix_nano, (what, step.name)
        if what in ("http", "v2 rest"):
            method, route = ("GET", "/v1/models/{name}/images/{seed}.png") if what == "http" \
                else ("POST", "/v2/models/{name}/infer")
            assert call.name == f"{method} {route}" and attributes["http.route"] == route
            assert attributes["http.request.method"] == method
            assert attributes["http.response.status_code"] == 200
        else:
            service, method = ("inference.GRPCInferenceService", "ModelInfer") \
                if what == "v2 grpc" else ("dcgan.v1.GeneratorService", "Generate")
            assert call.name == f"{service}/{method}"
            assert attributes["rpc.system"] == "grpc" and attributes["rpc.method"] == method
            assert attributes["rpc.service"] == service
            assert attributes["rpc.grpc.status_code"] == 0
    refused = _attributes(calls[0xD1])
    assert refused["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # Each run's span, in a trace of its own, links to every call it served, with the
    # executed batch size; and each call's run step links back to it.
    runs = [s for s in spans if s.name == "onnxruntime run" and not s.parent_span_id]
    call_ids = {c.span_id: c for c in calls.values()}
    for run in runs:
        linked = [call_ids[link.span_id] for link in run.links]
        assert linked and all(link.trace_id == call_ids[link.span_id].trace_id
                              for link in run.links)
        size = _attributes(run)
        assert size["dcgan.batch.calls"] == len(linked)
        assert size["dcgan.batch.images"] == sum(_attributes(c)["dcgan.images"] for c in linked)
        for call in linked:
            [step] = [s for s in children[call.span_id] if s.name == "onnxruntime run"]
            assert [link.span_id for link in step.links] == [run.span_id]
    shared = max(runs, key=lambda run: len(run.links))
    assert len(shared.links) >= 2, "the calls sent together shared no run"


def test_tracing_is_off_unless_an_exporter_is_named():
    assert Tracing.from_env({}) is None
    assert Tracing.from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(ValueError, match="not installed: use otlp, none or one of"):
        Tracing.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="use grpc or http/protobuf"):
        Tracing.from_env({"OTEL_TRACES_EXPORTER": "otlp",
                          "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_a_misnamed_exporter_is_a_start_up_error(tiny_onnx, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,zipkin")
    with pytest.raises(ServiceError, match="cannot trace: OTEL_TRACES_EXPORTER names 'zipkin'"):
        create_server(ServeConfig(host="127.0.0.1", port=0, http_port=-1, metrics_port=-1,
                                  models=(("m", str(tiny_onnx)),)))
