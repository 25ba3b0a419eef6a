"""Multi-process mode: `dcgan-serve --processes 2` as a process, called over loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import grpc
import numpy as np

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.client import images_from_response
from service.process.config import usable_cpus
from tests.conftest import PYTHON, python_env
from tests.service.test_lifecycle import ServerProcess


class Supervised(ServerProcess):
    """`python -m service --processes 2`, its ports read from the supervisor's own line."""

    listening = re.compile(
        r"listening grpc=[\d.]+:(\d+) http=\S+ metrics=[\d.]+:(\d+) processes=2")

    def __init__(self, *args: str):
        super().__init__("--processes", "2", *args)

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(pid) for pid in out.split()]

    def finish(self, timeout=40) -> tuple[int, str]:
        return super().finish(timeout)


def _per_worker_calls(metrics_port: int, rpc: str = "Generate") -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    calls: dict[str, float] = {}
    for m in re.finditer(r'^dcgan_request_duration_seconds_count\{(.*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        if labels["rpc"] == rpc and labels["code"] == "OK":
            calls[labels["worker"]] = calls.get(labels["worker"], 0) + float(m[2])
    return calls


def test_workers_share_the_port_and_metrics_merge_them(tiny_onnx, server, stub):
    sup = Supervised("--model", f"m={tiny_onnx}")
    try:
        assert sup.port, "".join(sup.log)
        assert len(sup.workers()) == 2
        seeds = [3, 1, 4, 1, 5]
        # Same model file, same seeds: the same pixels as a single-process server gives.
        expected = images_from_response(stub.Generate(pb.GenerateRequest(model="plain",
                                                                         seeds=seeds)))
        for _ in range(16):  # separate connections (grpc shares one per target unless told
            # otherwise), which the kernel spreads over the workers
            with grpc.insecure_channel(f"127.0.0.1:{sup.port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                response = pb_grpc.GeneratorServiceStub(ch).Generate(
                    pb.GenerateRequest(seeds=seeds), timeout=10)
                np.testing.assert_array_equal(images_from_response(response), expected)
        calls = _per_worker_calls(sup.metrics_port)
        assert set(calls) == {"0", "1"} and sum(calls.values()) == 16, calls
        # The HTTP port is shared the same way (each request on a connection of its own).
        http = re.search(r"http=[\d.]+:(\d+) metrics", "".join(sup.log))[1]
        body = json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [5],
                                       "data": seeds}]}).encode()
        for _ in range(16):
            request = urllib.request.Request(
                f"http://127.0.0.1:{http}/v2/models/m/infer", data=body,
                headers={"Content-Type": "application/json", "Connection": "close"})
            with urllib.request.urlopen(request, timeout=10) as r:
                [images] = json.loads(r.read())["outputs"]
            np.testing.assert_array_equal(
                np.array(images["data"], np.uint8).reshape(expected.shape), expected)
        calls = _per_worker_calls(sup.metrics_port, "POST /v2/models/{name}/infer")
        assert set(calls) == {"0", "1"} and sum(calls.values()) == 16, calls
        # A big request (run on a worker's threads, not its event loop): exact as well.
        big = list(range(40))
        expected_big = images_from_response(stub.Generate(pb.GenerateRequest(model="plain",
                                                                             seeds=big)))
        with grpc.insecure_channel(f"127.0.0.1:{sup.port}") as ch:
            response = pb_grpc.GeneratorServiceStub(ch).Generate(
                pb.GenerateRequest(seeds=big), timeout=10)
            np.testing.assert_array_equal(images_from_response(response), expected_big)
    finally:
        sup.proc.send_signal(signal.SIGTERM)
        code, log = sup.finish()
    assert code == 0, log[-3000:]
    assert "[worker 0]" in log and "[worker 1]" in log and log.rstrip().endswith("stopped")
    # Each worker runs its big requests on its own share of the cores.
    share = max(1, usable_cpus() // 2)
    assert log.count(f"a run on {share} worker thread(s)") == 2, log[-3000:]


def test_a_dead_worker_stops_the_whole_with_exit_1(tiny_onnx):
    sup = Supervised("--model", f"m={tiny_onnx}")
    try:
        assert sup.port, "".join(sup.log)
        os.kill(sup.workers()[0], signal.SIGKILL)
        code, log = sup.finish()
    finally:
        if sup.proc.poll() is None:
            sup.proc.kill()
    assert code == 1 and "exited (code -9): stopping the others" in log
    deadline = time.monotonic() + 10
    while sup.workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sup.workers()


def test_a_bad_model_file_fails_start_up_with_its_name(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    proc = subprocess.run([PYTHON, "-m", "service", "--processes", "2", "--port", "0",
                           "--http-port", "0", "--metrics-port", "-1", "--model", f"m={bad}"],
                          env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert str(bad) in proc.stdout + proc.stderr and "did not start" in proc.stderr
