"""The grpcio trap, closed: a server says which grpcio (and onnxruntime, protobuf, Python) it
runs on, in its start-up log and in `dcgan_build_info`, and warns with the cost and the fix
when grpcio is not the release pyproject.toml pins."""

from __future__ import annotations

import dataclasses
import logging
import re
import urllib.request

import grpc
import onnxruntime
from prometheus_client.parser import text_string_to_metric_families

from service.process.build_info import BuildInfo, pinned_grpcio
from service.process.config import ServeConfig
from service.process.server import create_server
from tests.conftest import ROOT

PINNED = re.search(r'"grpcio==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]


def _build_info(server) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=5) as r:
        text = r.read().decode()
    return [sample.labels for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "dcgan_build_info" and sample.value == 1]


def _start(tiny_onnx):
    return create_server(ServeConfig(host="127.0.0.1", port=0, http_port=-1, metrics_port=0,
                                     metrics_host="127.0.0.1", device="cpu",
                                     models=(("m", str(tiny_onnx)),)))


def test_the_pin_is_read_from_the_installed_package():
    assert pinned_grpcio() == PINNED


def test_the_metric_names_what_the_server_runs_on(server):
    [labels] = _build_info(server)
    assert labels["grpcio"] == grpc.__version__ == labels["grpcio_pinned"] == PINNED
    assert labels["onnxruntime"] == onnxruntime.__version__
    assert labels["version"] and labels["python"] and labels["protobuf"]


def test_on_the_pinned_grpcio_the_log_says_so_and_warns_nothing(tiny_onnx, caplog):
    with caplog.at_level(logging.INFO, logger="dcgan-serve"):
        running = _start(tiny_onnx)
        running.stop(grace=1)
    assert f"grpcio {PINNED} (pinned)" in caplog.text
    # Our own log only: grpc's poller may log a BlockingIOError of its own at shutdown.
    assert not [r for r in caplog.records
                if r.name == "dcgan-serve" and r.levelno >= logging.WARNING]


def test_another_grpcio_is_warned_with_its_cost_and_fix_and_shows_in_the_metric(
        tiny_onnx, caplog, monkeypatch):
    # What `pip install tritonclient[grpc]` into the server's environment does: grpcio moves.
    monkeypatch.setattr(grpc, "__version__", "1.85.4")
    with caplog.at_level(logging.INFO, logger="dcgan-serve"):
        running = _start(tiny_onnx)
        try:
            [labels] = _build_info(running)
        finally:
            running.stop(grace=1)
    assert labels["grpcio"] == "1.85.4" and labels["grpcio_pinned"] == PINNED
    [warning] = [r.getMessage() for r in caplog.records
                 if r.name == "dcgan-serve" and r.levelno == logging.WARNING]
    assert f"grpcio 1.85.4 is installed, not the {PINNED}" in warning
    assert "a lone caller gets 0.63-0.71x" in warning and "from 1.84" in warning  # both
    assert f"pip install grpcio=={PINNED} grpcio-health-checking=={PINNED}" in warning
    assert "tritonclient" in warning and "grpcio-versions-cpu.md" in warning


def test_the_warning_names_only_the_regressions_a_release_has():
    pinned = dataclasses.replace(BuildInfo.current(), grpcio_pinned="1.78.2")
    assert dataclasses.replace(pinned, grpcio="1.78.2").grpcio_warning() is None
    between = dataclasses.replace(pinned, grpcio="1.81.2").grpcio_warning()
    assert "from 1.80" in between and "from 1.84" not in between
    assert "from 1.84" in dataclasses.replace(pinned, grpcio="1.86.0rc1").grpcio_warning()
    older = dataclasses.replace(pinned, grpcio="1.75.0").grpcio_warning()
    assert "older release than the pin" in older and "from 1.80" not in older
    # Run from a source tree never installed, the pin is unknown: nothing to compare with.
    assert dataclasses.replace(pinned, grpcio_pinned="unknown").grpcio_warning() is None
