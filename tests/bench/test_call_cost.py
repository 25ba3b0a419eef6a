"""bench/call_cost.py's parts: the zero-cost model and the fixed-reply servers, for real."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from bench.call_cost import ROOT, zero_cost_model
from bench.image import free_port
from service.config import bundled_models
from service.contract import default_labels, seeds_to_latents
from service.runtime import OnnxGenerator


def test_the_zero_cost_model_loads_like_the_real_one_and_makes_blank_images(tmp_path):
    real = OnnxGenerator(bundled_models()[0][1])
    zero_cost_model(bundled_models()[0][1], tmp_path / "zero.onnx")
    zero = OnnxGenerator(tmp_path / "zero.onnx")  # the server's own checks pass
    assert zero.metadata == real.metadata
    seeds = list(range(5))
    images = zero.generate(seeds_to_latents(seeds, real.metadata.latent_dim),
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
