"""The gRPC edge: protobuf in -> `generation.Generator` -> protobuf out, and errors -> status codes.

This is the only module that turns exceptions into gRPC status codes (`STATUS_FOR`); anything
not listed there is a bug and becomes INTERNAL with the detail logged, not sent.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import grpc

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
    def __init__(self, generator: Generator, metrics: Metrics, max_message_bytes: int):
        self.generator = generator
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self._active = 0
        self._changed = threading.Condition()
        self._draining = False
        self._last_call = time.monotonic()

    @contextmanager
    def _admitted(self):
        """Count a generation call in; refuse it once draining has begun."""
        with self._changed:
            self._last_call = time.monotonic()
            if self._draining:
                raise ShuttingDown("the server is shutting down: retry on another replica")
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                # Its caller may send the next call at once: the quiet period counts from here.
                self._last_call = time.monotonic()
                self._changed.notify_all()

    def drain(self, timeout: float, quiet: float = 0.1, max_quiet_wait: float = 2.0) -> bool:
        """Refuse new generation calls and wait for the admitted ones; True if all finished.

        Then keep refusing until no call has arrived or finished for `quiet` seconds (at most
        `max_quiet_wait`): a caller whose call just finished may already have sent the next
        one, and grpc cancels, rather than answers, calls it holds when the server stops.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            self._draining = True
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            drained = self._active == 0
        quiet_until = min(deadline, time.monotonic() + max_quiet_wait)
        while (time.monotonic() - self._last_call < quiet
               and time.monotonic() < quiet_until):
            time.sleep(quiet / 4)
        return drained

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext):
        with self.metrics.track("Generate") as call:
            try:
                with self._admitted():
                    return self._generate(request, context, call)
            except Exception as exc:
                _abort(context, call, exc)

    def _generate(self, request: pb.GenerateRequest, context, call) -> pb.GenerateResponse:
        fmt = _format(request.format)
        model = self.generator.registry.get(request.model)
        call.model = model.name
        self.metrics.images_per_request.labels(model=model.name).observe(len(request.seeds))
        _check_still_wanted(context)
        result = self.generator.generate(GenerationRequest(
            request.seeds, request.labels, model.name, fmt, context.time_remaining()))
        call.images = len(result.seeds)
        return _response(result)

    def GenerateStream(self, request: pb.GenerateStreamRequest, context: grpc.ServicerContext):
        with self.metrics.track("GenerateStream") as call:
            try:
                with self._admitted():
                    yield from self._generate_stream(request, context, call)
            except GeneratorExit:  # grpc closes the stream this way when the caller cancels
                call.code = grpc.StatusCode.CANCELLED.name
                raise
            except Exception as exc:
                _abort(context, call, exc)

    def _generate_stream(self, request: pb.GenerateStreamRequest, context, call):
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
            result = self.generator.generate(GenerationRequest(
                part, part_labels, model.name, fmt, context.time_remaining()))
            call.images += len(part)
            yield _response(result)

    def ListModels(self, request, context):
        with self.metrics.track("ListModels"):
            return pb.ListModelsResponse(
                models=[self._info(m) for m in self.generator.registry])

    def GetModelInfo(self, request, context):
        with self.metrics.track("GetModelInfo") as call:
            try:
                model = self.generator.registry.get(request.model)
                call.model = model.name
                return self._info(model)
            except Exception as exc:
                _abort(context, call, exc)

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


def _check_still_wanted(context: grpc.ServicerContext) -> None:
    """Do not start work nobody will read: the deadline passed or the caller cancelled."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the deadline passed before generation started")
    if not context.is_active():
        raise Cancelled("the call was cancelled")


def _abort(context: grpc.ServicerContext, call, exc: Exception) -> None:
    """Record `exc`'s status on the metrics `call`, then end the RPC with it (abort raises)."""
    code = status_for(exc)
    call.code = code.name
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error")
        context.abort(code, "internal error; the server log has the details")
    context.abort(code, str(exc))
