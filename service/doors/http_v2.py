"""The Open Inference Protocol (KServe V2) over REST: a converter, tensors -> data plane ->
tensors. The tensors' checks are `v2_tensors`'s, shared with the gRPC door; here is the framing
of bodies and answers: JSON, or Triton's binary extension (`Inference-Header-Content-Length`).
"""

from __future__ import annotations

import json

from aiohttp import web

from service.contract import psi_text
from service.doors.v2_tensors import (EXTENSIONS, SERVER_NAME, UNLOAD_PARAMETERS, InputTensor,
                                      check_repository_parameters, model_config,
                                      model_metadata, output_tensors, server_version,
                                      to_request, wanted_outputs)
from service.edge.call import Category
from service.edge.http_edge import mounted, read_body, route
from service.errors import InvalidRequest, Unsupported
from service.plane.dataplane import DataPlane, Result

JSON_TYPE = "application/json"
BINARY_HEADER = "Inference-Header-Content-Length"  # Triton's binary tensor data extension
# The fields each object of an infer body may have; anything else is refused, not ignored.
REQUEST_FIELDS = ("id", "model_name", "model_version", "inputs", "outputs", "parameters")
INPUT_FIELDS = ("name", "datatype", "shape", "data", "parameters")
OUTPUT_FIELDS = ("name", "parameters")
# The longest a JSON number of a valid request needs ("-1.2345678901234567e-05, "), with room.
BYTES_PER_VALUE = 32
# The repository's bodies: a flag or two.
SMALL_BODY_BYTES = 4096


class InferenceRoutes:
    def __init__(self, plane: DataPlane, max_body_bytes: int):
        self.plane = plane
        self.max_body_bytes = max_body_bytes  # --max-message-bytes
        self.version = server_version()

    def routes(self) -> list[tuple[str, str, object]]:
        """(method, path, handler) of each route; the per-model ones also under a version."""
        table = mounted(self)
        return table + [(method, path.replace("{name}", "{name}/versions/{version}"), handler)
                        for method, path, handler in table
                        if path.startswith("/v2/models/{name}")]

    # --- health and metadata --------------------------------------------------------------------

    @route("GET /v2/health/live", Category.HEALTH)
    async def live(self, request, call):
        return web.json_response({"live": True})

    @route("GET /v2/health/ready", Category.HEALTH)
    async def ready(self, request, call):
        ready = self.plane.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    @route("GET /v2", Category.METADATA)
    async def server_metadata(self, request, call):
        return web.json_response({"name": SERVER_NAME, "version": self.version,
                                  "extensions": ["binary_tensor_data", *EXTENSIONS]})

    @route("GET /v2/models/stats", Category.STATISTICS)
    async def all_statistics(self, request, call):
        return web.json_response(self.plane.statistics("", "", call))

    @route("GET /v2/models/{name}", Category.METADATA)
    async def model_metadata(self, request, call):
        model = self.plane.model(*_named(request), call)
        return web.json_response(model_metadata(model, self.plane.versions(model.name)))

    @route("GET /v2/models/{name}/ready", Category.METADATA)
    async def model_ready(self, request, call):
        ready = self.plane.ready(*_named(request))  # an unknown model is a 404, as Triton's
        return web.json_response({"name": request.match_info["name"], "ready": ready},
                                 status=200 if ready else 503)

    @route("GET /v2/models/{name}/config", Category.METADATA)
    async def model_config(self, request, call):
        return web.json_response(model_config(self.plane.model(*_named(request), call)))

    @route("GET /v2/models/{name}/stats", Category.STATISTICS)
    async def model_statistics(self, request, call):
        return web.json_response(self.plane.statistics(*_named(request), call))

    # --- the model repository ------------------------------------------------------------------

    @route("POST /v2/repository/index", Category.REPOSITORY)
    async def repository_index(self, request, call):
        ready = (await _small_json(request, '{"ready": true}')).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest('the body must be empty or a JSON object such as '
                                 '{"ready": true}')
        return web.json_response(self.plane.index(ready))

    @route("POST /v2/repository/models/{name}/load", Category.REPOSITORY)
    async def load_model(self, request, call):
        check_repository_parameters(await _repository_parameters(request), "load")
        await self.plane.load(request.match_info["name"])
        return web.json_response({})

    @route("POST /v2/repository/models/{name}/unload", Category.REPOSITORY)
    async def unload_model(self, request, call):
        parameters = await _repository_parameters(request)
        check_repository_parameters(parameters, "unload", UNLOAD_PARAMETERS)
        if not isinstance(parameters.get("unload_dependents", False), bool):
            raise InvalidRequest("parameters.unload_dependents must be true or false")
        await self.plane.unload(request.match_info["name"])
        return web.json_response({})

    # --- inference ------------------------------------------------------------------------------

    @route("POST /v2/models/{name}/infer", Category.INFERENCE)
    async def infer(self, request, call):
        model = self.plane.model(*_named(request), call)
        # The largest valid body: every value of the most latents one request may carry.
        limit = min(self.max_body_bytes, (1 << 16) + BYTES_PER_VALUE * self.plane.max_images
                    * (model.metadata.latent_dim + 2))
        header, binary = await _read_infer_body(request, limit)
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
        # The URL's name and version, not the model found above: a reload in between must not
        # turn this request into a version mismatch.
        result = await self.plane.infer(to_request(*_named(request), inputs, parameters, call),
                                        call)
        return _infer_response(header, result, wanted, as_binary)


def _named(request: web.Request) -> tuple[str, str]:
    """The model name and version the path names ("": the default version)."""
    return request.match_info["name"], request.match_info.get("version", "")


# --- the body ---------------------------------------------------------------------------------

async def _read_infer_body(request: web.Request, limit: int) -> tuple[dict, bytes]:
    """The JSON header of an infer request and the binary tensor data after it (if any)."""
    length_text = request.headers.get(BINARY_HEADER)
    content_type = request.content_type  # "application/octet-stream" when none was sent
    if length_text is None and content_type not in (JSON_TYPE, "application/octet-stream"):
        raise Unsupported(f"Content-Type {content_type!r} is not accepted: send "
                          f"'{JSON_TYPE}' (or binary tensors with the {BINARY_HEADER} header)")
    body = await read_body(request, limit)
    split = len(body)
    if length_text is not None:
        try:
            split = int(length_text)
            if not 0 < split <= len(body):
                raise ValueError
        except ValueError:
            raise InvalidRequest(f"{BINARY_HEADER}: {length_text!r} is not a byte count within "
                                 f"the body's {len(body)} bytes") from None
    header = _json(body[:split], "a JSON object with 'inputs'")
    _known_fields(header, REQUEST_FIELDS, "an infer request")
    return header, body[split:]


def _json(text: bytes, what: str) -> dict:
    """A JSON object, or InvalidRequest saying what to send (`what`)."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}; send {what}") from None
    except RecursionError:  # the parser's own limit on nesting
        raise InvalidRequest(f"the body is nested too deeply: send {what}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the body must be {what}")
    return value


async def _small_json(request: web.Request, example: str) -> dict:
    """A repository body: empty ({}) or a small JSON object like `example`."""
    body = await read_body(request, SMALL_BODY_BYTES, f"send {example}")
    return _json(body, f"empty or a JSON object such as {example}") if body.strip() else {}


async def _repository_parameters(request: web.Request) -> dict:
    """The `parameters` of a load or unload body: empty or {"parameters": {...}}."""
    body = await _small_json(request, '{"parameters": {}}')
    _known_fields(body, ("parameters",), "a load or unload request")
    return _parameters(body, "the request")


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
    """JSON `data`, flat or in rows ([[...], [...]]), as one flat list of numbers."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input {name!r}: 'data' must be a list of numbers (or send "
                             "binary data with parameters.binary_data_size)")
    flat = []
    for item in data:
        flat.extend(item if isinstance(item, list) else (item,))
    for value in flat:
        if type(value) not in (int, float):  # bool is not a number here
            raise InvalidRequest(f"input {name!r}: {value!r} is not a number: send numbers, "
                                 "flat or in rows")
    return flat


def _parameters(obj: dict, where: str) -> dict:
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"'parameters' of {where} must be an object")
    return parameters


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
