"""The edge for gRPC: every call of every service on a port goes through `GrpcEdge`.

Every method's handler is wrapped once in `Edge.handling`, with a decoder that never raises
(grpc would answer UNKNOWN and log a traceback per bad frame), and each call's handler is
chosen when it arrives, before grpc reads its body: a caller without the token (for the
method's category, `CATEGORIES`) gets a request-streaming handler that never asks for the
body, so a refusal costs the same whatever is sent. The doors' handlers take `(request,
context, call)`.
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
# Every method served, by category (call.py, Admission); one missing here is metadata.
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


def receive_limit(max_images: int, latent_dim: int, max_message_bytes: int) -> int:
    """The largest message a valid request can need, within --max-message-bytes: 64 KiB of room
    and `max_images` latents of `latent_dim` float32s, each with a seed and a label (varints
    of at most 10 bytes)."""
    return min(max_message_bytes, (64 << 10) + max_images * (latent_dim * 4 + 2 * 10))


class GrpcEdge(grpc.GenericRpcHandler):
    """The servicers `add`ed to it, served on a port (`add_generic_rpc_handlers`), every call
    through `edge`."""

    def __init__(self, edge: Edge):
        self.edge = edge
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def add(self, add_to_server, servicer) -> None:
        """Serve `servicer` as the generated `add_*_to_server` would, through the edge."""
        recorder = _HandlerRecorder()
        add_to_server(servicer, recorder)
        for name, handler in recorder.handlers.items():
            method = f"/{recorder.service}/{name}"
            self._handlers[method] = _wrap(self.edge, method, handler)

    def service(self, details):
        """The handler of a call that has arrived, chosen before grpc reads its body (None:
        grpc answers UNIMPLEMENTED)."""
        pair = self._handlers.get(details.method)
        if pair is None or not self.edge.asks_for_token:
            return pair and pair[0]
        sent = next((v for k, v in details.invocation_metadata or () if k == "authorization"),
                    None)
        category = CATEGORIES.get(details.method, Category.METADATA)
        return pair[0] if self.edge.authorized(category, sent) else pair[1]


class _HandlerRecorder:
    """Stands in for the server to catch the handlers a generated function registers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


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
            raise InvalidRequest(f"the request is not a valid message: {request}")
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


class MalformedRequest(str):
    """What a request that is not a valid protobuf message decodes to: the parser's error."""


def _safe(decode):
    def safe_decode(data: bytes):
        try:
            return decode(data)
        except DecodeError as exc:
            return MalformedRequest(exc)
    return decode and safe_decode
