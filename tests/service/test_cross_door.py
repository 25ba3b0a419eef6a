"""One promise across every door: the same request gives the same pixels, whichever way it is
asked, and `dcgan-train sample` offline gives them too.

Hypothesis draws the model (the bundled conditional MNIST and Fashion-MNIST models, and a tiny
unconditional one), the seeds, the labels, psi (values a float32 cannot hold among them: 0.8,
0.7, 0.3), explicit latents and walks; every door must answer with the very pixels of gRPC
`Generate` / `Interpolate`:

    gRPC      Generate, GenerateStream, Interpolate; V2 ModelInfer
    HTTP      V2 REST infer (JSON and binary tensors); the PNG URLs (image, grid, strip)
    Python    service.client.GeneratorClient; the dcgan-client CLI
    offline   dcgan-train sample (and --interpolate)
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.client import GeneratorClient
from service.client import main as client_main
from service.imaging import decode_png
from service.process.config import ServeConfig, bundled_models
from service.process.server import create_server

BUNDLED = dict(bundled_models())  # name -> path: "mnist", "fashion-mnist"
PSI = st.one_of(st.sampled_from([1.0, 0.8, 0.7, 0.3, 0.9]),
                st.floats(0.01, 1.0, allow_nan=False))
SEED = st.one_of(st.integers(0, 200), st.integers(0, 2**64 - 1))


@pytest.fixture(scope="module")
def doors(tiny_onnx):
    config = ServeConfig(host="127.0.0.1", port=0, http_port=0, metrics_port=-1, device="cpu",
                         models=(*((n, str(p)) for n, p in BUNDLED.items()),
                                 ("plain", str(tiny_onnx))))
    running = create_server(config)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    paths = {**BUNDLED, "plain": tiny_onnx}
    yield _Doors(running, channel, paths)
    channel.close()
    running.stop(grace=1)


class _Doors:
    def __init__(self, running, channel, paths):
        self.address = f"127.0.0.1:{running.port}"
        self.http = f"http://127.0.0.1:{running.http_port}"
        self.dcgan = pb_grpc.GeneratorServiceStub(channel)
        self.v2 = v2_grpc.GRPCInferenceServiceStub(channel)
        self.client = GeneratorClient(self.address)
        self.paths = paths

    def get(self, path: str, **query) -> bytes:
        url = f"{self.http}{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def post(self, path: str, body: bytes, headers: dict) -> tuple[dict, bytes]:
        request = urllib.request.Request(self.http + path, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            data, length = response.read(), response.headers.get(
                "Inference-Header-Content-Length")
        split = int(length) if length else len(data)
        return json.loads(data[:split]), data[split:]


@st.composite
def cases(draw):
    """(model, what, labels, psi): `what` is ("seeds", [..]), ("latents", array) or
    ("walk", (a, b, frames, method))."""
    model = draw(st.sampled_from(["mnist", "fashion-mnist", "plain"]))
    kind = draw(st.sampled_from(["seeds", "seeds", "latents", "walk"]))
    psi = draw(PSI)
    if kind == "seeds":
        what = draw(st.lists(SEED, min_size=1, max_size=40))
        n = len(what)
    elif kind == "latents":
        n = draw(st.integers(1, 3))
        what = np.array(draw(st.lists(st.floats(-3, 3, width=32), min_size=100 * n,
                                      max_size=100 * n)), np.float32).reshape(n, 100)
    else:
        a, b = draw(SEED), draw(SEED)
        what = (a, b, draw(st.integers(2, 6)), draw(st.sampled_from(["slerp", "lerp"])))
        n = 1  # one label for the whole walk
    labels = []
    if model != "plain":
        count = draw(st.sampled_from([0, 1, n] if kind != "latents" else [1, n]))
        if kind == "walk" and count == 0 and what[0] % 10 != what[1] % 10:
            count = 1  # two default classes: a walk needs one label
        labels = draw(st.lists(st.integers(0, 9), min_size=count, max_size=count))
    return model, kind, what, labels, psi


@pytest.fixture(scope="module")
def psi_a_float32_cannot_hold():
    """A case where psi as a float64 and psi as the float32 every door carries give other
    pixels, found on the models these tests run (a pinned one went stale when the models were
    retrained): (model, seeds, labels, psi)."""
    from service.contract import default_labels, seeds_to_latents
    from service.runtime import OnnxGenerator
    for name in ("mnist", "fashion-mnist"):
        generator = OnnxGenerator(BUNDLED[name])
        for psi in (0.8, 0.7, 0.3, 0.9, 0.6):
            for start in range(0, 4096, 512):
                seeds = list(range(start, start + 512))
                latents, labels = seeds_to_latents(seeds, 100), default_labels(seeds, 10)
                as_float64 = (latents.astype(np.float64) * psi).astype(np.float32)
                as_float32 = (latents.astype(np.float64) * float(np.float32(psi))
                              ).astype(np.float32)
                differ = np.flatnonzero((generator.run(as_float64, labels)
                                         != generator.run(as_float32, labels)).any((1, 2, 3)))
                if differ.size:
                    return name, [seeds[differ[0]]], [int(labels[differ[0]])], psi
    pytest.fail("no seed of 0..4095 tells float64 psi from float32 psi on these models")


def test_a_psi_a_float32_cannot_hold_gives_the_same_pixels_from_every_door(
        doors, tmp_path_factory, psi_a_float32_cannot_hold):
    """What a user saw before psi had one type: gRPC's float32 0.8 against the URLs' and the
    CLI's float64 0.8 gave other pixels."""
    model, seeds, labels, psi = psi_a_float32_cannot_hold
    test_every_door_gives_the_same_pixels.hypothesis.inner_test(
        doors, tmp_path_factory, (model, "seeds", seeds, labels, psi))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(case=cases())
def test_every_door_gives_the_same_pixels(doors, tmp_path_factory, case):
    model, kind, what, labels, psi = case
    if kind == "walk":
        expected = _images(doors.dcgan.Interpolate(pb.InterpolateRequest(
            model=model, seed_a=what[0], seed_b=what[1], frames=what[2], labels=labels,
            method=pb.INTERPOLATION_LERP if what[3] == "lerp" else pb.INTERPOLATION_SLERP,
            psi=psi), timeout=30))
    else:
        response = doors.dcgan.Generate(pb.GenerateRequest(
            model=model, labels=labels, psi=psi,
            **({"seeds": what} if kind == "seeds" else {"latents": what.tobytes()})),
            timeout=30)
        expected, used_labels = _images(response), list(response.labels)
    out = tmp_path_factory.mktemp("door")
    for door, got in _every_door(doors, out, model, kind, what, labels, psi):
        if door.startswith(("dcgan-client generate", "dcgan-train sample")) and kind == "seeds":
            got = _by_seed(got, what, used_labels)  # the files, named by seed and label
        assert got.shape == expected.shape, door
        different = np.flatnonzero((got != expected).reshape(len(got), -1).any(axis=1))
        assert not different.size, f"{door} differs from gRPC on images {different.tolist()}"


def _every_door(doors, out: Path, model, kind, what, labels, psi):
    """(door, uint8 [N, H, W]) for each door that can ask for this case."""
    if kind == "seeds":
        yield "GenerateStream", np.concatenate([_images(r) for r in doors.dcgan.GenerateStream(
            pb.GenerateStreamRequest(model=model, list=pb.SeedList(seeds=what), labels=labels,
                                     psi=psi, chunk_size=4), timeout=30)])
    yield "V2 gRPC", _v2_grpc(doors, model, kind, what, labels, psi)
    for binary in (False, True):
        yield f"V2 REST {'binary' if binary else 'JSON'}", _v2_rest(doors, model, kind, what,
                                                                   labels, psi, binary)
    if kind == "latents":
        yield "client", doors.client.generate(latents=what, labels=labels, model=model, psi=psi)
        return
    if kind == "walk":
        a, b, frames, method = what
        yield "client", doors.client.interpolate(a, b, frames, method, labels, model, psi=psi)
        label = {"label": labels[0]} if labels else {}
        strip = decode_png(doors.get(f"/v1/models/{model}/interpolation.png", a=a, b=b,
                                     frames=frames, method=method, psi=repr(psi), **label))
        yield "interpolation.png", _tiles(strip, frames, frames)
        args = [str(a), str(b), "--frames", str(frames), "--method", method, "--psi", repr(psi),
                *(["--label", str(labels[0])] if labels else [])]
        assert client_main(["--address", doors.address, "interpolate", *args, "--model", model,
                            "--out", str(out / "client")]) == 0
        yield "dcgan-client interpolate", _frames(out / "client")
        _sample(doors.paths[model], ["--interpolate", *args[:2], *args[2:]], out / "sample")
        yield "dcgan-train sample --interpolate", _frames(out / "sample")
        return
    yield "client", doors.client.generate(what, labels, model, psi=psi)
    label_flags = [flag for label in labels for flag in ("--label", str(label))]
    assert client_main(["--address", doors.address, "generate", "--model", model,
                        "--seed", ",".join(map(str, what)), "--psi", repr(psi), *label_flags,
                        "--out", str(out / "client")]) == 0
    yield "dcgan-client generate", out / "client"
    _sample(doors.paths[model], ["--seed", ",".join(map(str, what)), *label_flags,
                                 "--psi", repr(psi)], out / "sample")
    yield "dcgan-train sample", out / "sample"
    if len(labels) > 1:
        return  # the URLs take one label for all seeds
    label = {"label": labels[0]} if labels else {}
    yield "images/{seed}.png", np.stack([decode_png(doors.get(
        f"/v1/models/{model}/images/{seed}.png", psi=repr(psi), **label)) for seed in what])
    grid = decode_png(doors.get(f"/v1/models/{model}/grid.png",
                                seeds=",".join(map(str, what)), psi=repr(psi), **label))
    yield "grid.png", _tiles(grid, len(what), math.ceil(math.sqrt(len(what))))


def _v2_inputs(kind, what, labels, psi):
    """(name, datatype, numpy array) of each V2 input."""
    if kind == "seeds":
        inputs = [("seeds", "UINT64", np.array(what, np.uint64))]
    elif kind == "latents":
        inputs = [("latents", "FP32", what)]
    else:
        inputs = [("seeds", "UINT64", np.array(what[:2], np.uint64)),
                  ("frames", "INT64", np.array([what[2]], np.int64))]
    if labels:
        inputs.append(("labels", "INT64", np.array(labels, np.int64)))
    return inputs + [("psi", "FP32", np.array([psi], np.float32))]


def _v2_grpc(doors, model, kind, what, labels, psi):
    request = v2.ModelInferRequest(model_name=model)
    for name, datatype, values in _v2_inputs(kind, what, labels, psi):
        request.inputs.append(v2.ModelInferRequest.InferInputTensor(
            name=name, datatype=datatype, shape=list(values.shape)))
        request.raw_input_contents.append(values.tobytes())
    if kind == "walk":
        request.parameters["interpolation"].string_param = what[3]
    response = doors.v2.ModelInfer(request, timeout=30)
    [index] = [i for i, o in enumerate(response.outputs) if o.name == "images"]
    shape = response.outputs[index].shape
    return np.frombuffer(response.raw_output_contents[index], np.uint8).reshape(
        shape[0], shape[2], shape[3])


def _v2_rest(doors, model, kind, what, labels, psi, binary: bool):
    inputs, blobs = [], []
    for name, datatype, values in _v2_inputs(kind, what, labels, psi):
        tensor = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        if binary:
            tensor["parameters"] = {"binary_data_size": values.nbytes}
            blobs.append(values.tobytes())
        else:  # JSON numbers, as a JSON client writes them: psi as the double it was drawn as
            tensor["data"] = [psi] if name == "psi" else values.reshape(-1).tolist()
        inputs.append(tensor)
    header = {"inputs": inputs, "outputs": [{"name": "images",
                                             "parameters": {"binary_data": binary}}]}
    if kind == "walk":
        header["parameters"] = {"interpolation": what[3]}
    text = json.dumps(header).encode()
    headers = {"Content-Type": "application/json"}
    if binary:
        headers = {"Inference-Header-Content-Length": str(len(text)),
                   "Content-Type": "application/octet-stream"}
    body, data = doors.post(f"/v2/models/{model}/infer", text + b"".join(blobs), headers)
    [output] = [o for o in body["outputs"] if o["name"] == "images"]
    n, _, h, w = output["shape"]
    values = data if binary else np.array(output["data"], np.uint8)
    return np.frombuffer(bytes(values), np.uint8).reshape(n, h, w)


def _images(response: pb.GenerateResponse) -> np.ndarray:
    return np.frombuffer(response.raw, np.uint8).reshape(response.count, response.height,
                                                         response.width)


def _tiles(grid: np.ndarray, n: int, columns: int, size: int = 28, pad: int = 2) -> np.ndarray:
    """The images of a grid picture (imaging.make_grid's layout)."""
    return np.stack([grid[pad + r * (size + pad):pad + r * (size + pad) + size,
                          pad + c * (size + pad):pad + c * (size + pad) + size]
                     for r, c in (divmod(i, columns) for i in range(n))])


def _by_seed(folder: Path, seeds: list[int], labels: list[int]) -> np.ndarray:
    """The PNGs a CLI wrote (seed_<seed>[_label<k>][...].png), in the order of `seeds`."""
    files = {}
    for path in folder.glob("seed_*.png"):
        seed, label = re.match(r"seed_(\d+)(?:_label(\d+))?", path.name).groups()
        files[int(seed), None if label is None else int(label)] = path
    keys = zip(seeds, labels) if labels else ((seed, None) for seed in seeds)
    return np.stack([decode_png(files[key].read_bytes()) for key in keys])


def _frames(folder: Path) -> np.ndarray:
    return np.stack([decode_png(p.read_bytes()) for p in sorted(folder.glob("frame_*.png"))])


def _sample(model_path, args: list[str], out: Path) -> None:
    from training.cli import main as train_main
    assert train_main(["sample", str(model_path), *args, "--out", str(out)]) == 0
