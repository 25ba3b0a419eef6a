"""Rewrites of an exported ONNX graph into forms onnxruntime's CPU kernels run faster.

    rewrite_for_onnxruntime(model) -> list[str]   rewrites in place; names what it changed
    other_form(kernel, pads)                      a stride-1 Conv's weights as a ConvTranspose's
                                                  (and back; bench/graph_bench.py undoes it)
    drop_unused(graph, names)                     removes replaced weights no node reads

Each rewrite computes the same function; only the order of float additions may change, which
the exporter's parity check against PyTorch then covers like any other graph.

One rewrite so far: a convolution with a single output channel becomes a transposed
convolution. onnxruntime runs a Conv as im2col + GEMM; with one output channel (the `dcgan`
generator's last layer: 32 -> 1 channels, 3x3, at 28x28) the GEMM is a matrix-vector product
over an im2col buffer nine times the input's size, slow for its few multiply-accumulates. A stride-1 convolution is the transposed convolution of
the same input with the kernel flipped in space, its two channel axes swapped, and padding
k-1-p; onnxruntime runs that as a GEMM whose long axis is the image, plus a col2im of k*k
planes: faster, with the same images up to one grey level (figures in docs/decisions.md).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def rewrite_for_onnxruntime(model: onnx.ModelProto) -> list[str]:
    """Apply every rewrite to `model` (in place); returns the names of the nodes changed."""
    return _single_channel_convs_as_transposed(model.graph)


def _single_channel_convs_as_transposed(graph: onnx.GraphProto) -> list[str]:
    weights = {init.name: init for init in graph.initializer}
    changed, replaced = [], set()
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        if node.input[1] not in weights:  # a kernel computed at run time: leave it
            continue
        kernel = numpy_helper.to_array(weights[node.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not _rewritable(kernel.shape, attrs):
            continue
        flipped, pads = other_form(kernel, attrs.get("pads", [0] * 4))
        name = f"{node.input[1]}.as_conv_transpose"
        graph.initializer.append(numpy_helper.from_array(flipped, name))
        node.op_type = "ConvTranspose"
        replaced.add(node.input[1])
        node.input[1] = name
        del node.attribute[:]
        node.attribute.extend([
            helper.make_attribute("kernel_shape", list(kernel.shape[2:])),
            helper.make_attribute("strides", [1, 1]),
            helper.make_attribute("pads", pads)])
        changed.append(node.name)
    drop_unused(graph, replaced)
    return changed


def other_form(kernel: np.ndarray, pads: list[int]) -> tuple[np.ndarray, list[int]]:
    """A stride-1 2-D Conv's kernel and pads as the equivalent ConvTranspose's, or back: the
    kernel flipped in space with its two channel axes swapped, each pad p becoming k-1-p. The
    mapping is its own inverse."""
    k = kernel.shape[2:]
    flipped = np.ascontiguousarray(np.flip(kernel, axis=(2, 3)).transpose(1, 0, 2, 3))
    return flipped, [k[i % 2] - 1 - p for i, p in enumerate(pads)]


def _rewritable(shape: tuple[int, ...], attrs: dict) -> bool:
    """A 2-D, single-output-channel, stride-1, undilated, ungrouped Conv with explicit padding
    no wider than its kernel: the case the rewrite is exact and measured for."""
    if len(shape) != 4 or shape[0] != 1:
        return False
    k = shape[2:]
    pads = attrs.get("pads", [0] * 4)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return (attrs.get("group", 1) == 1 and list(attrs.get("strides", [1, 1])) == [1, 1]
            and list(attrs.get("dilations", [1, 1])) == [1, 1]
            and auto_pad in (b"NOTSET", "NOTSET")
            and all(0 <= p <= k[i % 2] - 1 for i, p in enumerate(pads)))


def drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers `names` that no node reads any more."""
    used = {name for node in graph.node for name in node.input}
    used |= {output.name for output in graph.output}
    keep = [init for init in graph.initializer if init.name not in names or init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
