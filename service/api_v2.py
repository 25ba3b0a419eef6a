"""The KServe Open Inference Protocol (V2) gRPC edge: tensors in -> `generation.Generator` -> tensors out.

Beside the project's own API, so that tools built for the standard protocol (`tritonclient`,
KServe's custom-predictor deployments) work against this server unmodified. The same seeds give the same pixels as `Generate`: both go through the same
`Generator`. Tensors (see proto/inference/grpc_predict_v2.proto):

    input  "seeds"   UINT64 or INT64, shape [N] or [N, 1]
    input  "labels"  INT64 or INT32, shape [N] or [1]    conditional models only, optional
    output "images"  UINT8 [N, 1, H, W]                  raw_output_contents
    output "labels"  INT64 [N]                           conditional models only

Thin, like `api_dcgan`: errors are raised as the service's own exceptions and become status
codes in the edge (`service.edge`), which wraps every handler here as it wraps the dcgan API.
"""

from __future__ import annotations

from importlib import metadata as package_metadata

import grpc
import numpy as np

from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.edge import Edge, rpc
from service.errors import InvalidRequest, ModelNotFound
from service.generation import Format, GenerationRequest, Generator, ServedModel

SERVER_NAME = "dcgan-digits"
PLATFORM = "onnxruntime_onnx"

# Datatype name -> numpy little-endian dtype, and where typed (non-raw) values live.
_SEED_TYPES = {"UINT64": ("<u8", "uint64_contents"), "INT64": ("<i8", "int64_contents")}
_LABEL_TYPES = {"INT64": ("<i8", "int64_contents"), "INT32": ("<i4", "int_contents")}


def _server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, generator: Generator, edge: Edge):
        self.generator = generator
        self.edge = edge
        self.version = _server_version()

    # --- health and metadata -------------------------------------------------------------------

    @rpc("ServerLive")
    async def ServerLive(self, request, context, call):
        return v2.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(self, request, context, call):
        return v2.ServerReadyResponse(ready=not self.edge.gate.draining)

    @rpc("ModelReady")
    async def ModelReady(self, request, context, call):
        try:
            _model(self.generator, request.name, request.version)
        except ModelNotFound:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=not self.edge.gate.draining)

    @rpc("ServerMetadata")
    async def ServerMetadata(self, request, context, call):
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=[])

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request, context, call):
        model = _model(self.generator, request.name, request.version)
        call.model = model.name
        return _metadata(model)

    @rpc("ModelConfig")
    async def ModelConfig(self, request, context, call):
        model = _model(self.generator, request.name, request.version)
        call.model = model.name
        return v2.ModelConfigResponse(config=_config(model))

    # --- inference ------------------------------------------------------------------------------

    @rpc("ModelInfer", admit=True)
    async def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext,
                         call) -> v2.ModelInferResponse:
        model = _model(self.generator, request.model_name, request.model_version)
        call.model = model.name
        seeds, labels = _inputs(request, model)
        wanted = _wanted_outputs(request, model)
        self.edge.metrics.observe_request_size(model.name, len(seeds))
        result = await self.generator.generate(model, GenerationRequest(
            seeds, labels, Format.RAW, context.time_remaining()))
        call.images = len(result.seeds)
        return _response(request, result, wanted)


def _model(generator: Generator, name: str, version: str) -> ServedModel:
    # The protocol names the model in every request; an empty name means the default model.
    model = generator.registry.get(name)
    if version and version != model.metadata.version:
        raise ModelNotFound(f"model {model.name!r} has version "
                            f"{model.metadata.version!r}, not {version!r}: send that "
                            "or leave model_version empty")
    return model


def _metadata(model: ServedModel) -> v2.ModelMetadataResponse:
    meta = model.metadata
    tensor = v2.ModelMetadataResponse.TensorMetadata
    inputs = [tensor(name="seeds", datatype="UINT64", shape=[-1])]
    outputs = [tensor(name="images", datatype="UINT8", shape=[-1, *meta.image_shape])]
    if meta.conditional:
        inputs.append(tensor(name="labels", datatype="INT64", shape=[-1]))
        outputs.append(tensor(name="labels", datatype="INT64", shape=[-1]))
    return v2.ModelMetadataResponse(name=model.name, versions=[meta.version],
                                    platform=PLATFORM, inputs=inputs, outputs=outputs)


def _config(model: ServedModel) -> v2.ModelConfig:
    """Triton's view of the same tensors as `_metadata`."""
    meta = model.metadata
    inputs = [v2.ModelInput(name="seeds", data_type=v2.TYPE_UINT64, dims=[-1])]
    outputs = [v2.ModelOutput(name="images", data_type=v2.TYPE_UINT8,
                              dims=[-1, *meta.image_shape])]
    if meta.conditional:
        inputs.append(v2.ModelInput(name="labels", data_type=v2.TYPE_INT64, dims=[-1],
                                    optional=True))
        outputs.append(v2.ModelOutput(name="labels", data_type=v2.TYPE_INT64, dims=[-1]))
    return v2.ModelConfig(name=model.name, platform=PLATFORM, backend="onnxruntime",
                          max_batch_size=0, input=inputs, output=outputs)


def _inputs(request: v2.ModelInferRequest, model: ServedModel
            ) -> tuple[np.ndarray, np.ndarray | tuple]:
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidRequest(f"{len(request.raw_input_contents)} raw_input_contents for "
                             f"{len(request.inputs)} inputs: send one per input")
    tensors = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in ("seeds", "labels"):
            raise InvalidRequest(f"unknown input {tensor.name!r}: this model takes 'seeds' "
                                 "(UINT64 [N]) and, if conditional, 'labels' (INT64 [N])")
        raw = request.raw_input_contents[i] if request.raw_input_contents else None
        tensors[tensor.name] = (tensor, raw)
    if "seeds" not in tensors:
        raise InvalidRequest("input 'seeds' is missing: send the seeds as a UINT64 [N] tensor")
    seeds = _values(*tensors["seeds"], _SEED_TYPES)
    if seeds.ndim == 2 and seeds.shape[1] == 1:  # [N, 1], as batching clients often send
        seeds = seeds[:, 0]
    if seeds.ndim != 1:
        raise InvalidRequest(f"'seeds' has shape {list(seeds.shape)}: send [N] or [N, 1]")
    if seeds.dtype.kind == "i" and (seeds < 0).any():
        raise InvalidRequest("seeds must be 0..2**64-1; INT64 seeds must not be negative")
    labels = ()
    if "labels" in tensors:
        labels = _values(*tensors["labels"], _LABEL_TYPES).reshape(-1)
    return seeds, labels


def _values(tensor, raw: bytes | None, types: dict[str, tuple[str, str]]) -> np.ndarray:
    """A request tensor's values as a numpy array of its shape, from raw bytes or contents."""
    if tensor.datatype not in types:
        raise InvalidRequest(f"input {tensor.name!r} has datatype {tensor.datatype!r}: use "
                             f"{' or '.join(types)}")
    dtype, field = types[tensor.datatype]
    shape = list(tensor.shape)
    if any(d < 0 for d in shape) or not shape:
        raise InvalidRequest(f"input {tensor.name!r} has shape {shape}: give every dimension")
    count = int(np.prod(shape))
    if raw is not None:
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise InvalidRequest(f"input {tensor.name!r}: {len(raw)} raw bytes for shape "
                                 f"{shape} of {tensor.datatype}")
        values = np.frombuffer(raw, dtype=dtype)
    else:
        values = np.asarray(getattr(tensor.contents, field), dtype=dtype)
        if values.size != count:
            raise InvalidRequest(f"input {tensor.name!r}: {values.size} values in "
                                 f"contents.{field} for shape {shape}")
    return values.reshape(shape)


def _wanted_outputs(request: v2.ModelInferRequest, model: ServedModel) -> list[str]:
    available = ["images", "labels"] if model.metadata.conditional else ["images"]
    wanted = [o.name for o in request.outputs] or available
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise InvalidRequest(f"unknown output {unknown[0]!r}: model {model.name!r} has "
                             f"{' and '.join(repr(a) for a in available)}")
    return wanted


def _response(request: v2.ModelInferRequest, result, wanted: list[str]) -> v2.ModelInferResponse:
    response = v2.ModelInferResponse(model_name=result.model, model_version=result.version,
                                     id=request.id)
    tensor = v2.ModelInferResponse.InferOutputTensor
    for name in wanted:
        if name == "images":
            response.outputs.append(tensor(name="images", datatype="UINT8",
                                           shape=list(result.images.shape)))
            response.raw_output_contents.append(result.images.tobytes())
        else:
            response.outputs.append(tensor(name="labels", datatype="INT64",
                                           shape=[len(result.labels)]))
            response.raw_output_contents.append(result.labels.astype("<i8").tobytes())
    return response
