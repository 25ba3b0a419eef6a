"""Other ways to write the generator's stride-2 upsampling layers, for bench/graph_bench.py.

    as_subpixel(model)        each ConvTranspose(k, stride s, pad p) with k = s + 2p as a
                              stride-1 Conv to s*s*Cout channels (kernel k/s), Slice per phase,
                              Concat, DepthToSpace ("sub-pixel convolution")
    as_matmul_col2im(model)   each such ConvTranspose as MatMul (the weights against every input
                              pixel) + Col2Im (the overlapping k x k patches summed) + Add (bias)

Both compute exactly what the ConvTranspose computes (the tests check the bytes), and both
lost to it in onnxruntime 1.32 on this machine's CPU, which is why the exporter does not write
them (docs/benchmarks/graph-cpu.md has the figures and the per-node profiles). They stay here
so that the comparison can be run again on another CPU or onnxruntime release.

The sub-pixel form rests on this: output row 2i + a (phase a of s) of a stride-s transposed
convolution reads input rows i + d only for the taps ky = a + p - s*d that lie in 0..k-1,
which is k/s consecutive rows per phase. So one Conv with a (k/s) x (k/s) kernel over the
input, padded to cover every phase's first row, computes all s*s phases at once, one group
of Cout channels each, and each phase is that Conv's output shifted by its first row.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from training.graph_rewrites import drop_unused


def as_subpixel(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place; returns how many ConvTranspose nodes it replaced."""
    return _replace(model, _subpixel_nodes)


def as_matmul_col2im(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place (opset raised to 18 for Col2Im); returns how many it replaced."""
    replaced = _replace(model, _col2im_nodes)
    if replaced:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, 18)
    return replaced


def _replace(model: onnx.ModelProto, build) -> int:
    graph = model.graph
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.input, *inferred.value_info)}
    weights = {init.name: init for init in graph.initializer}
    nodes, replaced, old_weights = [], 0, set()
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not _upsampling(node, attrs, weights):
            nodes.append(node)
            continue
        kernel = numpy_helper.to_array(weights[node.input[1]])
        bias = (numpy_helper.to_array(weights[node.input[2]]) if len(node.input) > 2
                else np.zeros(kernel.shape[1], np.float32))
        new_nodes, new_weights = build(node, kernel, bias, attrs["strides"][0],
                                       attrs.get("pads", [0] * 4)[0], shapes[node.input[0]])
        nodes.extend(new_nodes)
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_weights.items())
        replaced += 1
        old_weights.update(node.input[1:])
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused(graph, old_weights)
    return replaced


def _upsampling(node: onnx.NodeProto, attrs: dict, weights: dict) -> bool:
    """A square, ungrouped, undilated ConvTranspose with stride s > 1, kernel k = s + 2p
    (output exactly s times the input) and constant weights."""
    if node.op_type != "ConvTranspose" or node.input[1] not in weights:
        return False
    k = list(weights[node.input[1]].dims[2:])
    s = list(attrs.get("strides", [1, 1]))
    p = list(attrs.get("pads", [0, 0, 0, 0]))
    return (len(set(k)) == 1 and len(set(s)) == 1 and len(set(p)) == 1 and s[0] > 1
            and k[0] == s[0] + 2 * p[0] and k[0] % s[0] == 0
            and attrs.get("group", 1) == 1 and set(attrs.get("dilations", [1])) == {1}
            and not any(attrs.get("output_padding", [0]))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def _subpixel_nodes(node, kernel, bias, s, p, in_shape):
    cin, cout, k, _ = kernel.shape
    taps = k // s
    first = [(phase + p) // s - taps + 1 for phase in range(s)]  # each phase's first input row
    before, after = -min(first), max(f + taps - 1 for f in first)
    extra = before + after - taps + 1  # conv output rows beyond the input's
    conv_kernel = np.zeros((s, s, cout, cin, taps, taps), np.float32)
    for ay in range(s):
        for ax in range(s):
            for r in range(taps):
                for c in range(taps):
                    ky, kx = ay + p - s * (first[ay] + r), ax + p - s * (first[ax] + c)
                    conv_kernel[ay, ax, :, :, r, c] = kernel[:, :, ky, kx].T
    pre = f"{node.name}.subpixel"
    weights = {f"{pre}.w": conv_kernel.reshape(s * s * cout, cin, taps, taps),
               f"{pre}.b": np.tile(bias, s * s).astype(np.float32)}
    nodes = [helper.make_node("Conv", [node.input[0], f"{pre}.w", f"{pre}.b"], [f"{pre}.all"],
                              name=f"{pre}.conv", kernel_shape=[taps, taps],
                              pads=[before, before, after, after])]
    weights[f"{pre}.axes"] = np.array([1, 2, 3], np.int64)
    phases = []
    for ay in range(s):
        for ax in range(s):
            group, top, left = ay * s + ax, first[ay] + before, first[ax] + before
            end = [(group + 1) * cout, *(-(extra - o) if extra > o else 2**62 for o in (top, left))]
            weights[f"{pre}.{group}.starts"] = np.array([group * cout, top, left], np.int64)
            weights[f"{pre}.{group}.ends"] = np.array(end, np.int64)
            phases.append(f"{pre}.phase{group}")
            nodes.append(helper.make_node(
                "Slice", [f"{pre}.all", f"{pre}.{group}.starts", f"{pre}.{group}.ends",
                          f"{pre}.axes"], [phases[-1]], name=phases[-1]))
    nodes += [helper.make_node("Concat", phases, [f"{pre}.phases"], name=f"{pre}.concat", axis=1),
              helper.make_node("DepthToSpace", [f"{pre}.phases"], [node.output[0]],
                               name=f"{pre}.d2s", blocksize=s, mode="DCR")]
    return nodes, weights


def _col2im_nodes(node, kernel, bias, s, p, in_shape):
    cin, cout, k, _ = kernel.shape
    h, w = in_shape[2:]
    pre = f"{node.name}.col2im"
    weights = {f"{pre}.w": kernel.reshape(cin, cout * k * k).T.copy(),
               f"{pre}.flat": np.array([0, cin, h * w], np.int64),
               f"{pre}.image": np.array([h * s, w * s], np.int64),
               f"{pre}.block": np.array([k, k], np.int64),
               f"{pre}.b": bias.reshape(1, cout, 1, 1).astype(np.float32)}
    nodes = [helper.make_node("Reshape", [node.input[0], f"{pre}.flat"], [f"{pre}.x"],
                              name=f"{pre}.reshape"),
             helper.make_node("MatMul", [f"{pre}.w", f"{pre}.x"], [f"{pre}.cols"],
                              name=f"{pre}.matmul"),
             helper.make_node("Col2Im", [f"{pre}.cols", f"{pre}.image", f"{pre}.block"],
                              [f"{pre}.y"], name=f"{pre}.col2im", pads=[p] * 4, strides=[s, s]),
             helper.make_node("Add", [f"{pre}.y", f"{pre}.b"], [node.output[0]],
                              name=f"{pre}.bias")]
    return nodes, weights
