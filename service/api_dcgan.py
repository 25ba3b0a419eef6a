"""The dcgan.v1 API: protobuf in -> `generation.Generator` -> protobuf out.

Thin: each handler resolves the model once, converts the message and calls the core; the
edge (`service.edge`) wraps every handler with admission, metrics, cancellation and the one
translation of errors into status codes.
"""

from __future__ import annotations

import grpc

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.contract import MAX_SEED, SEED_RULE, labels_for
from service.edge import Edge, check_still_wanted, rpc, rpc_stream
from service.errors import InvalidRequest
from service.generation import (Format, GenerationRequest, GenerationResult, Generator,
                                ServedModel, Walk, stream_chunks)

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
    def __init__(self, generator: Generator, edge: Edge, max_message_bytes: int):
        self.generator = generator
        self.edge = edge
        self.max_message_bytes = max_message_bytes

    @rpc("Generate", admit=True)
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext,
                       call) -> pb.GenerateResponse:
        fmt = _format(request.format)
        model = self.generator.registry.get(request.model)
        call.model = model.name
        check_still_wanted(context)
        generation = GenerationRequest(request.seeds, request.labels, fmt,
                                       context.time_remaining(), _psi(request.psi),
                                       latents=request.latents)
        call.kind = generation.kind.value
        result = await self.generator.generate(model, generation)
        call.images = len(result.images)
        self.edge.metrics.observe_request_size(model.name, call.images)
        return _response(result)

    @rpc("Interpolate", admit=True)
    async def Interpolate(self, request: pb.InterpolateRequest,
                          context: grpc.aio.ServicerContext, call) -> pb.GenerateResponse:
        fmt = _format(request.format)
        if request.method not in _METHODS:
            raise InvalidRequest(f"unknown interpolation {request.method}: use "
                                 "INTERPOLATION_SLERP (1) or INTERPOLATION_LERP (2)")
        model = self.generator.registry.get(request.model)
        call.model, call.kind = model.name, "interpolation"
        check_still_wanted(context)
        result = await self.generator.generate(model, GenerationRequest(
            labels=request.labels, format=fmt, timeout=context.time_remaining(),
            psi=_psi(request.psi),
            walk=Walk(request.seed_a, request.seed_b, request.frames, _METHODS[request.method])))
        call.images = len(result.images)
        self.edge.metrics.observe_request_size(model.name, call.images)
        return _response(result)

    @rpc_stream("GenerateStream", admit=True)
    async def GenerateStream(self, request: pb.GenerateStreamRequest,
                             context: grpc.aio.ServicerContext, call):
        fmt = _format(request.format)
        if fmt is Format.PNG_GRID:
            raise InvalidRequest("GenerateStream returns RAW or PNG images; ask Generate for "
                                 "a PNG grid")
        model = self.generator.registry.get(request.model)
        call.model = model.name
        seeds = _stream_seeds(request)
        labels = list(request.labels)
        if len(labels) > 1:  # one per seed: checked against all the seeds before any chunk runs
            labels_for(seeds, labels, model.metadata.num_classes, f"model {model.name!r}")
        h, w = model.metadata.image_shape[1:]
        chunk = stream_chunks(len(seeds), request.chunk_size, self.generator.max_batch, h * w,
                              self.max_message_bytes)
        for start in range(0, len(seeds), chunk):
            check_still_wanted(context)
            part = seeds[start:start + chunk]
            part_labels = labels[start:start + chunk] if len(labels) > 1 else labels
            result = await self.generator.generate(model, GenerationRequest(
                part, part_labels, fmt, context.time_remaining(), _psi(request.psi)))
            call.images += len(part)
            yield _response(result)

    @rpc("ListModels")
    async def ListModels(self, request, context, call):
        return pb.ListModelsResponse(models=[self._info(m) for m in self.generator.registry])

    @rpc("GetModelInfo")
    async def GetModelInfo(self, request, context, call):
        model = self.generator.registry.get(request.model)
        call.model = model.name
        return self._info(model)

    def _info(self, model: ServedModel) -> pb.ModelInfo:
        meta = model.metadata
        return pb.ModelInfo(
            name=model.name, version=meta.version, arch=meta.arch, dataset=meta.dataset,
            latent_dim=meta.latent_dim, num_classes=meta.num_classes,
            class_names=list(meta.class_names), height=meta.image_shape[1],
            width=meta.image_shape[2], execution_providers=model.runner.providers,
            seed_rule=SEED_RULE, is_default=model.is_default, max_batch=self.generator.max_batch)


# --- conversions ------------------------------------------------------------------------------

def _format(value: int) -> Format:
    try:
        return _FORMATS[value]
    except KeyError:
        raise InvalidRequest(f"unknown image format {value}: use RAW (1), PNG (2) or "
                             "PNG_GRID (3)") from None


def _psi(value: float) -> float:
    return 1.0 if value == 0 else value  # proto3: unset reads as 0, meaning no truncation


def _stream_seeds(request: pb.GenerateStreamRequest):
    which = request.WhichOneof("selection")
    if which == "range":
        start, count = request.range.start, request.range.count
        if count < 1:
            raise InvalidRequest("range.count must be at least 1")
        if start + count - 1 > MAX_SEED:
            raise InvalidRequest("range runs past the largest seed 2**64-1")
        return range(start, start + count)
    if which == "list":
        if not request.list.seeds:
            raise InvalidRequest("list.seeds is empty: send at least one seed")
        return list(request.list.seeds)
    raise InvalidRequest("set either range or list to choose the seeds")


def _response(result: GenerationResult) -> pb.GenerateResponse:
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
        response.grid_png = result.grid_png
        response.grid_columns = result.grid_columns
    return response
