"""Make a lower-precision copy of an exported generator: int8 for CPUs, fp16 for GPUs.

    python tools/quantize_model.py models/mnist-dcgan.onnx /tmp/mnist-dcgan-int8.onnx
    python tools/quantize_model.py --precision fp16 models/mnist-dcgan.onnx /tmp/mnist-fp16.onnx

int8: static quantization (onnxruntime's QOperator format, per-channel int8 weights, uint8
activations), calibrated on the latents of seeds 0..255 made exactly as the server makes them,
so the activation ranges are the ones served. Pixels differ from the float model's by well under
one grey level on average.

fp16: every weight and activation in half precision, the inputs and the uint8 output unchanged
(onnxruntime's own float16 converter, with its Casts at the edges). Meant for the CUDA
execution provider's half-precision kernels; on a CPU onnxruntime runs it no faster than float
(0.93-1.02x measured here). On the bundled models 97-98% of pixels are identical to the
float model's and the rest at most two grey levels apart, with the same FD and IS.

Either way the project's metadata is copied over, so the file loads in `dcgan-serve --model
NAME=FILE` and `dcgan-train sample/evaluate` like any export. Check quality with `dcgan-train
evaluate` before serving it (the measured figures are in docs/decisions.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.contract import INPUT_LABEL, INPUT_LATENT, default_labels, seeds_to_latents  # noqa: E402
from service.runtime import OnnxGenerator  # noqa: E402


class _SeedLatents(CalibrationDataReader):
    def __init__(self, latent_dim: int, num_classes: int, seeds: int = 256, batch: int = 32):
        self._batches = []
        for start in range(0, seeds, batch):
            block = list(range(start, start + batch))
            feed = {INPUT_LATENT: seeds_to_latents(block, latent_dim)}
            if num_classes:
                feed[INPUT_LABEL] = default_labels(block, num_classes)
            self._batches.append(feed)
        self._next = iter(self._batches)

    def get_next(self):
        return next(self._next, None)


def quantize(source: Path, target: Path, precision: str = "int8") -> None:
    meta = OnnxGenerator(source).metadata  # also checks it is one of our generators
    source_model = onnx.load(str(source))
    original = {p.key: p.value for p in source_model.metadata_props}
    if precision == "fp16":
        model = convert_float_to_float16(source_model, keep_io_types=True)
    elif precision == "int8":
        _quantize_int8(source, target, meta)
        model = onnx.load(str(target))
    else:
        raise ValueError(f"unknown precision {precision!r}: use int8 or fp16")
    kept = {p.key for p in model.metadata_props}
    for key, value in original.items():
        if key not in kept:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    OnnxGenerator(target)  # loads and passes the server's own checks


def _quantize_int8(source: Path, target: Path, meta) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))  # shapes and folding the quantizer needs
        quantize_static(str(prepared), str(target),
                        _SeedLatents(meta.latent_dim, meta.num_classes if meta.conditional else 0),
                        quant_format=QuantFormat.QOperator, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an exported generator (.onnx)")
    parser.add_argument("target", type=Path, help="where to write the copy")
    parser.add_argument("--precision", choices=("int8", "fp16"), default="int8",
                        help="int8 for CPUs (default), fp16 for GPUs")
    args = parser.parse_args()
    quantize(args.source, args.target, args.precision)
    print(f"wrote {args.target} ({args.target.stat().st_size / 1e6:.2f} MB, from "
          f"{args.source.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
