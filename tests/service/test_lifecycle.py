"""`dcgan-serve` and `dcgan-client` as processes: start-up faults, SIGTERM draining, the CLI."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import onnx
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from tests.conftest import PYTHON, ROOT, python_env

LISTENING = re.compile(r"listening grpc=[\d.]+:(\d+) http=\S+ metrics=[\d.]+:(\d+)")


class ServerProcess:
    """`python -m service` on free loopback ports, its ports read from its log."""

    listening = LISTENING  # the log line that gives the ports

    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "service", "--host", "127.0.0.1", "--port", "0",
             "--http-port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0", *args],
            env={**python_env(), **(env or {})}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.log: list[str] = []
        self.port = self.metrics_port = None
        deadline = time.monotonic() + 60
        for line in self.proc.stdout:
            self.log.append(line)
            if m := self.listening.search(line):
                self.port, self.metrics_port = int(m[1]), int(m[2])
                break
            if time.monotonic() > deadline:
                break
        # Keep reading, so the server never blocks on a full pipe and its log is kept.
        self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stdout),
                                        daemon=True)
        self._reader.start()

    def finish(self, timeout=30) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Stuck: have it print its threads' stacks (SIGUSR1), then fail showing them.
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            self.kill()
            self._reader.join(timeout=10)
            pytest.fail(f"the server did not exit within {timeout}s; its log and stacks:\n"
                        + "".join(self.log))
        self._reader.join(timeout=10)
        return self.proc.returncode, "".join(self.log)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _bad_models(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:5000])
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model")
    bare = onnx.load(str(good))
    del bare.metadata_props[:]
    no_meta = tmp_path / "no-metadata.onnx"
    onnx.save(bare, str(no_meta))
    return {
        "missing": (tmp_path / "missing.onnx", "does not exist"),
        "truncated": (truncated, "is not a loadable ONNX model"),
        "not onnx": (text, "is not a loadable ONNX model"),
        "no metadata": (no_meta, "missing metadata keys"),
    }


def test_bad_model_files_stop_start_up_with_a_message_naming_them(tmp_path, tiny_onnx):
    for kind, (path, message) in _bad_models(tmp_path, tiny_onnx).items():
        proc = subprocess.run([PYTHON, "-m", "service", "--port", "0", "--http-port", "-1",
                               "--metrics-port", "-1", "--model", f"m={path}"], env=python_env(), capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1, kind
        assert str(path) in proc.stderr and message in proc.stderr, (kind, proc.stderr)


def test_a_taken_port_fails_start_up_at_once_with_one_clear_line(tiny_onnx):
    import socket
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([PYTHON, "-m", "service", "--host", "127.0.0.1", "--port",
                               str(port), "--http-port", "0", "--metrics-port", "-1",
                               "--model", f"m={tiny_onnx}"],
                              env=python_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    # Said before any model is loaded, and without gRPC's own core error line.
    assert "loaded" not in proc.stderr and "Failed to add port" not in proc.stderr


def test_a_wrong_shaped_model_is_refused(tmp_path, tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    for prop in model.metadata_props:
        if prop.key == "dcgan.latent_dim":
            prop.value = "64"  # the graph takes 100
    path = tmp_path / "wrong.onnx"
    onnx.save(model, str(path))
    from service.errors import ModelLoadError
    from service.runtime import OnnxGenerator
    with pytest.raises(ModelLoadError, match=r"expected float \[N, 64\]"):
        OnnxGenerator(path)


def test_cuda_that_cannot_work_is_a_start_up_error_not_a_cpu_fallback(tiny_onnx):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal is for builds and machines without")
    proc = subprocess.run([PYTHON, "-m", "service", "--port", "0", "--http-port", "-1",
                           "--metrics-port", "-1", "--device", "cuda", "--model", f"m={tiny_onnx}"],
                          env=python_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--device cuda was asked for" in proc.stderr


def test_environment_variables_configure_the_server(tiny_onnx):
    server = ServerProcess(env={"DCGAN_MODELS": f"envmodel={tiny_onnx}",
                                "DCGAN_MAX_BATCH": "7", "DCGAN_LOG_LEVEL": "DEBUG"})
    try:
        assert server.port, "".join(server.log)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            info = pb_grpc.GeneratorServiceStub(ch).GetModelInfo(pb.GetModelInfoRequest(),
                                                                 timeout=10)
        assert (info.name, info.max_batch) == ("envmodel", 7)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        code, _ = server.finish()
    assert code == 0


def test_sigterm_drains_an_in_flight_stream_then_exits_0(tiny_onnx):
    server = ServerProcess("--model", f"m={tiny_onnx}", "--grace-seconds", "30")
    try:
        assert server.port, "".join(server.log)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.GeneratorServiceStub(ch)
            stream = stub.GenerateStream(pb.GenerateStreamRequest(
                range=pb.SeedRange(start=0, count=20000), chunk_size=100), timeout=60)
            first = next(stream)  # the call is accepted and running
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            rest = list(stream)  # the in-flight call is finished, not cut off
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(pb.GenerateRequest(seeds=[1]), timeout=5)
        code, log = server.finish()
    finally:
        server.kill()
    seeds = list(first.seeds) + [s for r in rest for s in r.seeds]
    assert seeds == list(range(20000))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert code == 0 and "SIGTERM: draining" in log and "stopped" in log


def test_client_cli_writes_pngs_and_lists_models(server, tmp_path):
    address = f"127.0.0.1:{server.port}"

    def run(*args):
        return subprocess.run([PYTHON, "-m", "service.client", "--address", address, *args],
                              env=python_env(), capture_output=True, text=True, timeout=60)
    out = run("generate", "--seed", "0-3", "--label", "7", "--out", str(tmp_path / "a"))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        f"seed_{s}_label7.png" for s in range(4)]
    out = run("generate", "--seed", "0-8", "--grid", "--out", str(tmp_path / "b"))
    assert out.returncode == 0 and (tmp_path / "b" / "grid.png").exists()
    out = run("generate", "--seed", "0-300", "--stream", "--model", "plain",
              "--out", str(tmp_path / "c"))
    assert out.returncode == 0 and len(list((tmp_path / "c").iterdir())) == 301
    info = run("info")
    assert info.returncode == 0 and "cond (default): dcgan on mnist" in info.stdout
    out = run("generate", "--seed", "5-9,20", "--stream", "--out", str(tmp_path / "e"))
    assert out.returncode == 0 and len(list((tmp_path / "e").iterdir())) == 6
    bad = run("generate", "--seed", "1", "--model", "nope", "--out", str(tmp_path / "d"))
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr
    # Ten million seeds are refused before one is listed: the server's limit is asked first.
    started = time.monotonic()
    big = run("generate", "--seed", "0-9999999", "--out", str(tmp_path / "f"))
    assert big.returncode == 2 and "10000000 seeds: the server takes at most 256" in big.stderr
    assert "--stream" in big.stderr and time.monotonic() - started < 10
    health = run("health")
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    assert run("health", "--service", "model/plain").returncode == 0
    assert run("health", "--service", "model/nope").returncode == 1  # NOT_FOUND


def test_client_cli_names_sort_in_seed_order_and_refuses_a_bad_psi(server, tmp_path, capsys):
    from service.client import main as client_main
    address = ["--address", f"127.0.0.1:{server.port}"]
    assert client_main([*address, "generate", "--seed", "8-11", "--model", "plain",
                        "--out", str(tmp_path / "a")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["seed_08.png", "seed_09.png", "seed_10.png", "seed_11.png"]
    for psi in ("0", "1.5", "nan", "x"):  # what --help says is out of range: refused at once
        with pytest.raises(SystemExit) as exit_:
            client_main([*address, "generate", "--seed", "1", "--psi", psi,
                         "--out", str(tmp_path / "b")])
        assert exit_.value.code == 2 and "psi" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_generated_stubs_match_the_proto():
    proc = subprocess.run([PYTHON, "tools/gen_protos.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_serving_path_imports_no_torch():
    # Block torch outright: importing the server, client and runtime must not need it.
    code = ("import sys; sys.modules['torch'] = None; "
            "import service.process.server, service.client, service.runtime, service.plane.dataplane; "
            "print('ok')")
    proc = subprocess.run([PYTHON, "-c", code], env=python_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_debug_level_logs_each_rpc_and_onnxruntime_telemetry_is_off(tiny_onnx):
    env = python_env()
    env.pop("ORT_DISABLE_TELEMETRY", None)
    server = ServerProcess("--model", f"m={tiny_onnx}", "--log-level", "DEBUG", env=env)
    try:
        assert server.port, "".join(server.log)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            pb_grpc.GeneratorServiceStub(ch).Generate(pb.GenerateRequest(seeds=[1, 2]),
                                                      timeout=10)
        time.sleep(0.5)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        code, log = server.finish()
    assert code == 0
    assert re.search(r"DEBUG dcgan-serve.access: Generate model=m code=OK images=2 [\d.]+ms",
                     log), log[-2000:]
    # The server opts out of onnxruntime's usage telemetry unless the operator set it.
    probe = subprocess.run([PYTHON, "-c", "import os, service.runtime; "
                            "print(os.environ['ORT_DISABLE_TELEMETRY'])"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "1", probe.stderr
    probe = subprocess.run([PYTHON, "-c", "import os, service.runtime; "
                            "print(os.environ['ORT_DISABLE_TELEMETRY'])"],
                           env={**env, "ORT_DISABLE_TELEMETRY": "0"}, capture_output=True,
                           text=True, timeout=60)
    assert probe.stdout.strip() == "0", probe.stderr


def test_start_up_freezes_what_it_loaded_so_full_collections_skip_it(server):
    import gc
    # The server (session fixture) froze everything loaded at start-up, so Python's full
    # collections walk only what was made since (a ~10 ms pause holding the GIL otherwise).
    assert gc.get_freeze_count() > 10_000
    gc.collect()
    assert gc.get_freeze_count() > 10_000  # collections do not thaw them
