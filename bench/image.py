"""The serving image, built and run for real: its size, its layers, and cold start to first answer.

    python bench/image.py                 # build (cached) and report; --runs N cold starts
    python bench/image.py --json out.json

Uses podman (Debian's podman + runc; see docs/benchmarks/image.md) or a Docker engine. With no
registry reachable, the Dockerfile's base is swapped for a local Debian 12 image that mmdebstrap
builds from Debian's packages (python3 3.11, like python:3.11-slim), cached in the engine's
image store. The container test (tests/deploy/test_image.py) uses the same helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/dcgan-debian-python:bookworm"
IMAGE = "localhost/dcgan-serve:test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_LABEL = "io.dcgan-digits.built-by=bench-image"
# podman settings these machines need (no raising rlimits, mixed cgroups, crun fails): given
# through CONTAINERS_CONF, so nothing under /etc is changed.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""


class EngineUnavailable(RuntimeError):
    """No container engine here, or it cannot build or run: the message says what is missing."""


@dataclass
class Engine:
    command: str  # "podman" or "docker"
    env: dict

    def run(self, *args: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.command, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.command} {' '.join(args[:3])} ... failed "
                               f"({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        return proc

    def image_exists(self, name: str) -> bool:
        return self.run("image", "inspect", name, check=False, timeout=30).returncode == 0


def find_engine() -> Engine:
    env = dict(os.environ)
    if shutil.which("podman"):
        conf = Path(tempfile.gettempdir()) / "dcgan-containers.conf"
        conf.write_text(CONTAINERS_CONF)
        env.setdefault("CONTAINERS_CONF", str(conf))
        return Engine("podman", env)
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return Engine("docker", env)
        raise EngineUnavailable("docker is installed but no Docker engine answers (`docker "
                                "info` failed), and podman is not installed")
    raise EngineUnavailable("neither podman nor docker is installed (Debian: apt-get install "
                            "podman runc mmdebstrap)")


def ensure_base(engine: Engine, timeout: float = 600) -> str:
    """The local stand-in for python:3.11-slim, built once with mmdebstrap and then reused."""
    if engine.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    if not shutil.which("mmdebstrap"):
        raise EngineUnavailable(f"the base image {BASE_IMAGE} is absent and mmdebstrap, which "
                                "builds it, is not installed (apt-get install mmdebstrap)")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "base.tar"
        for attempt in (1, 2):  # it downloads from Debian's mirror: allow one hiccup
            proc = subprocess.run(["mmdebstrap", "--variant=minbase",
                                   "--include=python3,python3-venv,ca-certificates", "bookworm",
                                   str(tar)], capture_output=True, text=True, timeout=timeout)
            if proc.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError(f"mmdebstrap failed: {proc.stderr[-2000:]}")
            time.sleep(10)
        engine.run("import", str(tar), BASE_IMAGE, timeout=300)
    return BASE_IMAGE


def build_image(engine: Engine, base: str, tag: str = IMAGE, target: str = "serve",
                timeout: float = 900) -> float:
    """Build the Dockerfile's `target` on `base`; returns the seconds it took."""
    started = time.monotonic()
    args = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
            "--target", target, "-t", tag, "--label", BUILD_LABEL]
    if engine.command == "podman":
        # Keep HEALTHCHECK (the OCI format drops it); let pip inside trust this machine's CAs.
        args += ["--format", "docker"]
        if Path(CA_BUNDLE).exists():
            args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    engine.run(*args, str(ROOT), timeout=timeout)
    seconds = time.monotonic() - started
    # Each build leaves its stage images and the previous tagged image behind, untagged: drop
    # those of ours so repeated runs do not fill the disk (the base image stays cached).
    engine.run("image", "prune", "-f", "--filter", f"label={BUILD_LABEL}", check=False,
               timeout=120)
    return seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(engine: Engine, name: str, image: str = IMAGE, env: dict | None = None,
          container_port: int = 50051, volumes: dict | None = None,
          options: tuple[str, ...] = ()) -> tuple[int, int]:
    """`run -d` with the gRPC and metrics ports published on 127.0.0.1 only; returns them.
    `options` go to `run` as they are (e.g. `--user`, `--group-add`)."""
    grpc_port, metrics_port = free_port(), free_port()
    args = ["run", "-d", "--name", name,
            "-p", f"127.0.0.1:{grpc_port}:{container_port}",
            "-p", f"127.0.0.1:{metrics_port}:9090"]
    if engine.command == "podman":
        args += ["--ulimit", "host"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    for host_path, container_path in (volumes or {}).items():
        args += ["-v", f"{host_path}:{container_path}:ro"]
    engine.run(*args, *options, image, timeout=60)
    return grpc_port, metrics_port


def wait_first_answer(port: int, timeout: float = 60) -> float:
    """Seconds until a Generate call on 127.0.0.1:`port` succeeds."""
    import grpc

    from service.api.dcgan.v1 import generator_pb2 as pb
    from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
    started = time.monotonic()
    while True:
        # A new channel each try: one channel backs off after a refused connection (1 s, then
        # 1.6 s, ...), which would time the client's backoff rather than the server's start.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                pb_grpc.GeneratorServiceStub(channel).Generate(
                    pb.GenerateRequest(seeds=[0]), timeout=2, wait_for_ready=False)
                return time.monotonic() - started
            except grpc.RpcError:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"no answer on 127.0.0.1:{port} within {timeout}s")
        time.sleep(0.05)


def remove(engine: Engine, *names: str) -> None:
    for name in names:
        engine.run("rm", "-f", "-t", "0", name, check=False, timeout=60)


def image_report(engine: Engine, image: str = IMAGE, base: str = BASE_IMAGE) -> dict:
    size = int(engine.run("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())
    base_size = int(engine.run("image", "inspect", base, "--format", "{{.Size}}").stdout.strip())
    history = json.loads(engine.run("history", "--format", "json", image).stdout or "[]")
    layers = [{"size_mb": round(int(h.get("size", 0)) / 1e6, 1),
               "created_by": (h.get("CreatedBy") or h.get("created_by") or "")[:120]}
              for h in history]
    return {"image": image, "size_mb": round(size / 1e6, 1), "base": base,
            "base_size_mb": round(base_size / 1e6, 1),
            "added_by_project_mb": round((size - base_size) / 1e6, 1), "layers": layers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="cold starts to time (default 5)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    engine = find_engine()
    base = ensure_base(engine)
    build_seconds = build_image(engine, base)
    report = image_report(engine)
    report["engine"] = engine.run("--version").stdout.strip()
    report["build_seconds"] = round(build_seconds, 1)
    starts = []
    for i in range(args.runs):
        name = f"dcgan-bench-{os.getpid()}-{i}"
        try:
            t0 = time.monotonic()
            port, _ = start(engine, name)
            starts.append(time.monotonic() - t0 + wait_first_answer(port))
        finally:
            remove(engine, name)
    starts.sort()
    report["cold_start_to_first_answer_s"] = {
        "runs": len(starts), "median": round(starts[len(starts) // 2], 2),
        "min": round(starts[0], 2), "max": round(starts[-1], 2)}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
