"""Triton's statistics extension, read with tritonclient itself over HTTP and gRPC, against the
Prometheus metrics of the same traffic."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.process.config import ServeConfig
from service.process.server import create_server
from tests.conftest import python_env

# The calls that generate (the edge admits them): what the statistics count.
GENERATING = {"Generate", "Interpolate", "GenerateStream", "ModelInfer",
              "POST /v2/models/{name}/infer", "GET /v1/models/{name}/images/{seed}.png",
              "GET /v1/models/{name}/grid.png"}

GRPC_READER = """
import json, sys
import tritonclient.grpc as tc
client = tc.InferenceServerClient(sys.argv[1])
print(json.dumps({"plain": client.get_inference_statistics("plain", as_json=True),
                  "all": client.get_inference_statistics("", as_json=True),
                  "extensions": client.get_server_metadata(as_json=True)["extensions"]}))
"""


@pytest.fixture(scope="module")
def fresh_server(tiny_onnx, tiny_cond_onnx):
    """A server of its own, so its statistics hold only this module's traffic."""
    running = create_server(ServeConfig(
        host="127.0.0.1", port=0, http_port=0, metrics_port=-1, device="cpu",
        models=(("plain", str(tiny_onnx)), ("cond", str(tiny_cond_onnx)))))
    yield running
    running.stop(grace=1)


def _traffic(server) -> float:
    """The calls below; returns the seconds the successful ones took as their caller saw
    them (a bound the server's own timing of them must fit in)."""
    import time
    started = time.perf_counter()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GeneratorServiceStub(channel)
        v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for seeds in ([1, 2, 3], [4, 5], list(range(40)), list(range(1024))):
            stub.Generate(pb.GenerateRequest(model="plain", seeds=seeds), timeout=10)
        stub.Interpolate(pb.InterpolateRequest(model="plain", seed_a=1, seed_b=2, frames=5),
                         timeout=10)
        list(stub.GenerateStream(pb.GenerateStreamRequest(
            model="plain", range=pb.SeedRange(start=0, count=10), chunk_size=4), timeout=10))
        request = v2.ModelInferRequest(model_name="plain", inputs=[
            v2.ModelInferRequest.InferInputTensor(name="seeds", datatype="UINT64", shape=[3])])
        request.raw_input_contents.append(np.arange(3, dtype="<u8").tobytes())
        v2_stub.ModelInfer(request, timeout=10)
        failing = time.perf_counter()
        for bad in (pb.GenerateRequest(model="plain", seeds=[1], psi=0),  # refused: failures
                    pb.GenerateRequest(model="plain", seeds=[])):
            with pytest.raises(grpc.RpcError):
                stub.Generate(bad, timeout=10)
        started += time.perf_counter() - failing  # (not the failures' time)
        stub.Generate(pb.GenerateRequest(model="cond", seeds=[1, 2], labels=[3]), timeout=10)
    base = f"http://127.0.0.1:{server.http_port}"
    body = json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [2],
                                   "data": [7, 8]}]}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"{base}/v2/models/plain/infer", data=body,
        headers={"Content-Type": "application/json"}), timeout=10).read()
    urllib.request.urlopen(f"{base}/v1/models/plain/images/9.png", timeout=10).read()
    return time.perf_counter() - started


def _prometheus(server, model: str) -> dict:
    """What the Prometheus metrics say of `model`'s generating calls, images and runs."""
    figures = {"ok": 0, "failed": 0, "images": 0, "runs": 0, "run_seconds": 0.0}
    for metric in server.metrics.registry.collect():
        for sample in metric.samples:
            labels = sample.labels
            if labels.get("model") != model:
                continue
            if (sample.name == "dcgan_request_duration_seconds_count"
                    and labels["rpc"] in GENERATING):
                figures["ok" if labels["code"] == "OK" else "failed"] += int(sample.value)
            elif sample.name == "dcgan_images_generated_total":
                figures["images"] += int(sample.value)
            elif sample.name == "dcgan_batch_size_count":
                figures["runs"] += int(sample.value)
            elif sample.name == "dcgan_inference_duration_seconds_sum":
                figures["run_seconds"] += sample.value
    return figures


def _as_ints(value):
    """tritonclient.grpc's JSON carries uint64 as strings (protobuf's JSON mapping)."""
    if isinstance(value, dict):
        return {k: _as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_ints(v) for v in value]
    return int(value) if isinstance(value, str) and value.isdigit() else value


def test_tritonclient_reads_statistics_that_agree_with_prometheus(fresh_server,
                                                                  tritonclient_grpc_python):
    import tritonclient.http as triton_http
    client_seconds = _traffic(fresh_server)
    prometheus = _prometheus(fresh_server, "plain")
    http = triton_http.InferenceServerClient(f"127.0.0.1:{fresh_server.http_port}")
    over_http = http.get_inference_statistics("plain")
    everything = http.get_inference_statistics("")
    assert "statistics" in http.get_server_metadata()["extensions"]
    read = subprocess.run([tritonclient_grpc_python, "-c", GRPC_READER,
                           f"127.0.0.1:{fresh_server.port}"],
                          env={**python_env(), "PYTHONPATH": ""}, capture_output=True, text=True,
                          timeout=120)
    assert read.returncode == 0, read.stderr[-3000:]
    over_grpc = json.loads(read.stdout)

    [stats] = over_http["model_stats"]
    version = fresh_server.registry.get("plain").version
    assert (stats["name"], stats["version"]) == ("plain", version)
    # Both protocols report the same numbers (no generating call came between the reads).
    grpc_stats = _as_ints(over_grpc["plain"]["model_stats"][0])
    for key in ("inference_count", "execution_count", "last_inference"):
        assert grpc_stats[key] == stats[key], key
    for step in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert grpc_stats["inference_stats"][step] == stats["inference_stats"][step], step
    assert [b["batch_size"] for b in grpc_stats["batch_stats"]] == \
        [b["batch_size"] for b in stats["batch_stats"]]
    assert "statistics" in over_grpc["extensions"]
    # ... and agree with Prometheus for the same traffic.
    steps = stats["inference_stats"]
    assert steps["success"]["count"] == prometheus["ok"] == 9
    assert steps["fail"]["count"] == prometheus["failed"] == 2
    assert stats["inference_count"] == prometheus["images"] == \
        3 + 2 + 40 + 1024 + 5 + 10 + 3 + 2 + 1
    assert stats["execution_count"] == prometheus["runs"] >= 8
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == prometheus["runs"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"]) \
        == prometheus["images"]
    run_ns = sum(b["compute_infer"]["ns"] for b in stats["batch_stats"])
    assert run_ns == pytest.approx(prometheus["run_seconds"] * 1e9, rel=1e-6, abs=len(
        stats["batch_stats"]) * 10)
    for step in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert steps[step]["count"] == steps["success"]["count"], step
    # A call's steps fit inside it, its runs included (the 1,024-image call ran in pieces on
    # every worker side by side: their time is counted once); and the calls fit in what their
    # callers saw.
    assert steps["queue"]["ns"] + steps["compute_input"]["ns"] + steps["compute_infer"]["ns"] \
        + steps["compute_output"]["ns"] < steps["success"]["ns"] < client_seconds * 1e9
    assert stats["last_inference"] > 0
    # Every served model, the one never called with zeros.
    listed = {(s["name"], s["inference_count"]) for s in everything["model_stats"]}
    assert listed == {("plain", stats["inference_count"]), ("cond", 2)}
    assert {s["name"] for s in _as_ints(over_grpc["all"])["model_stats"]} == {"plain", "cond"}


def test_statistics_by_version_and_unknown_names(fresh_server):
    base = f"http://127.0.0.1:{fresh_server.http_port}/v2/models"
    version = fresh_server.registry.get("cond").version
    with urllib.request.urlopen(f"{base}/cond/versions/{version}/stats", timeout=10) as r:
        [stats] = json.loads(r.read())["model_stats"]
    assert (stats["name"], stats["version"]) == ("cond", version)
    for path in ("/nope/stats", "/cond/versions/7/stats"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + path, timeout=10)
        assert err.value.code == 404
    with grpc.insecure_channel(f"127.0.0.1:{fresh_server.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                v2.ModelStatisticsRequest(name="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
