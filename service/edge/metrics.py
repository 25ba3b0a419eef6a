"""Prometheus metrics of the service, in a registry of its own (tests run several servers).

    dcgan_request_duration_seconds{rpc, model, version, code}  every call, whole
    dcgan_requests_in_flight{rpc}                      admitted calls being handled
    dcgan_inference_duration_seconds{model, version}   one onnxruntime run
    dcgan_batch_size{model, version}                   images per run
    dcgan_batch_queue_wait_seconds{model, version}     the oldest request's wait, per run
    dcgan_images_generated_total{model, version, kind} kind: seed, interpolation, latent
    dcgan_images_per_request{model, version}           images per generating call
    dcgan_model_info{model, version, run, arch, dataset, provider}
    dcgan_build_info{version, python, grpcio, grpcio_pinned, onnxruntime, protobuf}
                                 a server on another grpcio than the pin: grpcio != grpcio_pinned

Labels are bounded: a served model or "_unknown", a status name, one of this API's methods.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server


# From 100 µs to 10 s: batch-1 runs take well under a millisecond on a CPU, big batches and
# PNG grids take up to seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025,
                   0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# One line per RPC at DEBUG (`--log-level DEBUG`): the access log, off by default.
access_log = logging.getLogger("dcgan-serve.access")


class Metrics:
    def __init__(self) -> None:
        self._children: dict = {}
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "dcgan_request_duration_seconds", "Time to answer an RPC, by method, model and status",
            ["rpc", "model", "version", "code"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.inference_seconds = Histogram(
            "dcgan_inference_duration_seconds", "Time of one onnxruntime run, by model",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter(
            "dcgan_images_generated", "Images generated, by model and by where their latents "
            "came from (seed, interpolation, latent)", ["model", "version", "kind"],
            registry=self.registry)
        self.images_per_request = Histogram(
            "dcgan_images_per_request", "Images per generating call (a whole stream is one), "
            "by model",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(
            "dcgan_batch_size", "Images per executed onnxruntime run (after dynamic batching)",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram(
            "dcgan_batch_queue_wait_seconds",
            "Time the oldest request of each executed batch waited in the batching queue",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.reloads = Counter(
            "dcgan_model_reloads", "Model reloads (SIGHUP), by result", ["result"],
            registry=self.registry)
        self.in_flight = Gauge(
            "dcgan_requests_in_flight", "Admitted RPCs being handled now", ["rpc"],
            registry=self.registry)
        self.model_info = Info(
            "dcgan_model", "Served models and where they run", ["model", "version"],
            registry=self.registry)

        self.build_info = Info(
            "dcgan_build", "What this server runs on; grpcio_pinned is the release the "
            "project pins (another grpcio costs calls: docs/benchmarks/grpcio-versions-cpu.md)",
            registry=self.registry)

    def describe_build(self, labels: dict[str, str]) -> None:
        self.build_info.info(labels)

    def describe_model(self, name: str, version: str, run: str, arch: str, dataset: str,
                       providers: list[str]) -> None:
        self.model_info.labels(model=name, version=version).info(
            {"run": run, "arch": arch, "dataset": dataset, "provider": ",".join(providers)})

    def batch_observer(self, model: str, version: str):
        """A callback for one model's engine, per run: (images, seconds its oldest request
        waited, seconds gathering the inputs, seconds of the run)."""
        inference = self.inference_seconds.labels(model=model, version=version)
        size = self.batch_size.labels(model=model, version=version)
        wait = self.queue_wait.labels(model=model, version=version)

        def observe(images: int, waited: float, gathered: float, seconds: float) -> None:
            inference.observe(seconds)
            size.observe(images)
            wait.observe(waited)
        return observe

    def in_flight_gauge(self, rpc: str):
        """The in-flight gauge of one RPC or route: the edge counts its admitted calls."""
        return self._child(self.in_flight, rpc)

    def record(self, rpc: str, call) -> None:
        """One call, ended (an edge.call.CallRecord): its time, status and images."""
        seconds = time.perf_counter() - call.started
        self._child(self.request_seconds, rpc, call.model, call.version,
                    call.code).observe(seconds)
        access_log.debug("%s model=%s code=%s images=%d %.2fms", rpc, call.model, call.code,
                         call.images, seconds * 1000)
        if call.images:
            self._child(self.images, call.model, call.version, call.kind).inc(call.images)
            self._child(self.images_per_request, call.model, call.version).observe(call.images)

    def _child(self, metric, *labels: str):
        """`metric.labels(*labels)`, remembered: prometheus-client checks and joins the label
        values on every `labels()` call, a few microseconds each on the hot path. The label
        values are bounded (see the module docstring), so this dict is too."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def serve_http(self, host: str, port: int):
        """Start the /metrics HTTP server; returns (server, thread). Port 0 picks a free port."""
        return start_http_server(port, addr=host, registry=self.registry)
