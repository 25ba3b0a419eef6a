"""The HTTP front door: one aiohttp app on the gRPC server's event loop, on its own port.

Two sets of routes share it: the Open Inference Protocol over REST (`http_v2.py`) and the image
URLs with the playground (`http_images.py`); `/openapi.json` describes both (`openapi.py`),
from the same declarations the handlers are wrapped with here. The server puts them together
(`process/server.py`).

A request's path: aiohttp -> `door` (bearer token, in-flight limit, aiohttp's own refusals as
JSON) -> `@route` (the edge's `handling`: metrics, admission and drain, errors -> status; the
query keys the route takes; the caller's timeout) -> a handler (a converter) -> the data plane.
Errors are `{"error": "..."}` with the HTTP status of the gRPC code the other doors would
answer (`edge.HTTP_STATUS`). A caller that disconnects cancels its handler (the app runs with
aiohttp's handler cancellation), so its queued images are dropped unrun, as for gRPC.

Deadlines: a `Request-Timeout` header or `?timeout=` (seconds), or, in an infer body, Triton's
`parameters.timeout` (microseconds).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import math

from aiohttp import web

from service.doors.edge import HTTP_STATUS, status_for
from service.errors import DeadlineExceeded, InvalidRequest, Overloaded

log = logging.getLogger(__name__)

# The request's timeout in seconds (or None), parsed once by `route` for its handler.
TIMEOUT = web.RequestKey("dcgan.timeout", float)


def route(name: str, admit: bool = False, query: tuple[str, ...] = (), open: bool = False,
          cacheable: bool = False):
    """Wrap a handler `(self, request, call) -> web.Response` in the edge, as `edge.rpc` wraps
    a gRPC one. `name` (method and route) is the metrics' `rpc` label; `query` the query keys
    the handler reads (any other is refused, so a typo is not silently ignored); `open` needs
    no bearer token; `cacheable` answers 304 to a matching If-None-Match. `openapi.py`
    documents each route from these same values."""
    allowed = frozenset(query) | ({"timeout"} if admit else frozenset())

    def wrap(handler):
        @functools.wraps(handler)
        async def wrapped(self, request: web.Request) -> web.StreamResponse:
            try:
                with self.edge.handling(name, admit, _traced(name, request)) as call:
                    unknown = sorted(set(request.query) - allowed)
                    if unknown:
                        raise InvalidRequest(
                            f"unknown query parameter {unknown[0]!r}: {request.path} takes "
                            f"{', '.join(sorted(allowed)) or 'none'}")
                    request[TIMEOUT] = timeout = _timeout(request)
                    if timeout is None:
                        response = await handler(self, request, call)
                    else:
                        try:
                            response = await asyncio.wait_for(handler(self, request, call),
                                                              timeout)
                        except asyncio.TimeoutError:
                            raise DeadlineExceeded("the request's timeout passed before its "
                                                   "images were ready") from None
                    call.http_status = response.status
                    return response
            except Exception as exc:
                return error_response(exc)
        wrapped.route_name, wrapped.query, wrapped.open = name, tuple(sorted(allowed)), open
        wrapped.cacheable = cacheable
        return wrapped
    return wrap


def _traced(name: str, request: web.Request):
    """An HTTP call's span: named "{method} {route}" and described as OpenTelemetry's HTTP
    conventions say, its parent from the `traceparent` header."""
    return lambda: (name, request.headers, {
        "http.request.method": request.method, "http.route": name.split(" ", 1)[1],
        "url.path": request.path, "url.scheme": request.scheme})


def error_response(exc: Exception) -> web.Response:
    code = status_for(exc)
    message = str(exc)
    if code.name == "INTERNAL":
        log.exception("internal error")
        message = "internal error; the server log has the details"
    return error(getattr(exc, "http_status", None) or HTTP_STATUS[code], message)


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def door(token: str, max_in_flight: int):
    """What every request meets first: the bearer token (routes declared `open` need none: the
    page, the API description and health, as gRPC health), the in-flight limit (beyond it,
    refused at once, as gRPC's `maximum_concurrent_rpcs` does), and aiohttp's own refusals as
    JSON."""
    expected = f"Bearer {token}".encode()
    in_flight = 0

    @web.middleware
    async def door(request: web.Request, handler):
        nonlocal in_flight
        if token and not getattr(request.match_info.handler, "open", False):
            sent = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(sent, expected):
                return error(401, "missing or wrong bearer token: send the header "
                             "'Authorization: Bearer <token>'", **{"WWW-Authenticate": "Bearer"})
        if in_flight >= max_in_flight:
            return error_response(Overloaded(
                f"{in_flight} HTTP requests are being handled, the most this server takes "
                "(--max-in-flight): retry shortly"))
        in_flight += 1
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error(404, f"no route {request.path!r}: see /openapi.json for the routes")
        except web.HTTPMethodNotAllowed as exc:
            return error(405, f"{request.method} is not allowed on {request.path!r}: use "
                         f"{' or '.join(sorted(exc.allowed_methods))}",
                         Allow=",".join(sorted(exc.allowed_methods)))
        finally:
            in_flight -= 1
    return door


def _timeout(request: web.Request) -> float | None:
    """Seconds the caller will wait, from the `Request-Timeout` header or `?timeout=`."""
    text = request.headers.get("Request-Timeout") or request.query.get("timeout")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise InvalidRequest(f"timeout {text!r} is not a positive number of seconds")
    return seconds
