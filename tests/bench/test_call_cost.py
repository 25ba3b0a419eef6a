"""bench/call_cost.py's parts: the zero-cost model and the fixed-reply servers, for real."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from bench.call_cost import ROOT, zero_cost_model
from bench.image import free_port
from service.process.config import bundled_models
from service.contract import default_labels, seeds_to_latents
from service.runtime import OnnxGenerator


def test_the_zero_cost_model_loads_like_the_real_one_and_makes_blank_images(tmp_path):
    real = OnnxGenerator(bundled_models()[0][1])
    zero_cost_model(bundled_models()[0][1], tmp_path / "zero.onnx")
    zero = OnnxGenerator(tmp_path / "zero.onnx")  # the server's own checks pass
    assert zero.metadata == real.metadata
    seeds = list(range(5))
    images = zero.run(seeds_to_latents(seeds, real.metadata.latent_dim),
                      default_labels(seeds, real.metadata.num_classes))
    assert images.shape == (5, *real.image_shape) and images.dtype == np.uint8
    assert not images.any()


@pytest.mark.parametrize("mode", ["aio", "sync"])
def test_the_fixed_reply_server_answers_generate(mode):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench/peers/fixed_reply_server.py"),
                             mode, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/dcgan.v1.GeneratorService/Generate")
            assert call(b"any request", timeout=10) == b"\x00" * 800
    finally:
        proc.kill()
        proc.wait()


def test_grpcio_is_the_pinned_release_and_its_packages_share_the_pin():
    """bench/grpcio_versions.py measures against the pin; the stubs check the same version."""
    from bench.grpcio_versions import pinned_version
    pin = pinned_version()
    assert grpc.__version__ == pin
    text = (ROOT / "pyproject.toml").read_text()
    for package in ("grpcio-health-checking", "grpcio-reflection", "grpcio-tools"):
        assert f'"{package}=={pin}"' in text, package


def test_the_fixed_reply_server_answers_with_the_event_engine_switched_off(tmp_path):
    from bench.call_cost import start, stop
    from bench.grpcio_versions import EVENT_ENGINE_OFF
    proc, port = start([sys.executable, str(ROOT / "bench/peers/fixed_reply_server.py"), "aio",
                        "{port}"], tmp_path / "log", {"GRPC_EXPERIMENTS": EVENT_ENGINE_OFF})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/dcgan.v1.GeneratorService/Generate")
            assert call(b"any request", timeout=10) == b"\x00" * 800
    finally:
        stop(proc)
    assert "Unknown experiment" not in (tmp_path / "log").read_text()


def test_start_up_is_timed_to_the_first_answer_not_to_a_reconnect_backoff(tmp_path, monkeypatch):
    """A server that listens 1 s after launch: the first tries are refused, and one gRPC channel
    would then wait out its reconnect backoff (~5 s on grpcio 1.78) before trying again."""
    import bench.compare_servers as compare
    monkeypatch.setattr(compare, "_check_pixels", lambda *args: None)  # needs the in-process run
    model = bundled_models()[0][1]
    target = compare.Target("late", "generate", [
        "sh", "-c", f"sleep 1; exec {sys.executable} -m service --host 127.0.0.1 --port {{port}} "
                    f"--metrics-port -1 --http-port -1 --model m={model}"])
    compare.start(target, 100, False, tmp_path)
    try:
        assert 1.0 <= target.start_s < 3.5, target.start_s
    finally:
        compare.stop(target)
