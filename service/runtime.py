"""The ONNX runner: one onnxruntime InferenceSession per model file, and nothing about gRPC.

`OnnxGenerator` opens an exported generator, checks that it is one (metadata and graph
signature), picks the execution provider, warms the session up, and turns latents (and labels)
into uint8 images. The training CLI's `sample` and `evaluate` use this same class on ONNX files,
which is why the CLI and the service give identical pixels.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# onnxruntime 1.29+ sends usage telemetry from Linux too, and writes a device id under $HOME.
# A server should not phone home unasked: opt out unless the operator chose otherwise. It must
# be set before onnxruntime is imported (the choice is latched at load).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from service.contract import (INPUT_LABEL, INPUT_LATENT, OUTPUT_IMAGES, MetadataError,
                              ModelMetadata)
from service.errors import DeviceUnavailable, ModelLoadError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """How a session is built. 0 threads means onnxruntime's own choice (one per core).

    Its threads spin between the operators of a run (onnxruntime's default), which a
    multi-threaded session needs to be faster than one thread at all (docs/decisions.md).
    """

    device: str = "auto"
    intra_op_threads: int = 0


def cuda_available() -> bool:
    """True when this onnxruntime build has the CUDA provider and the driver shows a GPU."""
    if _CUDA not in ort.get_available_providers():
        return False
    # The CUDA provider is listed by onnxruntime-gpu even on machines without a GPU; the
    # device nodes tell whether the driver sees one without loading CUDA here.
    return any(Path("/dev").glob("nvidia[0-9]*")) or bool(os.environ.get("DCGAN_ASSUME_GPU"))


def choose_providers(device: str) -> list[str]:
    """Providers for `device`; `cuda` that cannot work is an error, never a silent CPU run."""
    if device not in DEVICES:
        raise DeviceUnavailable(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [_CPU]
    if cuda_available():
        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from their pip packages, if there
            ort.preload_dlls()
        return [_CUDA, _CPU]
    if device == "cuda":
        raise DeviceUnavailable(
            "--device cuda was asked for, but CUDA cannot be used: the installed onnxruntime "
            f"offers {ort.get_available_providers()} and no NVIDIA GPU is visible. Install "
            "onnxruntime-gpu (not beside onnxruntime) on a machine with a GPU, or use --device cpu")
    return [_CPU]


class OnnxGenerator:
    """An exported generator loaded in onnxruntime, ready to turn latents into images."""

    def __init__(self, path: str | os.PathLike, options: RuntimeOptions = RuntimeOptions()):
        self.path = Path(path)
        providers = choose_providers(options.device)
        self.session = _open_session(self.path, options, providers)
        # What the pixels depend on besides the inputs: the file's bytes (ETags name them).
        self.digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.providers = self.session.get_providers()
        if options.device == "cuda" and _CUDA not in self.providers:
            raise DeviceUnavailable(f"{self.path}: onnxruntime could not start the CUDA provider "
                                    f"(it runs on {self.providers}); see its log above")
        try:
            self.metadata = ModelMetadata.from_props(
                self.session.get_modelmeta().custom_metadata_map)
        except MetadataError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        _check_signature(self.path, self.session, self.metadata)
        self.warm_up()
        log.debug("loaded %s (%s, %s) on %s", self.path, self.metadata.arch,
                  self.metadata.dataset, ",".join(self.providers))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.metadata.image_shape

    def run(self, latents: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """uint8 images [N, C, H, W] for float32 latents [N, latent_dim] (and int64 labels [N])."""
        feeds = {INPUT_LATENT: latents}
        if self.metadata.conditional:
            if labels is None:
                raise ValueError("a conditional model needs labels")
            feeds[INPUT_LABEL] = labels
        return self.session.run([OUTPUT_IMAGES], feeds)[0]

    def warm_up(self) -> None:
        # The first runs allocate arenas and pick kernels; do that before the first caller waits.
        for n in (1, 8):
            latents = np.zeros((n, self.metadata.latent_dim), dtype=np.float32)
            labels = np.zeros(n, dtype=np.int64) if self.metadata.conditional else None
            self.run(latents, labels)


def _open_session(path: Path, options: RuntimeOptions, providers: list[str]):
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist (or is not a file)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # "all" lets onnxruntime fuse Conv+BN+activation and lay out memory for its CPU kernels.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only; our own log says what was loaded
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises several untyped errors for bad files
        raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from None


def _check_signature(path: Path, session, meta: ModelMetadata) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    expected_inputs = {INPUT_LATENT} | ({INPUT_LABEL} if meta.conditional else set())
    problems = []
    if set(inputs) != expected_inputs:
        problems.append(f"inputs are {sorted(inputs)}, expected {sorted(expected_inputs)}")
    elif inputs[INPUT_LATENT].type != "tensor(float)" or \
            inputs[INPUT_LATENT].shape[1:] != [meta.latent_dim]:
        problems.append(f"input {INPUT_LATENT!r} is {inputs[INPUT_LATENT].type} "
                        f"{inputs[INPUT_LATENT].shape}, expected float [N, {meta.latent_dim}]")
    if OUTPUT_IMAGES not in outputs:
        problems.append(f"outputs are {sorted(outputs)}, expected [{OUTPUT_IMAGES!r}]")
    else:
        out = outputs[OUTPUT_IMAGES]
        if out.type != "tensor(uint8)" or out.shape[1:] != list(meta.image_shape):
            problems.append(f"output {OUTPUT_IMAGES!r} is {out.type} {out.shape}, expected "
                            f"uint8 [N, {', '.join(map(str, meta.image_shape))}]")
    if problems:
        raise ModelLoadError(f"{path} is not a generator this server can run: "
                             + "; ".join(problems))
