"""`ServeConfig`: the one typed config of `dcgan-serve`, built from flags and `DCGAN_*` variables.

Each setting is declared once below (type, default, help); `service.settings` makes the flag
(`--max-batch`), the variable (`DCGAN_MAX_BATCH`), the `--help` text and the table in
docs/configuration.md from it. A flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from service.settings import add_flags, from_args, setting

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9090
DEFAULT_HTTP_PORT = 8080
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2; a Kubernetes CPU limit lands here


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may really use: its CPU affinity, capped by a cgroup CPU quota.

    In a container `os.cpu_count()` reports the host's cores, so one worker per core would
    start, say, 64 workers under a 2-CPU limit and the quota would throttle them all.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: affinity it is
    return cpus or 1


def _model_spec(text: str) -> tuple[str, str]:
    """(NAME or NAME:VERSION, PATH) from NAME[:VERSION]=PATH or a bare PATH."""
    name, sep, path = text.partition("=")
    if not sep:  # a bare path: name it after the file
        path, name = text, Path(text).stem
    model, colon, version = name.partition(":")
    if not model or not path or (colon and not version):
        raise ValueError(f"--model expects NAME=PATH or NAME:VERSION=PATH, got {text!r}")
    return name, path


@dataclass(frozen=True)
class ServeConfig:
    # --- network
    host: str = setting("0.0.0.0", "gRPC and HTTP bind address (127.0.0.1 for loopback "
                        "only)")
    port: int = setting(DEFAULT_PORT, "gRPC port; 0 picks a free one (logged)")
    http_port: int = setting(DEFAULT_HTTP_PORT, "HTTP port: the Open Inference Protocol over "
                             "REST, PNG URLs, the playground at /; 0 picks a free one, -1 "
                             "turns HTTP off")
    health_port: int = setting(-1, "a plaintext port serving only the gRPC health service, "
                               "for probes and HEALTHCHECKs that cannot speak TLS or show a "
                               "client certificate (TLS needs one); 0 picks a free one, -1 "
                               "(default) off; the image sets 50052")
    metrics_host: str = setting("", "Prometheus /metrics bind address", shown_default="--host")
    metrics_port: int = setting(DEFAULT_METRICS_PORT,
                                "Prometheus /metrics port; 0 picks a free one, -1 turns it off")
    # --- models
    models: tuple[tuple[str, str], ...] = setting(
        (), "an ONNX model to serve, exported by `dcgan-train export`; repeatable, the first "
        "is the default. NAME:VERSION=PATH serves versions of one name side by side, the "
        "first given its default; without :VERSION the version is the file's training run "
        "id (the variable takes a comma-separated list)",
        flag="--model", env="DCGAN_MODELS", parse=_model_spec, repeat=True,
        metavar="NAME[:VERSION]=PATH", shown_default="the bundled models")
    model_repository: str = setting(
        "", "a folder of models as Triton lays it out, NAME/VERSION/model.onnx: served at start "
        "(all versions, the highest the default), or with --model-control explicit loaded "
        "and unloaded through the repository API", metavar="DIR")
    model_control: str = setting(
        "none", "explicit: serve only the --model files at start and load and unload "
        "repository models through the API (RepositoryModelLoad / Unload, "
        "POST /v2/repository/models/NAME/load); none: the API only lists them",
        choices=("none", "explicit"))
    device: str = setting("auto", "auto: CUDA when onnxruntime-gpu sees a GPU, else CPU; cuda "
                          "that cannot work is a start-up error, never a silent CPU run",
                          choices=("auto", "cpu", "cuda"))
    # --- limits
    max_batch: int = setting(1024, "most seeds in one Generate request")
    max_message_bytes: int = setting(64 << 20, "largest gRPC message sent (stream chunks are "
                                     "sized to fit) and most a request may be; requests are "
                                     "held to what a valid one can need (--max-batch latents)",
                                     shown_default="64 MiB")
    max_in_flight: int = setting(128, "calls of one kind (inference; metadata; statistics; "
                                 "model repository) handled at once over gRPC and HTTP "
                                 "together; more are refused at once (RESOURCE_EXHAUSTED, "
                                 "HTTP 429) instead of queueing. Health checks are never "
                                 "limited")
    read_timeout: float = setting(10.0, "seconds an HTTP caller may take to send a request's "
                                  "body; a slower one gets 408 and its connection is closed")
    max_queued_images: int = setting(4096, "images per model waiting for onnxruntime; past it "
                                     "new requests are refused with RESOURCE_EXHAUSTED")
    # --- batching: concurrent requests for a model share onnxruntime runs (service/plane/batching.py)
    batch_max_images: int = setting(0, "most images in one onnxruntime run; a bigger request "
                                    "runs in pieces; 0 = 64 on a CPU, 256 on CUDA")
    batch_max_delay_ms: float = setting(0.0, "how long a request waits for others to share "
                                        "its run; 0 runs it at once (under load requests "
                                        "still share runs)")
    inference_workers: int = setting(0, "threads running onnxruntime per model; 0 = one per "
                                     "usable core (CPU affinity and cgroup limit honoured)")
    encode_workers: int = setting(0, "threads encoding PNG responses off the event loop; 0 = "
                                  "one per usable core")
    latent_cache: int = setting(4096, "seeds whose latent vectors are kept for reuse (about "
                                "0.5 KB each); 0 turns the cache off")
    # --- security
    tls_cert: str = setting("", "PEM certificate chain: serve gRPC and HTTP over TLS (with "
                            "--tls-key)")
    tls_key: str = setting("", "PEM private key of --tls-cert")
    tls_client_ca: str = setting("", "PEM CA bundle: require and verify client certificates "
                                 "(mutual TLS)")
    auth_token_file: str = setting("", "file with a bearer token every call but health checks "
                                   "must send as `authorization: Bearer <token>` (or set "
                                   "DCGAN_AUTH_TOKEN to the token itself)")
    # --- processes
    processes: int = setting(1, "server processes sharing the gRPC and HTTP ports "
                             "(SO_REUSEPORT), each with its own GIL, models and share of the "
                             "cores; /metrics merges them; 0 = one per usable core")
    reuse_port: bool = setting(False, "let other processes bind the same gRPC and HTTP ports "
                               "(what --processes gives its workers)")
    # --- lifecycle
    grace_seconds: float = setting(10.0, "on SIGTERM, how long in-flight calls may take to "
                                   "finish")
    log_level: str = setting("INFO", "DEBUG adds one access-log line per RPC (method, model, "
                             "status, images, ms)", parse=str.upper,
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def auth_token(self) -> str:
        """The bearer token callers must send, or "" when authentication is off."""
        if self.auth_token_file:
            try:
                return Path(self.auth_token_file).read_text().strip()
            except OSError as exc:
                from service.errors import ServiceError
                raise ServiceError(f"cannot read --auth-token-file {self.auth_token_file}: "
                                   f"{exc.strerror}") from None
        return os.environ.get("DCGAN_AUTH_TOKEN", "")

    @property
    def resolved_metrics_host(self) -> str:
        return self.metrics_host or self.host

    @property
    def resolved_encode_workers(self) -> int:
        return self.encode_workers or usable_cpus()

    @property
    def resolved_processes(self) -> int:
        return self.processes or usable_cpus()

    @property
    def resolved_inference_workers(self) -> int:
        return self.inference_workers or usable_cpus()

    def model_paths(self) -> list[tuple[str, str, Path]]:
        """(name, version, file) of each model to serve at start, in order; version "" means
        the file's own (its training run id)."""
        from service.plane.repository import repository_models
        paths = [(*_name_version(name), Path(path)) for name, path in self.models]
        if self.model_repository and self.model_control == "none":
            paths += [(name, version, path) for name, versions
                      in repository_models(Path(self.model_repository)).items()
                      for version, path in versions]
        if not paths and not self.model_repository:
            paths = [(name, "", path) for name, path in bundled_models()]
        return paths


def problems(config: ServeConfig) -> list[str]:
    """What is wrong with these settings, each saying what to fix."""
    problems = []
    if not config.read_timeout > 0:
        problems.append("--read-timeout must be a positive number of seconds")
    for name in ("max_batch", "max_queued_images", "max_in_flight"):
        if getattr(config, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("batch_max_images", "batch_max_delay_ms", "processes", "latent_cache",
                 "encode_workers", "inference_workers"):
        if getattr(config, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must not be negative")
    for flag, value in (("--http-port", config.http_port),
                        ("--health-port", config.health_port)):
        if value < -1:
            problems.append(f"{flag} must be a port number, 0 (any free port) or -1 (off)")
    ports = [p for p in (config.port, config.http_port, config.health_port, config.metrics_port)
             if p > 0]
    if len(set(ports)) != len(ports):
        problems.append(f"the gRPC, HTTP, health and metrics ports must differ, got "
                        f"{ports}: pick a different one for each")
    if config.max_message_bytes < 1 << 16:
        problems.append("--max-message-bytes must be at least 65536")
    if bool(config.tls_cert) != bool(config.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    if config.tls_client_ca and not config.tls_cert:
        problems.append("--tls-client-ca needs --tls-cert and --tls-key")
    if config.tls_cert and config.health_port == -1:
        problems.append("--tls-cert needs --health-port: probes (Kubernetes' gRPC probes, "
                        "the image's HEALTHCHECK) speak plaintext and cannot reach a TLS "
                        "port; set --health-port 50052 (as the image does) or 0 for any "
                        "free port")
    if config.model_repository and not Path(config.model_repository).is_dir():
        problems.append(f"--model-repository {config.model_repository} is not a folder")
    if config.model_control == "explicit" and not config.model_repository:
        problems.append("--model-control explicit needs --model-repository DIR")
    if config.model_control == "explicit" and config.resolved_processes > 1:
        problems.append("--model-control explicit needs --processes 1: a load or unload "
                        "reaches the one worker process that answers it, not the others")
    names = [name for name, _ in config.models]
    if len(set(names)) != len(names):
        problems.append(f"model names must be unique, got {names}: to serve several "
                        "files under one name, give each a version (NAME:1=A, NAME:2=B)")
    return problems


def _name_version(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition(":")
    return name, version


def bundled_models() -> list[tuple[str, Path]]:
    """The models shipped with the package, the default first (see models/README.md).

    In a wheel they are the package `service.bundled_models`; in a source checkout or an
    editable install, the repository's `models/` folder.
    """
    package = Path(__file__).resolve().parent.parent  # service/
    # A wheel installs them as service/bundled_models (a data-only folder, looked up directly:
    # importlib.resources does not resolve that namespace package on Python 3.11).
    for folder in (package / "bundled_models", package.parent / "models"):
        order_file = folder / "default_models.json"
        if order_file.is_file():
            import json
            return [(entry["name"], folder / entry["file"])
                    for entry in json.loads(order_file.read_text())["models"]]
    return []


ENV_PREFIX = "DCGAN_"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcgan-serve",
        description="Serve exported DCGAN generators over gRPC (dcgan.v1.GeneratorService, the "
                    "Open Inference Protocol, health, reflection) and HTTP (the Open Inference "
                    "Protocol over REST, PNG URLs, a playground page) with Prometheus metrics. "
                    "With no arguments it serves the bundled models on ports 50051 (gRPC), "
                    "8080 (HTTP) and 9090 (metrics). "
                    "Every flag can also be set by the environment variable named in its help; "
                    "a flag wins over the variable.")
    add_flags(parser, ServeConfig, ENV_PREFIX)
    return parser


def config_from_args(argv: list[str] | None = None) -> ServeConfig:
    parser = build_parser()
    config = from_args(ServeConfig, parser.parse_args(argv), ENV_PREFIX)
    if found := problems(config):
        parser.error("; ".join(found))
    return config
