"""The edge for gRPC: one interceptor that every call of every service on a port goes through.

It decides before grpc reads the request. The method's category (`CATEGORIES`) says whether
the caller needs the bearer token; a caller without it gets a request-streaming handler that
never asks for the body, so grpc never reads or parses it: a refusal costs the same whatever
the caller sends. Everyone else gets the method's own handler, wrapped once (at its first
call) in `Edge.handling`, with a request decoder that never raises (grpc alone would answer
UNKNOWN and log a traceback per bad frame). The doors' handlers take `(request, context,
call)`; health and reflection keep their own `(request, context)`.

The receive limit follows from the largest valid request (`receive_limit`), so a caller with
the token cannot make the server hold much more than a valid request either.
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import grpc
from google.protobuf.message import DecodeError

from service.edge.call import Category, Edge, status_for
from service.errors import InvalidRequest

log = logging.getLogger(__name__)

_DCGAN, _V2 = "/dcgan.v1.GeneratorService/", "/inference.GRPCInferenceService/"
# Every method served, by category (admission.py); one missing here is metadata.
CATEGORIES: dict[str, Category] = {
    **{_DCGAN + m: Category.INFERENCE for m in ("Generate", "GenerateStream", "Interpolate")},
    **{_V2 + m: Category.HEALTH for m in ("ServerLive", "ServerReady")},
    _V2 + "ModelInfer": Category.INFERENCE,
    _V2 + "ModelStatistics": Category.STATISTICS,
    **{_V2 + m: Category.REPOSITORY for m in ("RepositoryIndex", "RepositoryModelLoad",
                                              "RepositoryModelUnload")},
    "/grpc.health.v1.Health/Check": Category.HEALTH,
    "/grpc.health.v1.Health/Watch": Category.WATCH,
}

# What a field of a valid request can take on the wire: a float32 in `bytes` or packed, a
# varint seed or label (at most 10 bytes), and room for everything else.
_FLOAT_BYTES, _VARINT_BYTES, _ROOM = 4, 10, 64 << 10


def receive_limit(max_images: int, latent_dim: int, max_message_bytes: int) -> int:
    """The largest message a valid request can need: `max_images` latents of `latent_dim`
    floats (the biggest request) with a seed and a label each, within --max-message-bytes."""
    valid = _ROOM + max_images * (latent_dim * _FLOAT_BYTES + 2 * _VARINT_BYTES)
    return min(max_message_bytes, valid)


class GrpcEdge(grpc.aio.ServerInterceptor):
    def __init__(self, edge: Edge):
        self.edge = edge
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details):
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None  # grpc answers UNIMPLEMENTED
            wrapped = self._handlers[details.method] = _wrap(self.edge, details.method,
                                                             handler)
        category = CATEGORIES.get(details.method, Category.METADATA)
        if category.open or self.edge.authorized(category, _credentials(details)):
            return wrapped[0]
        return wrapped[1]


def _credentials(details) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return value
    return None


def _wrap(edge: Edge, method: str, handler: grpc.RpcMethodHandler):
    """(the handler in the edge, the refusal of a caller without the token)."""
    service, name = method[1:].rsplit("/", 1)
    category = CATEGORIES.get(method, Category.METADATA)
    behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                or handler.stream_stream)
    takes_call = "call" in inspect.signature(behavior).parameters

    def handling(context, denied: str = ""):
        traced = lambda: (f"{service}/{name}", dict(context.invocation_metadata() or ()),  # noqa: E731
                          {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})
        return edge.handling(name, category, denied, traced)

    def arguments(request, context, call) -> tuple:
        call.expire_in(context.time_remaining())
        if isinstance(request, MalformedRequest):
            raise InvalidRequest(f"the request is not a valid message: {request.error}")
        return (request, context, call) if takes_call else (request, context)

    if inspect.isasyncgenfunction(behavior):
        async def handle(request, context):
            try:
                with handling(context) as call:
                    async with contextlib.aclosing(
                            behavior(*arguments(request, context, call))) as responses:
                        async for response in responses:
                            yield response
            except Exception as exc:
                await _abort(context, exc)
    else:
        async def handle(request, context):
            try:
                with handling(context) as call:
                    return await behavior(*arguments(request, context, call))
            except Exception as exc:
                await _abort(context, exc)

    async def refuse(requests, context):  # never reads `requests`: the body stays unread
        try:
            with handling(context, denied="missing or wrong bearer token: send metadata "
                                          "'authorization: Bearer <token>'"):
                pass
        except Exception as exc:
            await _abort(context, exc)

    streaming = (handler.request_streaming, handler.response_streaming)
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    refusal = make[True, handler.response_streaming](
        refuse, response_serializer=handler.response_serializer)
    return (make[streaming](handle, request_deserializer=_safe(handler.request_deserializer),
                            response_serializer=handler.response_serializer), refusal)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the RPC with `exc`'s status (abort raises)."""
    if context.done():  # the handler ended it itself
        raise exc
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error")
        await context.abort(code, "internal error; the server log has the details")
    await context.abort(code, str(exc))


class MalformedRequest:
    """What a request that is not a valid protobuf message decodes to."""

    def __init__(self, error: str):
        self.error = error


def _safe(decode):
    if decode is None:
        return None

    def safe_decode(data: bytes):
        try:
            return decode(data)
        except DecodeError as exc:
            return MalformedRequest(str(exc))
    return safe_decode
