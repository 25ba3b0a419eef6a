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
