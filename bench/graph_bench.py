"""What the model graph's treatment changes in onnxruntime: optimisation level, a pre-optimised
file, and session threading, measured in-process across batch sizes.

    python bench/graph_bench.py --out docs/benchmarks/graph-cpu.md

Variants (same model file, same latents; each one's output compared with the default's):
  all / extended / basic / disable   onnxruntime's graph optimisation levels, one per core
  preoptimised                       the "all"-optimised graph saved to a file and loaded with
                                     optimisation off (what a pre-optimised model file buys:
                                     session creation time, not run time)
  all, 1 thread                      one single-threaded session (what each batching worker uses)
  1-channel Conv, 1 thread           the same graph with the exporter's rewrite undone (its last
                                     layer a Conv again, as PyTorch exports it; see
                                     training/graph_rewrites.py): what the rewrite buys
  fp16                               the fp16 copy `tools/quantize_model.py --precision fp16`
                                     makes (for GPUs), on the CPU: what it would cost or save
It reports img/s per batch size (median of interleaved rounds) and session creation time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_bench import command_line, machine, publish  # noqa: E402
from service.contract import seeds_to_latents  # noqa: E402

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def undo_conv_rewrite(path: str, out: str) -> bool:
    """Write `path` with each 1-channel, stride-1 ConvTranspose turned back into the Conv that
    graph_rewrites replaced; False if the model has none."""
    from onnx import helper, numpy_helper
    from training.graph_rewrites import other_form
    model = onnx.load(path)
    weights = {init.name: init for init in model.graph.initializer}
    undone = False
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if (node.op_type != "ConvTranspose" or weight is None or weight.dims[1] != 1
                or list(attrs.get("strides", [1, 1])) != [1, 1]):
            continue
        conv, pads = other_form(numpy_helper.to_array(weight), attrs.get("pads", [0] * 4))
        weight.CopyFrom(numpy_helper.from_array(conv, weight.name))
        node.op_type = "Conv"
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("kernel_shape", list(conv.shape[2:])),
                               helper.make_attribute("pads", pads)])
        undone = True
    onnx.save(model, out)
    return undone


def session(path: str, level: str, threads: int = 0, save_to: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = threads
    if save_to:
        options.optimized_model_filepath = save_to
    started = time.perf_counter()
    made = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return made, time.perf_counter() - started


def feeds(s: ort.InferenceSession, batch: int) -> dict:
    inputs = s.get_inputs()
    out = {inputs[0].name: seeds_to_latents(range(batch), inputs[0].shape[1])}
    if len(inputs) > 1:
        out[inputs[1].name] = np.arange(batch, dtype=np.int64) % 10
    return out


def throughput(s: ort.InferenceSession, batch: int, seconds: float) -> float:
    f = feeds(s, batch)
    s.run(None, f)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        s.run(None, f)
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def main() -> int:
    from service.process.config import bundled_models
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = bundled_models()[0][1] if bundled_models() else None
    parser.add_argument("--model", default=str(default) if default else None)
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    work = Path(tempfile.mkdtemp())
    saved = str(work / "optimised.onnx")
    variants = {}
    for level in LEVELS:
        variants[level] = session(args.model, level, save_to=saved if level == "all" else None)
    variants["preoptimised"] = session(saved, "disable")
    variants["all, 1 thread"] = session(args.model, "all", threads=1)
    as_torch = str(work / "conv.onnx")
    if undo_conv_rewrite(args.model, as_torch):
        variants["1-channel Conv, 1 thread"] = session(as_torch, "all", threads=1)
    sys.path.insert(0, str(ROOT / "tools"))
    from quantize_model import quantize
    fp16 = work / "fp16.onnx"
    quantize(Path(args.model), fp16, "fp16")
    variants["fp16"] = session(str(fp16), "all")
    reference = variants["all"][0].run(None, feeds(variants["all"][0], 16))[0]
    differences = {}
    for name, (s, _) in variants.items():  # fusions may round differently: say by how much
        out = s.run(None, feeds(s, 16))[0].astype(int)
        differences[name] = (np.abs(out - reference).max(), (out == reference).mean())

    figures = {name: {b: [] for b in batches} for name in variants}
    for r in range(args.rounds):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for batch in batches:
            for name in names:
                figures[name][batch].append(throughput(variants[name][0], batch, args.seconds))
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; model "
             f"`{Path(args.model).name}`; {args.rounds} interleaved rounds of {args.seconds:g} s "
             "(medians). Output compared with the default (`all`) on 16 images.",
             f"Command: `{command_line()}`", "",
             "| variant | session created in ms | pixels equal to `all` (max diff) | "
             + " | ".join(f"batch {b} img/s" for b in batches) + " |",
             "|---|---:|---:|" + "---:|" * len(batches)]
    for name, (_, created) in variants.items():
        cells = " | ".join(f"{np.median(figures[name][b]):.0f}" for b in batches)
        diff, same = differences[name]
        lines.append(f"| {name} | {created * 1000:.0f} | {same:.1%} ({diff}) | {cells} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
