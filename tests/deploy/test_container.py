"""Container checks that need no Docker engine: the Dockerfile lints clean, and the serving
image's exact dependency set (`pip install .`, as its build stage runs) starts and answers
from a fresh virtual environment without torch."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import grpc
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from tests.conftest import ROOT


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_serves_by_default_as_non_root_with_a_grpc_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)", text, re.M)
    assert stages[-1] == "serve"  # `docker build .` builds the last stage
    serve = text[text.rindex("AS serve\n"):]
    assert "USER 10001" in serve and "torch" not in serve.replace("no torch", "")
    assert "HEALTHCHECK" in serve and "health" in serve and "EXPOSE 50051 50052 8080 9090" in serve
    assert 'ARG BASE_IMAGE=python:3.11-slim' in text


def test_dockerignore_keeps_the_context_to_what_the_build_copies():
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    copied = set(re.findall(r"^COPY (?!--from)(.+?) \S+$", (ROOT / "Dockerfile").read_text(),
                            re.M))
    copied = {part for line in copied for part in line.split()}
    assert ignore[0] == "*"
    assert {f"!{c}" if c.endswith(".toml") or c.endswith(".md") else f"!{c}/" for c in copied} \
        <= set(ignore)


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory):
    """A fresh venv with only the serving install, as the image's build stage makes it."""
    folder = tmp_path_factory.mktemp("serving-venv")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           str(ROOT)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_the_serving_install_has_no_torch_and_serves_the_bundled_model(serving_venv, tmp_path):
    python = serving_venv / "bin" / "python"
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True,
                              text=True, cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    server = subprocess.Popen([str(serving_venv / "bin" / "dcgan-serve"), "--host", "127.0.0.1",
                               "--port", "0", "--http-port", "0", "--metrics-port", "-1"],
                              cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in server.stderr:
            if m := re.search(r"listening grpc=[\d.]+:(\d+)", line):
                port = int(m[1])
                break
        assert port, "the server did not start: " + server.stderr.read()[-3000:]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            response = stub.Generate(pb.GenerateRequest(seeds=[1, 2, 3]), timeout=10)
        assert info.name == "mnist" and response.count == 3
        health = subprocess.run([str(serving_venv / "bin" / "dcgan-client"), "--address",
                                 f"127.0.0.1:{port}", "health"], capture_output=True, text=True,
                                timeout=30)
        assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0
