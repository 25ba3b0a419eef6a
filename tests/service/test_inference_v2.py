"""The KServe Open Inference Protocol (V2) beside the project's API: same seeds, same pixels.

Most checks call it through the stubs generated from proto/inference; one runs NVIDIA's own
`tritonclient[grpc]` from a separate virtual environment, as a user's client would, since
tritonclient pins an older protobuf than this server uses.
"""

from __future__ import annotations

import json
import subprocess
import venv

import grpc
import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.client import images_from_response

TRITONCLIENT = "tritonclient[grpc]==2.73.0"


@pytest.fixture(scope="module")
def v2_stub(channel):
    return v2_grpc.GRPCInferenceServiceStub(channel)


def _seeds(values, datatype="UINT64", raw=True) -> v2.ModelInferRequest:
    array = np.asarray(values, dtype="<u8" if datatype == "UINT64" else "<i8")
    tensor = v2.ModelInferRequest.InferInputTensor(name="seeds", datatype=datatype,
                                                   shape=[len(array)])
    if not raw and datatype == "UINT64":
        tensor.contents.uint64_contents.extend(array.tolist())
    elif not raw:
        tensor.contents.int64_contents.extend(array.tolist())
    request = v2.ModelInferRequest(inputs=[tensor])  # (copies `tensor`)
    if raw:
        request.raw_input_contents.append(array.tobytes())
    return request


def _output(response: v2.ModelInferResponse, name: str, dtype) -> np.ndarray:
    i = [o.name for o in response.outputs].index(name)
    return np.frombuffer(response.raw_output_contents[i], dtype=dtype).reshape(
        response.outputs[i].shape)


def test_server_and_model_readiness(v2_stub):
    assert v2_stub.ServerLive(v2.ServerLiveRequest()).live
    assert v2_stub.ServerReady(v2.ServerReadyRequest()).ready
    assert v2_stub.ModelReady(v2.ModelReadyRequest(name="plain")).ready
    assert not v2_stub.ModelReady(v2.ModelReadyRequest(name="no-such-model")).ready
    meta = v2_stub.ServerMetadata(v2.ServerMetadataRequest())
    assert meta.name == "dcgan-digits" and meta.version


def test_model_metadata_describes_the_tensors(v2_stub):
    cond = v2_stub.ModelMetadata(v2.ModelMetadataRequest(name="cond"))
    assert [(t.name, t.datatype, list(t.shape)) for t in cond.inputs] == [
        ("seeds", "UINT64", [-1]), ("labels", "INT64", [-1]), ("latents", "FP32", [-1, 100]),
        ("psi", "FP32", [1]), ("frames", "INT64", [1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in cond.outputs] == [
        ("images", "UINT8", [-1, 1, 28, 28]), ("labels", "INT64", [-1])]
    plain = v2_stub.ModelMetadata(v2.ModelMetadataRequest(name="plain"))
    assert [t.name for t in plain.inputs] == ["seeds", "latents", "psi", "frames"]
    assert len(plain.versions) == 1
    with pytest.raises(grpc.RpcError) as err:
        v2_stub.ModelMetadata(v2.ModelMetadataRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("datatype,raw", [("UINT64", True), ("INT64", True),
                                          ("UINT64", False), ("INT64", False)])
def test_model_infer_gives_the_same_pixels_as_generate(stub, v2_stub, datatype, raw):
    seeds = [0, 7, 123456789, 2**40]
    request = _seeds(seeds, datatype, raw)
    request.model_name, request.id = "plain", "req-1"
    response = v2_stub.ModelInfer(request)
    assert response.id == "req-1" and response.model_name == "plain"
    images = _output(response, "images", np.uint8)
    expected = images_from_response(stub.Generate(pb.GenerateRequest(model="plain", seeds=seeds)))
    assert images.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(images[:, 0], expected)


def test_conditional_model_takes_labels_and_reports_them(stub, v2_stub):
    seeds = [5, 6, 7]
    request = _seeds(seeds)
    labels = np.array([3, 3, 9], dtype="<i8")
    request.inputs.append(v2.ModelInferRequest.InferInputTensor(
        name="labels", datatype="INT64", shape=[3]))
    request.raw_input_contents.append(labels.tobytes())
    response = v2_stub.ModelInfer(request)  # no model name: the default model, "cond"
    assert response.model_name == "cond"
    np.testing.assert_array_equal(_output(response, "labels", "<i8"), labels)
    expected = images_from_response(stub.Generate(pb.GenerateRequest(
        model="cond", seeds=seeds, labels=labels.tolist())))
    np.testing.assert_array_equal(_output(response, "images", np.uint8)[:, 0], expected)
    # Without labels the documented default rule applies: label = seed mod 10.
    unlabelled = v2_stub.ModelInfer(_seeds(seeds))
    assert _output(unlabelled, "labels", "<i8").tolist() == [5, 6, 7]
    # Asking for one output returns only that one.
    only = _seeds(seeds)
    only.outputs.add(name="images")
    assert [o.name for o in v2_stub.ModelInfer(only).outputs] == ["images"]


def _code(v2_stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        v2_stub.ModelInfer(request, timeout=10)
    return err.value.code(), err.value.details()


def test_bad_requests_get_invalid_argument_or_not_found_with_a_reason(v2_stub):
    cases = []
    wrong_type = _seeds([1, 2])
    wrong_type.inputs[0].datatype = "FP32"
    cases.append((wrong_type, grpc.StatusCode.INVALID_ARGUMENT, "datatype"))
    short = _seeds([1, 2])
    short.raw_input_contents[0] = short.raw_input_contents[0][:-1]
    cases.append((short, grpc.StatusCode.INVALID_ARGUMENT, "raw bytes"))
    negative = _seeds([-1], "INT64")
    cases.append((negative, grpc.StatusCode.INVALID_ARGUMENT, "negative"))
    unknown_input = _seeds([1])
    unknown_input.inputs[0].name = "z"
    cases.append((unknown_input, grpc.StatusCode.INVALID_ARGUMENT, "'seeds'"))
    no_inputs = v2.ModelInferRequest(model_name="plain")
    cases.append((no_inputs, grpc.StatusCode.INVALID_ARGUMENT, "send the input 'seeds'"))
    too_many = _seeds(range(257))
    cases.append((too_many, grpc.StatusCode.INVALID_ARGUMENT, "at most 256"))
    labels_on_plain = _seeds([1])
    labels_on_plain.model_name = "plain"
    labels_on_plain.inputs.add(name="labels", datatype="INT64", shape=[1])
    labels_on_plain.raw_input_contents.append(np.array([1], "<i8").tobytes())
    cases.append((labels_on_plain, grpc.StatusCode.INVALID_ARGUMENT, "not class-conditional"))
    bad_label = _seeds([1])
    bad_label.inputs.add(name="labels", datatype="INT64", shape=[1])
    bad_label.raw_input_contents.append(np.array([10], "<i8").tobytes())
    cases.append((bad_label, grpc.StatusCode.INVALID_ARGUMENT, "out of range"))
    unknown_output = _seeds([1])
    unknown_output.outputs.add(name="logits")
    cases.append((unknown_output, grpc.StatusCode.INVALID_ARGUMENT, "unknown output"))
    no_model = _seeds([1])
    no_model.model_name = "resnet"
    cases.append((no_model, grpc.StatusCode.NOT_FOUND, "resnet"))
    old_version = _seeds([1])
    old_version.model_name, old_version.model_version = "plain", "1"
    cases.append((old_version, grpc.StatusCode.NOT_FOUND, "version"))
    for request, code, words in cases:
        got, details = _code(v2_stub, request)
        assert (got, True) == (code, words in details), (words, details)
    assert v2_stub.ModelInfer(_seeds([1])).outputs  # and it keeps serving


def test_model_infer_is_measured_like_generate(server, v2_stub):
    version = server.registry.get("plain").version
    images = {"model": "plain", "version": version, "kind": "seed"}
    before = server.metrics.registry.get_sample_value("dcgan_images_generated_total",
                                                      images) or 0
    request = _seeds(range(5))
    request.model_name = "plain"
    v2_stub.ModelInfer(request)
    after = server.metrics.registry.get_sample_value("dcgan_images_generated_total", images)
    assert after - before == 5
    assert server.metrics.registry.get_sample_value(
        "dcgan_request_duration_seconds_count",
        {"rpc": "ModelInfer", "model": "plain", "version": version, "code": "OK"}) >= 1


CLIENT_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as tc

client = tc.InferenceServerClient(sys.argv[1])
meta = client.get_model_metadata("cond", as_json=True)
seeds = tc.InferInput("seeds", [4], "UINT64")
seeds.set_data_from_numpy(np.array([0, 1, 2, 3], dtype=np.uint64))
labels = tc.InferInput("labels", [4], "INT64")
labels.set_data_from_numpy(np.array([7, 7, 7, 7], dtype=np.int64))
result = client.infer("cond", [seeds, labels], outputs=[tc.InferRequestedOutput("images")])
np.save(sys.argv[2], result.as_numpy("images"))
config = client.get_model_config("cond", as_json=True)["config"]
print(json.dumps({"live": client.is_server_live(), "ready": client.is_model_ready("cond"),
                  "inputs": [i["name"] for i in meta["inputs"]],
                  "config": [config["name"], config.get("max_batch_size", 0),
                             [(i["name"], i["data_type"], i["dims"]) for i in config["input"]],
                             [(o["name"], o["data_type"], o["dims"]) for o in config["output"]]]}))
"""


def test_tritonclient_works_unmodified(server, stub, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tritonclient-venv")
    venv.create(folder, with_pip=True)
    python = str(folder / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              TRITONCLIENT], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    out = folder / "images.npy"
    proc = subprocess.run([python, "-c", CLIENT_SCRIPT, f"127.0.0.1:{server.port}", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report == {"live": True, "ready": True,
                      "inputs": ["seeds", "labels", "latents", "psi", "frames"], "config": [
        "cond", 0, [["seeds", "TYPE_UINT64", ["-1"]], ["labels", "TYPE_INT64", ["-1"]],
                    ["latents", "TYPE_FP32", ["-1", "100"]], ["psi", "TYPE_FP32", ["1"]],
                    ["frames", "TYPE_INT64", ["1"]]],
        [["images", "TYPE_UINT8", ["-1", "1", "28", "28"]], ["labels", "TYPE_INT64", ["-1"]]]]}
    expected = images_from_response(stub.Generate(pb.GenerateRequest(
        model="cond", seeds=[0, 1, 2, 3], labels=[7])))
    np.testing.assert_array_equal(np.load(out)[:, 0], expected)
