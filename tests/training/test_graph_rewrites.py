"""The export's graph rewrites: same outputs in onnxruntime, only the cases they are meant for."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.graph_rewrites import rewrite_for_onnxruntime


def _conv_model(out_channels=1, kernel=3, pads=(1, 1, 1, 1), strides=(1, 1), bias=True,
                seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out_channels, 8, kernel, kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(
            rng.standard_normal(out_channels).astype(np.float32), "b"))
        inputs.append("b")
    conv = helper.make_node("Conv", inputs, ["y"], name="conv", kernel_shape=[kernel, kernel],
                            pads=list(pads), strides=list(strides))
    tanh = helper.make_node("Tanh", ["y"], ["out"], name="tanh")
    graph = helper.make_graph(
        [conv, tanh], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 28, 28])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", out_channels, "H", "W"])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("kernel,pads,bias", [(3, (1, 1, 1, 1), True), (3, (0, 0, 0, 0), False),
                                              (5, (2, 1, 0, 2), True)])
def test_a_single_channel_conv_becomes_a_transposed_conv_with_the_same_output(kernel, pads,
                                                                             bias):
    model = _conv_model(kernel=kernel, pads=pads, bias=bias)
    x = np.random.default_rng(1).standard_normal((3, 8, 28, 28)).astype(np.float32)
    before = _run(model, x)

    assert rewrite_for_onnxruntime(model) == ["conv"]

    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose", "Tanh"]
    # The old kernel is gone, the flipped one is there: no dead weight in the file.
    assert "w" not in {init.name for init in model.graph.initializer}
    after = _run(model, x)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("change", [dict(out_channels=2), dict(strides=(2, 2))])
def test_other_convs_are_left_alone(change):
    model = _conv_model(**change)
    original = model.SerializeToString()
    assert rewrite_for_onnxruntime(model) == []
    assert model.SerializeToString() == original


def test_the_exported_dcgan_generator_has_no_conv_left(tiny_onnx):
    # The `dcgan` architecture ends in a 1-channel 3x3 Conv; the export must have rewritten it
    # (its parity check against PyTorch passed, or the file would not exist).
    ops = [n.op_type for n in onnx.load(str(tiny_onnx)).graph.node]
    assert "Conv" not in ops and ops.count("ConvTranspose") == 3


# --- the upsampling formulations the graph benchmark compares (bench/upsampling_forms.py) -----

@pytest.mark.parametrize("form", ["as_subpixel", "as_matmul_col2im"])
def test_the_benchmarked_upsampling_forms_give_the_bundled_models_images(form):
    # Measured slower than ConvTranspose and so not exported, but the benchmark's comparison
    # only means something if they compute the same images: checked on the shipped file.
    from bench import upsampling_forms
    from service.config import bundled_models
    from service.contract import seeds_to_latents

    def strided(model):
        return [n for n in model.graph.node if n.op_type == "ConvTranspose"
                and any(a.name == "strides" and list(a.ints) != [1, 1] for a in n.attribute)]

    path = bundled_models()[0][1]
    model = onnx.load(path)
    assert len(strided(model)) == 2
    assert getattr(upsampling_forms, form)(model) == 2
    onnx.checker.check_model(model, full_check=True)
    assert not strided(model)
    feeds = {"z": seeds_to_latents(range(64), 100), "label": np.arange(64, dtype=np.int64) % 10}
    shipped = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = shipped.run(None, feeds)[0].astype(int), other.run(None, feeds)[0].astype(int)
    assert np.abs(a - b).max() <= 1  # float sums in another order: at most one grey level
    assert (a == b).mean() > 0.9999


@pytest.mark.parametrize("stride,kernel,pad", [(2, 4, 1), (3, 3, 0), (2, 6, 2)])
def test_the_subpixel_form_matches_conv_transpose_for_other_shapes(stride, kernel, pad):
    from bench.upsampling_forms import as_matmul_col2im, as_subpixel
    rng = np.random.default_rng(stride * 10 + kernel)
    weight = rng.standard_normal((8, 5, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up",
                            kernel_shape=[kernel, kernel], strides=[stride, stride],
                            pads=[pad] * 4)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    before = _run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), x)
    for rewrite in (as_subpixel, as_matmul_col2im):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        assert rewrite(model) == 1
        after = _run(model, x)
        assert after.shape == before.shape == (2, 5, 6 * stride, 6 * stride)
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-4)
