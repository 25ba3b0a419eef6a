"""The HTTP front door: the Open Inference Protocol over REST, image URLs, the playground.

Served by aiohttp on the gRPC server's own event loop (docs/decisions.md says why aiohttp),
on its own port (`--http-port`). The routes:

    GET  /                                      the playground page (static/playground.html)
    GET  /openapi.json                          this API, described (`openapi.py`)
    GET  /v2/health/live, /v2/health/ready      open to all, like gRPC health
    GET  /v2                                    server metadata
    GET  /v2/models/{name}[/versions/{v}]       model metadata        (+ /ready, /config)
    POST /v2/models/{name}[/versions/{v}]/infer inference: JSON tensors, or Triton's binary
                                                tensor extension (Inference-Header-Content-Length)
    GET  /v1/models                             the served models, for pages and scripts
    GET  /v1/models/{name}/images/{seed}.png    one image  (?label=, ?version=)
    GET  /v1/models/{name}/grid.png?seeds=0-99  a grid     (?label=, ?version=, ?psi=)
    GET  /v1/models/{name}/interpolation.png?a=3&b=13&frames=16   a strip (.gif: animated)

A request's path: aiohttp -> `_door` (bearer token, in-flight limit, errors aiohttp raises
itself) -> `@route` (the edge's `handling`: metrics with the route as the `rpc` label,
admission and drain, errors -> status) -> a handler here -> the same `Generator` the gRPC
APIs use, so the same seeds give the same pixels. Errors are `{"error": "..."}` with the HTTP
status of the gRPC code the other APIs would answer (`edge.HTTP_STATUS`).

Deadlines: a `Request-Timeout` header or `?timeout=` (seconds), or, in an infer body, Triton's
`parameters.timeout` (microseconds). Image URLs answer with a strong ETag and a long-lived
Cache-Control, and 304 to a matching If-None-Match, without generating anything.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import math
from importlib import resources
from typing import Any

from aiohttp import web

from service.contract import LATENT_RULE, SEED_RULE, labels_for, seed_ranges
from service.edge import HTTP_STATUS, Edge, status_for
from service.errors import DeadlineExceeded, InvalidRequest, Overloaded
from service.generation import Format, GenerationRequest, Generator, ServedModel, Walk
from service.imaging import encode_gif
from service.inference_protocol import (PLATFORM, SERVER_NAME, InputTensor,
                                        generation_request, input_specs, output_specs,
                                        output_tensors, resolve_model, server_version,
                                        wanted_outputs)
from service.openapi import openapi_document

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
BINARY_HEADER = "Inference-Header-Content-Length"  # Triton's binary tensor data extension
OPEN_PATHS = frozenset({"/", "/openapi.json", "/v2/health/live", "/v2/health/ready"})
# How long a browser or CDN may keep an image: a year when the URL names the model version
# (those pixels never change), a day otherwise (a reload may bring a new version).
CACHE_PINNED = "public, max-age=31536000, immutable"
CACHE_UNPINNED = "public, max-age=86400"
# The request's timeout in seconds (or None), parsed once by `route` for its handler.
TIMEOUT = web.RequestKey("dcgan.timeout", float)


def build_app(generator: Generator, edge: Edge, token: str, max_in_flight: int,
              max_body_bytes: int) -> web.Application:
    front = HttpFrontDoor(generator, edge)
    app = web.Application(client_max_size=max_body_bytes,
                          middlewares=[_door(token, max_in_flight)])
    for method, path, handler in front.routes():
        app.router.add_route(method, path, handler)
    return app


def route(name: str, admit: bool = False):
    """Wrap a handler `(self, request, call) -> web.Response` in the edge, as `edge.rpc` wraps
    a gRPC one; `name` (method and route) is the metrics' `rpc` label."""
    def wrap(handler):
        @functools.wraps(handler)
        async def wrapped(self, request: web.Request) -> web.StreamResponse:
            try:
                with self.edge.handling(name, admit) as call:
                    request[TIMEOUT] = timeout = _timeout(request)
                    if timeout is None:
                        return await handler(self, request, call)
                    try:
                        return await asyncio.wait_for(handler(self, request, call), timeout)
                    except asyncio.TimeoutError:
                        raise DeadlineExceeded("the request's timeout passed before its "
                                               "images were ready") from None
            except Exception as exc:
                return error_response(exc)
        wrapped.route_name = name
        return wrapped
    return wrap


def error_response(exc: Exception) -> web.Response:
    code = status_for(exc)
    message = str(exc)
    if code.name == "INTERNAL":
        log.exception("internal error")
        message = "internal error; the server log has the details"
    return _error(getattr(exc, "http_status", None) or HTTP_STATUS[code], message)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _door(token: str, max_in_flight: int):
    """What every request meets first: the bearer token (health, the page and the API
    description stay open, as gRPC health does), the in-flight limit (beyond it, refused at
    once, as gRPC's `maximum_concurrent_rpcs` does), and aiohttp's own refusals as JSON."""
    expected = f"Bearer {token}".encode()
    in_flight = 0

    @web.middleware
    async def door(request: web.Request, handler):
        nonlocal in_flight
        if token and request.path not in OPEN_PATHS:
            sent = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(sent, expected):
                return _error(401, "missing or wrong bearer token: send the header "
                              "'Authorization: Bearer <token>'", **{"WWW-Authenticate": "Bearer"})
        if in_flight >= max_in_flight:
            return error_response(Overloaded(
                f"{in_flight} HTTP requests are being handled, the most this server takes "
                "(--max-in-flight): retry shortly"))
        in_flight += 1
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error(404, f"no route {request.path!r}: see /openapi.json for the routes")
        except web.HTTPMethodNotAllowed as exc:
            return _error(405, f"{request.method} is not allowed on {request.path!r}: use "
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


class HttpFrontDoor:
    def __init__(self, generator: Generator, edge: Edge):
        self.generator = generator
        self.edge = edge
        self.version = server_version()
        # Both fixed for the server's life: read and built once, not per request.
        self.page = resources.files("service").joinpath("static/playground.html").read_bytes()
        self.api_document = openapi_document(self.version, generator.max_batch)

    def routes(self) -> list[tuple[str, str, Any]]:
        """(method, path, handler) of every route; `openapi.py` describes the same list."""
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        table = [("GET", "/", self.playground), ("GET", "/openapi.json", self.openapi),
                 ("GET", "/v2/health/live", self.live), ("GET", "/v2/health/ready", self.ready),
                 ("GET", "/v2", self.server_metadata)]
        for prefix in (model, versioned):
            table += [("GET", prefix, self.model_metadata),
                      ("GET", prefix + "/ready", self.model_ready),
                      ("GET", prefix + "/config", self.model_config),
                      ("POST", prefix + "/infer", self.infer)]
        table += [("GET", "/v1/models", self.list_models),
                  ("GET", "/v1/models/{name}/images/{seed}.png", self.image),
                  ("GET", "/v1/models/{name}/grid.png", self.grid),
                  ("GET", "/v1/models/{name}/interpolation.png", self.interpolation_strip),
                  ("GET", "/v1/models/{name}/interpolation.gif", self.interpolation_gif)]
        return table

    # --- pages --------------------------------------------------------------------------------

    @route("GET /")
    async def playground(self, request, call):
        return web.Response(body=self.page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    @route("GET /openapi.json")
    async def openapi(self, request, call):
        return web.json_response(self.api_document)

    # --- the Open Inference Protocol: health and metadata --------------------------------------

    @route("GET /v2/health/live")
    async def live(self, request, call):
        return web.json_response({"live": True})

    @route("GET /v2/health/ready")
    async def ready(self, request, call):
        ready = not self.edge.gate.draining
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    @route("GET /v2")
    async def server_metadata(self, request, call):
        return web.json_response({"name": SERVER_NAME, "version": self.version,
                                  "extensions": ["binary_tensor_data"]})

    @route("GET /v2/models/{name}")
    async def model_metadata(self, request, call):
        model = self._model(request, call)
        return web.json_response({
            "name": model.name, "versions": [model.metadata.version], "platform": PLATFORM,
            "inputs": [_spec(s) for s in input_specs(model)],
            "outputs": [_spec(s) for s in output_specs(model)]})

    @route("GET /v2/models/{name}/ready")
    async def model_ready(self, request, call):
        self._model(request, call)  # an unknown model is a 404, as Triton and KServe answer
        ready = not self.edge.gate.draining
        return web.json_response({"name": request.match_info["name"], "ready": ready},
                                 status=200 if ready else 503)

    @route("GET /v2/models/{name}/config")
    async def model_config(self, request, call):
        """Triton's model configuration, as `tritonclient`'s get_model_config reads it."""
        model = self._model(request, call)
        return web.json_response({
            "name": model.name, "platform": PLATFORM, "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": [{"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": s.shape,
                       "optional": s.optional} for s in input_specs(model)],
            "output": [{"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": s.shape}
                       for s in output_specs(model)]})

    # --- the Open Inference Protocol: inference -------------------------------------------------

    @route("POST /v2/models/{name}/infer", admit=True)
    async def infer(self, request, call):
        model = self._model(request, call)
        header, binary = await _read_infer_body(request)
        inputs = _input_tensors(header, binary)
        outputs = header.get("outputs") or []
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise InvalidRequest("'outputs' must be a list of objects with a 'name'")
        wanted = wanted_outputs([str(o.get("name", "")) for o in outputs], model)
        parameters = _parameters(header, "the request")
        as_binary = {str(o.get("name")) for o in outputs
                     if _parameters(o, "an output").get("binary_data", False)}
        if parameters.get("binary_data_output", False):
            as_binary = set(wanted)
        timeout = request[TIMEOUT]
        if "timeout" in parameters:  # Triton's, in microseconds
            timeout = min(timeout or math.inf, _microseconds(parameters["timeout"]))
        generation = generation_request(inputs, parameters, timeout)
        call.kind = generation.kind.value
        result = await self.generator.generate(model, generation)
        call.images = len(result.images)
        self.edge.metrics.observe_request_size(model.name, call.images)
        return _infer_response(header, result, wanted, as_binary)

    # --- image URLs ---------------------------------------------------------------------------

    @route("GET /v1/models")
    async def list_models(self, request, call):
        return web.json_response({"models": [_model_info(m, self.generator.max_batch)
                                             for m in self.generator.registry]})

    @route("GET /v1/models/{name}/images/{seed}.png", admit=True)
    async def image(self, request, call):
        text = request.match_info["seed"]
        try:
            [(seed, last)] = seed_ranges([text])
            if seed != last:
                raise ValueError
        except ValueError:
            raise InvalidRequest(f"{text!r} is not a seed: use a number 0..2**64-1, e.g. "
                                 "/images/7.png") from None
        return await self._png(request, call, [(seed, seed)], Format.PNG)

    @route("GET /v1/models/{name}/grid.png", admit=True)
    async def grid(self, request, call):
        text = request.query.get("seeds", "")
        if not text:
            raise InvalidRequest("?seeds= is missing: e.g. grid.png?seeds=0-15 or seeds=3,9,20-22")
        try:
            ranges = seed_ranges([text])
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return await self._png(request, call, ranges, Format.PNG_GRID)

    @route("GET /v1/models/{name}/interpolation.png", admit=True)
    async def interpolation_strip(self, request, call):
        return await self._interpolation(request, call, gif=False)

    @route("GET /v1/models/{name}/interpolation.gif", admit=True)
    async def interpolation_gif(self, request, call):
        return await self._interpolation(request, call, gif=True)

    async def _interpolation(self, request, call, gif: bool):
        """Frames from seed ?a= to seed ?b= (?frames=, ?method=slerp|lerp): one strip PNG, or
        a looping GIF."""
        walk = Walk(_int_query(request, "a"), _int_query(request, "b"),
                    _int_query(request, "frames", 16),
                    request.query.get("method", "slerp"))
        return await self._picture(request, call, walk, Format.RAW if gif else Format.PNG_GRID,
                                   gif=gif)

    async def _png(self, request, call, ranges: list[tuple[int, int]], fmt: Format):
        count = sum(last - first + 1 for first, last in ranges)  # before listing any seed
        if count > self.generator.max_batch:
            raise InvalidRequest(f"{count} seeds in one request; this server allows at most "
                                 f"{self.generator.max_batch}: ask for fewer")
        return await self._picture(request, call, ranges, fmt)

    async def _picture(self, request, call, what: list[tuple[int, int]] | Walk, fmt: Format,
                       gif: bool = False):
        """A cacheable picture of seeds (ranges) or of an interpolation (a Walk)."""
        model = self._model(request, call)
        labels = _label(request)
        psi = _psi_query(request)
        if not isinstance(what, Walk):
            labels_for([0], labels, model.metadata.num_classes, f"model {model.name!r}")
        # The pixels depend only on these, so they name the response: a cache may keep it.
        key = json.dumps([model.name, model.metadata.version, SEED_RULE, LATENT_RULE, fmt.value,
                          gif, what if not isinstance(what, Walk) else vars(what), labels, psi])
        etag = '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": CACHE_PINNED if request.query.get("version")
                   else CACHE_UNPINNED}
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        if isinstance(what, Walk):
            generation = GenerationRequest(labels=labels, format=fmt,
                                           timeout=request[TIMEOUT], psi=psi, walk=what)
        else:
            seeds = [seed for first, last in what for seed in range(first, last + 1)]
            generation = GenerationRequest(seeds, labels, fmt, request[TIMEOUT], psi)
        call.kind = generation.kind.value
        result = await self.generator.generate(model, generation)
        call.images = len(result.images)
        self.edge.metrics.observe_request_size(model.name, call.images)
        if result.latent_rule:
            headers["Latent-Rule"] = result.latent_rule
        if gif:
            body = await asyncio.get_running_loop().run_in_executor(
                self.generator.encoder, encode_gif, result.images)
            return web.Response(body=body, content_type="image/gif", headers=headers)
        body = result.pngs[0] if fmt is Format.PNG else result.grid_png
        return web.Response(body=body, content_type="image/png", headers=headers)

    def _model(self, request: web.Request, call) -> ServedModel:
        version = request.match_info.get("version") or request.query.get("version", "")
        model = resolve_model(self.generator, request.match_info["name"], version)
        call.model = model.name
        return model


# --- conversions ------------------------------------------------------------------------------

def _spec(spec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}


def _model_info(model: ServedModel, max_batch: int) -> dict:
    meta = model.metadata
    return {"name": model.name, "version": meta.version, "default": model.is_default,
            "arch": meta.arch, "dataset": meta.dataset, "num_classes": meta.num_classes,
            "class_names": list(meta.class_names), "height": meta.image_shape[1],
            "width": meta.image_shape[2], "max_batch": max_batch, "seed_rule": SEED_RULE}


def _label(request: web.Request) -> list[int]:
    text = request.query.get("label")
    if text is None or text == "":
        return []
    try:
        return [int(text)]
    except ValueError:
        raise InvalidRequest(f"label {text!r} is not a class number") from None


def _int_query(request: web.Request, name: str, default: int | None = None) -> int:
    text = request.query.get(name)
    if text is None and default is not None:
        return default
    try:
        value = int(text)
        if value < 0:
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise InvalidRequest(f"?{name}= {'is missing' if text is None else repr(text)}: "
                             "send a whole number, e.g. ?a=3&b=13&frames=16") from None


def _psi_query(request: web.Request) -> float:
    text = request.query.get("psi", "1")
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"psi {text!r} is not a number in (0, 1]") from None


def _etags(header: str) -> set[str]:
    return {tag.strip() for tag in header.split(",")} if header else set()


def _microseconds(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidRequest(f"parameters.timeout {value!r} is not a positive number of "
                             "microseconds")
    return value / 1e6


def _parameters(obj: dict, where: str) -> dict:
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"'parameters' of {where} must be an object")
    return parameters


async def _read_infer_body(request: web.Request) -> tuple[dict, bytes]:
    """The JSON header of an infer request and the binary tensor data after it (if any)."""
    length_text = request.headers.get(BINARY_HEADER)
    content_type = request.content_type  # "application/octet-stream" when none was sent
    if length_text is None and content_type not in (JSON_TYPE, "application/octet-stream"):
        raise _Unsupported(f"Content-Type {content_type!r} is not accepted: send "
                           f"'{JSON_TYPE}' (or binary tensors with the {BINARY_HEADER} header)")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _TooLarge(f"the body is larger than this server's limit of {exc.max_size} bytes "
                        "(--max-message-bytes): send fewer seeds per request") from None
    except web.RequestPayloadError as exc:  # aiohttp decodes gzip/deflate bodies itself
        raise InvalidRequest(f"the body could not be read: {exc}; send it uncompressed or "
                             "as valid gzip/deflate with its Content-Encoding") from None
    split = len(body)
    if length_text is not None:
        try:
            split = int(length_text)
            if not 0 < split <= len(body):
                raise ValueError
        except ValueError:
            raise InvalidRequest(f"{BINARY_HEADER}: {length_text!r} is not a byte count within "
                                 f"the body's {len(body)} bytes") from None
    try:
        header = json.loads(body[:split])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidRequest("the body must be a JSON object with 'inputs'")
    return header, body[split:]


class _Unsupported(InvalidRequest):
    """A body this server cannot read at all."""

    http_status = 415


class _TooLarge(InvalidRequest):
    http_status = 413


def _input_tensors(header: dict, binary: bytes) -> list[InputTensor]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors: "
                             '[{"name": "seeds", "datatype": "UINT64", "shape": [N], '
                             '"data": [...]}]')
    tensors, offset = [], 0
    for item in inputs:
        if not isinstance(item, dict):
            raise InvalidRequest("each input must be an object with name, datatype, shape, data")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) \
                or not isinstance(shape, list):
            raise InvalidRequest("each input needs 'name' (string), 'datatype' (string) and "
                                 "'shape' (list of integers)")
        size = _parameters(item, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 \
                    or offset + size > len(binary):
                raise InvalidRequest(f"input {name!r}: binary_data_size {size!r} runs past the "
                                     f"{len(binary)} bytes of binary data sent")
            tensors.append(InputTensor(name, datatype, shape, raw=binary[offset:offset + size]))
            offset += size
        else:
            tensors.append(InputTensor(name, datatype, shape, values=_flat(item.get("data"),
                                                                           name)))
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data are not claimed by "
                             "any input's binary_data_size")
    return tensors


def _flat(data, name: str) -> list:
    """JSON `data`, flat or nested row-major, as one flat list of numbers."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input {name!r}: 'data' must be a list of integers (or send "
                             "binary data with parameters.binary_data_size)")
    flat = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequest(f"input {name!r}: {value!r} is not a number")
            flat.append(value)
        else:
            stack.pop()
    return flat


def _infer_response(header: dict, result, wanted: list[str], as_binary: set[str]
                    ) -> web.Response:
    outputs, blobs = [], []
    for name, datatype, values in output_tensors(result, wanted):
        tensor: dict = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        if name in as_binary:
            blob = values.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values.reshape(-1).tolist()
        outputs.append(tensor)
    body: dict = {"model_name": result.model, "model_version": result.version,
                  "outputs": outputs}
    if result.latent_rule:  # the rule these images used, as Generate reports it
        body["parameters"] = {"latent_rule": result.latent_rule, "psi": result.psi}
    if "id" in header:
        body["id"] = header["id"]
    text = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=text, content_type=JSON_TYPE)
    return web.Response(body=b"".join([text, *blobs]), content_type="application/octet-stream",
                        headers={BINARY_HEADER: str(len(text))})
