"""`dcgan-serve --processes N`: N ordinary servers share the gRPC and HTTP ports (SO_REUSEPORT),
each with its own GIL, models and cores / N threads, under a light supervisor that has no
models: it serves /metrics, merging the workers' own (a `worker` label added), forwards
SIGTERM and SIGHUP, and stops everything (exit 1) if a worker dies. The kernel spreads
connections, not calls: one client connection talks to one worker.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Metric, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from service.process.config import ServeConfig, usable_cpus
from service.errors import ServiceError

log = logging.getLogger("dcgan-serve")

LISTENING = re.compile(r"listening grpc=\S+:(\d+) http=\S+ metrics=127\.0\.0\.1:(\d+)")


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    metrics_port: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def relay_output(self) -> None:
        """Echo the worker's log under a prefix, and note its metrics port when it says it."""
        for line in self.proc.stdout:
            if not self.ready.is_set() and (m := LISTENING.search(line)):
                self.metrics_port = int(m[2])
                self.ready.set()
            sys.stdout.write(f"[worker {self.index}] {line}")
            sys.stdout.flush()
        self.ready.set()  # exited: whoever waits for it should look


class WorkerMetrics:
    """A Prometheus collector that scrapes every worker and relabels its samples."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers

    def collect(self):
        families: dict[str, Metric] = {}
        for worker in self.workers:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError as exc:  # a worker restarting or gone: the others still count
                log.warning("worker %d metrics unavailable: %s", worker.index, exc)
                continue
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, Metric(
                    family.name, family.documentation, family.type, family.unit))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": str(worker.index)},
                                      sample.value, sample.timestamp, sample.exemplar)
        yield from families.values()


def worker_command(config: ServeConfig, argv: list[str], port: int,
                   http_port: int = -1, health_port: int = -1) -> list[str]:
    """The worker's command line: the supervisor's own flags, then the overrides (argparse
    keeps the last value of a repeated flag)."""
    workers_each = config.inference_workers or max(1, usable_cpus() // config.resolved_processes)
    return [sys.executable, "-m", "service", *argv, "--processes", "1", "--reuse-port",
            "--port", str(port), "--http-port", str(http_port),
            "--health-port", str(health_port),
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--inference-workers", str(workers_each)]


def _pick_port(host: str, port: int) -> int:
    """A shared port: the configured one, or (for port 0) a free one chosen here, since every
    worker must bind the same number. -1 (off) stays off."""
    if port:
        return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def supervise(config: ServeConfig, argv: list[str]) -> int:
    port = _pick_port(config.host, config.port)
    http_port = _pick_port(config.host, config.http_port)
    health_port = _pick_port(config.host, config.health_port)
    workers = []
    for index in range(config.resolved_processes):
        proc = subprocess.Popen(worker_command(config, argv, port, http_port, health_port),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # signals come from us
        worker = Worker(index, proc)
        threading.Thread(target=worker.relay_output, daemon=True).start()
        workers.append(worker)
    try:
        for worker in workers:
            worker.ready.wait(300)
            if worker.proc.poll() is not None or worker.metrics_port is None:
                raise ServiceError(f"worker {worker.index} did not start (exit code "
                                   f"{worker.proc.poll()}); its log is above")
        metrics_port = _serve_metrics(config, workers)
    except BaseException:
        _stop(workers, config.grace_seconds)
        raise
    log.info("listening grpc=%s:%d http=%s metrics=%s processes=%d", config.host, port,
             f"{config.host}:{http_port}" if http_port > 0 else "off",
             f"{config.resolved_metrics_host}:{metrics_port}" if metrics_port else "off", len(workers))
    return _wait(workers, config)


def _serve_metrics(config: ServeConfig, workers: list[Worker]) -> int | None:
    if config.metrics_port < 0:
        return None
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(workers))
    try:
        server, _ = start_http_server(config.metrics_port, addr=config.resolved_metrics_host,
                                      registry=registry)
    except OSError as exc:
        raise ServiceError(f"cannot serve metrics on {config.resolved_metrics_host}:"
                           f"{config.metrics_port}: {exc}") from None
    return server.server_port


def _wait(workers: list[Worker], config: ServeConfig) -> int:
    # The handlers only note the signal: they must take no lock (see `server.serve`).
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    while True:
        time.sleep(0.25)
        if dead := [w for w in workers if w.proc.poll() is not None]:
            log.error("worker %d exited (code %s): stopping the others", dead[0].index,
                      dead[0].proc.returncode)
            _stop(workers, config.grace_seconds)
            return 1
        while received:
            signum = received.pop(0)
            if signum != signal.SIGHUP:
                log.info("%s: stopping %d workers", signal.Signals(signum).name, len(workers))
                codes = _stop(workers, config.grace_seconds)
                log.info("stopped")
                return 0 if all(code == 0 for code in codes) else 1
            log.info("SIGHUP: each worker reloads its model files")
            for worker in workers:
                worker.proc.send_signal(signal.SIGHUP)


def _stop(workers: list[Worker], grace: float) -> list[int]:
    """SIGTERM every worker (each drains), wait past the grace period, then kill."""
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + 20
    for worker in workers:
        try:
            worker.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time: killed", worker.index)
            worker.proc.kill()
            worker.proc.wait()
    return [worker.proc.returncode for worker in workers]
