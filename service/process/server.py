"""The server: `create_server(config) -> RunningServer` loads the models and starts gRPC (+
health, reflection), HTTP and /metrics on one event loop in the `rpc-loop` thread (tests bind
port 0); `main.py` runs it until SIGTERM. What it starts goes on one teardown list, unwound
newest first by `stop` or a failed start. Health turns SERVING once every model is loaded and
warm; on SIGTERM NOT_SERVING, new calls are refused and admitted ones get `grace_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.doors.grpc_dcgan import GeneratorServicer
from service.doors.grpc_v2 import InferenceServicer
from service.doors.http_images import ImageRoutes
from service.doors.http_v2 import InferenceRoutes
from service.doors.openapi import openapi_document
from service.edge.call import MAX_WATCHES, Admission, Category, limits
from service.edge.call import Edge
from service.edge.grpc_edge import GrpcEdge, receive_limit
from service.edge.health import (SERVICE_NAME as HEALTH_SERVICE, HealthPortServicer,
                                 HealthServicer, model_health_name)
from service.edge.http_edge import EDGE, READ_TIMEOUT, aiohttp_refusals, drop_malformed_requests
from service.edge.metrics import Metrics
from service.edge.statistics import Statistics
from service.edge.tracing import Tracing
from service.errors import ModelLoadError, ServiceError
from service.plane.batching import Batcher, BatchLimits, make_batcher
from service.plane.dataplane import DataPlane
from service.plane.registry import ModelRegistry
from service.plane.repository import ModelRepository, build_registry
from service.process.build_info import BuildInfo
from service.process.config import ServeConfig
from service.process.tls import http_ssl_context, server_credentials

log = logging.getLogger("dcgan-serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GeneratorService"].full_name
V2_SERVICE_NAME = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
#: The latent size a request is sized for when the server starts with no model.
DEFAULT_LATENT_DIM = 100
#: Calls the health-only port handles at once: Watch streams beyond it are refused.
MAX_HEALTH_CALLS = MAX_WATCHES


class _Teardown(contextlib.ExitStack):
    """What create_server started, stopped newest first. `grace` is how long the gRPC server's
    own stop lets the calls it still holds finish (set by `RunningServer.stop`; 0 after a
    failed start)."""

    grace: float = 0.0


@dataclass
class RunningServer:
    port: int
    metrics_port: int | None
    http_port: int | None
    health_port: int | None
    health: HealthServicer
    admission: Admission  # admits the calls of every door; drained on stop
    plane: DataPlane
    metrics: Metrics
    config: ServeConfig
    loop: asyncio.AbstractEventLoop  # runs gRPC and HTTP, in its own thread
    http_app: web.Application | None
    _teardown: _Teardown

    @property
    def registry(self) -> ModelRegistry:
        return self.plane.registry

    @property
    def repository(self) -> ModelRepository:
        return self.plane.repository

    def reload(self) -> bool:
        """Load every served model file again beside the served ones, warm them up, then
        swap them in at once. On any failure the old models keep serving; the failure is
        logged and counted (`dcgan_model_reloads_total{result="failure"}`)."""
        try:
            self.repository.reload(self.config.model_paths())  # each model described anew
        except ServiceError as exc:
            self.metrics.reloads.labels(result="failure").inc()
            log.error("reload failed, still serving the previous models: %s", exc)
            return False
        self.metrics.reloads.labels(result="success").inc()
        log.info("reloaded %d model(s)", len(self.registry))
        return True

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds, then stop.

        The drain happens in our own admission first (new calls get UNAVAILABLE from our own
        code, admitted ones finish), and only then is the gRPC server stopped: grpc's own
        stop cancels calls it has received but not yet handed to a handler.
        """
        grace = self.config.grace_seconds if grace is None else grace
        started = time.monotonic()
        _on_loop(self.loop, self.health.enter_graceful_shutdown())
        if not self.admission.drain(grace):
            log.warning("grace period of %.1fs over with calls still running", grace)
        self._teardown.grace = max(0.5, grace - (time.monotonic() - started))
        self._teardown.close()


@dataclass
class BatcherMaker:
    """Builds one model file's batcher with every observer attached (metrics, statistics and,
    when on, tracing): at start, on SIGHUP and on a repository load alike. Once the server
    has sized its requests, a model whose requests could need more is refused."""

    config: ServeConfig
    metrics: Metrics
    statistics: Statistics
    tracing: Tracing | None = None
    max_latent_dim: int = 0  # 0: not sized yet

    def __call__(self, name: str, version: str, path: Path) -> Batcher:
        config = self.config
        limits = BatchLimits(max_run_images=config.batch_max_images,
                             max_delay_s=config.batch_max_delay_ms / 1000,
                             max_queued_images=config.max_queued_images)
        batcher = make_batcher(path, config.device, config.resolved_inference_workers, limits)
        meta = batcher.generator.metadata
        if self.max_latent_dim and meta.latent_dim > self.max_latent_dim:
            batcher.close()
            raise ModelLoadError(f"{path} has latents of {meta.latent_dim}, but this server "
                                 f"sized its requests for at most {self.max_latent_dim} at "
                                 "start: restart it to serve this model")
        version = version or meta.version
        metrics = self.metrics.batch_observer(name, version)
        statistics = self.statistics.run_observer(name, version)

        def observe(*facts) -> None:
            metrics(*facts)
            statistics(*facts)
        batcher.queue.observe = observe
        if self.tracing is not None:
            batcher.queue.trace_run = self.tracing.run_hook(name, version)
        return batcher


def describe_models(models, metrics: Metrics) -> None:
    """One log line per model served (at start, on a load or a reload), and its info metric."""
    for model in models:
        meta = model.metadata
        metrics.describe_model(model.name, model.version, meta.version, meta.arch,
                               meta.dataset, model.generator.providers)
        log.info("model %r%s: %s, %s %s, version %s%s, on %s, %s", model.name,
                 " (default)" if model.is_default else "", model.generator.path, meta.arch,
                 meta.dataset, model.version,
                 "" if model.version == meta.version else f" (run {meta.version})",
                 ",".join(model.generator.providers), model.batcher.describe())


def create_server(config: ServeConfig) -> RunningServer:
    """Check the ports (a taken one fails at once), load the models, then start serving."""
    metrics, statistics, token = Metrics(), Statistics(), config.auth_token()
    build = BuildInfo.current()
    log.info("running %s", build.describe())
    if warning := build.grpcio_warning():
        log.warning("%s", warning)
    metrics.describe_build(build.labels())
    admission = Admission(limits(config.max_in_flight))
    teardown = _Teardown()
    with teardown:  # a failed start stops what did start, newest first, and re-raises
        loop = _start_loop()
        teardown.callback(loop.call_soon_threadsafe, loop.stop)
        tracing = _tracing_from_env()
        if tracing is not None:  # stopped after the servers: exports the last calls' spans
            teardown.callback(tracing.shutdown)
        if not config.reuse_port:
            for flag, value in (("--port", config.port), ("--http-port", config.http_port),
                                ("--health-port", config.health_port)):
                if value > 0:
                    _check_port_free(config.host, value, flag)
        metrics_port = None
        if config.metrics_port >= 0:
            host = config.resolved_metrics_host
            try:
                metrics_http, _ = metrics.serve_http(host, config.metrics_port)
            except OSError as exc:
                raise ServiceError(f"cannot serve metrics on {host}:{config.metrics_port}: "
                                   f"{exc}") from None
            teardown.callback(metrics_http.shutdown)
            metrics_port = metrics_http.server_port
        make = BatcherMaker(config, metrics, statistics, tracing)
        paths = config.model_paths()
        if not paths and config.model_control != "explicit":
            raise ServiceError("no models to serve: pass --model NAME=PATH or "
                               "--model-repository DIR (no bundled models were found in "
                               "this installation)")
        registry = teardown.enter_context(contextlib.closing(build_registry(paths, make)))
        make.max_latent_dim = max((m.metadata.latent_dim for m in registry),
                                  default=DEFAULT_LATENT_DIM)
        describe_models(registry, metrics)
        encoder = ThreadPoolExecutor(max_workers=config.resolved_encode_workers,
                                     thread_name_prefix="encode")
        teardown.callback(encoder.shutdown)
        repository = ModelRepository(
            Path(config.model_repository) if config.model_repository else None,
            config.model_control == "explicit", registry, make, config.grace_seconds)
        plane = DataPlane(registry, repository, statistics, admission, encoder,
                          config.max_batch, config.latent_cache)
        edge = Edge(metrics, statistics, admission, token, tracing)
        health = HealthServicer(list_names=not token)
        server, port = _on_loop(loop, _grpc_on(
            config, config.port, "--port", edge, _add_services(config, plane, health),
            [("grpc.max_send_message_length", config.max_message_bytes),
             ("grpc.max_receive_message_length", receive_limit(  # what a valid one can need
                 config.max_batch, make.max_latent_dim, config.max_message_bytes))],
            server_credentials(config)))
        teardown.callback(lambda: _on_loop(loop, server.stop(teardown.grace)))
        _on_loop(loop, _serving(health, plane))  # last: every model is loaded and warm

        def changed(name: str, served: bool) -> None:  # a load, unload or reload, on its thread
            status = health_pb2.HealthCheckResponse
            asyncio.run_coroutine_threadsafe(health.set(
                model_health_name(name), status.SERVING if served else status.NOT_SERVING),
                loop).result(timeout=10)
            if served:
                describe_models(registry.versions(name), metrics)
            else:
                log.info("model %r unloaded", name)
        repository.on_change = changed
        health_port = None
        if config.health_port >= 0:
            # Plaintext, the health service alone: Kubernetes' gRPC probes and the image's
            # HEALTHCHECK cannot speak TLS or show a client certificate. Its own admission:
            # its Watch streams never take the main port's.
            health_edge = Edge(metrics, statistics, Admission({Category.WATCH: (
                MAX_HEALTH_CALLS, "MAX_HEALTH_CALLS")}))
            health_server, health_port = _on_loop(loop, _grpc_on(
                config, config.health_port, "--health-port", health_edge,
                lambda edge: edge.add(health_pb2_grpc.add_HealthServicer_to_server,
                                      HealthPortServicer(health)),
                [("grpc.max_receive_message_length", 4096)]))
            teardown.callback(lambda: _on_loop(loop, health_server.stop(0)))
        http_app, http_port = None, None
        if config.http_port >= 0:
            http, http_port = _on_loop(loop, _start_http(config, plane, edge, bool(token)))
            teardown.callback(lambda: _on_loop(loop, http.cleanup()))
            http_app = http.app
        running = RunningServer(port, metrics_port, http_port, health_port, health, admission,
                                plane, metrics, config, loop, http_app, teardown.pop_all())
    # Everything loaded so far lives as long as the process: frozen, Python's full garbage
    # collections no longer walk it, which would stop every call for milliseconds.
    gc.collect()
    gc.freeze()
    log.info("listening grpc=%s:%d http=%s metrics=%s tls=%s auth=%s health=%s tracing=%s",
             config.host,
             port, f"{config.host}:{http_port}" if http_app else "off",
             f"{config.resolved_metrics_host}:{metrics_port}" if metrics_port else "off",
             ("mutual" if config.tls_client_ca else "on") if config.tls_cert else "off",
             "bearer" if token else "off",
             f"{config.host}:{health_port} (plaintext)" if health_port else "on the gRPC port",
             tracing.described if tracing else "off")
    return running


def _tracing_from_env() -> Tracing | None:
    try:
        return Tracing.from_env()
    except ValueError as exc:
        raise ServiceError(f"cannot trace: {exc}") from None


def _check_port_free(host: str, port: int, flag: str) -> None:
    """Fail at once with a clear message when a port is taken (grpc's own error is a core log
    line and a bare RuntimeError, and the ports are bound only after the models load)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror}; stop what "
                               f"holds the port or pick another with {flag}") from None


async def _grpc_on(config: ServeConfig, port: int, flag: str, edge: Edge, add, options: list,
                   credentials=None) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server on `port`, every call through `edge`; `add(grpc_edge)` adds its
    services. SO_REUSEPORT is off unless asked: a second server could otherwise bind the same
    port silently (the supervisor's workers share it on purpose)."""
    server = grpc.aio.server(options=[*options,
                                      ("grpc.so_reuseport", 1 if config.reuse_port else 0)])
    address = f"{config.host}:{port}"
    try:
        port = (server.add_secure_port(address, credentials) if credentials
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise ServiceError(f"cannot listen on {address}: {exc}; pick another port with "
                           f"{flag}") from None
    grpc_edge = GrpcEdge(edge)
    add(grpc_edge)
    server.add_generic_rpc_handlers((grpc_edge,))
    await server.start()
    return server, port


def _add_services(config: ServeConfig, plane: DataPlane, health: HealthServicer):
    def add(edge: GrpcEdge) -> None:
        edge.add(pb_grpc.add_GeneratorServiceServicer_to_server,
                 GeneratorServicer(plane, config.max_message_bytes))
        edge.add(v2_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(plane))
        edge.add(health_pb2_grpc.add_HealthServicer_to_server, health)
        edge.add(reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                 reflection.aio.ReflectionServicer((SERVICE_NAME, V2_SERVICE_NAME,
                                                    HEALTH_SERVICE, reflection.SERVICE_NAME)))
    return add


async def _serving(health: HealthServicer, plane: DataPlane) -> None:
    for name in ("", SERVICE_NAME, *(model_health_name(m.name) for m in plane.registry)):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)


async def _start_http(config: ServeConfig, plane: DataPlane, edge: Edge, private: bool
                      ) -> tuple[web.AppRunner, int]:
    """Serve the HTTP front door on the same loop as gRPC; returns the runner and its port."""
    v2_routes = InferenceRoutes(plane, config.max_message_bytes)
    images = ImageRoutes(plane, private=private)
    routes = v2_routes.routes() + images.routes()
    images.api_document = openapi_document(routes, v2_routes.version, plane.max_images,
                                           private)
    logging.getLogger("aiohttp.server").addFilter(drop_malformed_requests)
    app = web.Application(client_max_size=config.max_message_bytes,
                          middlewares=[aiohttp_refusals])
    app[EDGE], app[READ_TIMEOUT] = edge, config.read_timeout
    for method, path, handler in routes:  # a GET answers HEAD too (allow_head)
        app.router.add_route(method, path, handler) if method != "GET" \
            else app.router.add_get(path, handler)
    # aiohttp's own access log is off: the edge logs each call at DEBUG, as for gRPC. A caller
    # that disconnects cancels its handler, so its queued images are dropped unrun. The rest
    # of a body left unread (a refusal) is read and dropped for at most a second, so the
    # refusal reaches the caller before the connection closes (aiohttp's default: 10 s).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                           shutdown_timeout=config.grace_seconds, lingering_time=1.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.http_port, ssl_context=http_ssl_context(config),
                       reuse_port=config.reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ServiceError(f"cannot listen on {config.host}:{config.http_port}: "
                           f"{exc.strerror}; pick another port with --http-port") from None
    return runner, runner.addresses[0][1]


# --- the event loop's thread -------------------------------------------------------------------

def _start_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    threading.Thread(target=run, name="rpc-loop", daemon=True).start()
    ready.wait()
    return loop


def _on_loop(loop: asyncio.AbstractEventLoop, coro):
    """Run `coro` on `loop` (another thread's) and wait for its result here."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result()
