"""The int8 tool: a real quantization of a real (tiny) export, loaded by the server's runner."""

import numpy as np

from service.contract import default_labels, seeds_to_latents
from service.runtime import OnnxGenerator
from tools.quantize_model import quantize


def test_int8_copy_loads_keeps_metadata_and_stays_close(tiny_cond_onnx, tmp_path):
    target = tmp_path / "int8.onnx"
    quantize(tiny_cond_onnx, target)
    original, quantized = OnnxGenerator(tiny_cond_onnx), OnnxGenerator(target)
    assert quantized.metadata == original.metadata
    assert target.stat().st_size < tiny_cond_onnx.stat().st_size
    seeds = list(range(64))
    latents = seeds_to_latents(seeds, original.metadata.latent_dim)
    labels = default_labels(seeds, original.metadata.num_classes)
    a = original.generate(latents, labels).astype(int)
    b = quantized.generate(latents, labels).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 8  # grey levels; the shipped model measures ~0.5
    assert not np.array_equal(a, b)  # it really is a different (quantized) graph


def test_fp16_copy_loads_keeps_metadata_and_its_images(tiny_cond_onnx, tmp_path):
    import onnx
    from onnx import TensorProto

    target = tmp_path / "fp16.onnx"
    quantize(tiny_cond_onnx, target, precision="fp16")
    original, half = OnnxGenerator(tiny_cond_onnx), OnnxGenerator(target)
    assert half.metadata == original.metadata
    weights = onnx.load(str(target)).graph.initializer
    assert {w.data_type for w in weights if w.data_type in (TensorProto.FLOAT,
                                                             TensorProto.FLOAT16)} \
        == {TensorProto.FLOAT16}  # every float weight is half precision now
    seeds = list(range(64))
    latents = seeds_to_latents(seeds, original.metadata.latent_dim)
    labels = default_labels(seeds, original.metadata.num_classes)
    a = original.generate(latents, labels).astype(int)
    b = half.generate(latents, labels).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 2  # grey levels; the shipped model measures at most 1
    assert (a == b).mean() > 0.9
