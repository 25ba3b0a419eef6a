"""The README's Python snippets run as written against a real server (only its address is
changed to the test server's port), each in the environment the README says to make for it."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT, python_env

README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)


def _snippet(marker: str) -> str:
    [found] = [s for s in SNIPPETS if marker in s]
    return found


@pytest.fixture(scope="module")
def bundled_server():
    from service.process.config import ServeConfig
    from service.process.server import create_server
    running = create_server(ServeConfig(host="127.0.0.1", port=0, http_port=-1,
                                        metrics_port=-1, device="cpu"))  # the bundled models
    yield running
    running.stop(grace=1)


def test_the_client_library_snippet(bundled_server):
    code = _snippet("GeneratorClient").replace("127.0.0.1:50051",
                                               f"127.0.0.1:{bundled_server.port}")
    names: dict = {}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - our own README
    assert names["images"].shape == (3, 28, 28)
    assert names["total"] == 100_000


def test_the_tritonclient_grpc_snippet_in_its_own_environment(bundled_server,
                                                              tritonclient_grpc_python):
    """The README's install line, run as written (the `tritonclient_grpc_python` fixture, in a
    folder kept between runs), then its snippet with that environment's Python."""
    code = _snippet("tritonclient.grpc").replace("127.0.0.1:50051",
                                                 f"127.0.0.1:{bundled_server.port}")
    run = subprocess.run([tritonclient_grpc_python, "-c", code],
                         env={**python_env(), "PYTHONPATH": ""}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["(4,", "1,", "28,", "28)", "uint8"]
