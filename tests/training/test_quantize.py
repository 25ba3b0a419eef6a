"""The precision tool: real int8 and fp16 copies of a real (tiny) export, loaded by the server's
runner."""

import numpy as np
import onnx
from onnx import TensorProto

from service.contract import default_labels, seeds_to_latents
from service.runtime import OnnxGenerator
from tools.quantize_model import quantize


def _same_seeds(original: OnnxGenerator, copy: OnnxGenerator) -> tuple[np.ndarray, np.ndarray]:
    """Both models' images for seeds 0..63 with their default labels, as ints."""
    seeds = list(range(64))
    latents = seeds_to_latents(seeds, original.metadata.latent_dim)
    labels = default_labels(seeds, original.metadata.num_classes)
    a = original.run(latents, labels).astype(int)
    b = copy.run(latents, labels).astype(int)
    assert a.shape == b.shape
    return a, b


def test_int8_copy_loads_keeps_metadata_and_stays_close(tiny_cond_onnx, tmp_path):
    target = tmp_path / "int8.onnx"
    quantize(tiny_cond_onnx, target)
    original, quantized = OnnxGenerator(tiny_cond_onnx), OnnxGenerator(target)
    assert quantized.metadata == original.metadata
    assert target.stat().st_size < tiny_cond_onnx.stat().st_size
    a, b = _same_seeds(original, quantized)
    assert np.abs(a - b).mean() < 8  # grey levels; the shipped model measures ~0.5
    assert not np.array_equal(a, b)  # it really is a different (quantized) graph


def test_fp16_copy_loads_keeps_metadata_and_its_images(tiny_cond_onnx, tmp_path):
    target = tmp_path / "fp16.onnx"
    quantize(tiny_cond_onnx, target, precision="fp16")
    original, half = OnnxGenerator(tiny_cond_onnx), OnnxGenerator(target)
    assert half.metadata == original.metadata
    floats = {w.data_type for w in onnx.load(str(target)).graph.initializer
              if w.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    assert floats == {TensorProto.FLOAT16}  # every float weight is half precision now
    a, b = _same_seeds(original, half)
    assert np.abs(a - b).max() <= 2  # grey levels; the bundled models measure at most 2
    assert (a == b).mean() > 0.9
