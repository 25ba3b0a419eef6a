"""Two versions of one model served side by side (`--model m:1=A --model m:2=B`): every door
honours the version a request names, takes the first configured when it names none, and
refuses one that is not served; metadata, statistics and metrics are per version."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.client import GeneratorClient, images_from_response
from service.client import main as client_main
from service.imaging import decode_png
from service.process.config import ServeConfig, config_from_args
from service.process.server import create_server

SEEDS = [3, 14, 15]


@pytest.fixture(scope="module")
def two_versions(tiny_onnx, other_onnx):
    running = create_server(ServeConfig(host="127.0.0.1", port=0, http_port=0, metrics_port=0,
                                        metrics_host="127.0.0.1", device="cpu",
                                        models=(("m:1", str(tiny_onnx)),
                                                ("m:2", str(other_onnx)))))
    yield running
    running.stop(grace=1)


def _grpc(server, version: str) -> np.ndarray:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = pb_grpc.GeneratorServiceStub(channel).Generate(
            pb.GenerateRequest(model="m", model_version=version, seeds=SEEDS), timeout=10)
    assert response.model_version == (version or "1")
    return images_from_response(response)


def _v2_grpc(server, version: str) -> np.ndarray:
    request = v2.ModelInferRequest(model_name="m", model_version=version, inputs=[
        v2.ModelInferRequest.InferInputTensor(name="seeds", datatype="UINT64", shape=[3])])
    request.raw_input_contents.append(np.array(SEEDS, "<u8").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert response.model_version == (version or "1")
    return np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(3, 28, 28)


def _v2_rest(server, version: str) -> np.ndarray:
    path = f"/v2/models/m/versions/{version}/infer" if version else "/v2/models/m/infer"
    body = json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [3],
                                   "data": SEEDS}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}{path}", data=body,
            headers={"Content-Type": "application/json"}), timeout=10) as r:
        answer = json.loads(r.read())
    assert answer["model_version"] == (version or "1")
    return np.array(answer["outputs"][0]["data"], np.uint8).reshape(3, 28, 28)


def _png_urls(server, version: str) -> np.ndarray:
    query = f"?version={version}" if version else ""
    return np.stack([decode_png(urllib.request.urlopen(
        f"http://127.0.0.1:{server.http_port}/v1/models/m/images/{seed}.png{query}",
        timeout=10).read()) for seed in SEEDS])


def _client(server, version: str) -> np.ndarray:
    with GeneratorClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        return client.generate(SEEDS, model="m", version=version)


def _cli(server, version: str, tmp_path) -> np.ndarray:
    out = tmp_path / (version or "default")
    argv = ["--address", f"127.0.0.1:{server.port}", "generate", "--seed", "3,14,15",
            "--model", "m", "--out", str(out)] + (["--model-version", version] if version else [])
    assert client_main(argv) == 0
    return np.stack([decode_png((out / f"seed_{seed:02d}.png").read_bytes()) for seed in SEEDS])


DOORS = [_grpc, _v2_grpc, _v2_rest, _png_urls, _client]


def test_every_door_serves_the_version_asked_for(two_versions, tmp_path):
    by_version = {}
    for version in ("", "1", "2"):
        seen = [door(two_versions, version) for door in DOORS]
        seen.append(_cli(two_versions, version, tmp_path))
        for door, images in zip([*DOORS, _cli], seen):
            np.testing.assert_array_equal(images, seen[0], err_msg=f"{door.__name__} {version}")
        by_version[version] = seen[0]
    np.testing.assert_array_equal(by_version[""], by_version["1"])  # the first configured
    assert not np.array_equal(by_version["1"], by_version["2"])


def test_a_version_not_served_is_refused_by_every_door(two_versions, tmp_path, capsys):
    for call in (lambda: _grpc(two_versions, "3"), lambda: _v2_grpc(two_versions, "3")):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "has no version '3': it serves '1', '2'" in err.value.details()
    for call in (lambda: _v2_rest(two_versions, "3"), lambda: _png_urls(two_versions, "3")):
        with pytest.raises(urllib.error.HTTPError) as err:
            call()
        assert err.value.code == 404
    assert client_main(["--address", f"127.0.0.1:{two_versions.port}", "generate", "--seed",
                        "1", "--model", "m", "--model-version", "3",
                        "--out", str(tmp_path)]) == 1
    assert "has no version '3'" in capsys.readouterr().err


def test_metadata_statistics_and_metrics_are_per_version(two_versions):
    with grpc.insecure_channel(f"127.0.0.1:{two_versions.port}") as channel:
        stub = pb_grpc.GeneratorServiceStub(channel)
        v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
        stub.Generate(pb.GenerateRequest(model="m", model_version="2", seeds=list(range(7))),
                      timeout=10)
        assert v2_stub.ModelMetadata(v2.ModelMetadataRequest(name="m"),
                                     timeout=10).versions == ["1", "2"]
        listed = [(m.name, m.version, m.is_default, m.is_default_version)
                  for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models]
        assert listed == [("m", "1", True, True), ("m", "2", False, False)]
        info = stub.GetModelInfo(pb.GetModelInfoRequest(model="m", model_version="2"),
                                 timeout=10)
        assert info.version == "2" and info.run and info.run != "2"
    base = f"http://127.0.0.1:{two_versions.http_port}/v2/models/m"
    stats = {}
    for version in ("1", "2"):
        with urllib.request.urlopen(f"{base}/versions/{version}/stats", timeout=10) as r:
            [stats[version]] = json.loads(r.read())["model_stats"]
    assert stats["2"]["version"] == "2"
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{two_versions.metrics_port}/metrics", timeout=10).read().decode()
    for version in ("1", "2"):
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("dcgan_images_generated_total{")
                      and f'version="{version}"' in line and 'model="m"' in line)
        assert counted == stats[version]["inference_count"] > 0, version


def test_versions_are_configured_as_name_colon_version():
    config = config_from_args(["--model", "m:1=/a.onnx", "--model", "m:2=/b.onnx",
                               "--model", "n=/c.onnx"])
    assert [(name, version, str(path)) for name, version, path in config.model_paths()] == [
        ("m", "1", "/a.onnx"), ("m", "2", "/b.onnx"), ("n", "", "/c.onnx")]
    with pytest.raises(SystemExit):
        config_from_args(["--model", "m:=/a.onnx"])
