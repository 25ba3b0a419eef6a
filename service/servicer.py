"""The gRPC edge: protobuf in -> `generation.Generator` -> protobuf out, and errors -> status codes.

Handlers are coroutines on the server's one event loop (grpc.aio): a call costs no thread of
its own, and the loop hands the model runs to the batcher's worker threads.

This is the only module that turns exceptions into gRPC status codes (`STATUS_FOR`); anything
not listed there is a bug and becomes INTERNAL with the detail logged, not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf.message import DecodeError

from service.admission import CallGate
from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.contract import MAX_SEED, SEED_RULE
from service.errors import (Cancelled, DeadlineExceeded, DeviceUnavailable, InvalidRequest,
                            ModelNotFound, Overloaded, ShuttingDown)
from service.generation import (Format, GenerationRequest, GenerationResult, Generator,
                                ServedModel, stream_chunks)
from service.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    DeviceUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}

_FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: Format.RAW,
    pb.IMAGE_FORMAT_RAW: Format.RAW,
    pb.IMAGE_FORMAT_PNG: Format.PNG,
    pb.IMAGE_FORMAT_PNG_GRID: Format.PNG_GRID,
}
_PROTO_FORMAT = {Format.RAW: pb.IMAGE_FORMAT_RAW, Format.PNG: pb.IMAGE_FORMAT_PNG,
                 Format.PNG_GRID: pb.IMAGE_FORMAT_PNG_GRID}


def status_for(exc: Exception) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


class GeneratorServicer(pb_grpc.GeneratorServiceServicer):
    def __init__(self, generator: Generator, metrics: Metrics, max_message_bytes: int,
                 gate: CallGate):
        self.generator = generator
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.gate = gate

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        with self.metrics.track("Generate") as call:
            try:
                with self.gate.admitted():
                    return await self._generate(request, context, call)
            except asyncio.CancelledError:  # the caller cancelled or its deadline passed
                call.code = grpc.StatusCode.CANCELLED.name
                raise
            except Exception as exc:
                await abort(context, call, exc)

    async def _generate(self, request: pb.GenerateRequest, context, call) -> pb.GenerateResponse:
        fmt = _format(request.format)
        model = self.generator.registry.get(request.model)
        call.model = model.name
        self.metrics.observe_request_size(model.name, len(request.seeds))
        _check_still_wanted(context)
        result = await self.generator.generate(GenerationRequest(
            request.seeds, request.labels, model.name, fmt, context.time_remaining()))
        call.images = len(result.seeds)
        return _response(result)

    async def GenerateStream(self, request: pb.GenerateStreamRequest,
                             context: grpc.aio.ServicerContext):
        with self.metrics.track("GenerateStream") as call:
            try:
                with self.gate.admitted():
                    async for response in self._generate_stream(request, context, call):
                        yield response
            # The caller cancelled: grpc cancels our task if we are awaiting a run, or closes
            # this generator (GeneratorExit at the yield) if we are waiting to be read.
            except (asyncio.CancelledError, GeneratorExit):
                call.code = grpc.StatusCode.CANCELLED.name
                raise
            except Exception as exc:
                await abort(context, call, exc)

    async def _generate_stream(self, request: pb.GenerateStreamRequest, context, call):
        fmt = _format(request.format)
        if fmt is Format.PNG_GRID:
            raise InvalidRequest("GenerateStream returns RAW or PNG images; ask Generate for "
                                 "a PNG grid")
        model = self.generator.registry.get(request.model)
        call.model = model.name
        seeds = _stream_seeds(request)
        labels = list(request.labels)
        if len(labels) > 1 and len(labels) != len(seeds):
            raise InvalidRequest(f"{len(labels)} labels for {len(seeds)} seeds: send none, one "
                                 "for all, or one per seed")
        h, w = model.runner.image_shape[1:]
        chunk = stream_chunks(len(seeds), request.chunk_size, self.generator.max_batch, h * w,
                              self.max_message_bytes)
        for start in range(0, len(seeds), chunk):
            _check_still_wanted(context)
            part = seeds[start:start + chunk]
            part_labels = labels[start:start + chunk] if len(labels) > 1 else labels
            result = await self.generator.generate(GenerationRequest(
                part, part_labels, model.name, fmt, context.time_remaining()))
            call.images += len(part)
            yield _response(result)

    async def ListModels(self, request, context):
        with self.metrics.track("ListModels"):
            return pb.ListModelsResponse(
                models=[self._info(m) for m in self.generator.registry])

    async def GetModelInfo(self, request, context):
        with self.metrics.track("GetModelInfo") as call:
            try:
                model = self.generator.registry.get(request.model)
                call.model = model.name
                return self._info(model)
            except Exception as exc:
                await abort(context, call, exc)

    def _info(self, model: ServedModel) -> pb.ModelInfo:
        meta = model.runner.metadata
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
        format=_PROTO_FORMAT[result.format], height=h, width=w)
    if result.format is Format.RAW:
        response.raw = result.images.tobytes()  # already contiguous N x 1 x H x W
        response.count = len(result.seeds)
    elif result.format is Format.PNG:
        response.png.extend(result.pngs)
    else:
        response.grid_png = result.grid_png
        response.grid_columns = result.grid_columns
    return response


# --- registration --------------------------------------------------------------------------------

class MalformedRequest:
    """What a request that is not a valid protobuf message decodes to (see `add_servicer`)."""

    def __init__(self, error: str):
        self.error = error


def add_servicer(add_to_server, servicer, server: grpc.aio.Server) -> None:
    """Register `servicer` as the generated `add_*_to_server` would, plus one thing: a request
    whose bytes are not a valid message is answered INVALID_ARGUMENT. (grpc.aio would answer
    UNKNOWN and log a traceback per bad frame, which a hostile client could use to flood the
    log.)"""
    recorder = _HandlerRecorder()
    add_to_server(servicer, recorder)
    handlers = {name: _decoding_safely(handler) for name, handler in recorder.handlers.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(recorder.service, handlers),))
    server.add_registered_method_handlers(recorder.service, handlers)


class _HandlerRecorder:
    """Stands in for the server to catch the method handlers a generated function registers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


def _decoding_safely(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer

    def safe_decode(data: bytes):
        try:
            return decode(data)
        except DecodeError as exc:
            return MalformedRequest(str(exc))

    async def refuse(request: MalformedRequest, context) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid message: {request.error}")

    if handler.unary_unary:
        answer = handler.unary_unary

        async def unary_unary(request, context):
            if isinstance(request, MalformedRequest):
                await refuse(request, context)
            return await answer(request, context)
        return handler._replace(request_deserializer=safe_decode, unary_unary=unary_unary)
    if handler.unary_stream:
        stream = handler.unary_stream

        async def unary_stream(request, context):
            if isinstance(request, MalformedRequest):
                await refuse(request, context)
            # aclosing: when grpc closes this generator, close the handler's at once too, so
            # its cleanup (metrics, the drain gate) runs now rather than at garbage collection.
            async with contextlib.aclosing(stream(request, context)) as responses:
                async for response in responses:
                    yield response
        return handler._replace(request_deserializer=safe_decode, unary_stream=unary_stream)
    raise TypeError(f"no request-streaming methods are served: {handler}")


def _check_still_wanted(context: grpc.aio.ServicerContext) -> None:
    """Do not start work nobody will read: the deadline passed or the caller cancelled."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the deadline passed before generation started")
    if context.cancelled():
        raise Cancelled("the call was cancelled")


async def abort(context: grpc.aio.ServicerContext, call, exc: Exception) -> None:
    """Record `exc`'s status on the metrics `call`, then end the RPC with it (abort raises)."""
    code = status_for(exc)
    call.code = code.name
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error")
        await context.abort(code, "internal error; the server log has the details")
    await context.abort(code, str(exc))
