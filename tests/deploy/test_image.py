"""The serving image, built and run for real with podman (or Docker), as a user would run it.

Builds the Dockerfile's default target on a local Debian 12 base (built once by mmdebstrap and
cached in the engine's store), starts it with ports published on 127.0.0.1 only, and checks
from outside: health, pixels identical to `dcgan-train sample`, metrics, the image's promises
(non-root, no torch, the default models inside, DCGAN_* variables honoured), and a clean
`stop` with requests in flight. Every step is time-bounded; containers are removed.

Without podman or a Docker engine it skips and says why; under CI (`CI=true`, set by .ci/run,
which installs podman, runc and mmdebstrap) it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from bench import image as img
from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.client import images_from_response
from service.imaging import decode_png
from tests.conftest import PYTHON, ROOT, python_env

GRACE_SECONDS = 20


@pytest.fixture(scope="module")
def engine():
    try:
        engine = img.find_engine()
        base = img.ensure_base(engine)
    except img.EngineUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc}; .ci/run should have installed it")
        pytest.skip(str(exc))
    img.build_image(engine, base)
    return engine


@pytest.fixture(scope="module")
def container(engine):
    """The image as `docker run` starts it: no arguments, no environment."""
    name = f"dcgan-test-{os.getpid()}"
    started = time.monotonic()
    try:
        port, metrics_port = img.start(engine, name, env={"DCGAN_GRACE_SECONDS": GRACE_SECONDS})
        first_answer = time.monotonic() - started + img.wait_first_answer(port, timeout=90)
        yield dict(name=name, port=port, metrics_port=metrics_port, first_answer=first_answer)
    finally:
        img.remove(engine, name)


def test_the_readme_build_keeps_the_health_check(engine):
    """podman's default OCI format has no HEALTHCHECK: the README's podman build asks for the
    docker format, as the image test's own build does, and the built image carries it."""
    readme = (ROOT / "README.md").read_text()
    [podman_build] = re.findall(r"^podman build [^&\n]*", readme, re.M)
    assert "--format docker" in podman_build, podman_build
    if engine.command == "podman":
        found = engine.run("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                           img.IMAGE).stdout
        test = json.loads(found)["Test"]  # the Dockerfile's, as built
        assert test[0] == "CMD" and "dcgan-client" in test[-1] and test[-1].endswith(" health")


def _exec(engine, name, *command) -> subprocess.CompletedProcess:
    return engine.run("exec", name, *command, check=False, timeout=60)


def test_it_turns_healthy_and_answers_soon_after_run(engine, container, capsys):
    with capsys.disabled():  # the figure belongs in every CI log, passing or not
        print(f"\n[image] podman run -> first answered Generate: "
              f"{container['first_answer']:.2f} s")
    assert container["first_answer"] < 60
    # The image's own HEALTHCHECK (dcgan-client health inside it) agrees.
    if engine.command == "podman":
        deadline = time.monotonic() + 30
        while engine.run("healthcheck", "run", container["name"], check=False,
                         timeout=30).returncode != 0:
            assert time.monotonic() < deadline, "the image's HEALTHCHECK never passed"
            time.sleep(1)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{container['port']}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="model/mnist"), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_pixels_are_identical_to_the_cli_sample_of_the_same_model(container, tmp_path):
    seeds = [0, 7, 42, 1234]
    proc = subprocess.run([PYTHON, "-m", "training", "sample", str(ROOT / "models" /
                                                                    "mnist-dcgan.onnx"),
                           "--seed", ",".join(map(str, seeds)), "--out", str(tmp_path)],
                          env=python_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    local = np.stack([decode_png((tmp_path / f"seed_{s}_label{s % 10}.png").read_bytes())
                      for s in seeds])
    with grpc.insecure_channel(f"127.0.0.1:{container['port']}") as ch:
        response = pb_grpc.GeneratorServiceStub(ch).Generate(
            pb.GenerateRequest(model="mnist", seeds=seeds), timeout=10)
    assert response.labels == [s % 10 for s in seeds]
    assert images_from_response(response).tobytes() == local.tobytes()


def _scrape(port) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _generate_count(text: str) -> float:
    m = re.search(r'^dcgan_request_duration_seconds_count\{code="OK",model="mnist",'
                  r'rpc="Generate",version="[^"]+"\} (\S+)$', text, re.M)
    return float(m[1]) if m else 0.0


def test_metrics_move_after_calls(container):
    before = _generate_count(_scrape(container["metrics_port"]))
    with grpc.insecure_channel(f"127.0.0.1:{container['port']}") as ch:
        stub = pb_grpc.GeneratorServiceStub(ch)
        for _ in range(5):
            stub.Generate(pb.GenerateRequest(model="mnist", seeds=[1, 2]), timeout=10)
    assert _generate_count(_scrape(container["metrics_port"])) == before + 5


def test_the_image_keeps_its_promises(engine, container):
    name = container["name"]
    assert _exec(engine, name, "id", "-u").stdout.strip() == "10001"
    no_torch = _exec(engine, name, "python3", "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    with grpc.insecure_channel(f"127.0.0.1:{container['port']}") as ch:
        models = pb_grpc.GeneratorServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.name for m in models.models] == ["mnist", "fashion-mnist"]


def test_environment_variables_configure_it(engine):
    name = f"dcgan-test-env-{os.getpid()}"
    try:
        port, _ = img.start(engine, name, env={"DCGAN_PORT": 6000, "DCGAN_LOG_LEVEL": "DEBUG",
                                               "DCGAN_MAX_BATCH": 4}, container_port=6000)
        img.wait_first_answer(port, timeout=90)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.GeneratorServiceStub(ch).Generate(
                    pb.GenerateRequest(seeds=list(range(5))), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 4" in err.value.details()
        logs = engine.run("logs", name, timeout=30)
        text = logs.stdout + logs.stderr
        assert "listening grpc=0.0.0.0:6000" in text
        assert "DEBUG dcgan-serve.access: Generate model=mnist code=INVALID_ARGUMENT" in text
        assert "telemetry" not in text  # the image opts out of onnxruntime's telemetry
    finally:
        img.remove(engine, name)


def test_a_tls_container_without_its_health_port_stops_and_says_why(engine, pki, tmp_path):
    """Its HEALTHCHECK would probe the TLS port in plaintext and never pass: instead of an
    unhealthy container that serves, one that exits at once with the fix in its log."""
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o755)
    for file in ("server.pem", "server.key"):
        (certs / file).write_bytes((pki / file).read_bytes())
        (certs / file).chmod(0o644)
    proc = engine.run("run", "--rm", "-e", "DCGAN_HEALTH_PORT=-1",
                      "-e", "DCGAN_TLS_CERT=/certs/server.pem",
                      "-e", "DCGAN_TLS_KEY=/certs/server.key",
                      "-v", f"{certs}:/certs:ro", img.IMAGE, check=False, timeout=120)
    assert proc.returncode != 0
    assert "--tls-cert needs --health-port" in proc.stdout + proc.stderr


def test_a_mutual_tls_container_turns_healthy_through_its_health_port(engine, pki, tmp_path):
    """With TLS and client certificates on, the image's HEALTHCHECK (plaintext, on the
    health-only port the image opens) still sees SERVING, while the gRPC port wants TLS."""
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o755)
    for file in ("server.pem", "server.key", "ca.pem"):
        (certs / file).write_bytes((pki / file).read_bytes())
        (certs / file).chmod(0o644)  # readable by the image's user, uid 10001
    name = f"dcgan-test-tls-{os.getpid()}"
    try:
        port, _ = img.start(engine, name, env={"DCGAN_TLS_CERT": "/certs/server.pem",
                                               "DCGAN_TLS_KEY": "/certs/server.key",
                                               "DCGAN_TLS_CLIENT_CA": "/certs/ca.pem"},
                            volumes={str(certs): "/certs"})
        deadline = time.monotonic() + 90
        while not _healthy(engine, name):
            assert time.monotonic() < deadline, engine.run("logs", name).stderr[-2000:]
            time.sleep(1)
        from service.client import GeneratorClient
        ca = (pki / "ca.pem").read_bytes()
        with GeneratorClient(f"127.0.0.1:{port}", tls_ca=ca, tls_cert=(pki / "client.pem")
                             .read_bytes(), tls_key=(pki / "client.key").read_bytes(),
                             timeout=10) as client:
            assert client.generate([1, 2]).shape == (2, 28, 28)
        with GeneratorClient(f"127.0.0.1:{port}", timeout=3) as plain, \
                pytest.raises(grpc.RpcError) as err:
            plain.generate([1])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        logs = engine.run("logs", name, timeout=30)
        assert "tls=mutual" in logs.stdout + logs.stderr
        assert "health=0.0.0.0:50052 (plaintext)" in logs.stdout + logs.stderr
    finally:
        img.remove(engine, name)


def test_the_tls_deployment_starts_with_its_secret_laid_out_as_the_kubelet_does(engine, pki,
                                                                               tmp_path):
    """deploy/kubernetes/tls as the kubelet runs it: the Secret's files owned by root, their
    group the pod's fsGroup (root without one), the volume's defaultMode; the process as
    runAsUser:runAsGroup with fsGroup as a supplementary group; the manifest's TLS variables.
    Every value is read from the manifest itself. The server must read its key and turn
    healthy through the image's HEALTHCHECK."""
    import yaml
    if os.geteuid() != 0:
        pytest.skip("laying the files out as the kubelet does (owned by root) needs root")
    pod = yaml.safe_load((ROOT / "deploy/kubernetes/tls/deployment.yaml").read_text())
    pod = pod["spec"]["template"]["spec"]
    security, [container] = pod["securityContext"], pod["containers"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("DCGAN_TLS")}
    fs_group = security.get("fsGroup")
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o755)
    for key, source in (("tls.crt", "server.pem"), ("tls.key", "server.key"),
                        ("ca.crt", "ca.pem")):
        path = secret / key
        path.write_bytes((pki / source).read_bytes())
        os.chown(path, 0, fs_group or 0)
        path.chmod(volume["secret"]["defaultMode"])
    options = ("--user", f"{security['runAsUser']}:{security['runAsGroup']}",
               *(("--group-add", str(fs_group)) if fs_group else ()))
    name = f"dcgan-test-k8s-tls-{os.getpid()}"
    try:
        img.start(engine, name, env=env, volumes={str(secret): mount["mountPath"]},
                  options=options)
        deadline = time.monotonic() + 90
        while not _healthy(engine, name):
            state = engine.run("inspect", "--format", "{{.State.Status}}", name,
                               check=False).stdout.strip()
            logs = engine.run("logs", name, check=False, timeout=30)
            assert state == "running", f"the server exited: {(logs.stdout + logs.stderr)[-1500:]}"
            assert time.monotonic() < deadline, (logs.stdout + logs.stderr)[-1500:]
            time.sleep(1)
    finally:
        img.remove(engine, name)


def _healthy(engine, name: str) -> bool:
    """The image's HEALTHCHECK, run now (podman runs it on demand; Docker on its timer)."""
    if engine.command == "podman":
        return engine.run("healthcheck", "run", name, check=False, timeout=30).returncode == 0
    status = engine.run("inspect", "--format", "{{.State.Health.Status}}", name, check=False)
    return status.stdout.strip() == "healthy"


def test_compose_brings_up_the_service_with_http_and_the_playground(engine, tmp_path):
    """compose.yaml's `dcgan-serve` service, up for real with podman-compose on the image built
    here (Prometheus' and Grafana's images cannot be pulled on these machines)."""
    if engine.command != "podman":
        pytest.skip("the compose check runs podman-compose")
    compose = [PYTHON, "-m", "podman_compose", "-f", str(ROOT / "compose.yaml"),
               "-p", f"dcgantest{os.getpid()}"]
    ports = {name: img.free_port() for name in ("GRPC", "HTTP", "METRICS")}
    env = {**engine.env, "DCGAN_IMAGE": img.IMAGE,
           **{f"{name}_HOST_PORT": str(port) for name, port in ports.items()}}
    try:
        up = subprocess.run([*compose, "up", "-d", "--no-build", "dcgan-serve"], env=env,
                            capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        img.wait_first_answer(ports["GRPC"], timeout=90)
        base = f"http://127.0.0.1:{ports['HTTP']}"
        with urllib.request.urlopen(base + "/v2/health/ready", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            assert b"dcgan-digits playground" in r.read()
        with urllib.request.urlopen(base + "/v1/models/mnist/grid.png?seeds=0-3",
                                    timeout=10) as r:
            assert decode_png(r.read()).shape == (62, 62)
        assert "dcgan_request_duration_seconds" in _scrape(ports["METRICS"])
    finally:
        subprocess.run([*compose, "down", "-t", "5"], env=env, capture_output=True,
                       timeout=120)


def test_stop_with_requests_in_flight_answers_them_and_exits_cleanly(engine):
    name = f"dcgan-test-stop-{os.getpid()}"
    try:
        port, _ = img.start(engine, name, env={"DCGAN_GRACE_SECONDS": GRACE_SECONDS})
        img.wait_first_answer(port, timeout=90)
        results: list[str] = []
        begun = threading.Event()

        def client():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.GeneratorServiceStub(ch)
                begun.set()
                try:  # a long call: 1024 images as PNGs, running when stop arrives
                    stub.Generate(pb.GenerateRequest(seeds=list(range(1024)),
                                                     format=pb.IMAGE_FORMAT_PNG), timeout=60)
                    results.append("OK")
                except grpc.RpcError as exc:
                    results.append(exc.code().name)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        begun.wait(10)
        time.sleep(0.3)  # the calls are in the server by now
        started = time.monotonic()
        engine.run("stop", "-t", str(GRACE_SECONDS + 10), name, timeout=GRACE_SECONDS + 40)
        stopped_in = time.monotonic() - started
        for t in threads:
            t.join(60)
        code = engine.run("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        logs = engine.run("logs", name, timeout=30)
        assert code == "0", logs.stdout[-3000:] + logs.stderr[-3000:]
        assert stopped_in < GRACE_SECONDS + 5
        assert results == ["OK"] * 4, results
    finally:
        img.remove(engine, name)
