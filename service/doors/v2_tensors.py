"""The Open Inference Protocol's (KServe V2) tensors for this service, whatever the transport:
the gRPC and REST doors turn their messages into `InputTensor`s and back and share the rest
here, so both take and refuse the same inputs with the same messages.

    input  seeds UINT64|INT64 [N] or [N, 1]; or latents FP32 [N, latent_dim]
           labels INT64|INT32 [N] or [1] (conditional models); psi FP32 [1];
           frames INT64|INT32 [1] with exactly two seeds (parameter interpolation: slerp|lerp)
    output images UINT8 [N, 1, H, W]; labels INT64 [N] (conditional models)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import Sequence

import numpy as np

from service.edge.call import CallRecord
from service.errors import InvalidRequest
from service.plane.dataplane import Request, Result, Walk
from service.plane.registry import ServedModel

SERVER_NAME = "dcgan-digits"
PLATFORM = "onnxruntime_onnx"
# Triton's protocol extensions served over both transports (ServerMetadata lists them).
EXTENSIONS = ["statistics", "model_repository"]

# Datatype name -> numpy little-endian dtype, per input.
SEED_TYPES = {"UINT64": "<u8", "INT64": "<i8"}
LABEL_TYPES = {"INT64": "<i8", "INT32": "<i4"}
LATENT_TYPES = {"FP32": "<f4"}
INPUT_NAMES = ("seeds", "labels", "latents", "psi", "frames")
# What RepositoryModelUnload may carry: unloading dependents means nothing without ensembles.
UNLOAD_PARAMETERS = ("unload_dependents",)


def server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


@dataclass
class InputTensor:
    """One input as sent: its values either as raw little-endian bytes or as a sequence
    (protobuf's typed contents, JSON's `data`)."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None = None
    values: Sequence | None = None


def _tensors(model: ServedModel) -> tuple[list, list]:
    """(inputs, outputs) of `model`, each (name, datatype, shape)."""
    meta = model.metadata
    labels = [("labels", "INT64", [-1])] if meta.conditional else []
    return ([("seeds", "UINT64", [-1]), *labels, ("latents", "FP32", [-1, meta.latent_dim]),
             ("psi", "FP32", [1]), ("frames", "INT64", [1])],
            [("images", "UINT8", [-1, *meta.image_shape]), *labels])


def model_metadata(model: ServedModel, versions: list[str]) -> dict:
    """The protocol's model metadata, in its JSON form (the gRPC door parses it into the
    message): the same tensors over both transports."""
    inputs, outputs = _tensors(model)
    return {"name": model.name, "versions": versions, "platform": PLATFORM,
            **{key: [{"name": n, "datatype": d, "shape": s} for n, d, s in tensors]
               for key, tensors in (("inputs", inputs), ("outputs", outputs))}}


def check_repository_parameters(parameters, method: str, allowed: tuple[str, ...] = ()) -> None:
    """Triton's load overrides (a config, files) are not applied here: refused by name
    rather than ignored."""
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise InvalidRequest(f"{method} parameter {unknown[0]!r} is not supported: send "
                             f"{' or '.join(allowed) or 'none'} (the repository's files are "
                             "what is loaded)")


def model_config(model: ServedModel) -> dict:
    """Triton's model configuration of the same tensors, as `tritonclient` reads it."""
    inputs, outputs = _tensors(model)
    return {"name": model.name, "platform": PLATFORM, "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": [{"name": n, "data_type": f"TYPE_{d}", "dims": s, "optional": True}
                      for n, d, s in inputs],
            "output": [{"name": n, "data_type": f"TYPE_{d}", "dims": s} for n, d, s in outputs]}


def to_request(model: str, version: str, inputs: Sequence[InputTensor], parameters: dict,
               call: CallRecord) -> Request:
    """The plane's request for these tensors: seeds (or latents, or an interpolation between
    two seeds), labels and psi, checked for name, type and shape here; the plane then checks
    counts and ranges as it does for every door. Triton's `timeout` parameter (microseconds)
    brings the call's deadline closer."""
    if "timeout" in parameters:
        timeout = parameters["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not timeout > 0:
            raise InvalidRequest(f"parameters.timeout {timeout!r} is not a positive number of "
                                 "microseconds")
        call.expire_in(timeout / 1e6)
    tensors = {}
    for tensor in inputs:
        if tensor.name not in INPUT_NAMES:
            raise InvalidRequest(f"unknown input {tensor.name!r}: this model takes 'seeds' "
                                 "(UINT64 [N]) or 'latents' (FP32 [N, latent_dim]), and "
                                 "optionally 'labels', 'psi' and 'frames'")
        tensors[tensor.name] = tensor
    if ("seeds" in tensors) == ("latents" in tensors):
        raise InvalidRequest("send the input 'seeds' (UINT64 [N]) or 'latents' (FP32 [N, "
                             "latent_dim]), one of the two")
    request = Request(model, version)
    if "seeds" in tensors:
        seeds = _values(tensors["seeds"], SEED_TYPES)
        if seeds.ndim == 2 and seeds.shape[1] == 1:  # [N, 1], as batching clients often send
            seeds = seeds[:, 0]
        if seeds.ndim != 1:
            raise InvalidRequest(f"'seeds' has shape {list(seeds.shape)}: send [N] or [N, 1]")
        if seeds.dtype.kind == "i" and (seeds < 0).any():  # the contract's range is uint64
            raise InvalidRequest("seeds must be 0..2**64-1; INT64 seeds must not be negative")
        request.seeds = seeds
    else:
        request.latents = _values(tensors["latents"], LATENT_TYPES)
    if "labels" in tensors:
        request.labels = _values(tensors["labels"], LABEL_TYPES).reshape(-1)
    if "psi" in tensors:
        psi = _values(tensors["psi"], LATENT_TYPES).reshape(-1)
        if psi.size != 1:
            raise InvalidRequest(f"'psi' has {psi.size} values: send one, FP32 [1]")
        request.psi = float(psi[0])
    method = parameters.get("interpolation", "slerp")
    if "frames" in tensors:
        frames = _values(tensors["frames"], LABEL_TYPES).reshape(-1)
        if frames.size != 1 or len(request.seeds) != 2:
            raise InvalidRequest("an interpolation takes 'frames' (one value) and exactly two "
                                 "'seeds', the first and the last frame's")
        request.walk = Walk(int(request.seeds[0]), int(request.seeds[1]), int(frames[0]),
                            method)
        request.seeds = ()
    elif "interpolation" in parameters:
        raise InvalidRequest("parameter 'interpolation' needs the input 'frames' and two seeds")
    return request


def _values(tensor: InputTensor, types: dict[str, str]) -> np.ndarray:
    """A tensor's values as a numpy array of its shape."""
    if tensor.datatype not in types:
        raise InvalidRequest(f"input {tensor.name!r} has datatype {tensor.datatype!r}: use "
                             f"{' or '.join(types)}")
    dtype = np.dtype(types[tensor.datatype])
    shape = list(tensor.shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < 2**31
                        for d in shape):
        raise InvalidRequest(f"input {tensor.name!r} has shape {shape}: give every dimension "
                             "as a whole number 0..2**31-1")
    count = math.prod(shape)  # exact: a product past int64 is refused below, not wrapped
    if tensor.raw is not None:
        if len(tensor.raw) != count * dtype.itemsize:
            raise InvalidRequest(f"input {tensor.name!r}: {len(tensor.raw)} raw bytes for shape "
                                 f"{shape} of {tensor.datatype}")
        values = np.frombuffer(tensor.raw, dtype=dtype)
    else:
        if len(tensor.values) != count:  # counted before any value is converted
            raise InvalidRequest(f"input {tensor.name!r}: {len(tensor.values)} values for "
                                 f"shape {shape}")
        if dtype.kind in "iu" and not all(isinstance(v, int) for v in tensor.values):
            raise InvalidRequest(f"input {tensor.name!r}: values must be integers that fit "
                                 f"{tensor.datatype}")
        try:
            values = np.asarray(tensor.values, dtype=dtype)
        except (ValueError, OverflowError, TypeError):
            raise InvalidRequest(f"input {tensor.name!r}: values must be integers that fit "
                                 f"{tensor.datatype}") from None
    return values.reshape(shape)


def wanted_outputs(names: Sequence[str], model: ServedModel) -> list[str]:
    """The outputs asked for by name, or all of them when none is named."""
    available = [name for name, _, _ in _tensors(model)[1]]
    wanted = list(names) or available
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise InvalidRequest(f"unknown output {unknown[0]!r}: model {model.name!r} has "
                             f"{' and '.join(repr(a) for a in available)}")
    return wanted


def output_tensors(result: Result, wanted: Sequence[str]
                   ) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, values) of each wanted output, in the order asked."""
    tensors = []
    for name in wanted:
        if name == "images":
            tensors.append(("images", "UINT8", result.images))
        else:
            tensors.append(("labels", "INT64", result.labels.astype("<i8")))
    return tensors
