"""The OpenAPI 3.1 document of the HTTP front door, served at /openapi.json.

Written by hand, beside the routes it describes (`api_http.HttpFrontDoor.routes`);
tests/service/test_http.py checks that both list the same routes and that real responses
match the schemas here.
"""

from __future__ import annotations

TENSOR_TYPES = ["UINT64", "INT64", "INT32", "UINT8"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    why = {400: "bad input: the message says what to fix", 401: "missing or wrong bearer token",
           404: "no such model (or version)", 413: "body over --max-message-bytes",
           415: "a body that is neither JSON nor binary tensors",
           429: "over --max-in-flight or the model's queue limit: retry shortly",
           503: "draining before shutdown: retry on another replica",
           504: "the request's timeout passed"}
    return {str(s): _json(_ref("Error"), why[s]) for s in statuses}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "a served model's name (GET /v1/models lists them)"}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "the model's version; another one is a 404"}
_VERSION_QUERY = {"name": "version", "in": "query", "schema": {"type": "string"},
                  "description": "pin the model version: a different one is a 404, and the "
                                 "image may be cached for a year"}
_LABEL = {"name": "label", "in": "query", "schema": {"type": "integer", "minimum": 0},
          "description": "class, for conditional models (default: the seed rule's)"}
_TIMEOUT = {"name": "timeout", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0},
            "description": "seconds the caller will wait (or the Request-Timeout header)"}
_PSI = {"name": "psi", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0,
                                                  "maximum": 1},
        "description": "truncation: latents scaled toward the mean (1, the default, is none)"}
_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "schema": {"type": "string"},
                  "description": "an ETag from an earlier answer: 304 if unchanged"}
_PNG = {"description": "PNG, grey, 8 bits", "content": {"image/png": {
    "schema": {"type": "string", "contentMediaType": "image/png"}}},
    "headers": {"ETag": {"schema": {"type": "string"}},
                "Cache-Control": {"schema": {"type": "string"}}}}


def openapi_document(version: str, max_batch: int) -> dict:
    tensor_shape = {"type": "array", "items": {"type": "integer"}}
    schemas = {
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
                                          "shape": tensor_shape}},
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
                "shape": tensor_shape,
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
                                       "shape": tensor_shape,
                                       "data": {"type": "array", "items": {"type": "integer"}},
                                       "parameters": {"type": "object"}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"],
                          "properties": {"model_name": {"type": "string"},
                                         "model_version": {"type": "string"},
                                         "id": {"type": "string"},
                                         "outputs": {"type": "array",
                                                     "items": _ref("InferOutput")}}},
        "ModelInfo": {"type": "object",
                      "required": ["name", "version", "default", "num_classes", "height",
                                   "width", "max_batch"],
                      "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                     "default": {"type": "boolean"},
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

    def get(summary: str, ok: dict, *errors: int, parameters=()) -> dict:
        return {"get": {"summary": summary, "parameters": list(parameters),
                        "responses": {"200": ok, **_errors(*errors)}}}

    infer = {"post": {
        "summary": "Generate images for seeds (Open Inference Protocol)",
        "description": "JSON tensors, or Triton's binary tensor data extension: the JSON "
                       "header first, its length in the Inference-Header-Content-Length "
                       "header, then the binary tensors in input order. The answer is "
                       "binary the same way when asked (binary_data / binary_data_output). "
                       f"At most {max_batch} seeds per request.",
        "parameters": [],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("InferRequest")},
            "application/octet-stream": {"schema": {"type": "string",
                                                    "contentMediaType":
                                                        "application/octet-stream"}}}},
        "responses": {"200": {"description": "the outputs", "content": {
            "application/json": {"schema": _ref("InferResponse")},
            "application/octet-stream": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 404, 413, 415, 429, 503, 504)}}}
    paths = {
        "/": {"get": {"summary": "The playground page", "parameters": [], "responses": {
            "200": {"description": "HTML", "content": {"text/html": {
                "schema": {"type": "string"}}}}}}},
        "/openapi.json": get("This document", _json({"type": "object"}, "OpenAPI 3.1")),
        "/v2/health/live": get("Liveness", _json(_ref("Live"), "the process answers")),
        "/v2/health/ready": get("Readiness: 503 while draining",
                                _json(_ref("Ready"), "ready to serve"), 503),
        "/v2": get("Server metadata", _json(_ref("ServerMetadata"), "name, version"), 401),
        "/v1/models": get("The served models", _json(_ref("ModelList"), "the default first"),
                          401),
        "/v1/models/{name}/images/{seed}.png": get(
            "One image", _PNG, 400, 401, 404, 429, 503, 504,
            parameters=[_NAME, {"name": "seed", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 0},
                                "description": "0..2**64-1"},
                        _LABEL, _VERSION_QUERY, _TIMEOUT, _IF_NONE_MATCH]),
        "/v1/models/{name}/grid.png": get(
            "A grid of images, row-major, ceil(sqrt(N)) columns", _PNG,
            400, 401, 404, 429, 503, 504,
            parameters=[_NAME, {"name": "seeds", "in": "query", "required": True,
                                "schema": {"type": "string"},
                                "description": f"e.g. 0-15 or 3,9,20-22; at most {max_batch}"},
                        _LABEL, _PSI, _VERSION_QUERY, _TIMEOUT, _IF_NONE_MATCH]),
    }
    walk = [_NAME,
            {"name": "a", "in": "query", "required": True, "schema": {"type": "integer",
                                                                      "minimum": 0},
             "description": "the first frame's seed"},
            {"name": "b", "in": "query", "required": True, "schema": {"type": "integer",
                                                                      "minimum": 0},
             "description": "the last frame's seed"},
            {"name": "frames", "in": "query", "schema": {"type": "integer", "minimum": 2,
                                                         "maximum": max_batch, "default": 16}},
            {"name": "method", "in": "query", "schema": {"enum": ["slerp", "lerp"],
                                                         "default": "slerp"}},
            _LABEL, _PSI, _VERSION_QUERY, _TIMEOUT, _IF_NONE_MATCH]
    gif = {**_PNG, "description": "a looping animated GIF, one frame per image",
           "content": {"image/gif": {"schema": {"type": "string",
                                                "contentMediaType": "image/gif"}}}}
    paths["/v1/models/{name}/interpolation.png"] = get(
        "Frames from seed a's image to seed b's, as one strip (latent-walk rule v1: the ends "
        "are exactly the two seeds' images)", _PNG, 400, 401, 404, 429, 503, 504,
        parameters=walk)
    paths["/v1/models/{name}/interpolation.gif"] = get(
        "The same frames as an animated GIF", gif, 400, 401, 404, 429, 503, 504,
        parameters=walk)
    for prefix, params in (("/v2/models/{name}", [_NAME]),
                           ("/v2/models/{name}/versions/{version}", [_NAME, _VERSION])):
        paths[prefix] = get("Model metadata: the tensors",
                            _json(_ref("ModelMetadata"), "inputs and outputs"), 401, 404,
                            parameters=params)
        paths[prefix + "/ready"] = get("Model readiness: 503 while draining",
                                       _json(_ref("Ready"), "ready"), 401, 404, 503,
                                       parameters=params)
        paths[prefix + "/config"] = get("Triton's model configuration",
                                        _json(_ref("ModelConfig"), "configuration"), 401, 404,
                                        parameters=params)
        paths[prefix + "/infer"] = {"post": {**infer["post"], "parameters": params}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "dcgan-digits HTTP API", "version": version,
                 "description": "Generated digits over HTTP: the Open Inference Protocol "
                                "(KServe V2) with Triton's binary extension, and plain PNG "
                                "URLs. Every route but health, / and this document needs "
                                "'Authorization: Bearer <token>' when the server has one."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
