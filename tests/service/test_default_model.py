"""The bundled default model: `dcgan-serve` with no model arguments serves it, and a wheel
(what `pip install .` installs) carries it."""

from __future__ import annotations

import signal
import subprocess
import zipfile

import grpc

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.client import images_from_response
from service.process.config import bundled_models
from tests.conftest import PYTHON, ROOT
from tests.service.test_lifecycle import ServerProcess


def test_bundled_models_are_listed_default_first():
    models = bundled_models()
    assert models and models[0][0] == "mnist"
    assert all(path.is_file() for _, path in models)


def test_serving_with_no_model_arguments_uses_the_bundled_default():
    server = ServerProcess()  # only host/port flags: no --model
    try:
        assert server.port, "".join(server.log)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            response = stub.Generate(pb.GenerateRequest(seeds=list(range(20))), timeout=10)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        code, _ = server.finish()
    assert code == 0
    assert (info.name, info.is_default, info.dataset, info.num_classes) == ("mnist", True,
                                                                           "mnist", 10)
    images = images_from_response(response)
    # A trained model draws digits: mostly black background with bright strokes.
    assert (images < 32).mean() > 0.6 and (images > 200).mean() > 0.05


def test_a_wheel_carries_the_bundled_models(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for _, path in bundled_models():
        assert f"service/bundled_models/{path.name}" in names
    assert "service/bundled_models/default_models.json" in names
    assert not [n for n in names if n.startswith("tests/")]
