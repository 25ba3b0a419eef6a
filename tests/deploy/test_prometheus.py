"""A real Prometheus server scrapes a running dcgan-serve on 127.0.0.1, and the PromQL in the
docs/deployment.md and in the Grafana dashboard is evaluated over Prometheus's HTTP API.

Needs Debian's `prometheus` package: `.ci/run` installs it, so under CI (`CI=true`) its absence
fails the test; on a user's machine without it the test skips and says so.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from bench.image import free_port
from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dcgan-serve.json"


def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    reason = "Prometheus is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + "; .ci/run should have installed it")
    pytest.skip(reason)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    yield from _prometheus(tmp_path_factory.mktemp("prometheus"),
                           [{"targets": [f"127.0.0.1:{server.metrics_port}"]}])


def _prometheus(folder, static_configs: list[dict]):
    """A real Prometheus scraping these targets every second; yields its base URL."""
    binary = _prometheus_binary()
    config = folder / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "dcgan-serve", "static_configs": static_configs}]}))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("Prometheus did not start: " + proc.stderr.read()[-2000:])
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _query(base: str, promql: str, at: float | None = None) -> list[dict]:
    params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
    answer = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode(params))
    assert answer["status"] == "success", (promql, answer)
    return answer["data"]["result"]


def _numbers(result: list[dict]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def _load_for(seconds: float, stub, v2_stub) -> None:
    """Steady traffic over a few scrapes: Generate, ModelInfer and some refused calls."""
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        for model in ("plain", "cond"):  # every served model's latency series moves
            stub.Generate(pb.GenerateRequest(model=model, seeds=[1, 2, 3]), timeout=10)
        request = v2.ModelInferRequest(model_name="cond", inputs=[
            v2.ModelInferRequest.InferInputTensor(name="seeds", datatype="UINT64", shape=[2])])
        request.raw_input_contents.append(bytes(16))
        v2_stub.ModelInfer(request, timeout=10)
        try:
            stub.Generate(pb.GenerateRequest(model="nope", seeds=[1]), timeout=10)
        except Exception:
            pass
        time.sleep(0.02)


def test_readme_and_dashboard_queries_return_numbers(prometheus, server, stub, channel):
    v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
    load = threading.Thread(target=_load_for, args=(8, stub, v2_stub))
    load.start()
    # Prometheus must see the target up, then have a few scrapes during the load.
    deadline = time.monotonic() + 30
    while not _numbers(_query(prometheus, 'up{job="dcgan-serve"} == 1')):
        assert time.monotonic() < deadline, _get(f"{prometheus}/api/v1/targets")
        time.sleep(0.5)
    load.join()
    time.sleep(2)  # one more scrape after the last call

    readme = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"```promql\n(.*?)```", readme, re.S)[1]
    queries = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(queries) >= 4
    for promql in queries:
        values = _numbers(_query(prometheus, promql))
        assert values and all(math.isfinite(v) and v >= 0 for v in values), promql
    p99 = _numbers(_query(prometheus, queries[1]))
    assert all(0 < v < 10 for v in p99)  # seconds: a real latency, not a bucket's edge

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    must_have_data = {"Generation latency p50 / p99, by model", "Images generated per second, by model",
                      "Requests per second, by RPC", "Errors per second, by status code",
                      "Served models", "Requests per second, by model and version"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql = (target["expr"].replace("$__rate_interval", "1m")
                      .replace("$model", ".*"))
            result = _query(prometheus, promql)  # every query parses and runs
            if panel["title"] in must_have_data:
                assert result, (panel["title"], promql)
    assert len(exprs) >= 10
    codes = {s["metric"]["code"] for s in _query(
        prometheus, 'sum by (code) (rate(dcgan_request_duration_seconds_count{code!="OK"}[1m]))')}
    assert "NOT_FOUND" in codes


def _hammer(stub, threads: int, seconds: float) -> None:
    """`threads` callers back to back on one server for `seconds`."""
    def caller():
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            stub.Generate(pb.GenerateRequest(model="plain", seeds=list(range(32))), timeout=10)
    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_the_autoscaling_queries_give_a_number_per_pod_that_rises_with_load(
        server, stub, tiny_onnx, tmp_path):
    """The KEDA trigger's query and the prometheus-adapter rule, as deploy/ writes them, on a
    real Prometheus scraping two servers labelled as the Prometheus Operator labels pods: the
    loaded pod's number rises from light to heavy load, the idle pod's stays at zero, and
    KEDA's total is the pods' sum."""
    from service.process.config import ServeConfig
    from service.process.server import create_server
    idle = create_server(ServeConfig(host="127.0.0.1", port=0, http_port=-1, metrics_port=0,
                                     metrics_host="127.0.0.1", models=(("plain", str(tiny_onnx)),),
                                     device="cpu"))
    pods = {"dcgan-serve-a": server, "dcgan-serve-b": idle}
    targets = [{"targets": [f"127.0.0.1:{s.metrics_port}"],
                "labels": {"namespace": "default", "pod": pod}} for pod, s in pods.items()]
    scaled = yaml.safe_load((ROOT / "deploy/kubernetes/keda/scaledobject.yaml").read_text())
    keda = scaled["spec"]["triggers"][0]["metadata"]["query"]
    rule = yaml.safe_load((ROOT / "deploy/prometheus-adapter/values.yaml").read_text())[
        "rules"]["custom"][0]
    # Rendered as prometheus-adapter renders it for the HPA's request for these pods' metric.
    adapter = (rule["metricsQuery"]
               .replace("<<.Series>>", re.match(r"\w+", rule["seriesQuery"])[0])
               .replace("<<.LabelMatchers>>",
                        'namespace="default",pod=~"dcgan-serve-a|dcgan-serve-b"')
               .replace("<<.GroupBy>>", "pod"))
    running = _prometheus(tmp_path, targets)
    base = next(running)
    try:
        def figures() -> tuple[dict, float]:
            time.sleep(2.5)  # the last calls scraped
            at = time.time()
            per_pod = {r["metric"]["pod"]: float(r["value"][1])
                       for r in _query(base, adapter, at)}
            [total] = _numbers(_query(base, keda, at))
            return per_pod, total

        deadline = time.monotonic() + 30
        while len(_numbers(_query(base, 'up{job="dcgan-serve"} == 1'))) < 2:
            assert time.monotonic() < deadline, _get(f"{base}/api/v1/targets")
            time.sleep(0.5)
        from service.client import GeneratorClient
        with GeneratorClient(f"127.0.0.1:{idle.port}") as client:
            client.generate([1], model="plain")  # it has served once, long before the window
        time.sleep(2)
        _hammer(stub, threads=1, seconds=8)
        light, light_total = figures()
        _hammer(stub, threads=8, seconds=8)
        heavy, heavy_total = figures()
    finally:
        running.close()
        idle.stop(grace=0)
    assert set(light) == set(heavy) == set(pods), (light, heavy)  # one number per pod
    assert light["dcgan-serve-b"] == heavy["dcgan-serve-b"] < 0.01 * light["dcgan-serve-a"]
    assert 0 < light["dcgan-serve-a"] < heavy["dcgan-serve-a"] / 2, (light, heavy)
    assert light_total == pytest.approx(sum(light.values()))
    assert heavy_total == pytest.approx(sum(heavy.values())) and heavy_total > 2 * light_total
    print(f"calls in progress per pod: light {light}, heavy {heavy}")
