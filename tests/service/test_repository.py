"""The model repository (Triton's extension) with explicit model control, through tritonclient
over HTTP and gRPC: index, load beside the served models, a broken file refused with what
was served untouched, unload, and load and unload under traffic with no call lost or answered
wrongly."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.client import images_from_response
from service.process.config import ServeConfig
from service.process.server import create_server
from tests.conftest import python_env

GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException
client = tc.InferenceServerClient(sys.argv[1])
action, name = sys.argv[2], sys.argv[3]
try:
    if action == "load":
        client.load_model(name)
    elif action == "unload":
        client.unload_model(name)
    seeds = tc.InferInput("seeds", [2], "UINT64")
    seeds.set_data_from_numpy(np.array([5, 6], dtype=np.uint64))
    try:
        result = client.infer(name, [seeds], model_version="1").as_numpy("images").tolist()
    except InferenceServerException as exc:
        result = exc.status()
    index = client.get_model_repository_index(as_json=True)["models"]
    print(json.dumps({"index": index, "v1": result}))
except InferenceServerException as exc:
    print(json.dumps({"error": exc.message()}))
"""


@pytest.fixture
def repository(tmp_path, tiny_onnx, other_onnx):
    """m/1 and m/2 (two generators), and bad/1 (a broken file)."""
    for name, version, source in (("m", "1", tiny_onnx), ("m", "2", other_onnx)):
        (tmp_path / name / version).mkdir(parents=True)
        shutil.copy(source, tmp_path / name / version / "model.onnx")
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "model.onnx").write_bytes(tiny_onnx.read_bytes()[:500])
    return tmp_path


@pytest.fixture
def explicit(repository, tiny_cond_onnx):
    running = create_server(ServeConfig(
        host="127.0.0.1", port=0, http_port=0, metrics_port=-1, device="cpu",
        model_repository=str(repository), model_control="explicit",
        models=(("keep", str(tiny_cond_onnx)),)))
    yield running
    running.stop(grace=1)


def _index(rows) -> set:
    return {(r["name"], r.get("version", ""), r["state"]) for r in rows}


def _direct(path, version: str) -> np.ndarray:
    """What a model file generates for seeds 5, 6, run in this process."""
    from service.runtime import OnnxGenerator
    from service.contract import seed_to_latent
    latents = np.stack([seed_to_latent(s, 100) for s in (5, 6)])
    return OnnxGenerator(path / "m" / version / "model.onnx").run(latents, None)


def test_tritonclient_indexes_loads_and_unloads_models(explicit, repository,
                                                       tritonclient_grpc_python):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException
    http = triton_http.InferenceServerClient(f"127.0.0.1:{explicit.http_port}")
    assert "model_repository" in http.get_server_metadata()["extensions"]
    assert _index(http.get_model_repository_index()) == {
        ("keep", explicit.registry.get("keep").version, "READY"),
        ("m", "1", "UNAVAILABLE"), ("m", "2", "UNAVAILABLE"), ("bad", "1", "UNAVAILABLE")}
    assert not http.is_model_ready("m")

    http.load_model("m")  # every version; the highest is the default
    assert http.is_model_ready("m") and http.is_model_ready("m", "1")
    seeds = triton_http.InferInput("seeds", [2], "UINT64")
    seeds.set_data_from_numpy(np.array([5, 6], dtype=np.uint64))
    default = http.infer("m", [seeds]).as_numpy("images")
    first = http.infer("m", [seeds], model_version="1").as_numpy("images")
    np.testing.assert_array_equal(default, _direct(repository, "2"))
    np.testing.assert_array_equal(first, _direct(repository, "1"))
    assert http.get_model_metadata("m")["versions"] == ["2", "1"]

    with pytest.raises(InferenceServerException) as err:  # a broken file: refused, and ...
        http.load_model("bad")
    assert "cannot load 'bad', still serving what was served" in err.value.message()
    assert err.value.status() == "400"
    np.testing.assert_array_equal(  # ... what was served is untouched
        http.infer("m", [seeds], model_version="1").as_numpy("images"), first)
    with pytest.raises(InferenceServerException, match="has no model 'nope'"):
        http.load_model("nope")

    # Over gRPC, in tritonclient.grpc's own environment: unload, and the index after it.
    run = subprocess.run([tritonclient_grpc_python, "-c", GRPC_CLIENT,
                          f"127.0.0.1:{explicit.port}", "unload", "m"],
                         env={**python_env(), "PYTHONPATH": ""}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["v1"] == "StatusCode.NOT_FOUND"
    assert _index(report["index"]) >= {("m", "1", "UNAVAILABLE"), ("m", "2", "UNAVAILABLE")}
    run = subprocess.run([tritonclient_grpc_python, "-c", GRPC_CLIENT,
                          f"127.0.0.1:{explicit.port}", "load", "m"],
                         env={**python_env(), "PYTHONPATH": ""}, capture_output=True, text=True,
                         timeout=120)
    report = json.loads(run.stdout)
    assert np.array_equal(np.array(report["v1"], np.uint8), first)
    assert ("m", "2", "READY") in _index(report["index"])


def test_load_and_unload_under_traffic_lose_no_call(explicit, repository):
    """Callers on the loaded model and on another one while the model is loaded again and
    again, then unloaded: short calls, and streams long enough to span a swap (each holds the
    batcher it started on until it ends). Every call is answered with the right pixels, or,
    for the model once unloaded, NOT_FOUND; nothing else."""
    import time

    import tritonclient.http as triton_http
    http = triton_http.InferenceServerClient(f"127.0.0.1:{explicit.http_port}")
    http.load_model("m")
    expected = _direct(repository, "1")[:, 0]
    stream_seeds = list(range(5, 7)) * 300  # 600 images, 8 a chunk
    with grpc.insecure_channel(f"127.0.0.1:{explicit.port}") as channel:
        keep = images_from_response(pb_grpc.GeneratorServiceStub(channel).Generate(
            pb.GenerateRequest(model="keep", seeds=[5, 6], labels=[1]), timeout=10))
    outcomes: list[tuple[str, str]] = []
    streams: list[tuple[float, float]] = []  # when each stream that finished ran
    unloading = threading.Event()
    stop = threading.Event()

    def call(stub, model: str) -> np.ndarray:
        if model == "m stream":
            return np.concatenate([images_from_response(r) for r in stub.GenerateStream(
                pb.GenerateStreamRequest(model="m", model_version="1", chunk_size=8,
                                         list=pb.SeedList(seeds=stream_seeds)), timeout=60)])
        request = (pb.GenerateRequest(model="m", model_version="1", seeds=[5, 6])
                   if model == "m" else
                   pb.GenerateRequest(model="keep", seeds=[5, 6], labels=[1]))
        return images_from_response(stub.Generate(request, timeout=30))

    def caller(model: str) -> None:
        want = {"m": expected, "m stream": np.concatenate([expected] * 300), "keep": keep}[model]
        with grpc.insecure_channel(f"127.0.0.1:{explicit.port}") as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            while not stop.is_set():
                before_unload = not unloading.is_set()
                started = time.monotonic()
                try:
                    right = np.array_equal(call(stub, model), want)
                    outcomes.append((model, "OK" if right else "WRONG PIXELS"))
                    if model == "m stream":
                        streams.append((started, time.monotonic()))
                except grpc.RpcError as exc:
                    late = exc.code() == grpc.StatusCode.NOT_FOUND and model != "keep" \
                        and not before_unload
                    outcomes.append((model, "NOT_FOUND" if late else exc.code().name))

    callers = [threading.Thread(target=caller, args=(m,))
               for m in ("m", "m", "keep", "m stream", "m stream")]
    for thread in callers:
        thread.start()
    swaps = []  # when each swap began
    for _ in range(3):
        time.sleep(0.3)
        swaps.append(time.monotonic())
        http.load_model("m")  # again, from the files: swapped in, the old engines drained
    unloading.set()
    swaps.append(time.monotonic())
    http.unload_model("m")
    stop.set()
    for thread in callers:
        thread.join()
    counts = {}
    for model, outcome in outcomes:
        counts[(model, outcome)] = counts.get((model, outcome), 0) + 1
    assert set(counts) <= {("m", "OK"), ("m", "NOT_FOUND"), ("m stream", "OK"),
                           ("m stream", "NOT_FOUND"), ("keep", "OK")}, counts
    assert counts[("m", "OK")] > 10 and counts[("keep", "OK")] > 10, counts
    # Streams ran through swaps: begun before one, answered whole after it began.
    spanned = [(a, b) for a, b in streams if any(a < t < b for t in swaps)]
    assert spanned, (streams, swaps)


def test_without_model_control_loading_is_refused_with_the_fix(server):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v2/repository/models/plain/load", data=b"",
            method="POST"), timeout=10)
    assert err.value.code == 400
    assert b"--model-control explicit" in err.value.read()
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v2/repository/index", data=b"{}",
            method="POST"), timeout=10) as r:
        assert {row["name"] for row in json.loads(r.read())} == {"cond", "plain"}
    for body in (b"[1]", b"{\"ready\": 1}", b"not json"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{server.http_port}/v2/repository/index", data=body,
                method="POST"), timeout=10)
        assert err.value.code == 400
        assert '{"ready": true}' in json.loads(err.value.read())["error"]


def test_explicit_control_may_start_with_no_model_and_load_one(repository):
    running = create_server(ServeConfig(
        host="127.0.0.1", port=0, http_port=0, metrics_port=-1, device="cpu",
        model_repository=str(repository), model_control="explicit"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(pb.GenerateRequest(seeds=[1]), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "no model is loaded" in err.value.details()
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{running.http_port}/v2/repository/models/m/load", data=b"",
                method="POST"), timeout=60).read()
            response = stub.Generate(pb.GenerateRequest(seeds=[5, 6]), timeout=10)
        assert (response.model, response.model_version) == ("m", "2")  # the default now
    finally:
        running.stop(grace=1)


def test_a_reload_keeps_the_models_loaded_through_the_api(explicit):
    """SIGHUP builds every served model again: the configured one and, under explicit
    control, those loaded through the API; the old engines close once unused."""
    explicit.repository.load("m")
    before = {(m.name, m.version): m.batcher for m in explicit.registry}
    assert explicit.reload()
    after = {(m.name, m.version): m.batcher for m in explicit.registry}
    assert set(after) == set(before) == {("keep", explicit.registry.get("keep").version),
                                         ("m", "1"), ("m", "2")}
    assert all(after[key] is not before[key] for key in after)  # built again from the files
    with grpc.insecure_channel(f"127.0.0.1:{explicit.port}") as channel:
        response = pb_grpc.GeneratorServiceStub(channel).Generate(
            pb.GenerateRequest(model="m", model_version="1", seeds=[5, 6]), timeout=10)
    assert response.count == 2


def _get(url: str, method: str = "GET", **headers) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_an_etag_follows_the_file_behind_a_version_and_head_answers(explicit, repository,
                                                                  other_onnx):
    """Replace m/1's file and load m again: the same URL (version pinned) names other bytes,
    so it has another ETag, and the old one no longer gets a 304; no picture is `immutable`,
    and HEAD gives a picture's headers without its body."""
    explicit.repository.load("m")
    url = f"http://127.0.0.1:{explicit.http_port}/v1/models/m/grid.png?seeds=0-3&version=1"
    status, before, png = _get(url)
    assert status == 200 and "immutable" not in before["Cache-Control"]
    assert _get(url, **{"If-None-Match": before["ETag"]})[0] == 304
    status, head, body = _get(url, "HEAD")
    assert status == 200 and body == b"" and head["ETag"] == before["ETag"]
    shutil.copy(other_onnx, repository / "m" / "1" / "model.onnx")
    explicit.repository.load("m")
    status, after, other_png = _get(url, **{"If-None-Match": before["ETag"]})
    assert status == 200 and after["ETag"] != before["ETag"] and other_png != png


def test_triton_reads_versions_as_numbers_and_loads_as_triton_does(explicit, repository):
    """A version folder is a number ("007" is version 7); a load's overrides (a config, files)
    are refused by name, not ignored; the index says why a load failed; unload_dependents,
    which tritonclient always sends, is taken."""
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException
    (repository / "m" / "2").rename(repository / "m" / "007")
    http = triton_http.InferenceServerClient(f"127.0.0.1:{explicit.http_port}")
    assert ("m", "7", "UNAVAILABLE") in _index(http.get_model_repository_index())
    http.load_model("m")
    seeds = triton_http.InferInput("seeds", [2], "UINT64")
    seeds.set_data_from_numpy(np.array([5, 6], dtype=np.uint64))
    for version in ("7", "007"):
        np.testing.assert_array_equal(http.infer("m", [seeds], model_version=version)
                                      .as_numpy("images"), _direct(repository, "007"))
    for override in ({"config": '{"backend": "onnxruntime"}'},
                     {"files": {"file:1/model.onnx": b"\0"}}):
        with pytest.raises(InferenceServerException) as err:
            http.load_model("m", **override)
        assert err.value.status() == "400" and "is not supported" in err.value.message()
    with pytest.raises(InferenceServerException):
        http.load_model("bad")
    [bad] = [r for r in http.get_model_repository_index() if r["name"] == "bad"]
    assert bad["state"] == "UNAVAILABLE" and bad["reason"].startswith("load failed:")
    http.unload_model("m", unload_dependents=True)
    assert not http.is_model_ready("m")


def test_statistics_of_a_model_cover_every_version(repository):
    import tritonclient.http as triton_http
    running = create_server(ServeConfig(
        host="127.0.0.1", port=0, http_port=0, metrics_port=-1, device="cpu",
        models=(("m:1", str(repository / "m" / "1" / "model.onnx")),
                ("m:2", str(repository / "m" / "2" / "model.onnx")))))
    try:
        http = triton_http.InferenceServerClient(f"127.0.0.1:{running.http_port}")
        seeds = triton_http.InferInput("seeds", [2], "UINT64")
        seeds.set_data_from_numpy(np.array([5, 6], dtype=np.uint64))
        http.infer("m", [seeds], model_version="2")
        stats = http.get_inference_statistics("m")["model_stats"]
        assert {(s["version"], s["inference_count"]) for s in stats} == {("1", 0), ("2", 2)}
        [one] = http.get_inference_statistics("m", "2")["model_stats"]
        assert one["inference_count"] == 2
    finally:
        running.stop(grace=1)


def test_the_default_model_is_the_first_served_and_health_follows_a_reload(explicit):
    """One rule: the default is the first model served and stays so; while it is unloaded, a
    call naming no model is NOT_FOUND saying so. A reload serves the configured model again,
    and its health turns SERVING with it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    explicit.repository.load("m")
    with grpc.insecure_channel(f"127.0.0.1:{explicit.port}") as channel:
        stub = pb_grpc.GeneratorServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def status(name: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=f"model/{name}"),
                                timeout=5).status
        assert stub.Generate(pb.GenerateRequest(seeds=[1]), timeout=10).model == "keep"
        explicit.repository.unload("keep")
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(pb.GenerateRequest(seeds=[1]), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "the default model 'keep' is not loaded" in err.value.details()
        assert stub.Generate(pb.GenerateRequest(model="m", seeds=[1]), timeout=10).count == 1
        assert status("keep") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert explicit.reload()  # the configured model is served again
        assert status("keep") == health_pb2.HealthCheckResponse.SERVING
        assert stub.Generate(pb.GenerateRequest(seeds=[1]), timeout=10).model == "keep"
