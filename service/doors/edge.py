"""The edge: what every call of every API goes through, written once.

    class MyServicer(...):
        def __init__(self, edge: Edge): self.edge = edge

        @rpc("Generate", admit=True)
        async def Generate(self, request, context, call): ...   # the plane fills in `call`

`Edge.handling(name, admit)` is the part common to both transports: metrics
(`dcgan_request_duration_seconds` and the in-flight gauge, labelled by the RPC's name or the
HTTP route), admission (`admit=True` for calls that generate: refused while draining, counted
by the drain), cancellation (recorded as CANCELLED), and the status of whatever escapes
(`STATUS_FOR`; anything else is a bug: INTERNAL, with the detail logged, not sent). `@rpc`
(unary) and `@rpc_stream` (server-streaming) put it around a gRPC handler and end the call
with that status; `doors.http.route` puts it around an HTTP handler and answers with the same
status in HTTP's words (`HTTP_STATUS`). Every door uses it: the dcgan API, the Open Inference
Protocol over gRPC and REST, the image URLs.

`add_servicer` registers a servicer so that a request whose bytes are not a valid message is
answered INVALID_ARGUMENT (grpc.aio alone would answer UNKNOWN and log a traceback per bad
frame, which a hostile client could use to flood the log). Every method served is unary or
server-streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import grpc
from google.protobuf.message import DecodeError

from service.contract import ContractError
from service.doors.admission import CallGate
from service.errors import (DeadlineExceeded, DeviceUnavailable, InvalidRequest,
                            ModelLoadError, ModelNotFound, NotAllowed, Overloaded,
                            ShuttingDown)
from service.plane.calls import UNKNOWN_MODEL
from service.plane.metrics import Metrics
from service.plane.statistics import Statistics
from service.plane.tracing import Tracing

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ContractError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    DeviceUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    NotAllowed: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: Exception) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


# How each status reads over HTTP (google/rpc/code.proto's mapping): the REST edge answers
# with the same status the gRPC edges would, in HTTP's words.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


# gRPC statuses that mean the server failed (OpenTelemetry's RPC conventions): a span ends in
# error for these; a bad request or a missing model is the caller's and leaves it unset.
SERVER_ERRORS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}

# What a door says about a call for its trace, asked only when tracing is on:
# (span name, the headers or metadata that may carry a traceparent, attributes).
Traced = Callable[[], tuple[str, Mapping[str, str], dict]]


@dataclass
class Edge:
    """What every call needs from the server: where figures go, and who gets in."""

    metrics: Metrics
    gate: CallGate
    statistics: Statistics
    tracing: Tracing | None = None

    @contextlib.contextmanager
    def handling(self, name: str, admit: bool, traced: Traced | None = None):
        """Around one call of any transport: metrics, statistics, a trace span (`traced`, when
        tracing is on), admission (refused while draining), and the status of whatever
        escapes, recorded; the transport then answers with it."""
        with self.metrics.track(name) as call:
            if self.tracing is not None and traced is not None:
                call.trace = self.tracing.start_call(call.started, *traced())
            try:
                with self.gate.admitted() if admit else contextlib.nullcontext():
                    yield call
            # The caller cancelled: grpc cancels our task if we are awaiting a run, or closes
            # a streaming handler (GeneratorExit at its yield) if it waits to be read.
            except (asyncio.CancelledError, GeneratorExit):
                call.code = grpc.StatusCode.CANCELLED.name
                raise
            except Exception as exc:
                call.code = status_for(exc).name
                raise
            finally:
                if admit and call.model != UNKNOWN_MODEL and (call.ran or call.code != "OK"):
                    self.statistics.record_call(call)  # a generating call, on its model
                if call.trace is not None:
                    self._end_trace(call)

    def _end_trace(self, call) -> None:
        code = grpc.StatusCode[call.code]
        if call.http_status:  # an HTTP route's: its response's status
            status = {"http.response.status_code": call.http_status}
            failed = call.http_status >= 500
        elif call.trace.is_grpc:
            status, failed = {"rpc.grpc.status_code": code.value[0]}, code in SERVER_ERRORS
        else:  # an HTTP route's that ended in an error: the status it will answer
            http = HTTP_STATUS[code]
            status, failed = {"http.response.status_code": http}, http >= 500
        self.tracing.end_call(call.trace, call, status, failed)


def rpc(name: str, admit: bool = False):
    """Wrap a unary handler `(self, request, context, call)`; `self.edge` is an `Edge`, and
    `self.SERVICE` the gRPC service's full name."""
    def wrap(handler):
        @functools.wraps(handler)
        async def wrapped(self, request, context: grpc.aio.ServicerContext):
            try:
                with self.edge.handling(name, admit, _traced(self.SERVICE, name, context)
                                        ) as call:
                    _check_decoded(request)
                    return await handler(self, request, context, call)
            except Exception as exc:
                await _abort(context, exc)
        return wrapped
    return wrap


def rpc_stream(name: str, admit: bool = False):
    """Wrap a server-streaming handler (an async generator) as `rpc` wraps a unary one."""
    def wrap(handler):
        @functools.wraps(handler)
        async def wrapped(self, request, context: grpc.aio.ServicerContext):
            try:
                with self.edge.handling(name, admit, _traced(self.SERVICE, name, context)
                                        ) as call:
                    _check_decoded(request)
                    async with contextlib.aclosing(
                            handler(self, request, context, call)) as responses:
                        async for response in responses:
                            yield response
            except Exception as exc:
                await _abort(context, exc)
        return wrapped
    return wrap


def _traced(service: str, method: str, context: grpc.aio.ServicerContext) -> Traced:
    """A gRPC call's span: named and described as OpenTelemetry's RPC conventions say, its
    parent from the `traceparent` metadata."""
    return lambda: (f"{service}/{method}", dict(context.invocation_metadata() or ()),
                    {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the RPC with `exc`'s status (abort raises)."""
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error")
        await context.abort(code, "internal error; the server log has the details")
    await context.abort(code, str(exc))


# --- registration ----------------------------------------------------------------------------

class MalformedRequest:
    """What a request that is not a valid protobuf message decodes to (see `add_servicer`)."""

    def __init__(self, error: str):
        self.error = error


def _check_decoded(request) -> None:
    if isinstance(request, MalformedRequest):
        raise InvalidRequest(f"the request is not a valid message: {request.error}")


def add_servicer(add_to_server, servicer, server: grpc.aio.Server) -> None:
    """Register `servicer` as the generated `add_*_to_server` would, but with a request
    decoder that never raises: a malformed message reaches the `rpc` wrapper, which answers
    INVALID_ARGUMENT."""
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

    make = (grpc.unary_unary_rpc_method_handler if handler.unary_unary
            else grpc.unary_stream_rpc_method_handler)
    return make(handler.unary_unary or handler.unary_stream, request_deserializer=safe_decode,
                response_serializer=handler.response_serializer)
