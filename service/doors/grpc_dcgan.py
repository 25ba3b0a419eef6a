"""The dcgan.v1 gRPC API: a converter, protobuf message -> `Request` -> data plane -> message.

The edge (`service/edge/grpc_edge.py`) wraps every handler: token, admission, deadline,
metrics and the one translation of errors into statuses; the data plane resolves, checks,
runs and records. What is left here is the protobuf's own shape: enums, `optional` psi, the
stream's seed range.
"""

from __future__ import annotations

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.contract import MAX_SEED, ContractError
from service.edge.call import CallRecord
from service.plane.dataplane import (DataPlane, Format, ModelDescription, Request, Result,
                                     Walk)

_FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: Format.RAW,
    pb.IMAGE_FORMAT_RAW: Format.RAW,
    pb.IMAGE_FORMAT_PNG: Format.PNG,
    pb.IMAGE_FORMAT_PNG_GRID: Format.PNG_GRID,
}
_PROTO_FORMAT = {Format.RAW: pb.IMAGE_FORMAT_RAW, Format.PNG: pb.IMAGE_FORMAT_PNG,
                 Format.PNG_GRID: pb.IMAGE_FORMAT_PNG_GRID}
_METHODS = {pb.INTERPOLATION_UNSPECIFIED: "slerp", pb.INTERPOLATION_SLERP: "slerp",
            pb.INTERPOLATION_LERP: "lerp"}


class GeneratorServicer(pb_grpc.GeneratorServiceServicer):
    def __init__(self, plane: DataPlane, max_message_bytes: int):
        self.plane = plane
        self.max_message_bytes = max_message_bytes

    async def Generate(self, request: pb.GenerateRequest, context, call: CallRecord
                       ) -> pb.GenerateResponse:
        return _response(await self.plane.infer(Request(
            request.model, request.model_version, seeds=request.seeds, labels=request.labels,
            psi=_psi(request), latents=request.latents, format=_format(request.format)), call))

    async def Interpolate(self, request: pb.InterpolateRequest, context, call: CallRecord
                          ) -> pb.GenerateResponse:
        if request.method not in _METHODS:
            raise ContractError(f"unknown interpolation {request.method}: use "
                                "INTERPOLATION_SLERP (1) or INTERPOLATION_LERP (2)")
        walk = Walk(request.seed_a, request.seed_b, request.frames, _METHODS[request.method])
        return _response(await self.plane.infer(Request(
            request.model, request.model_version, walk=walk, labels=request.labels,
            psi=_psi(request), format=_format(request.format)), call))

    async def GenerateStream(self, request: pb.GenerateStreamRequest, context,
                             call: CallRecord):
        stream = self.plane.stream(
            Request(request.model, request.model_version, seeds=_stream_seeds(request),
                    labels=request.labels, psi=_psi(request), format=_format(request.format)),
            self.max_message_bytes, request.chunk_size, call)
        async for result in stream:
            yield _response(result)

    async def ListModels(self, request, context, call: CallRecord):
        return pb.ListModelsResponse(models=[_info(self.plane.describe(m))
                                             for m in self.plane.registry])

    async def GetModelInfo(self, request, context, call: CallRecord):
        return _info(self.plane.describe(self.plane.model(request.model, request.model_version,
                                                          call)))


# --- conversions ------------------------------------------------------------------------------

def _info(description: ModelDescription) -> pb.ModelInfo:
    return pb.ModelInfo(**vars(description))


def _format(value: int) -> Format:
    try:
        return _FORMATS[value]
    except KeyError:
        raise ContractError(f"unknown image format {value}: use RAW (1), PNG (2) or "
                            "PNG_GRID (3)") from None


def _psi(request) -> float:
    """psi as sent: `optional`, so an unset psi (no truncation) differs from a refused 0."""
    return request.psi if request.HasField("psi") else 1.0


def _stream_seeds(request: pb.GenerateStreamRequest):
    which = request.WhichOneof("selection")
    if which == "range":
        start, count = request.range.start, request.range.count
        if count < 1:
            raise ContractError("range.count must be at least 1")
        if start + count - 1 > MAX_SEED:
            raise ContractError("range runs past the largest seed 2**64-1")
        return range(start, start + count)
    if which == "list":
        return request.list.seeds
    raise ContractError("set either range or list to choose the seeds")


def _response(result: Result) -> pb.GenerateResponse:
    _, _, h, w = result.images.shape
    response = pb.GenerateResponse(
        model=result.model, model_version=result.version, seeds=result.seeds,
        labels=[] if result.labels is None else result.labels.tolist(),
        format=_PROTO_FORMAT[result.format], height=h, width=w,
        latent_rule=result.latent_rule, psi=result.psi)
    if result.format is Format.RAW:
        response.raw = result.images.tobytes()  # already contiguous N x 1 x H x W
        response.count = len(result.images)
    elif result.format is Format.PNG:
        response.png.extend(result.pngs)
    else:
        response.grid_png = result.picture
        response.grid_columns = result.grid_columns
    return response
