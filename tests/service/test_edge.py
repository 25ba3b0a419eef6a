"""What a caller can make the server spend, tried as an attacker would: every call of every
door goes through one edge that refuses a caller without the token before reading its body,
admits by category with limits that hold, and bounds the size and time of a request."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.process.config import ServeConfig
from service.process.server import create_server
from tests.service.test_lifecycle import ServerProcess

TOKEN = "s3cret"
AUTH = [("authorization", f"Bearer {TOKEN}")]


def _tracebacks(caplog) -> list[str]:
    """What the service (or aiohttp, or grpc) logged with a traceback."""
    return [r.getMessage() for r in caplog.records if r.exc_info
            and r.name.startswith(("service", "dcgan-serve", "aiohttp", "grpc"))]


def _serve(tiny_onnx, **kw):
    return create_server(ServeConfig(**{
        "host": "127.0.0.1", "port": 0, "metrics_port": -1, "http_port": -1,
        "models": (("m", str(tiny_onnx)),), "device": "cpu", **kw}))


def _code(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M)[1])


def test_large_unauthenticated_messages_are_refused_without_being_read(tiny_onnx):
    """16 concurrent 16 MB Generate messages without a token: each UNAUTHENTICATED, and the
    server's peak memory does not grow by what they carry (it read none of it); one with
    the token is held to what a valid request can need."""
    server = ServerProcess("--model", f"m={tiny_onnx}", env={"DCGAN_AUTH_TOKEN": TOKEN})
    try:
        assert server.port, "".join(server.log)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[
                ("grpc.max_send_message_length", 64 << 20)]) as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            assert stub.Generate(pb.GenerateRequest(seeds=[1]), metadata=AUTH,
                                 timeout=10).count == 1
            before = _kib(server.proc.pid, "VmHWM")
            huge = pb.GenerateRequest(latents=bytes(16 << 20))
            calls = [stub.Generate.future(huge, timeout=60) for _ in range(16)]
            codes = {_code(call.result) for call in calls}
            peak = _kib(server.proc.pid, "VmHWM")
            assert codes == {"UNAUTHENTICATED"}
            assert peak - before < 64 << 10, (before, peak)  # KiB: not 16 x 16 MB
            # With the token: refused by size, before anything is parsed.
            assert _code(lambda: stub.Generate(huge, metadata=AUTH, timeout=60)) == \
                "RESOURCE_EXHAUSTED"
            assert stub.Generate(pb.GenerateRequest(seeds=[2]), metadata=AUTH,
                                 timeout=10).count == 1
    finally:
        server.kill()


def test_watch_streams_use_their_own_capacity_and_never_block_check(tiny_onnx):
    """On the main port Watch needs the token and has capacity of its own: a full set of
    streams refuses the next one, while inference and Check go on. On the plaintext health
    port the same: its Check is never refused."""
    from service.edge.call import MAX_WATCHES
    os.environ["DCGAN_AUTH_TOKEN"] = TOKEN
    try:
        running = _serve(tiny_onnx, max_in_flight=4, health_port=0)
    finally:
        del os.environ["DCGAN_AUTH_TOKEN"]
    check = health_pb2.HealthCheckRequest(service="")
    try:
        for port, metadata in ((running.port, AUTH), (running.health_port, None)):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                if metadata:  # no token, no stream
                    assert _code(lambda: next(health.Watch(check, timeout=5))) == \
                        "UNAUTHENTICATED"
                watches = [health.Watch(check, metadata=metadata, timeout=30)
                           for _ in range(MAX_WATCHES)]
                for watch in watches:  # each is open: its first status has come
                    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                assert _code(lambda: next(health.Watch(check, metadata=metadata,
                                                       timeout=5))) == "RESOURCE_EXHAUSTED"
                for _ in range(3):  # probes and inference are not held up
                    assert health.Check(check, timeout=5).status == \
                        health_pb2.HealthCheckResponse.SERVING
                if metadata:
                    stub = pb_grpc.GeneratorServiceStub(channel)
                    assert stub.Generate(pb.GenerateRequest(seeds=[1]), metadata=AUTH,
                                         timeout=10).count == 1
                for watch in watches:
                    watch.cancel()
    finally:
        running.stop(grace=0)


def test_the_in_flight_limit_holds_under_waves_of_refused_calls(tiny_onnx):
    """Waves of 24 concurrent slow calls against --max-in-flight 8: the admitted calls never
    exceed 8 (the in-flight gauge, read as they run), and each wave has refusals."""
    running = _serve(tiny_onnx, max_in_flight=8, inference_workers=1, metrics_port=0,
                     metrics_host="127.0.0.1")
    gauge = running.metrics.in_flight.labels(rpc="Generate")
    highest, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            highest[0] = max(highest[0], gauge._value.get())
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            slow = pb.GenerateRequest(seeds=list(range(256)), format=pb.IMAGE_FORMAT_PNG)
            codes = []
            with ThreadPoolExecutor(24) as pool:
                for _ in range(4):
                    codes += pool.map(lambda _: _code(
                        lambda: stub.Generate(slow, timeout=60)), range(24))
            assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    finally:
        stop.set()
        watcher.join()
        running.stop(grace=0)
    assert 1 <= highest[0] <= 8, highest[0]


def _slow_post(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: test\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1])
    return sock


def test_slow_bodies_are_dropped_after_the_read_timeout_and_others_served(tiny_onnx):
    """Callers trickling their bodies byte by byte hold every inference slot for at most
    --read-timeout: then each gets 408 and its connection is closed, and others are served."""
    running = _serve(tiny_onnx, http_port=0, max_in_flight=4, read_timeout=1.0)
    base = f"http://127.0.0.1:{running.http_port}"
    body = json.dumps({"inputs": [{"name": "seeds", "datatype": "UINT64", "shape": [1],
                                   "data": [1]}]}).encode()
    try:
        slow = [_slow_post(running.http_port, body) for _ in range(6)]
        started = time.monotonic()
        answers = []
        for sock in slow:
            sock.settimeout(10)
            head = sock.recv(65536)
            answers.append(int(head.split(b" ", 2)[1]))
            assert (b"--read-timeout" if answers[-1] == 408 else b"--max-in-flight") in head
        assert answers.count(408) == 4 and answers.count(429) == 2, answers
        assert time.monotonic() - started < 5
        for sock in slow:  # dropped: the server closed them
            assert sock.recv(65536) == b""
            sock.close()
        request = urllib.request.Request(base + "/v2/models/m/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        running.stop(grace=0)


@pytest.mark.parametrize("change", ["unload", "load", "reload"])
def test_a_stream_across_a_model_change_completes_or_ends_unavailable_saying_why(
        tmp_path, tiny_onnx, change, caplog):
    """A long GenerateStream while its model is unloaded, loaded again or reloaded (SIGHUP):
    it holds its batcher for the drain time, then ends UNAVAILABLE with what to resend; no
    INTERNAL, no traceback."""
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    running = _serve(tiny_onnx, models=(), model_repository=str(tmp_path),
                     model_control="explicit", grace_seconds=0.5, inference_workers=1)
    caplog.set_level(logging.ERROR)
    try:
        running.repository.load("m")
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            stream = stub.GenerateStream(pb.GenerateStreamRequest(
                model="m", range=pb.SeedRange(start=0, count=2_000_000), chunk_size=64),
                timeout=120)
            next(stream)
            changer = {"unload": lambda: running.repository.unload("m"),
                       "load": lambda: running.repository.load("m"),
                       "reload": running.reload}[change]
            threading.Thread(target=changer).start()
            with pytest.raises(grpc.RpcError) as err:
                for _ in stream:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "unloaded or reloaded" in err.value.details()
            assert "ask again for the seeds from" in err.value.details()
    finally:
        running.stop(grace=0)
    assert not _tracebacks(caplog)


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_hostile_inputs_are_refused_as_bad_requests_without_a_traceback(
        server, channel, caplog):
    caplog.set_level(logging.ERROR)
    base = f"http://127.0.0.1:{server.http_port}"
    nested = b"[" * 100_000 + b"]" * 100_000
    for url, body in ((base + "/v2/models/plain/infer", json.dumps({"inputs": [
            {"name": "seeds", "datatype": "UINT64", "shape": [True], "data": [1]}]}).encode()),
            (base + "/v2/models/plain/infer", b'{"inputs": ' + nested + b"}"),
            (base + "/v2/repository/index", b"[" * 2000 + b"]" * 2000)):
        status, answer = _post(url, body)
        assert status == 400 and b"error" in answer, (url, status, answer[:200])
    # The repository's bodies are a flag or two: a long one is refused unread.
    assert _post(base + "/v2/repository/index", nested)[0] == 413
    try:
        urllib.request.urlopen(base + "/v1/models/plain/grid.png?seeds=0-18446744073709551615",
                               timeout=10)
        raise AssertionError("a grid of every seed was not refused")
    except urllib.error.HTTPError as err:
        assert err.code == 400 and b"seeds" in err.read()
    huge = v2.ModelInferRequest(model_name="plain", inputs=[v2.ModelInferRequest.InferInputTensor(
        name="seeds", datatype="UINT64", shape=[2**62, 2**62])])
    with pytest.raises(grpc.RpcError) as err:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(huge, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not _tracebacks(caplog)


def test_metrics_follow_host_bearer_is_case_insensitive_and_health_names_nothing(tiny_onnx):
    os.environ["DCGAN_AUTH_TOKEN"] = TOKEN
    try:
        running = _serve(tiny_onnx, metrics_port=0, http_port=0)
    finally:
        del os.environ["DCGAN_AUTH_TOKEN"]
    try:
        import psutil
        bound = [c.laddr for c in psutil.Process().connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == running.metrics_port]
        assert [address.ip for address in bound] == ["127.0.0.1"]  # --host, not every interface
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            for scheme in ("bearer", "BEARER", "Bearer"):
                assert stub.Generate(pb.GenerateRequest(seeds=[1]), timeout=10, metadata=[
                    ("authorization", f"{scheme} {TOKEN}")]).count == 1
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="model/nope"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "model/m" not in err.value.details()
        request = urllib.request.Request(f"http://127.0.0.1:{running.http_port}/v1/models",
                                         headers={"Authorization": f"bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        running.stop(grace=0)
