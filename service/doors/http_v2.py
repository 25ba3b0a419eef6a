"""The Open Inference Protocol (KServe V2) over REST: a converter, JSON or binary tensors -> data plane -> tensors.

The tensors' names, types and shapes are `v2_tensors`'s, shared with the gRPC door; what is
here is the framing of the body and of the answer: JSON, or Triton's binary tensor extension
(`Inference-Header-Content-Length`).
"""

from __future__ import annotations

import asyncio
import json
import math

from aiohttp import web

from service.contract import psi_text
from service.doors.edge import Edge
from service.doors.http import TIMEOUT, route
from service.doors.v2_tensors import (EXTENSIONS, SERVER_NAME, InputTensor, model_config,
                                      model_metadata, output_tensors, server_version,
                                      statistics, to_request, wanted_outputs)
from service.errors import InvalidRequest
from service.plane.dataplane import DataPlane, Result
from service.plane.models import ServedModel
from service.plane.repository import ModelRepository

JSON_TYPE = "application/json"
BINARY_HEADER = "Inference-Header-Content-Length"  # Triton's binary tensor data extension
# The fields each object of an infer body may have; anything else is refused, not ignored.
REQUEST_FIELDS = ("id", "model_name", "model_version", "inputs", "outputs", "parameters")
INPUT_FIELDS = ("name", "datatype", "shape", "data", "parameters")
OUTPUT_FIELDS = ("name", "parameters")
# The longest a JSON number of a valid request needs ("-1.2345678901234567e-05, "), with room.
BYTES_PER_VALUE = 32


class InferenceRoutes:
    def __init__(self, plane: DataPlane, edge: Edge, repository: ModelRepository,
                 max_body_bytes: int):
        self.plane = plane
        self.edge = edge
        self.repository = repository
        self.max_body_bytes = max_body_bytes  # --max-message-bytes
        self.version = server_version()

    def routes(self) -> list[tuple[str, str, object]]:
        """(method, path, handler) of each route."""
        table = [("GET", "/v2/health/live", self.live), ("GET", "/v2/health/ready", self.ready),
                 ("GET", "/v2", self.server_metadata),
                 ("GET", "/v2/models/stats", self.all_statistics),
                 ("POST", "/v2/repository/index", self.repository_index),
                 ("POST", "/v2/repository/models/{name}/load", self.load_model),
                 ("POST", "/v2/repository/models/{name}/unload", self.unload_model)]
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            table += [("GET", prefix, self.model_metadata),
                      ("GET", prefix + "/ready", self.model_ready),
                      ("GET", prefix + "/config", self.model_config),
                      ("GET", prefix + "/stats", self.model_statistics),
                      ("POST", prefix + "/infer", self.infer)]
        return table

    # --- health and metadata --------------------------------------------------------------------

    @route("GET /v2/health/live", open=True)
    async def live(self, request, call):
        return web.json_response({"live": True})

    @route("GET /v2/health/ready", open=True)
    async def ready(self, request, call):
        ready = not self.edge.gate.draining
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    @route("GET /v2")
    async def server_metadata(self, request, call):
        return web.json_response({"name": SERVER_NAME, "version": self.version,
                                  "extensions": ["binary_tensor_data", *EXTENSIONS]})

    @route("GET /v2/models/{name}")
    async def model_metadata(self, request, call):
        model = self._model(request, call)
        return web.json_response(model_metadata(model, self.plane.versions(model.name)))

    @route("GET /v2/models/{name}/ready")
    async def model_ready(self, request, call):
        self._model(request, call)  # an unknown model is a 404, as Triton and KServe answer
        ready = not self.edge.gate.draining
        return web.json_response({"name": request.match_info["name"], "ready": ready},
                                 status=200 if ready else 503)

    @route("GET /v2/models/{name}/config")
    async def model_config(self, request, call):
        return web.json_response(model_config(self._model(request, call)))

    @route("GET /v2/models/stats")
    async def all_statistics(self, request, call):
        return web.json_response(statistics(self.plane, self.edge.statistics, "", "", call))

    @route("GET /v2/models/{name}/stats")
    async def model_statistics(self, request, call):
        return web.json_response(statistics(self.plane, self.edge.statistics,
                                            request.match_info["name"],
                                            request.match_info.get("version", ""), call))

    # --- the model repository ------------------------------------------------------------------

    @route("POST /v2/repository/index")
    async def repository_index(self, request, call):
        body = await request.read()
        try:
            options = json.loads(body) if body.strip() else {}
        except ValueError:
            options = None
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise InvalidRequest('the body must be empty or a JSON object such as '
                                 '{"ready": true}')
        ready = options.get("ready", False)
        return web.json_response(self.repository.index(ready))

    @route("POST /v2/repository/models/{name}/load")
    async def load_model(self, request, call):
        await asyncio.to_thread(self.repository.load, request.match_info["name"])
        return web.json_response({})

    @route("POST /v2/repository/models/{name}/unload")
    async def unload_model(self, request, call):
        await asyncio.to_thread(self.repository.unload, request.match_info["name"])
        return web.json_response({})

    # --- inference ------------------------------------------------------------------------------

    @route("POST /v2/models/{name}/infer", admit=True)
    async def infer(self, request, call):
        model = self._model(request, call)
        # The largest valid body: every value of the most latents one request may carry.
        limit = min(self.max_body_bytes, (1 << 16) + BYTES_PER_VALUE * self.plane.max_images
                    * (model.metadata.latent_dim + 2))
        header, binary = await _read_body(request, limit)
        for field, value in (("model_name", model.name), ("model_version", model.version)):
            if header.get(field, value) != value:  # KServe's client repeats the URL's name
                raise InvalidRequest(f"{field} {header[field]!r} in the body is not the URL's "
                                     f"{value!r}: send the same or leave it out")
        inputs = _input_tensors(header, binary)
        outputs = header.get("outputs") or []
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise InvalidRequest("'outputs' must be a list of objects with a 'name'")
        for output in outputs:
            _known_fields(output, OUTPUT_FIELDS, "an output")
        wanted = wanted_outputs([str(o.get("name", "")) for o in outputs], model)
        parameters = _parameters(header, "the request")
        as_binary = {str(o.get("name")) for o in outputs
                     if _parameters(o, "an output").get("binary_data", False)}
        if parameters.get("binary_data_output", False):
            as_binary = set(wanted)
        timeout = request[TIMEOUT]
        if "timeout" in parameters:  # Triton's, in microseconds
            timeout = min(timeout or math.inf, _microseconds(parameters["timeout"]))
        # The URL's name and version, not the model found above: a reload in between must not
        # turn this request into a version mismatch.
        result = await self.plane.infer(to_request(
            request.match_info["name"], request.match_info.get("version", ""), inputs,
            parameters, timeout), call)
        return _infer_response(header, result, wanted, as_binary)

    def _model(self, request: web.Request, call) -> ServedModel:
        return self.plane.model(request.match_info["name"],
                                request.match_info.get("version", ""), call)


# --- the body ---------------------------------------------------------------------------------

class Unsupported(InvalidRequest):
    """A body this server cannot read at all."""

    http_status = 415


class TooLarge(InvalidRequest):
    http_status = 413


async def _read_body(request: web.Request, limit: int) -> tuple[dict, bytes]:
    """The JSON header of an infer request and the binary tensor data after it (if any);
    a body longer than `limit` bytes (decompressed) is refused before it is all read."""
    length_text = request.headers.get(BINARY_HEADER)
    content_type = request.content_type  # "application/octet-stream" when none was sent
    if length_text is None and content_type not in (JSON_TYPE, "application/octet-stream"):
        raise Unsupported(f"Content-Type {content_type!r} is not accepted: send "
                          f"'{JSON_TYPE}' (or binary tensors with the {BINARY_HEADER} header)")
    too_large = TooLarge(f"the body is larger than {limit} bytes, more than any valid request "
                         "to this model needs (and --max-message-bytes allows): send fewer "
                         "seeds or latents per request")
    if (request.content_length or 0) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:  # chunked or compressed bodies have no length up front
                raise too_large
    except (web.RequestPayloadError, ValueError) as exc:  # aiohttp decodes gzip/deflate
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
    _known_fields(header, REQUEST_FIELDS, "an infer request")
    return header, bytes(body[split:])


def _known_fields(obj: dict, fields: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}: {what} has "
                             f"{', '.join(fields)}")


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
        _known_fields(item, INPUT_FIELDS, "an input")
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


def _parameters(obj: dict, where: str) -> dict:
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"'parameters' of {where} must be an object")
    return parameters


def _microseconds(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidRequest(f"parameters.timeout {value!r} is not a positive number of "
                             "microseconds")
    return value / 1e6


# --- the answer -------------------------------------------------------------------------------

def _infer_response(header: dict, result: Result, wanted: list[str], as_binary: set[str]
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
        body["parameters"] = {"latent_rule": result.latent_rule,
                              "psi": float(psi_text(result.psi))}
    if "id" in header:
        body["id"] = header["id"]
    text = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=text, content_type=JSON_TYPE)
    return web.Response(body=b"".join([text, *blobs]), content_type="application/octet-stream",
                        headers={BINARY_HEADER: str(len(text))})
