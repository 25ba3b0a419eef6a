"""The edge for HTTP: every route goes through `route`, as every gRPC call goes through
`GrpcEdge`: the token (before any of the body is read), admission by the route's category,
the query keys the route takes (any other is refused, so a typo is not ignored), the
caller's deadline (`Request-Timeout` or `?timeout=` seconds: the call is cancelled when it
passes), then the door's handler, which reads a body with `read_body` (bounded in size and in
the time the caller may take). Errors are `{"error": "..."}` with the HTTP status of the gRPC
code the other doors answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from service.edge.call import Category, Edge, http_status_for, status_for
from service.errors import DeadlineExceeded, InvalidRequest, SlowBody, TooLarge

log = logging.getLogger(__name__)

EDGE = web.AppKey("dcgan.edge", Edge)
# A number as JSON (and the API document) writes one: no spaces, no "inf", no "1_0".
NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
DENIED = "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'"
READ_TIMEOUT = web.AppKey("dcgan.read_timeout", float)


def route(name: str, category: Category, query: tuple[str, ...] = (),
          cacheable: bool = False):
    """Wrap a door's handler `(self, request, call) -> web.Response`. `name` ("METHOD path")
    is the metrics' `rpc` label and where `http_app` mounts it; `cacheable` routes answer 304
    to a matching If-None-Match (the handler's doing), and the document says so."""
    allowed = frozenset(query) | ({"timeout"} if category is Category.INFERENCE else frozenset())

    def wrap(handler):
        @functools.wraps(handler)
        async def wrapped(self, request: web.Request) -> web.StreamResponse:
            edge = request.app[EDGE]
            try:
                authorized = edge.authorized(category, request.headers.get("Authorization"))
                with edge.handling(name, category, "" if authorized else DENIED,
                                   _traced(name, request)) as call:
                    unknown = sorted(set(request.query) - allowed)
                    if unknown:
                        raise InvalidRequest(
                            f"unknown query parameter {unknown[0]!r}: {request.path} takes "
                            f"{', '.join(sorted(allowed)) or 'none'}")
                    call.expire_in(_timeout(request))
                    if call.deadline is None:
                        response = await handler(self, request, call)
                    else:
                        try:
                            async with asyncio.timeout(call.time_left()):
                                response = await handler(self, request, call)
                        except TimeoutError:
                            raise DeadlineExceeded("the request's timeout passed before its "
                                                   "images were ready") from None
                    call.http_status = response.status
                    return response
            except Exception as exc:
                return error_response(exc)
        wrapped.route, wrapped.category, wrapped.query = name, category, tuple(sorted(allowed))
        wrapped.cacheable = cacheable
        return wrapped
    return wrap


def mounted(door) -> list[tuple[str, str, object]]:
    """(method, path, handler) of each `route` of `door`, in the order they are declared
    (aiohttp matches in that order: /v2/models/stats before /v2/models/{name})."""
    handlers = [getattr(door, name) for name in vars(type(door))]
    return [(*handler.route.split(" ", 1), handler) for handler in handlers
            if hasattr(handler, "route")]


def _traced(name: str, request: web.Request):
    """An HTTP call's span: named "{method} {route}" as OpenTelemetry's HTTP conventions say,
    its parent from the `traceparent` header."""
    return lambda: (name, request.headers, {
        "http.request.method": request.method, "http.route": name.split(" ", 1)[1],
        "url.path": request.path, "url.scheme": request.scheme})


async def read_body(request: web.Request, limit: int,
                    fix: str = "send fewer seeds or latents per request") -> bytes:
    """The whole body (decompressed), refused past `limit` bytes before it is all read (the
    message ends with `fix`), or when the caller takes longer to send it than
    --read-timeout."""
    too_large = TooLarge(f"the body is larger than {limit} bytes, more than any valid request "
                         f"needs (and --max-message-bytes allows): {fix}")
    if (request.content_length or 0) > limit:
        raise too_large
    body = bytearray()
    # A body that has all arrived (most do, with their headers) needs no timer.
    timeout = None if request.content.is_eof() else request.app[READ_TIMEOUT]
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:  # chunked or compressed bodies have no length up front
                    raise too_large
    except TimeoutError:
        raise SlowBody(f"the body took longer than {request.app[READ_TIMEOUT]:g} s to arrive "
                       "(--read-timeout): send it at once") from None
    except (web.RequestPayloadError, ValueError) as exc:  # aiohttp decodes gzip/deflate
        raise InvalidRequest(f"the body could not be read: {exc}; send it uncompressed or "
                             "as valid gzip/deflate with its Content-Encoding") from None
    return bytes(body)


def error_response(exc: Exception) -> web.Response:
    message = str(exc)
    if status_for(exc).name == "INTERNAL":
        log.exception("internal error")
        message = "internal error; the server log has the details"
    response = error(http_status_for(exc), message)
    if response.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, SlowBody):  # what is left of the body is not worth reading
        response.force_close()
    return response


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def aiohttp_refusals(request: web.Request, handler):
    """aiohttp's own refusals (no route, a method a route does not take) in JSON."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error(404, f"no route {request.path!r}: see /openapi.json for the routes")
    except web.HTTPMethodNotAllowed as exc:
        return error(405, f"{request.method} is not allowed on {request.path!r}: use "
                     f"{' or '.join(sorted(exc.allowed_methods))}",
                     Allow=",".join(sorted(exc.allowed_methods)))


def drop_malformed_requests(record: logging.LogRecord) -> bool:
    """A filter for aiohttp's server log: aiohttp answers a request it cannot parse with 400
    and logs the caller's mistake at ERROR with a traceback, which any caller could use to
    flood the log. Those records go; the server's own errors stay."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, HttpProcessingError)


def _timeout(request: web.Request) -> float | None:
    """Seconds the caller will wait, from the `Request-Timeout` header or `?timeout=`."""
    text = request.headers.get("Request-Timeout") or request.query.get("timeout")
    if text is None:
        return None
    seconds = float(text) if NUMBER.fullmatch(text) else math.nan
    if not 0 < seconds < math.inf:
        raise InvalidRequest(f"timeout {text!r} is not a positive number of seconds")
    return seconds
