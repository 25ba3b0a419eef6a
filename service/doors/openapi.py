"""The OpenAPI 3.1 document of the HTTP front door, served at /openapi.json.

Made from the routes it describes (`http_v2.InferenceRoutes.routes`,
`http_images.ImageRoutes.routes`): each operation's parameters, 304, 401 and security come from
its handler's `http.route` declaration; the rest (summaries, schemas) is written here by hand.
tests/service/test_openapi.py checks the document against what each route reads and answers.
"""

from __future__ import annotations

import re

TENSOR_TYPES = ["UINT64", "INT64", "INT32", "UINT8"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    why = {400: "bad input: the message says what to fix", 401: "missing or wrong bearer token",
           404: "no such model (or version)",
           405: "a method this path does not take: the Allow header lists those it does",
           413: "a body larger than any valid request to this model (or --max-message-bytes)",
           415: "a body that is neither JSON nor binary tensors",
           429: "over --max-in-flight or the model's queue limit: retry shortly",
           503: "draining before shutdown: retry on another replica",
           504: "the request's timeout passed"}
    return {str(s): _json(_ref("Error"), why[s]) for s in statuses}


_SHAPE = {"type": "array", "items": {"type": "integer"}}
SCHEMAS = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Live": {"type": "object", "required": ["live"],
             "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "required": ["ready"],
              "properties": {"ready": {"type": "boolean"}, "name": {"type": "string"}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                       "properties": {"name": {"type": "string"},
                                      "version": {"type": "string"},
                                      "extensions": {"type": "array",
                                                     "items": {"type": "string"}}}},
    "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"],
                       "properties": {"name": {"type": "string"},
                                      "datatype": {"enum": TENSOR_TYPES + ["FP32"]},
                                      "shape": _SHAPE}},
    "ModelMetadata": {"type": "object",
                      "required": ["name", "versions", "platform", "inputs", "outputs"],
                      "properties": {"name": {"type": "string"},
                                     "versions": {"type": "array",
                                                  "items": {"type": "string"}},
                                     "platform": {"type": "string"},
                                     "inputs": {"type": "array",
                                                "items": _ref("TensorMetadata")},
                                     "outputs": {"type": "array",
                                                 "items": _ref("TensorMetadata")}}},
    "ModelConfig": {"type": "object", "required": ["name", "platform", "input", "output"],
                    "description": "Triton's model configuration (tritonclient reads it)",
                    "properties": {"name": {"type": "string"},
                                   "platform": {"type": "string"},
                                   "backend": {"type": "string"},
                                   "max_batch_size": {"type": "integer"},
                                   "input": {"type": "array", "items": {"type": "object"}},
                                   "output": {"type": "array",
                                              "items": {"type": "object"}}}},
    "InferInput": {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"enum": ["seeds", "labels", "latents", "psi", "frames"]},
            "datatype": {"enum": ["UINT64", "INT64", "INT32", "FP32"],
                         "description": "seeds: UINT64 or INT64; labels and frames: INT64 "
                                        "or INT32; latents [N, latent_dim] and psi [1]: "
                                        "FP32. With frames, exactly two seeds: the "
                                        "interpolation between them"},
            "shape": _SHAPE,
            "data": {"type": "array", "description": "row-major values, flat or nested"},
            "parameters": {"type": "object", "properties": {
                "binary_data_size": {"type": "integer", "minimum": 0,
                                     "description": "the values are this many bytes of "
                                                    "the binary part instead"}}}}},
    "InferRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("InferInput")},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"enum": ["images", "labels"]},
                               "parameters": {"type": "object", "properties": {
                                   "binary_data": {"type": "boolean"}}}}}},
            "parameters": {"type": "object", "properties": {
                "interpolation": {"enum": ["slerp", "lerp"]},
                "binary_data_output": {"type": "boolean"},
                "timeout": {"type": "number", "exclusiveMinimum": 0,
                            "description": "microseconds (Triton's)"}}}}},
    "InferOutput": {"type": "object", "required": ["name", "datatype", "shape"],
                    "properties": {"name": {"type": "string"},
                                   "datatype": {"enum": ["UINT8", "INT64"]},
                                   "shape": _SHAPE,
                                   "data": {"type": "array", "items": {"type": "integer"}},
                                   "parameters": {"type": "object"}}},
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"],
                      "properties": {"model_name": {"type": "string"},
                                     "model_version": {"type": "string"},
                                     "id": {"type": "string"},
                                     "outputs": {"type": "array",
                                                 "items": _ref("InferOutput")}}},
    "Duration": {"type": "object", "required": ["count", "ns"],
                 "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}}},
    "ModelStatistics": {
        "type": "object", "required": ["model_stats"],
        "description": "Triton's statistics extension, per model and version since start",
        "properties": {"model_stats": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "version", "last_inference", "inference_count",
                         "execution_count", "inference_stats", "batch_stats"],
            "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "last_inference": {"type": "integer", "description": "ms since the epoch"},
                "inference_count": {"type": "integer", "description": "images generated"},
                "execution_count": {"type": "integer", "description": "onnxruntime runs"},
                "inference_stats": {"type": "object", "additionalProperties": _ref("Duration")},
                "batch_stats": {"type": "array", "items": {"type": "object", "properties": {
                    "batch_size": {"type": "integer"},
                    "compute_input": _ref("Duration"), "compute_infer": _ref("Duration"),
                    "compute_output": _ref("Duration")}}},
                "memory_usage": {"type": "array"}}}}}},
    "ModelInfo": {"type": "object",
                  "required": ["name", "version", "default", "num_classes", "height",
                               "width", "max_batch"],
                  "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                 "default": {"type": "boolean"},
                                 "default_version": {"type": "boolean"},
                                 "run": {"type": "string",
                                         "description": "the file's training run and step"},
                                 "arch": {"type": "string"}, "dataset": {"type": "string"},
                                 "num_classes": {"type": "integer", "minimum": 0},
                                 "class_names": {"type": "array",
                                                 "items": {"type": "string"}},
                                 "height": {"type": "integer"}, "width": {"type": "integer"},
                                 "max_batch": {"type": "integer"},
                                 "seed_rule": {"type": "string"}}},
    "ModelList": {"type": "object", "required": ["models"],
                  "properties": {"models": {"type": "array", "items": _ref("ModelInfo")}}},
}


# Every parameter a route may read, by name: a route's declaration (`http.route`'s `query`,
# and the `{...}` in its path) picks its own from here.
PARAMETERS = {
    "name": {"in": "path", "schema": {"type": "string"},
             "description": "a served model's name (GET /v1/models lists them)"},
    "version": {"in": "path", "schema": {"type": "string"},
                "description": "the model's version; another one is a 404"},
    "seed": {"in": "path", "schema": {"type": "integer", "minimum": 0},
             "description": "0..2**64-1"},
    "seeds": {"in": "query", "required": True, "schema": {"type": "string"},
              "description": "e.g. 0-15 or 3,9,20-22; at most --max-batch"},
    "label": {"in": "query", "schema": {"type": "integer", "minimum": 0},
              "description": "class, for conditional models (default: the seed rule's)"},
    "psi": {"in": "query", "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "description": "truncation: latents scaled toward the mean (1, the default, is "
                           "none); rounded to float32, as every door carries it"},
    "a": {"in": "query", "required": True, "schema": {"type": "integer", "minimum": 0},
          "description": "the first frame's seed"},
    "b": {"in": "query", "required": True, "schema": {"type": "integer", "minimum": 0},
          "description": "the last frame's seed"},
    "frames": {"in": "query", "schema": {"type": "integer", "minimum": 2, "default": 16},
               "description": "frames, both ends included; at most --max-batch"},
    "method": {"in": "query", "schema": {"enum": ["slerp", "lerp"], "default": "slerp"}},
    "timeout": {"in": "query", "schema": {"type": "number", "exclusiveMinimum": 0},
                "description": "seconds the caller will wait (or the Request-Timeout header)"},
    "If-None-Match": {"in": "header", "schema": {"type": "string"},
                      "description": "an ETag from an earlier answer: 304 if unchanged"},
}
_VERSION_QUERY = {"in": "query", "schema": {"type": "string"},
                  "description": "pin the model version: a different one is a 404, and the "
                                 "image may be cached for a year"}
_PNG = {"description": "PNG, grey, 8 bits", "content": {"image/png": {
    "schema": {"type": "string", "contentMediaType": "image/png"}}},
    "headers": {"ETag": {"schema": {"type": "string"}},
                "Cache-Control": {"schema": {"type": "string"}}}}
_GIF = {**_PNG, "description": "a looping animated GIF, one frame per image",
        "content": {"image/gif": {"schema": {"type": "string", "contentMediaType": "image/gif"}}}}


def parameters(path: str, handler) -> list[dict]:
    """The parameters of one route, from its path and its `http.route` declaration."""
    names = re.findall(r"{(\w+)}", path)
    found = [{"name": n, **PARAMETERS[n], "required": True} for n in names]
    for name in handler.query:
        spec = _VERSION_QUERY if name == "version" else PARAMETERS[name]
        found.append({"name": name, **spec})
    if handler.cacheable:
        found.append({"name": "If-None-Match", **PARAMETERS["If-None-Match"]})
    return found


def openapi_document(routes, version: str, max_images: int) -> dict:
    """The document of `routes` ((method, path, handler) each): what each operation says is
    written here by hand; its parameters, 304, 401 and security come from the handler's
    declaration, so they cannot drift from what the handler reads and answers."""
    ok = {
        "GET /": {"description": "HTML", "content": {"text/html": {"schema": {"type":
                                                                               "string"}}}},
        "GET /openapi.json": _json({"type": "object"}, "OpenAPI 3.1"),
        "GET /v2/health/live": _json(_ref("Live"), "the process answers"),
        "GET /v2/health/ready": _json(_ref("Ready"), "ready to serve"),
        "GET /v2": _json(_ref("ServerMetadata"), "name, version"),
        "GET /v2/models/{name}": _json(_ref("ModelMetadata"), "inputs and outputs"),
        "GET /v2/models/{name}/ready": _json(_ref("Ready"), "ready"),
        "GET /v2/models/{name}/config": _json(_ref("ModelConfig"), "configuration"),
        "GET /v2/models/stats": _json(_ref("ModelStatistics"), "every served model's"),
        "POST /v2/repository/index": _json({"type": "array", "items": {
            "type": "object", "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "state": {"enum": ["READY", "UNAVAILABLE"]}, "reason": {"type": "string"}}}},
            "what the repository holds and what is served"),
        "POST /v2/repository/models/{name}/load": _json({"type": "object"}, "loaded"),
        "POST /v2/repository/models/{name}/unload": _json({"type": "object"},
                                                          "unloaded, its calls finished"),
        "GET /v2/models/{name}/stats": _json(_ref("ModelStatistics"), "the model's"),
        "POST /v2/models/{name}/infer": {"description": "the outputs", "content": {
            "application/json": {"schema": _ref("InferResponse")},
            "application/octet-stream": {"schema": {"type": "string"}}}},
        "GET /v1/models": _json(_ref("ModelList"), "the default first"),
        "GET /v1/models/{name}/images/{seed}.png": _PNG,
        "GET /v1/models/{name}/grid.png": _PNG,
        "GET /v1/models/{name}/interpolation.png": _PNG,
        "GET /v1/models/{name}/interpolation.gif": _GIF,
    }
    summaries = {
        "GET /": "The playground page",
        "GET /openapi.json": "This document",
        "GET /v2/health/live": "Liveness",
        "GET /v2/health/ready": "Readiness: 503 while draining",
        "GET /v2": "Server metadata",
        "GET /v2/models/{name}": "Model metadata: the tensors",
        "GET /v2/models/{name}/ready": "Model readiness: 503 while draining",
        "GET /v2/models/{name}/config": "Triton's model configuration",
        "GET /v2/models/stats": "Statistics of every served model (Triton's extension)",
        "POST /v2/repository/index": "The model repository's models and their state",
        "POST /v2/repository/models/{name}/load":
            "Load every version of a repository model beside the served ones "
            "(--model-control explicit)",
        "POST /v2/repository/models/{name}/unload":
            "Stop serving a model once its calls have finished (--model-control explicit)",
        "GET /v2/models/{name}/stats": "The model's statistics (Triton's extension)",
        "POST /v2/models/{name}/infer": "Generate images for seeds (Open Inference Protocol)",
        "GET /v1/models": "The served models",
        "GET /v1/models/{name}/images/{seed}.png": "One image",
        "GET /v1/models/{name}/grid.png": "A grid of images, row-major, ceil(sqrt(N)) columns",
        "GET /v1/models/{name}/interpolation.png":
            "Frames from seed a's image to seed b's, as one strip (the latent-walk rule: the "
            "ends are exactly the two seeds' images)",
        "GET /v1/models/{name}/interpolation.gif": "The same frames as an animated GIF",
    }
    paths: dict = {}
    for method, path, handler in routes:
        name = handler.route_name
        statuses = [405]
        if not handler.open:
            statuses.append(401)
        if "{name}" in path:
            statuses.append(404)
        if name.startswith("GET /v2/models/") or name.endswith("/ready"):
            statuses.append(503)
        if handler.query or "{seed}" in path or method == "POST":
            statuses.append(400)
        if "timeout" in handler.query:
            statuses += [429, 503, 504]
        if method == "POST":
            statuses += [413, 415]
        responses = {"200": ok[name], **_errors(*sorted(set(statuses)))}
        if handler.cacheable:
            responses["304"] = {"description": "unchanged since the ETag sent in "
                                               "If-None-Match; nothing was generated"}
        operation = {"summary": summaries[name], "parameters": parameters(path, handler),
                     "responses": responses}
        if handler.open:
            operation["security"] = []  # no token needed, whatever the server's setting
        if method == "POST":
            operation["description"] = (
                "JSON tensors, or Triton's binary tensor data extension: the JSON header "
                "first, its length in the Inference-Header-Content-Length header, then the "
                "binary tensors in input order. The answer is binary the same way when asked "
                f"(binary_data / binary_data_output). At most {max_images} images per request.")
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _ref("InferRequest")},
                "application/octet-stream": {"schema": {
                    "type": "string", "contentMediaType": "application/octet-stream"}}}}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "dcgan-digits HTTP API", "version": version,
                 "description": "Generated digits over HTTP: the Open Inference Protocol "
                                "(KServe V2) with Triton's binary extension, and plain PNG "
                                "URLs. Every operation without `security: []` needs "
                                "'Authorization: Bearer <token>' when the server has one."},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
