"""The OpenAPI 3.1 document of the HTTP front door (/openapi.json), made from the routes it
describes: their query parameters, 304, 401 and security from each `route` declaration, the
schemas written here to say exactly what the server takes. Schemathesis checks the live
document against the server (tests/service/test_openapi.py); what JSON Schema cannot say (a
tensor's shape against its values, a seed range's count, a class of the named model) is in
the descriptions, and the server answers 400 for it.
"""

from __future__ import annotations

import re

from service.contract import MAX_SEED, PSI_FLOOR, SEED_SPEC

INTEGER = {"type": "integer"}
TEXT = {"type": "string"}
FLAG = {"type": "boolean"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: tuple = (), closed: bool = True, **properties) -> dict:
    """An object with these properties; `closed`: the server refuses any other."""
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _array(items: dict, **bounds) -> dict:
    return {"type": "array", "items": items, **bounds}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


WHY = {400: "bad input: the message says what to fix", 401: "missing or wrong bearer token",
       404: "no such model (or version)",
       405: "a method this path does not take: the Allow header lists those it does",
       408: "the body took longer than --read-timeout to arrive",
       413: "a body larger than any valid request (or --max-message-bytes)",
       415: "a body that is neither JSON nor binary tensors",
       429: "over --max-in-flight or the model's queue limit: retry shortly",
       503: "draining before shutdown: retry on another replica",
       504: "the request's own timeout passed"}


def _seeds_text(max_images: int) -> dict:
    return {"type": "string", "pattern": SEED_SPEC, "description":
            f"seeds 0..2**64-1 as N, N-M (low to high) or a comma-separated list, e.g. 0-15 "
            f"or 3,9,20-22; at most {max_images} in all"}


def _schemas(max_images: int) -> dict:
    values = _array({"anyOf": [{"type": "number"}, _array({"type": "number"})]})
    tensor_parameters = _object(closed=False, binary_data_size={"type": "integer",
                                                                "minimum": 0})
    shape = _array({"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, minItems=1)

    def infer_input(name: str, datatypes: list[str], what: str) -> dict:
        schema = _object(("name", "datatype", "shape"), name={"const": name},
                         datatype={"enum": datatypes}, shape=shape,
                         data={**values, "description": "row-major, flat or in rows"},
                         parameters=tensor_parameters)
        return {**schema, "description": what}

    count = f"1..{max_images}"
    return {
        "Error": _object(("error",), error=TEXT),
        "Live": _object(("live",), live=FLAG),
        "Ready": _object(("ready",), ready=FLAG, name=TEXT),
        "ServerMetadata": _object(("name", "version", "extensions"), name=TEXT, version=TEXT,
                                  extensions=_array(TEXT)),
        "TensorMetadata": _object(("name", "datatype", "shape"), name=TEXT, datatype=TEXT,
                                  shape=_array(INTEGER)),
        "ModelMetadata": _object(("name", "versions", "platform", "inputs", "outputs"),
                                 name=TEXT, versions=_array(TEXT), platform=TEXT,
                                 inputs=_array(_ref("TensorMetadata")),
                                 outputs=_array(_ref("TensorMetadata"))),
        "ModelConfig": {**_object(("name", "platform", "input", "output"), closed=False),
                        "description": "Triton's model configuration (tritonclient reads it)"},
        "InferInput": {"oneOf": [
            infer_input("seeds", ["UINT64", "INT64"], f"shape [N] or [N, 1], N {count}"),
            infer_input("latents", ["FP32"], f"shape [N, latent_dim], N {count}"),
            infer_input("labels", ["INT64", "INT32"], "[N] or [1]: classes of the model"),
            infer_input("psi", ["FP32"], f"[1]: truncation in ({PSI_FLOOR!r}, 1]"),
            infer_input("frames", ["INT64", "INT32"],
                        f"[1]: with exactly two seeds, 2..{max_images} frames from one to "
                        "the other")]},
        "InferRequest": _object(
            ("inputs",), id=TEXT,
            inputs={**_array(_ref("InferInput"), minItems=1), "contains": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"enum": ["seeds", "latents"]}}}},
            outputs=_array(_object(("name",), name={"enum": ["images", "labels"]},
                                   parameters=_object(closed=False, binary_data=FLAG))),
            model_name=TEXT, model_version=TEXT,
            parameters=_object(closed=False, interpolation={"enum": ["slerp", "lerp"]},
                               binary_data_output=FLAG,
                               timeout={"type": "number", "exclusiveMinimum": 0,
                                        "description": "microseconds (Triton's)"})),
        "InferOutput": _object(("name", "datatype", "shape"), closed=False, name=TEXT,
                               datatype={"enum": ["UINT8", "INT64"]}, shape=_array(INTEGER),
                               data=_array(INTEGER), parameters={"type": "object"}),
        "InferResponse": _object(("model_name", "outputs"), closed=False, model_name=TEXT,
                                 model_version=TEXT, id=TEXT,
                                 outputs=_array(_ref("InferOutput"))),
        "Duration": _object(("count", "ns"), count=INTEGER, ns=INTEGER),
        "ModelStatistics": {**_object(("model_stats",), model_stats=_array({"type": "object"})),
                            "description": "Triton's statistics extension, per model and "
                                           "version since start"},
        "ModelInfo": _object(("name", "version", "default", "num_classes", "height", "width",
                              "max_batch"), closed=False, name=TEXT, version=TEXT,
                             default=FLAG, default_version=FLAG, run=TEXT, arch=TEXT,
                             dataset=TEXT, num_classes={"type": "integer", "minimum": 0},
                             class_names=_array(TEXT), height=INTEGER, width=INTEGER,
                             max_batch=INTEGER, seed_rule=TEXT),
        "ModelList": _object(("models",), models=_array(_ref("ModelInfo"))),
        "RepositoryIndex": _array(_object(("name", "version", "state"), closed=False,
                                          name=TEXT, version=TEXT,
                                          state={"enum": ["READY", "UNAVAILABLE"]},
                                          reason=TEXT)),
    }


def _parameters(max_images: int) -> dict:
    """Every parameter a route may read, by name: its declaration picks its own."""
    seed = {"type": "integer", "minimum": 0, "maximum": MAX_SEED}
    return {
        "name": {"in": "path", "schema": TEXT,
                 "description": "a served model's name (GET /v1/models lists them)"},
        "version": {"in": "path", "schema": TEXT,
                    "description": "the model's version; another one is a 404"},
        "seed": {"in": "path", "schema": seed},
        "seeds": {"in": "query", "required": True, "schema": _seeds_text(max_images)},
        "label": {"in": "query", "schema": {"type": "integer", "minimum": 0},
                  "description": "a class of the model (default: the seed rule's); only for "
                                 "class-conditional models"},
        "psi": {"in": "query", "schema": {"type": "number", "exclusiveMinimum": PSI_FLOOR,
                                          "maximum": 1},
                "description": "truncation: latents scaled toward the mean (1, the default, "
                               "is none); rounded to float32, as every door carries it"},
        "a": {"in": "query", "required": True, "schema": seed,
              "description": "the first frame's seed"},
        "b": {"in": "query", "required": True, "schema": seed,
              "description": "the last frame's seed (of the same default class as a's, "
                             "unless label is given)"},
        "frames": {"in": "query", "schema": {"type": "integer", "minimum": 2,
                                             "maximum": max_images, "default": 16},
                   "description": "frames, both ends included"},
        "method": {"in": "query", "schema": {"enum": ["slerp", "lerp"], "default": "slerp"}},
        "timeout": {"in": "query", "schema": {"type": "number", "exclusiveMinimum": 0},
                    "description": "seconds the caller will wait (or Request-Timeout)"},
        "version-query": {"name": "version", "in": "query", "schema": TEXT,
                          "description": "pin the model version: a different one is a 404, "
                                         "and the picture may be cached for a year"},
        "If-None-Match": {"in": "header", "schema": TEXT,
                          "description": "an ETag from an earlier answer: 304 if unchanged"},
    }


# The body each POST route takes.
_REPOSITORY = "an empty body, or this object"
BODIES = {
    "POST /v2/models/{name}/infer": ({
        "application/json": {"schema": _ref("InferRequest")},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}, True),
    "POST /v2/repository/index": ({"application/json": {"schema": _object(
        closed=False, ready=FLAG)}}, False),
    "POST /v2/repository/models/{name}/load": ({"application/json": {"schema": _object(
        parameters={"type": "object", "maxProperties": 0})}}, False),
    "POST /v2/repository/models/{name}/unload": ({"application/json": {"schema": _object(
        parameters=_object(unload_dependents=FLAG))}}, False),
}
_PNG = {"description": "PNG, grey, 8 bits", "content": {"image/png": {"schema": {
    "type": "string", "contentMediaType": "image/png"}}},
    "headers": {"ETag": {"schema": TEXT}, "Cache-Control": {"schema": TEXT}}}
_GIF = {**_PNG, "description": "a looping animated GIF, one frame per image",
        "content": {"image/gif": {"schema": {"type": "string", "contentMediaType": "image/gif"}}}}
_INFERRED = {"description": "the outputs", "content": {
    "application/json": {"schema": _ref("InferResponse")},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
# Each route's summary and its 200: a schema's name, or the answer itself.
OK = {
    "GET /": ("The playground page", {"description": "HTML", "content": {
        "text/html": {"schema": TEXT}}}),
    "GET /openapi.json": ("This document", {"type": "object"}),
    "GET /v2/health/live": ("Liveness", "Live"),
    "GET /v2/health/ready": ("Readiness: 503 while draining", "Ready"),
    "GET /v2": ("Server metadata", "ServerMetadata"),
    "GET /v2/models/stats": ("Statistics of every served model (Triton's extension)",
                             "ModelStatistics"),
    "GET /v2/models/{name}": ("Model metadata: the tensors", "ModelMetadata"),
    "GET /v2/models/{name}/ready": ("Model readiness: 503 while draining", "Ready"),
    "GET /v2/models/{name}/config": ("Triton's model configuration", "ModelConfig"),
    "GET /v2/models/{name}/stats": ("The model's statistics (Triton's extension)",
                                    "ModelStatistics"),
    "POST /v2/repository/index": ("The model repository's models and their state",
                                  "RepositoryIndex"),
    "POST /v2/repository/models/{name}/load": ("Load every version of a repository model "
                                               "beside the served ones (--model-control "
                                               "explicit)", {"type": "object"}),
    "POST /v2/repository/models/{name}/unload": ("Stop serving a model once its calls have "
                                                 "finished (--model-control explicit)",
                                                 {"type": "object"}),
    "POST /v2/models/{name}/infer": ("Generate images for seeds (Open Inference Protocol)",
                                     _INFERRED),
    "GET /v1/models": ("The served models, the default first", "ModelList"),
    "GET /v1/models/{name}/images/{seed}.png": ("One image", _PNG),
    "GET /v1/models/{name}/grid.png": ("A grid of images, row-major, ceil(sqrt(N)) columns",
                                       _PNG),
    "GET /v1/models/{name}/interpolation.png": (
        "Frames from seed a's image to seed b's, as one strip (the latent-walk rule: the ends "
        "are exactly the two seeds' images)", _PNG),
    "GET /v1/models/{name}/interpolation.gif": ("The same frames as an animated GIF", _GIF),
}


def _ok(answer) -> dict:
    if isinstance(answer, str):  # a schema's name
        return _json(_ref(answer), answer)
    return answer if "description" in answer else _json(answer, "done")


def parameters(path: str, handler, catalogue: dict) -> list[dict]:
    """The parameters of one route, from its path and its `route` declaration."""
    found = [{"name": n, **catalogue[n], "required": True}
             for n in re.findall(r"{(\w+)}", path)]
    found += [{"name": n, **catalogue["version-query" if n == "version" else n]}
              for n in handler.query]
    if handler.cacheable:
        found.append({"name": "If-None-Match", **catalogue["If-None-Match"]})
    return found


def _statuses(method: str, path: str, handler, token: bool) -> list[int]:
    name, category = handler.route, handler.category.value
    statuses = {405}
    if token and not handler.category.open:
        statuses.add(401)
    if not handler.category.open:
        statuses.add(429)
    if "{name}" in path:
        statuses.add(404)
    if name.endswith("/ready"):
        statuses.add(503)
    if handler.query or "{" in path or method == "POST":
        statuses.add(400)
    if method == "POST":
        statuses |= {408, 413}
    if category == "inference":
        statuses |= {503, 504}
    if name.endswith("/infer"):
        statuses.add(415)
    return sorted(statuses)


def openapi_document(routes, version: str, max_images: int, token: bool) -> dict:
    """The document of `routes` ((method, path, handler) each); `token`: whether the server
    asks for a bearer token (then every operation but the open ones says so)."""
    catalogue = _parameters(max_images)
    paths: dict = {}
    for method, path, handler in routes:
        summary, answer = OK[handler.route]
        responses = {"200": _ok(answer), **{str(s): _json(_ref("Error"), WHY[s])
                                   for s in _statuses(method, path, handler, token)}}
        if handler.cacheable:
            responses["304"] = {"description": "unchanged since the ETag sent in "
                                               "If-None-Match; nothing was generated"}
        operation = {"summary": summary, "parameters": parameters(path, handler, catalogue),
                     "responses": responses}
        if handler.category.open or not token:
            operation["security"] = []  # no token needed
        if handler.route in BODIES:
            content, required = BODIES[handler.route]
            operation["requestBody"] = {"required": required, "content": content}
        if handler.route.endswith("/infer"):
            operation["description"] = (
                "JSON tensors, or Triton's binary tensor data extension: the JSON header "
                "first, its length in the Inference-Header-Content-Length header, then the "
                "binary tensors in input order. The answer is binary the same way when asked "
                f"(binary_data / binary_data_output). At most {max_images} images per request; "
                "each tensor's shape is its values' count, labels are the model's classes.")
        paths.setdefault(path, {})[method.lower()] = operation
        if method == "GET":  # the same answer without its body
            paths[path]["head"] = {**operation, "summary": f"{summary}: its headers alone",
                                   "responses": {code: {k: v for k, v in r.items()
                                                        if k != "content"}
                                                 for code, r in responses.items()}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "dcgan-digits HTTP API", "version": version,
                 "description": "Generated digits over HTTP: the Open Inference Protocol "
                                "(KServe V2) with Triton's binary extension, and plain PNG "
                                "URLs."},
        "paths": paths,
        "security": [{"bearer": []}] if token else [],
        "components": {"schemas": _schemas(max_images),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
