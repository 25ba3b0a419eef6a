"""Exporting a checkpoint's generator to ONNX (`dcgan-train export`).

The exported graph is what the service runs:
  inputs   z      float32 [N, latent_dim]   (N dynamic)
           label  int64   [N]               (class-conditional models only)
  output   images uint8   [N, 1, 28, 28]    post-processing folded in: scale, round, clip, cast
and its `metadata_props` carry everything a server needs to configure itself (see
`service.contract.MetadataKey`), plus the run's resolved training config as JSON. Before it is
saved, `graph_rewrites` turns layers onnxruntime runs slowly into equivalent faster ones (the
report lists them under `rewritten_nodes`).

After writing, the file is checked: `onnx.checker` (full check), the service's own loader
(metadata and signature), and a parity check of onnxruntime against PyTorch on random latents.
Parity compares onnxruntime's uint8 pixels with PyTorch's *unrounded* 0..255 values: a correct
graph is within 0.5 (rounding) plus PARITY_TOLERANCE grey levels everywhere.
"""

from __future__ import annotations

import json
import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from service.contract import INPUT_LABEL, INPUT_LATENT, OUTPUT_IMAGES, ModelMetadata
from training import checkpoints
from training.data import DATASETS
from training.graph_rewrites import rewrite_for_onnxruntime
from training.models import ARCHS, IMAGE_SHAPE, to_uint8
from training.sampling import generator_from_checkpoint

log = logging.getLogger(__name__)

# What torch's exporter and onnxscript say on every export (torchvision absent, pass-by-pass
# INFO lines, internal deprecations) is not for our users: its own checks below are.
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _exporter_quiet():
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)

OPSET = 18
#: Grey levels (of 255) that onnxruntime may differ from PyTorch by, beyond rounding.
PARITY_TOLERANCE = 0.05
PARITY_SAMPLES = 64


class ExportError(RuntimeError):
    """The exported graph failed a check; the message says which and by how much."""


class _Unconditional(torch.nn.Module):
    def __init__(self, g, output_range):
        super().__init__()
        self.g, self.output_range = g, output_range

    def forward(self, z):
        return to_uint8(self.g(z), self.output_range)


class _Conditional(_Unconditional):
    def forward(self, z, label):
        return to_uint8(self.g(z, label), self.output_range)


def export(checkpoint: str | Path, out: str | Path, verify: bool = True) -> dict:
    """Write the ONNX generator for `checkpoint` to `out`; returns a report of the checks."""
    import onnx

    state = checkpoints.load(checkpoint)
    cfg = state["config"]
    num_classes = int(state["num_classes"])
    g = generator_from_checkpoint(state)
    output_range = ARCHS[cfg["arch"]].output_range
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    n = torch.export.Dim("N", min=1, max=65536)
    z = torch.randn(2, g.latent_dim)
    if num_classes:
        wrapper, args = _Conditional(g, output_range), (z, torch.zeros(2, dtype=torch.int64))
        names, shapes = [INPUT_LATENT, INPUT_LABEL], {"z": {0: n}, "label": {0: n}}
    else:
        wrapper, args = _Unconditional(g, output_range), (z,)
        names, shapes = [INPUT_LATENT], {"z": {0: n}}
    with _exporter_quiet():
        program = torch.onnx.export(wrapper.eval(), args, dynamo=True, input_names=names,
                                    output_names=[OUTPUT_IMAGES], dynamic_shapes=shapes,
                                    opset_version=OPSET, verbose=False)
    model = program.model_proto
    rewritten = rewrite_for_onnxruntime(model)

    class_names = DATASETS[cfg["dataset"]].class_names if num_classes else ()
    metadata = ModelMetadata(
        arch=cfg["arch"], dataset=cfg["dataset"], latent_dim=g.latent_dim,
        num_classes=num_classes, class_names=tuple(class_names), image_shape=IMAGE_SHAPE,
        version=f"{state['run_id']}@{state['step']}", run_id=state["run_id"],
        trained_steps=int(state["step"]))
    props = {**metadata.to_props(), "dcgan.train_config": json.dumps(cfg, sort_keys=True),
             "dcgan.weights": "ema" if state.get("ema") is not None else "generator"}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (f"DCGAN generator ({cfg['arch']}, {cfg['dataset']}"
                        f"{', conditional' if num_classes else ''}) from run {state['run_id']} "
                        f"step {state['step']}")
    model.producer_name = "dcgan-train"

    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(model, tmp)
    report = {"out": str(out), "bytes": tmp.stat().st_size, "version": metadata.version,
              "rewritten_nodes": rewritten}
    if verify:
        try:
            report.update(verify_export(tmp, g, output_range, num_classes))
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(out)
    log.info("exported %s (%d bytes)", out, report["bytes"])
    return report


def verify_export(path: Path, g: torch.nn.Module, output_range, num_classes: int,
                  samples: int = PARITY_SAMPLES) -> dict:
    """onnx.checker, the service's loader, and onnxruntime-vs-PyTorch parity; raises on failure."""
    import onnx
    from service.runtime import OnnxGenerator, RuntimeOptions

    onnx.checker.check_model(str(path), full_check=True)
    runner = OnnxGenerator(path, RuntimeOptions(device="cpu"))  # metadata + signature checks

    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(samples, g.latent_dim, generator=gen)
    y = torch.randint(0, num_classes, (samples,), generator=gen) if num_classes else None
    with torch.no_grad():
        lo, hi = output_range
        reference = ((g(z, y) - lo) * (255.0 / (hi - lo))).clamp(0, 255).numpy()
    ours = runner.run(z.numpy(), None if y is None else y.numpy())
    if ours.dtype != np.uint8 or ours.shape != (samples, *IMAGE_SHAPE):
        raise ExportError(f"onnxruntime returned {ours.dtype} {ours.shape}, expected uint8 "
                          f"{(samples, *IMAGE_SHAPE)}")
    excess = np.abs(ours.astype(np.float64) - reference) - 0.5
    worst = float(excess.max())
    if worst > PARITY_TOLERANCE:
        raise ExportError(f"parity check failed: onnxruntime differs from PyTorch by {worst:.4f} "
                          f"grey levels beyond rounding (tolerance {PARITY_TOLERANCE})")
    rounded = np.clip(np.round(reference), 0, 255).astype(np.uint8)
    return {"parity_max_excess_grey_levels": round(max(worst, 0.0), 6),
            "parity_identical_pixel_share": float((rounded == ours).mean()),
            "parity_samples": samples, "onnx_checker": "passed"}
