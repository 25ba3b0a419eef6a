"""`ServeConfig`: the one typed config of `dcgan-serve`, built from flags and `DCGAN_*` variables.

Every flag has an environment variable (flag `--max-batch` <-> `DCGAN_MAX_BATCH`); a flag given
on the command line wins over the variable, the variable over the default.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9090
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


@dataclass(frozen=True)
class ServeConfig:
    # --- network
    host: str = "0.0.0.0"               # gRPC bind address ("127.0.0.1" for loopback only)
    port: int = DEFAULT_PORT            # gRPC port; 0 picks a free one (logged)
    metrics_host: str = "0.0.0.0"       # Prometheus /metrics bind address
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 picks a free one (logged); -1 turns it off
    # --- models: (name, path) pairs, the first is the default; empty = the bundled models
    models: tuple[tuple[str, str], ...] = ()
    device: str = "auto"                # auto | cpu | cuda (cuda that cannot work is an error)
    # --- limits
    max_batch: int = 1024               # most seeds one Generate may ask for
    max_message_bytes: int = 64 << 20   # largest gRPC message sent or received
    max_in_flight: int = 128            # RPCs handled or waiting at once; more get
                                        # RESOURCE_EXHAUSTED at once instead of queueing
    max_queued_images: int = 4096       # per model, images waiting for onnxruntime; past it
                                        # RESOURCE_EXHAUSTED (~0.8 s of work on 2 CPU cores)
    # --- dynamic batching: concurrent requests for a model share one onnxruntime run
    batching: bool = True
    batch_max_images: int = 0           # most images in one coalesced run; 0 = auto (see
                                        # resolved_batch_max_images)
    batch_max_delay_ms: float = 0.0     # how long a lone request waits for company (0: it runs
                                        # at once; under load requests still coalesce while the
                                        # previous batch runs)
    latent_cache: int = 4096            # seeds whose latent vectors are kept for reuse; 0 = off
    # --- threads: one event loop handles every RPC; these share the cores with it
    encode_workers: int = 0             # threads encoding PNG responses off the event loop;
                                        # 0 = one per core
    inference_workers: int = 0          # batching: runs in parallel per model; 0 = one per core;
                                        # 1 runs small ones on the event loop and big ones
                                        # on threads over all cores (batching.LoopBatcher)
    intra_op_threads: int = 0           # onnxruntime threads per run; 0 = auto: 1 with
                                        # batching (the workers give the parallelism), else
                                        # one per core
    # --- security
    tls_cert: str = ""                  # PEM certificate chain: serve gRPC over TLS
    tls_key: str = ""                   # PEM private key for tls_cert
    tls_client_ca: str = ""             # PEM CA bundle: require client certificates (mTLS)
    auth_token_file: str = ""           # file holding a bearer token callers must send
                                        # (DCGAN_AUTH_TOKEN sets the token itself)
    # --- processes
    processes: int = 1                  # >1: that many server processes share the gRPC port
                                        # (SO_REUSEPORT), each with its own GIL; 0: one per
                                        # usable core
    reuse_port: bool = False            # let other processes bind the same port (set by the
                                        # multi-process supervisor for its workers)
    core_share: str = ""                # PATH:INDEX of the table through which the workers
                                        # take turns on the cores (set by the supervisor)
    # --- lifecycle
    grace_seconds: float = 10.0         # SIGTERM: how long in-flight calls may take to finish
    log_level: str = "INFO"

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
    def resolved_encode_workers(self) -> int:
        return self.encode_workers or usable_cpus()

    @property
    def resolved_processes(self) -> int:
        return self.processes or usable_cpus()

    @property
    def resolved_inference_workers(self) -> int:
        return self.inference_workers or usable_cpus()

    def resolved_batch_max_images(self, on_cuda: bool) -> int:
        """Most images per run: as set, else 64 on a CPU and 256 on a GPU.

        On a CPU two single-threaded runs side by side make as many images per second at 8 to
        128 images a run, and ~10% fewer at 256, whose activations no longer fit the cache
        (measured on 2 cores; served at batch 64 x 8 clients, runs of at most 64 gave 6,100-6,400
        img/s against 5,500 with 256). A GPU wants the biggest runs it can get.
        """
        return self.batch_max_images or (256 if on_cuda else 64)

    @property
    def resolved_intra_op_threads(self) -> int:
        """onnxruntime's intra-op threads; 0 lets onnxruntime use one per core."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return 1 if self.batching else 0

    def model_paths(self) -> list[tuple[str, Path]]:
        if self.models:
            return [(name, Path(path)) for name, path in self.models]
        return bundled_models()


def bundled_models() -> list[tuple[str, Path]]:
    """The models shipped with the package, the default first (see models/README.md).

    In a wheel they are the package `service.bundled_models`; in a source checkout or an
    editable install, the repository's `models/` folder.
    """
    here = Path(__file__).resolve().parent
    # A wheel installs them as service/bundled_models (a data-only folder, looked up directly:
    # importlib.resources does not resolve that namespace package on Python 3.11).
    for folder in (here / "bundled_models", here.parent / "models"):
        order_file = folder / "default_models.json"
        if order_file.is_file():
            import json
            return [(entry["name"], folder / entry["file"])
                    for entry in json.loads(order_file.read_text())["models"]]
    return []


def _env(name: str, default):
    return os.environ.get(f"DCGAN_{name.upper()}", default)


def _model_spec(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:  # a bare path: name it after the file
        path, name = text, Path(text).stem
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--model expects NAME=PATH, got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcgan-serve",
        description="Serve exported DCGAN generators over gRPC (dcgan.v1.GeneratorService, "
                    "health, reflection) with Prometheus metrics. With no arguments it serves "
                    "the bundled default models on port 50051, metrics on 9090. Every flag can "
                    "also be set by an environment variable DCGAN_<FLAG> (e.g. DCGAN_PORT).")
    d = ServeConfig()
    p.add_argument("--host", default=_env("host", d.host), help=f"gRPC bind address ({d.host})")
    p.add_argument("--port", type=int, default=int(_env("port", d.port)),
                   help=f"gRPC port; 0 = pick a free one ({d.port})")
    p.add_argument("--metrics-host", default=_env("metrics_host", d.metrics_host),
                   help=f"metrics bind address ({d.metrics_host})")
    p.add_argument("--metrics-port", type=int, default=int(_env("metrics_port", d.metrics_port)),
                   help=f"Prometheus metrics port; 0 = pick a free one, -1 = off "
                        f"({d.metrics_port})")
    # No default here: argparse would append flags to it; DCGAN_MODELS is read after parsing.
    p.add_argument("--model", dest="models", action="append", type=_model_spec, metavar="NAME=PATH",
                   help="an ONNX model to serve (repeatable; the first is the default). "
                        "DCGAN_MODELS takes a comma-separated list. Default: the bundled models")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   default=_env("device", d.device),
                   help="auto: CUDA when onnxruntime-gpu sees a GPU, else CPU (auto)")
    p.add_argument("--max-batch", type=int, default=int(_env("max_batch", d.max_batch)),
                   help=f"most seeds per Generate request ({d.max_batch})")
    p.add_argument("--max-message-bytes", type=int,
                   default=int(_env("max_message_bytes", d.max_message_bytes)),
                   help=f"largest gRPC message in either direction ({d.max_message_bytes})")
    p.add_argument("--max-in-flight", type=int,
                   default=int(_env("max_in_flight", d.max_in_flight)),
                   help=f"RPCs in flight at once; more are refused with RESOURCE_EXHAUSTED "
                        f"({d.max_in_flight})")
    p.add_argument("--max-queued-images", type=int,
                   default=int(_env("max_queued_images", d.max_queued_images)),
                   help="images per model waiting for onnxruntime before new requests are "
                        f"refused with RESOURCE_EXHAUSTED ({d.max_queued_images})")
    p.add_argument("--no-batching", dest="batching", action="store_false",
                   default=_env("batching", "1") not in ("0", "false", "no"),
                   help="run each request on its own instead of coalescing concurrent ones "
                        "(DCGAN_BATCHING=0)")
    p.add_argument("--batch-max-images", type=int,
                   default=int(_env("batch_max_images", d.batch_max_images)),
                   help="most images in one coalesced onnxruntime run; 0 = auto: 64 on CPU, "
                        f"256 on CUDA ({d.batch_max_images})")
    p.add_argument("--batch-max-delay-ms", type=float,
                   default=float(_env("batch_max_delay_ms", d.batch_max_delay_ms)),
                   help="how long a request may wait for others to share its run "
                        f"({d.batch_max_delay_ms:g})")
    p.add_argument("--latent-cache", type=int,
                   default=int(_env("latent_cache", d.latent_cache)),
                   help="seeds whose latent vectors are kept for reuse (about 0.5 KB each); "
                        f"0 = off ({d.latent_cache})")
    p.add_argument("--encode-workers", type=int,
                   default=int(_env("encode_workers", d.encode_workers)),
                   help="threads encoding PNG responses off the event loop; 0 = one per core (0)")
    p.add_argument("--inference-workers", type=int,
                   default=int(_env("inference_workers", d.inference_workers)),
                   help="with batching, onnxruntime runs in parallel per model; 0 = one per core; "
                        "1 runs them on the event loop itself, with no thread hand-off (0)")
    p.add_argument("--intra-op-threads", type=int,
                   default=int(_env("intra_op_threads", d.intra_op_threads)),
                   help="onnxruntime threads per run; 0 = auto: 1 with batching, else one per "
                        "core (0)")
    p.add_argument("--tls-cert", default=_env("tls_cert", d.tls_cert),
                   help="PEM certificate chain: serve gRPC over TLS (with --tls-key)")
    p.add_argument("--tls-key", default=_env("tls_key", d.tls_key),
                   help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", default=_env("tls_client_ca", d.tls_client_ca),
                   help="PEM CA bundle: require and verify client certificates (mutual TLS)")
    p.add_argument("--auth-token-file", default=_env("auth_token_file", d.auth_token_file),
                   help="file with a bearer token that every call except health checks must "
                        "send as 'authorization: Bearer <token>' (or set DCGAN_AUTH_TOKEN)")
    p.add_argument("--processes", type=int, default=int(_env("processes", d.processes)),
                   help="server processes sharing the gRPC port through SO_REUSEPORT, each with "
                        "its own GIL and models; /metrics merges them; 0 = one per usable "
                        "core (1)")
    p.add_argument("--reuse-port", action="store_true",
                   default=_env("reuse_port", "0") not in ("0", "false", "no"),
                   help="allow other processes to bind the same gRPC port (what --processes "
                        "gives its workers)")
    # Internal: how the supervisor tells each worker where the shared core table is.
    p.add_argument("--core-share", default=_env("core_share", d.core_share),
                   help=argparse.SUPPRESS)
    p.add_argument("--grace-seconds", type=float,
                   default=float(_env("grace_seconds", d.grace_seconds)),
                   help=f"on SIGTERM, time for in-flight calls to finish ({d.grace_seconds})")
    p.add_argument("--log-level", default=_env("log_level", d.log_level),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                   help=f"log level ({d.log_level})")
    return p


def config_from_args(argv: list[str] | None = None) -> ServeConfig:
    args = build_parser().parse_args(argv)
    values = vars(args)
    if values["models"] is None:  # no --model flags: the environment, else the bundled models
        values["models"] = [_model_spec(m) for m in _env("models", "").split(",") if m]
    values["models"] = tuple(tuple(m) for m in values["models"])
    problems = []
    if values["max_batch"] < 1:
        problems.append("--max-batch must be at least 1")
    if values["batch_max_images"] < 0:
        problems.append("--batch-max-images must not be negative (0 picks it for the device)")
    if values["max_queued_images"] < 1:
        problems.append("--max-queued-images must be at least 1")
    if values["batch_max_delay_ms"] < 0:
        problems.append("--batch-max-delay-ms must not be negative")
    if values["max_in_flight"] < 1:
        problems.append("--max-in-flight must be at least 1")
    if values["processes"] < 0:
        problems.append("--processes must not be negative (0 = one per usable core)")
    if values["latent_cache"] < 0:
        problems.append("--latent-cache must not be negative (0 turns it off)")
    if values["encode_workers"] < 0:
        problems.append("--encode-workers must not be negative")
    if values["max_message_bytes"] < 1 << 16:
        problems.append("--max-message-bytes must be at least 65536")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        problems.append("--tls-cert and --tls-key go together")
    if values["tls_client_ca"] and not values["tls_cert"]:
        problems.append("--tls-client-ca needs --tls-cert and --tls-key")
    names = [name for name, _ in values["models"]]
    if len(set(names)) != len(names):
        problems.append(f"model names must be unique, got {names}")
    if problems:
        build_parser().error("; ".join(problems))
    return ServeConfig(**values)
