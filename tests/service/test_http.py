"""The HTTP front door on a real port: curl, tritonclient.http, KServe's REST client, urllib.

Every answer is checked against the gRPC `Generate` of the same seeds (same server, same
`Generator`), and every kind of bad input against the status and message it should get.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.client import images_from_response
from service.process.config import ServeConfig
from service.errors import ServiceError
from service.imaging import decode_png, make_grid
from service.process.server import create_server
from tests.conftest import long_queue


def _base(server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def _call(url: str, method: str = "GET", body: bytes | None = None, headers=None,
          context=None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _infer_json(seeds, model="plain", **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [len(seeds)],
                                   "data": list(seeds)}], **extra}).encode()


def _generate(stub, model, seeds, labels=()) -> np.ndarray:
    return images_from_response(stub.Generate(pb.GenerateRequest(
        model=model, seeds=seeds, labels=list(labels))))


# --- the routes, as curl sees them -------------------------------------------------------------

ROUTES = [  # method, path, body, status, content type, a piece of the body
    ("GET", "/", None, 200, "text/html", b"<title>dcgan-digits playground"),
    ("GET", "/openapi.json", None, 200, "application/json", b'"openapi": "3.1.0"'),
    ("GET", "/v2/health/live", None, 200, "application/json", b'"live": true'),
    ("GET", "/v2/health/ready", None, 200, "application/json", b'"ready": true'),
    ("GET", "/v2", None, 200, "application/json", b'"binary_tensor_data"'),
    ("GET", "/v2/models/plain", None, 200, "application/json", b'"platform"'),
    ("GET", "/v2/models/plain/ready", None, 200, "application/json", b'"ready": true'),
    ("GET", "/v2/models/cond/config", None, 200, "application/json", b'"TYPE_UINT64"'),
    ("POST", "/v2/models/plain/infer", _infer_json([1, 2]), 200, "application/json",
     b'"shape":[2,1,28,28]'),
    ("GET", "/v1/models", None, 200, "application/json", b'"name": "cond"'),
    ("GET", "/v1/models/cond/images/7.png?label=3", None, 200, "image/png", b"\x89PNG"),
    ("GET", "/v1/models/plain/grid.png?seeds=0-8", None, 200, "image/png", b"\x89PNG"),
    ("GET", "/v1/models/nope/grid.png?seeds=0-8", None, 404, "application/json",
     b"no model named 'nope'"),
]


@pytest.mark.parametrize("method,path,body,status,content_type,piece", ROUTES,
                         ids=[f"{m} {p}" for m, p, *_ in ROUTES])
def test_every_route_answers_curl(server, method, path, body, status, content_type, piece):
    curl = shutil.which("curl")
    assert curl, "curl is needed (apt-get install curl)"
    args = [curl, "-s", "-i", "-X", method, _base(server) + path]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", body.decode()]
    out = subprocess.run(args, capture_output=True, timeout=30).stdout
    head, _, payload = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].split()[1] == str(status), out[:300]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"].startswith(content_type)
    assert piece in payload


# --- real clients: pixels equal to Generate ---------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_gives_the_pixels_of_generate(server, stub, binary):
    import tritonclient.http as triton
    client = triton.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cond")
    assert client.get_model_metadata("cond")["inputs"][1]["name"] == "labels"
    assert client.get_model_config("cond")["output"][0]["dims"] == [-1, 1, 28, 28]
    seeds, labels = np.array([0, 7, 2**40], np.uint64), np.array([3, 3, 9], np.int64)
    inputs = [triton.InferInput("seeds", [3], "UINT64"), triton.InferInput("labels", [3], "INT64")]
    inputs[0].set_data_from_numpy(seeds, binary_data=binary)
    inputs[1].set_data_from_numpy(labels, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary)
               for name in ("images", "labels")]
    result = client.infer("cond", inputs, outputs=outputs, request_id="r-7")
    assert result.get_response()["id"] == "r-7"
    assert ("parameters" in result.get_response()["outputs"][0]) == binary
    np.testing.assert_array_equal(result.as_numpy("labels"), labels)
    np.testing.assert_array_equal(result.as_numpy("images")[:, 0],
                                  _generate(stub, "cond", seeds.tolist(), labels.tolist()))
    # No outputs named: tritonclient asks for every output in binary (binary_data_output);
    # and a gzip body is read as well as a plain one.
    every = client.infer("plain", inputs[:1], request_compression_algorithm="gzip")
    np.testing.assert_array_equal(every.as_numpy("images")[:, 0],
                                  _generate(stub, "plain", seeds.tolist()))
    with pytest.raises(Exception, match="no model named 'nope'"):
        client.infer("nope", inputs[:1])


# KServe's package registers its own copy of the V2 protos, which clashes with this server's
# in one process, so its client runs in a process of its own, as a user's would.
KSERVE_CLIENT = """
import asyncio, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(url, binary, out):
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    seeds = InferInput("seeds", [4], "UINT64")
    seeds.set_data_from_numpy(np.arange(4, dtype=np.uint64), binary_data=binary)
    request = InferRequest(model_name="plain", infer_inputs=[seeds], request_id="k-1")
    try:
        response = await client.infer(url, request, model_name="plain")
    finally:
        await client.close()
    [images] = response.outputs
    print(images.name, images.shape)
    np.save(out, images.as_numpy())

asyncio.run(main(sys.argv[1], sys.argv[2] == "binary", sys.argv[3]))
"""


@pytest.mark.parametrize("mode", ["json", "binary"])
def test_kserve_rest_client_gives_the_pixels_of_generate(server, stub, mode, tmp_path):
    out = tmp_path / "images.npy"
    proc = subprocess.run([sys.executable, "-c", KSERVE_CLIENT, _base(server), mode, str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["images", "[4,", "1,", "28,", "28]"]
    np.testing.assert_array_equal(np.load(out)[:, 0], _generate(stub, "plain", range(4)))


def test_json_seeds_may_be_nested_int64_or_n_by_1(server, stub):
    body = json.dumps({"inputs": [{"name": "seeds", "datatype": "INT64", "shape": [3, 1],
                                   "data": [[4], [5], [6]]}]}).encode()
    status, _, data = _call(_base(server) + "/v2/models/plain/infer", "POST", body,
                            {"Content-Type": "application/json"})
    assert status == 200
    [images] = json.loads(data)["outputs"]
    np.testing.assert_array_equal(np.array(images["data"], np.uint8).reshape(3, 28, 28),
                                  _generate(stub, "plain", [4, 5, 6]))


# --- image URLs and caching -------------------------------------------------------------------

def test_image_urls_give_generate_pixels_and_revalidate_with_304(server, stub):
    base = _base(server) + "/v1/models/cond"
    status, headers, png = _call(base + "/images/7.png?label=3")
    assert status == 200 and headers["Content-Type"] == "image/png"
    np.testing.assert_array_equal(decode_png(png), _generate(stub, "cond", [7], [3])[0])
    assert headers["Cache-Control"] == "public, no-cache"  # kept, revalidated every use
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong, not W/

    status, again, body = _call(base + "/images/7.png?label=3", headers={"If-None-Match": etag})
    assert status == 304 and body == b"" and again["ETag"] == etag
    assert _call(base + "/images/7.png?label=4", headers={"If-None-Match": etag})[0] == 200

    status, headers, png = _call(base + "/grid.png?seeds=3,9,20-22&label=1")
    images = _generate(stub, "cond", [3, 9, 20, 21, 22], [1])
    np.testing.assert_array_equal(decode_png(png), make_grid(images[:, None]))

    version = json.loads(_call(_base(server) + "/v2/models/cond")[2])["versions"][0]
    status, pinned, _ = _call(base + f"/grid.png?seeds=0-3&version={version}")
    assert status == 200 and pinned["Cache-Control"] == "public, no-cache"  # a reload may
    # serve another file under that version: not immutable
    status, _, body = _call(base + "/grid.png?seeds=0-3&version=other")
    assert status == 404 and b"has no version 'other'" in body


# --- bad input --------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
_BINARY_HEADER = json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [2],
                                         "parameters": {"binary_data_size": 16}}]}).encode()
BAD = [  # method, path, body, headers, status, what the message says
    ("GET", "/v2/models/nope", None, {}, 404, "no model named 'nope'"),
    ("GET", "/v1/models/plain/images/-3.png", None, {}, 400, "is not a seed"),
    ("GET", "/v1/models/plain/images/18446744073709551616.png", None, {}, 400, "is not a seed"),
    ("GET", "/v1/models/plain/grid.png", None, {}, 400, "?seeds= is missing"),
    ("GET", "/v1/models/plain/grid.png?seeds=9-3", None, {}, 400, "low to high"),
    ("GET", "/v1/models/plain/grid.png?seeds=0-99999999999", None, {}, 400, "at most 256"),
    ("GET", "/v1/models/cond/grid.png?seeds=0-3&label=10", None, {}, 400, "out of range"),
    ("GET", "/v1/models/cond/grid.png?seeds=0-3&label=x", None, {}, 400, "not a class"),
    ("GET", "/v1/models/plain/grid.png?seeds=0-3&label=1", None, {}, 400,
     "not class-conditional"),
    ("GET", "/v1/models/plain/grid.png?seeds=0-3&timeout=-1", None, {}, 400, "timeout"),
    ("GET", "/no/such/route", None, {}, 404, "see /openapi.json"),
    ("PUT", "/v2/health/live", None, {}, 405, "use GET"),
    ("POST", "/v2/models/plain/infer", b"{not json", JSON, 400, "not valid JSON"),
    ("POST", "/v2/models/plain/infer", b"[1, 2]", JSON, 400, "JSON object"),
    ("POST", "/v2/models/plain/infer", _infer_json([1]), {"Content-Type": "text/plain"}, 415,
     "Content-Type 'text/plain'"),
    ("POST", "/v2/models/plain/infer", _infer_json([1]),
     {**JSON, "Content-Encoding": "gzip"}, 400, "valid gzip"),
    ("POST", "/v2/models/plain/infer", b'{"inputs": []}', JSON, 400, "non-empty list"),
    ("POST", "/v2/models/plain/infer", json.dumps({"inputs": [
        {"name": "seeds", "datatype": "UINT64", "shape": [3], "data": [1, 2]}]}).encode(),
     JSON, 400, "2 values for shape [3]"),
    ("POST", "/v2/models/plain/infer", json.dumps({"inputs": [
        {"name": "seeds", "datatype": "UINT64", "shape": [2, 2], "data": [1, 2, 3, 4]}]}).encode(),
     JSON, 400, "send [N] or [N, 1]"),
    ("POST", "/v2/models/plain/infer", json.dumps({"inputs": [
        {"name": "seeds", "datatype": "FP32", "shape": [1], "data": [1]}]}).encode(),
     JSON, 400, "use UINT64 or INT64"),
    ("POST", "/v2/models/plain/infer", json.dumps({"inputs": [
        {"name": "seeds", "datatype": "UINT64", "shape": [1], "data": ["7"]}]}).encode(),
     JSON, 400, "is not a number"),
    ("POST", "/v2/models/plain/infer", json.dumps({"inputs": [
        {"name": "seeds", "datatype": "UINT64", "shape": [1], "data": [-1]}]}).encode(),
     JSON, 400, "must be integers that fit UINT64"),
    ("POST", "/v2/models/plain/infer", json.dumps({"inputs": [
        {"name": "z", "datatype": "FP32", "shape": [1], "data": [0]}]}).encode(),
     JSON, 400, "unknown input 'z'"),
    ("POST", "/v2/models/plain/infer", _infer_json(range(300)), JSON, 400, "at most 256"),
    ("POST", "/v2/models/plain/infer", _infer_json([1], outputs=[{"name": "labels"}]), JSON,
     400, "unknown output 'labels'"),
    ("POST", "/v2/models/plain/infer", _infer_json([1], parameters={"timeout": "soon"}), JSON,
     400, "microseconds"),
    ("POST", "/v2/models/plain/infer", _BINARY_HEADER + b"\0" * 8,
     {"Inference-Header-Content-Length": str(len(_BINARY_HEADER))}, 400, "runs past"),
    ("POST", "/v2/models/plain/infer", _BINARY_HEADER + b"\0" * 24,
     {"Inference-Header-Content-Length": str(len(_BINARY_HEADER))}, 400, "not claimed"),
    ("POST", "/v2/models/plain/infer", _infer_json([1]) + b"\0" * 8,
     {"Inference-Header-Content-Length": "99999"}, 400, "is not a byte count"),
]


def test_bad_input_gets_the_right_status_and_says_what_to_fix(server):
    for method, path, body, headers, status, message in BAD:
        got, got_headers, data = _call(_base(server) + path, method, body, headers)
        assert got == status, (path, body, data)
        assert got_headers["Content-Type"].startswith("application/json")
        assert message in json.loads(data)["error"], (path, data)
    # ... and the server still serves.
    assert _call(_base(server) + "/v2/models/plain/infer", "POST", _infer_json([1]), JSON)[0] \
        == 200


def test_a_passed_deadline_is_a_504_and_nothing_runs(server):
    def runs() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
        return sum(float(line.split()[-1]) for line in text.decode().splitlines()
                   if line.startswith('dcgan_inference_duration_seconds_count{model="plain",'))

    assert _call(_base(server) + "/v2/models/plain/infer", "POST", _infer_json([1]),
                 JSON)[0] == 200
    before = runs()
    assert before > 0  # the count is really read
    status, _, body = _call(_base(server) + "/v1/models/plain/grid.png?seeds=0-63",
                            headers={"Request-Timeout": "0.000000001"})
    assert status == 504 and b"timeout passed" in body
    assert runs() == before
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
    version = server.registry.get("plain").version
    assert ('dcgan_request_duration_seconds_count{code="DEADLINE_EXCEEDED",'
            f'model="plain",rpc="GET /v1/models/{{name}}/grid.png",version="{version}"}}'
            ) in text.decode()


def test_routes_are_the_rpc_label_and_debug_logs_each_request(server, caplog):
    with caplog.at_level("DEBUG", logger="dcgan-serve.access"):
        assert _call(_base(server) + "/v2/models/plain/infer", "POST", _infer_json([1, 2]),
                     JSON)[0] == 200
    assert any("POST /v2/models/{name}/infer model=plain code=OK images=2" in r.getMessage()
               for r in caplog.records)
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
    version = server.registry.get("plain").version
    assert ('dcgan_request_duration_seconds_count{code="OK",model="plain",'
            f'rpc="POST /v2/models/{{name}}/infer",version="{version}"}}') in text.decode()
    assert 'dcgan_requests_in_flight{rpc="GET /v2/health/ready"}' in text.decode()


# --- the API description ----------------------------------------------------------------------

def test_openapi_document_lists_exactly_the_served_routes_and_their_schemas_hold(server):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    status, _, data = _call(_base(server) + "/openapi.json")
    document = json.loads(data)
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    served = {(r.method, r.resource.canonical) for r in server.http_app.router.routes()}
    assert documented == served

    registry = Registry().with_resource("urn:api", Resource.from_contents(
        {**document, "$schema": "https://json-schema.org/draft/2020-12/schema"}))

    def check(path: str, status: int, method: str = "GET", body=None, headers=None):
        got, got_headers, data = _call(_base(server) + path, method, body, headers)
        assert got == status
        route = next(p for p in document["paths"]
                     if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", p), path.split("?")[0]))
        answer = document["paths"][route][method.lower()]["responses"][str(status)]
        schema = answer["content"]["application/json"]["schema"]
        Draft202012Validator({"$ref": "urn:api" + schema["$ref"]}, registry=registry).validate(
            json.loads(data))

    check("/v2/health/live", 200)
    check("/v2/health/ready", 200)
    check("/v2", 200)
    check("/v2/models/cond", 200)
    check("/v2/models/cond/ready", 200)
    check("/v2/models/cond/config", 200)
    check("/v2/models/nope", 404)
    check("/v1/models", 200)
    check("/v1/models/plain/grid.png?seeds=9-1", 400)
    check("/v2/models/cond/infer", 200, "POST", _infer_json([1, 2]), JSON)
    check("/v2/models/cond/infer", 415, "POST", b"{}", {"Content-Type": "text/csv"})


# --- a server of its own: limits, drain, TLS and tokens ----------------------------------------

def _own_server(tiny_onnx, **kw):
    values = dict(host="127.0.0.1", port=0, http_port=0, metrics_port=-1,
                  health_port=0 if kw.get("tls_cert") else -1,  # TLS needs a probe port
                  models=(("plain", str(tiny_onnx)),), device="cpu")
    values.update(kw)
    return create_server(ServeConfig(**values))


def _held_infer(port: int) -> tuple[socket.socket, bytes]:
    """An infer request whose body is still on its way: admitted and in flight until the
    rest is sent."""
    body = _infer_json([1, 2, 3])
    held = socket.create_connection(("127.0.0.1", port))
    held.sendall(b"POST /v2/models/plain/infer HTTP/1.1\r\nHost: test\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    return held, body[10:]


def _finish(held: tuple[socket.socket, bytes]) -> int:
    sock, rest = held
    sock.sendall(rest)
    sock.settimeout(30)
    status = int(sock.recv(65536).split(b" ", 2)[1])
    sock.close()
    return status


def _wait_in_flight(running, route: str, count: int = 1) -> None:
    gauge = running.metrics.in_flight.labels(rpc=route)
    deadline = time.monotonic() + 10
    while gauge._value.get() < count:
        assert time.monotonic() < deadline, "the held request never reached the handler"
        time.sleep(0.01)


def test_overload_is_refused_at_once_not_queued(tiny_onnx):
    running = _own_server(tiny_onnx, max_in_flight=1)
    try:
        held = _held_infer(running.http_port)
        _wait_in_flight(running, "POST /v2/models/{name}/infer")
        started = time.monotonic()
        status, headers, body = _call(_base(running) + "/v2/models/plain/infer", "POST",
                                      _infer_json([1]), JSON)
        assert status == 429 and b"--max-in-flight" in body
        assert time.monotonic() - started < 2  # refused, not queued behind the held one
        # Metadata has capacity of its own: inference cannot use it up.
        assert _call(_base(running) + "/v2/models/plain")[0] == 200
        assert _finish(held) == 200
        assert _call(_base(running) + "/v2/models/plain")[0] == 200
    finally:
        running.stop(grace=1)


def test_drain_turns_readiness_false_refuses_new_work_and_finishes_admitted(tiny_onnx):
    running = _own_server(tiny_onnx, grace_seconds=20)
    stopper = None
    try:
        held = _held_infer(running.http_port)
        _wait_in_flight(running, "POST /v2/models/{name}/infer")
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        deadline = time.monotonic() + 10
        while _call(_base(running) + "/v2/health/ready")[0] != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(_call(_base(running) + "/v2/health/ready")[2]) == {"ready": False}
        status, _, body = _call(_base(running) + "/v2/models/plain/infer", "POST",
                                _infer_json([1]), JSON)
        assert status == 503 and b"shutting down" in body
        assert _finish(held) == 200  # the admitted request finishes
        stopper.join(30)
        assert not stopper.is_alive()
        with pytest.raises(OSError):  # and then the port is closed
            socket.create_connection(("127.0.0.1", running.http_port), timeout=2)
    finally:
        if stopper is None:
            running.stop(grace=1)


def test_tls_and_bearer_token_apply_to_http(tiny_onnx, pki, monkeypatch):
    monkeypatch.setenv("DCGAN_AUTH_TOKEN", "s3cret")
    running = _own_server(tiny_onnx, tls_cert=str(pki / "server.pem"),
                          tls_key=str(pki / "server.key"))
    try:
        base = f"https://localhost:{running.http_port}"
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        assert _call(base + "/v2/health/ready", context=context)[0] == 200  # open, like gRPC's
        status, headers, body = _call(base + "/v1/models", context=context)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert b"Authorization: Bearer" in body
        assert _call(base + "/v1/models", headers={"Authorization": "Bearer wrong"},
                     context=context)[0] == 401
        assert _call(base + "/v1/models", headers={"Authorization": "Bearer s3cret"},
                     context=context)[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext to TLS
            urllib.request.urlopen(f"http://127.0.0.1:{running.http_port}/v2/health/ready",
                                   timeout=5)
    finally:
        running.stop(grace=1)


def test_mutual_tls_on_http_needs_a_client_certificate_from_the_ca(tiny_onnx, pki):
    running = _own_server(tiny_onnx, tls_cert=str(pki / "server.pem"),
                          tls_key=str(pki / "server.key"), tls_client_ca=str(pki / "ca.pem"))
    try:
        url = f"https://localhost:{running.http_port}/v1/models"
        trusted = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        trusted.load_cert_chain(pki / "client.pem", pki / "client.key")
        assert _call(url, context=trusted)[0] == 200
        for who in (None, "stranger"):
            context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
            if who:
                context.load_cert_chain(pki / f"{who}.pem", pki / f"{who}.key")
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                _call(url, context=context)
    finally:
        running.stop(grace=1)


def test_http_can_be_turned_off_and_a_taken_port_fails_before_loading(tiny_onnx):
    running = _own_server(tiny_onnx, http_port=-1)
    try:
        assert running.http_port is None
    finally:
        running.stop(grace=1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ServiceError, match=f"127.0.0.1:{port}.*--http-port"):
            _own_server(tiny_onnx, http_port=port,
                        models=(("plain", "/no/such/model.onnx"),))  # never reached


# --- what the audit of the doors found, and what a new user hit ---------------------------------

def test_a_caller_that_disconnects_has_its_queued_work_dropped(tiny_onnx):
    """As a cancelled gRPC call: the HTTP request reaches the server, waits behind a long
    queue, its caller hangs up, and the server never runs it (seen in its run count)."""
    running = _own_server(tiny_onnx, inference_workers=2, batch_max_images=1)
    route = "POST /v2/models/{name}/infer"
    try:
        with long_queue(running) as runs:
            sock, rest = _held_infer(running.http_port)
            sock.sendall(rest)  # the whole request: it queues behind the big ones
            _wait_in_flight(running, route)
            sock.close()  # the caller hangs up
        assert runs._sum.get() == 3 * 1024  # the three HTTP seeds never ran
        codes = {s.labels["code"]: s.value for m in running.metrics.registry.collect()
                 for s in m.samples if s.name == "dcgan_request_duration_seconds_count"
                 and s.labels.get("rpc") == route}
        assert codes == {"CANCELLED": 1}
    finally:
        running.stop(grace=1)


def test_bodies_past_any_valid_request_are_413_and_unknown_fields_400(server):
    """The largest valid body to a model is its most latents in JSON; a body past it is
    refused with the limit in the message, before it is all read, compressed or not."""
    import gzip
    latents = json.dumps({"inputs": [{"name": "latents", "datatype": "FP32",
                                      "shape": [256, 100], "data": [-1.2345678e-05] * 25600}]})
    assert _call(_base(server) + "/v2/models/plain/infer", "POST", latents.encode(),
                 JSON)[0] == 200  # the biggest kind of valid request still gets in
    huge = _infer_json([1], padding="x" * (50 << 20))  # 50 MB with an unknown field
    status, _, data = _call(_base(server) + "/v2/models/plain/infer", "POST", huge, JSON)
    assert status == 413 and re.search(r"larger than \d+ bytes", json.loads(data)["error"])
    status, _, data = _call(_base(server) + "/v2/models/plain/infer", "POST",
                            gzip.compress(huge), {**JSON, "Content-Encoding": "gzip"})
    assert status == 413, data  # counted after decompression
    for body, field in ((_infer_json([1], padding="x"), "'padding'"),
                        (json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64",
                                                 "shape": [1], "data": [1], "dat": 2}]}),
                         "'dat'"),
                        (_infer_json([1], outputs=[{"name": "images", "binary": True}]),
                         "'binary'"),
                        (_infer_json([1], model_name="cond"), "model_name 'cond'")):
        status, _, data = _call(_base(server) + "/v2/models/plain/infer", "POST",
                                body if isinstance(body, bytes) else body.encode(), JSON)
        assert status == 400 and field in json.loads(data)["error"], data
    assert _call(_base(server) + "/v2/models/plain/infer", "POST",
                 _infer_json([1], model_name="plain", id="a"), JSON)[0] == 200


def test_images_behind_a_token_are_private_to_caches(tiny_onnx, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret")
    for auth, scope in (("", "public"), (str(token), "private")):
        running = _own_server(tiny_onnx, auth_token_file=auth)
        try:
            for path in ("/v1/models/plain/images/7.png", "/v1/models/plain/grid.png?seeds=0-3",
                         "/v1/models/plain/interpolation.gif?a=1&b=2&frames=3"):
                status, headers, _ = _call(_base(running) + path,
                                           headers={"Authorization": "Bearer s3cret"})
                assert status == 200
                assert headers["Cache-Control"].split(", ")[0] == scope, path
        finally:
            running.stop(grace=1)


def test_the_seed_limit_reads_the_same_from_every_door(server, stub):
    """One check, in the contract, so one message: gRPC, V2 and the PNG URL say the same."""
    import grpc
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(model="plain", seeds=list(range(300))), timeout=10)
    messages = {err.value.details()}
    for method, path, body in (("POST", "/v2/models/plain/infer", _infer_json(range(300))),
                               ("GET", "/v1/models/plain/grid.png?seeds=0-299", None)):
        status, _, data = _call(_base(server) + path, method, body, JSON if body else None)
        assert status == 400
        messages.add(json.loads(data)["error"])
    assert len(messages) == 1 and "300 seeds in one request" in messages.pop()
