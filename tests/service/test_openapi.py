"""/openapi.json says what each route really reads and answers: its query parameters, its 304,
its 405 and its security requirement, checked against a served API with a bearer token."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from service.process.config import ServeConfig
from service.process.server import create_server

TOKEN = {"Authorization": "Bearer s3cret"}
# A value of each query parameter that the route can read (it may still refuse the value).
SAMPLE = {"seeds": "0-3", "label": "1", "psi": "0.5", "a": "1", "b": "11", "frames": "3",
          "method": "lerp", "timeout": "5"}


@pytest.fixture(scope="module")
def api(tiny_cond_onnx, tmp_path_factory):
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text("s3cret")
    running = create_server(ServeConfig(host="127.0.0.1", port=0, http_port=0, metrics_port=-1,
                                        device="cpu", auth_token_file=str(token),
                                        models=(("cond", str(tiny_cond_onnx)),)))
    base = f"http://127.0.0.1:{running.http_port}"
    document = json.loads(_call(base + "/openapi.json")[2])
    yield base, document, running.registry.get("cond").version
    running.stop(grace=1)


def _call(url: str, method: str = "GET", headers=None, body: bytes | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


def _url(base: str, path: str, version: str, query: dict) -> str:
    path = path.replace("{name}", "cond").replace("{version}", version).replace("{seed}", "7")
    return base + path + ("?" + urllib.parse.urlencode(query) if query else "")


def _body(method: str) -> bytes | None:
    if method != "POST":
        return None
    return json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [1],
                                   "data": [1]}]}).encode()


@pytest.mark.parametrize("token", ["", "s3cret"])
def test_schemathesis_finds_nothing_the_document_and_the_server_disagree_on(
        tiny_onnx, tiny_cond_onnx, tmp_path, token, monkeypatch, caplog):
    """Schemathesis (`st run`, every check) against the live document, with a bearer token
    and without: the document says exactly what the server accepts and answers. Its settings
    (tests/service/schemathesis.toml) say where JSON Schema cannot."""
    import logging
    import subprocess
    import sys
    from pathlib import Path
    if token:
        monkeypatch.setenv("DCGAN_AUTH_TOKEN", token)
    caplog.set_level(logging.ERROR)
    # Under model control, with the served models in the repository: what Schemathesis
    # unloads it may load again.
    for name, model in (("cond", tiny_cond_onnx), ("plain", tiny_onnx)):
        (tmp_path / "models" / name / "1").mkdir(parents=True)
        (tmp_path / "models" / name / "1" / "model.onnx").write_bytes(model.read_bytes())
    running = create_server(ServeConfig(
        host="127.0.0.1", port=0, http_port=0, metrics_port=-1, device="cpu", max_batch=64,
        models=(("cond", str(tiny_cond_onnx)), ("plain", str(tiny_onnx))),
        model_repository=str(tmp_path / "models"), model_control="explicit"))
    config = Path(__file__).with_name("schemathesis.toml")
    st = Path(sys.executable).with_name("st")
    try:
        run = subprocess.run(
            [str(st), "--config-file", str(config), "run",
             f"http://127.0.0.1:{running.http_port}/openapi.json", "--checks", "all",
             "--max-examples", "40", "--seed", "7", "--workers", "1", "--no-color",
             *(["--header", f"Authorization: Bearer {token}"] if token else [])],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        running.stop(grace=1)
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    # Every operation of the document was selected and tested.
    selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", run.stdout).groups())
    assert selected == total > 40 and f"Tested: {total}" in run.stdout, summary
    assert not re.search(r"\b(failures?|errors?)\b in [0-9.]+s", run.stdout), summary
    assert not [r.getMessage() for r in caplog.records if r.exc_info and r.name.startswith(
        ("service", "dcgan-serve", "aiohttp", "grpc"))]


def test_a_304_is_documented_exactly_where_an_etag_revalidates(api):
    base, document, version = api
    for path, method, operation in _operations(document):
        if path.startswith("/v2/repository/models/"):
            continue  # they change what is served (and need model control): test_repository.py
        query = {p["name"]: SAMPLE[p["name"]] for p in operation["parameters"]
                 if p["in"] == "query" and p.get("required")}
        url = _url(base, path, version, query)
        status, headers, _ = _call(url, method, {**TOKEN, "Content-Type": "application/json"},
                                   _body(method))
        assert status == 200, (path, status)
        etag = headers.get("ETag")
        if "304" in operation["responses"]:
            assert etag and any(p["name"] == "If-None-Match" for p in operation["parameters"])
            again, _, data = _call(url, method, {**TOKEN, "If-None-Match": etag})
            assert again == 304 and data == b"", path
        else:
            assert etag is None, path


def test_every_path_answers_405_with_its_documented_methods(api):
    base, document, version = api
    for path, item in document["paths"].items():
        allowed = sorted(m.upper() for m in item)
        for operation in item.values():
            assert "405" in operation["responses"], path
        status, headers, data = _call(_url(base, path, version, {}), "DELETE", TOKEN)
        assert status == 405 and headers["Allow"] == ",".join(allowed), (path, headers)
        assert " or ".join(allowed) in json.loads(data)["error"]


def test_the_security_requirement_is_what_the_token_check_does(api):
    base, document, version = api
    assert document["security"] == [{"bearer": []}]
    for path, method, operation in _operations(document):
        open_route = operation.get("security", document["security"]) == []
        query = {p["name"]: SAMPLE[p["name"]] for p in operation["parameters"]
                 if p["in"] == "query" and p.get("required")}
        status, headers, _ = _call(_url(base, path, version, query), method,
                                   {"Content-Type": "application/json"}, _body(method))
        if open_route:
            assert status == 200, path
        else:
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer", path
            assert "401" in operation["responses"], path


def test_path_parameters_are_documented_for_every_placeholder(api):
    _, document, _ = api
    for path, _, operation in _operations(document):
        placeholders = set(re.findall(r"{(\w+)}", path))
        assert {p["name"] for p in operation["parameters"] if p["in"] == "path"} \
            == placeholders, path
