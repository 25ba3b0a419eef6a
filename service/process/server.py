"""`dcgan-serve`: load the models, start gRPC (+ health, reflection), HTTP and /metrics, stop gracefully.

    create_server(config) -> RunningServer   builds and starts everything; tests bind port 0
    serve(config)                            create_server, then block until SIGTERM/SIGINT
    main()                                   flags/env -> ServeConfig -> serve (or, with
                                             --processes N, supervisor.supervise); exit codes

A request's path: gRPC (grpc.aio) or HTTP (aiohttp), both on one event loop in the `rpc-loop`
thread -> a door (`service/doors/`: the edge's admission, metrics and errors around a
converter) -> the data plane (`service/plane/dataplane.py`) -> the model's batcher
(`batching.py`) -> onnxruntime (`runtime.py`).
The caller of create_server (the main thread in `serve`) keeps signals, reload and stop.
Everything create_server starts goes on one teardown list as it starts; `stop` (or a failed
start) unwinds that list, newest first.

Health turns SERVING only after every model has loaded and warmed up; on SIGTERM it turns
NOT_SERVING (HTTP's /v2/health/ready 503), new calls are refused, and in-flight calls of
either protocol get `grace_seconds` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import logging
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.doors.admission import CallGate
from service.doors.edge import Edge, add_servicer
from service.doors.grpc_dcgan import GeneratorServicer
from service.doors.grpc_v2 import InferenceServicer
from service.doors.http import door
from service.doors.http_images import ImageRoutes
from service.doors.http_v2 import InferenceRoutes
from service.doors.openapi import openapi_document
from service.errors import ServiceError
from service.plane.batching import Batcher, BatchLimits, make_engine
from service.plane.dataplane import DataPlane
from service.plane.metrics import Metrics
from service.plane.models import ModelRegistry
from service.plane.repository import ModelRepository, build_registry
from service.plane.statistics import Statistics
from service.plane.tracing import Tracing
from service.process.config import ServeConfig, config_from_args
from service.process.security import BearerTokenInterceptor, http_ssl_context, server_credentials
from service.process.supervisor import supervise

log = logging.getLogger("dcgan-serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GeneratorService"].full_name
V2_SERVICE_NAME = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class HealthServicer(health.aio.HealthServicer):
    """The standard health service; an unknown name's NOT_FOUND says which names exist."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    async def set(self, service: str, status) -> None:
        if service not in self.names:
            self.names.append(service)
        await super().set(service, status)

    async def Check(self, request, context):
        if request.service not in self.names:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no health status for {request.service!r}: this server "
                                f"reports {', '.join(map(repr, self.names))}")
        return await super().Check(request, context)


class PlaintextHealth(health_pb2_grpc.HealthServicer):
    """The health-only port's face of the shared `HealthServicer`: the same statuses, but an
    unknown name is a bare NOT_FOUND, since that port asks for no token or certificate and so
    names none of the served services and models."""

    def __init__(self, shared: HealthServicer):
        self.shared = shared

    async def Check(self, request, context):
        if request.service not in self.shared.names:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service name")
        return await self.shared.Check(request, context)

    async def Watch(self, request, context):
        return await self.shared.Watch(request, context)


#: Calls the health-only port handles at once: probes are few and short, and each Watch
#: stream holds a task, so an unauthenticated port must not take them without bound.
MAX_HEALTH_CALLS = 16


def model_health_name(model: str) -> str:
    """The health-check service name of one model (grpc.health.v1 `service` field)."""
    return f"model/{model}"


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
    gate: CallGate  # admits generation calls of every door; drained on stop
    plane: DataPlane
    metrics: Metrics
    config: ServeConfig
    loop: asyncio.AbstractEventLoop  # runs gRPC and HTTP, in its own thread
    http_app: web.Application | None
    _teardown: _Teardown
    repository: ModelRepository  # what is served: SIGHUP reloads and API loads go through it

    @property
    def registry(self) -> ModelRegistry:
        return self.plane.registry

    def reload(self) -> bool:
        """Load every served model file again beside the served ones, warm them up, then
        swap them in at once. On any failure the old models keep serving; the failure is
        logged and counted (`dcgan_model_reloads_total{result="failure"}`)."""
        try:
            self.repository.reload(self.config.model_paths())
        except ServiceError as exc:
            self.metrics.reloads.labels(result="failure").inc()
            log.error("reload failed, still serving the previous models: %s", exc)
            return False
        describe_models(self.registry, self.metrics)
        self.metrics.reloads.labels(result="success").inc()
        log.info("reloaded %d model(s)", len(self.registry))
        return True

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds, then stop.

        The drain happens in our own gate first (new calls get UNAVAILABLE from our own code,
        admitted ones finish), and only then is the gRPC server stopped: grpc's own stop
        cancels calls it has received but not yet handed to a handler.
        """
        grace = self.config.grace_seconds if grace is None else grace
        started = time.monotonic()
        _on_loop(self.loop, self.health.enter_graceful_shutdown())
        if not self.gate.drain(grace):
            log.warning("grace period of %.1fs over with calls still running", grace)
        self._teardown.grace = max(0.5, grace - (time.monotonic() - started))
        self._teardown.close()


@dataclass
class EngineMaker:
    """Builds one model file's engine with every observer attached: metrics, statistics and,
    when on, tracing. At start, on SIGHUP and on a repository load alike."""

    config: ServeConfig
    metrics: Metrics
    statistics: Statistics
    tracing: Tracing | None = None

    def __call__(self, name: str, version: str, path: Path) -> Batcher:
        config = self.config
        limits = BatchLimits(max_run_images=config.batch_max_images,
                             max_delay_s=config.batch_max_delay_ms / 1000,
                             max_queued_images=config.max_queued_images)
        engine = make_engine(path, config.device, config.resolved_inference_workers, limits)
        version = version or engine.runner.metadata.version
        metrics = self.metrics.batch_observer(name, version)
        statistics = self.statistics.run_observer(name, version)

        def observe(*facts) -> None:
            metrics(*facts)
            statistics(*facts)
        engine.observe = observe
        if self.tracing is not None:
            engine.trace_run = self.tracing.run_hook(name, version)
        return engine


def load_models(config: ServeConfig, make: EngineMaker) -> ModelRegistry:
    paths = config.model_paths()
    if not paths and config.model_control != "explicit":
        raise ServiceError("no models to serve: pass --model NAME=PATH or --model-repository "
                           "DIR (no bundled models were found in this installation)")
    return build_registry(paths, make)


def describe_models(registry: ModelRegistry, metrics: Metrics) -> None:
    for model in registry:
        meta = model.metadata
        metrics.describe_model(model.name, model.version, meta.version, meta.arch,
                               meta.dataset, model.runner.providers)
        log.info("model %r%s: %s %s, version %s%s, on %s, %s", model.name,
                 " (default)" if model.is_default else "", meta.arch, meta.dataset,
                 model.version, "" if model.version == meta.version else f" (run {meta.version})",
                 ",".join(model.runner.providers), model.engine.describe())


def create_server(config: ServeConfig) -> RunningServer:
    """Bind the ports (a taken one fails at once), load the models, then start serving."""
    metrics, statistics, gate, token = Metrics(), Statistics(), CallGate(), config.auth_token()
    teardown = _Teardown()
    with teardown:  # a failed start stops what did start, newest first, and re-raises
        loop = _start_loop()
        teardown.callback(_stop_loop, loop)
        tracing = _tracing_from_env()
        if tracing is not None:  # stopped after the servers: exports the last calls' spans
            teardown.callback(tracing.shutdown)
        for flag, value in (("--http-port", config.http_port),
                            ("--health-port", config.health_port)):
            if value > 0 and not config.reuse_port:
                _check_port_free(config.host, value, flag)
        server, port = _on_loop(loop, _bind_grpc(config, token))
        teardown.callback(lambda: _on_loop(loop, server.stop(teardown.grace)))
        metrics_port = None
        if config.metrics_port >= 0:
            try:
                metrics_http, _ = metrics.serve_http(config.metrics_host, config.metrics_port)
            except OSError as exc:
                raise ServiceError(f"cannot serve metrics on {config.metrics_host}:"
                                   f"{config.metrics_port}: {exc}") from None
            teardown.callback(metrics_http.shutdown)
            metrics_port = metrics_http.server_port
        make = EngineMaker(config, metrics, statistics, tracing)
        registry = teardown.enter_context(contextlib.closing(load_models(config, make)))
        describe_models(registry, metrics)
        encoder = ThreadPoolExecutor(max_workers=config.resolved_encode_workers,
                                     thread_name_prefix="encode")
        teardown.callback(encoder.shutdown)
        plane = DataPlane(registry, encoder, config.max_batch, config.latent_cache)
        edge = Edge(metrics, gate, statistics, tracing)
        repository = ModelRepository(
            Path(config.model_repository) if config.model_repository else None,
            config.model_control == "explicit", registry, make, config.grace_seconds)
        health_servicer = _on_loop(loop, _start_grpc(server, config, plane, edge, repository))

        def changed(name: str, served: bool) -> None:  # a load or unload, on its thread
            status = health_pb2.HealthCheckResponse
            asyncio.run_coroutine_threadsafe(health_servicer.set(
                model_health_name(name), status.SERVING if served else status.NOT_SERVING),
                loop).result(timeout=10)
            describe_models(registry, metrics)
        repository.on_change = changed
        health_port = None
        if config.health_port >= 0:
            health_server, health_port = _on_loop(loop, _start_health_port(config,
                                                                           health_servicer))
            teardown.callback(lambda: _on_loop(loop, health_server.stop(0)))
        http_app, http_port = None, None
        if config.http_port >= 0:
            http, http_port = _on_loop(loop, _start_http(config, plane, edge, repository,
                                                         token))
            teardown.callback(lambda: _on_loop(loop, http.cleanup()))
            http_app = http.app
        running = RunningServer(port, metrics_port, http_port, health_port, health_servicer,
                                gate, plane, metrics, config, loop, http_app, teardown.pop_all(),
                                repository)
    # Everything loaded so far lives as long as the process: frozen, Python's full garbage
    # collections no longer walk it, which would stop every call for milliseconds.
    gc.collect()
    gc.freeze()
    log.info("listening grpc=%s:%d http=%s metrics=%s tls=%s auth=%s health=%s", config.host,
             port, f"{config.host}:{http_port}" if http_app else "off",
             f"{config.metrics_host}:{metrics_port}" if metrics_port else "off",
             ("mutual" if config.tls_client_ca else "on") if config.tls_cert else "off",
             "bearer" if token else "off",
             f"{config.host}:{health_port} (plaintext)" if health_port else "on the gRPC port")
    return running


def _tracing_from_env() -> Tracing | None:
    try:
        return Tracing.from_env()
    except ValueError as exc:
        raise ServiceError(f"cannot trace: {exc}") from None


def _check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """Fail at once with a clear message when a port is taken (grpc's own error is a core log
    line and a bare RuntimeError, and the HTTP port is bound only after the models load)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror}; stop what "
                               f"holds the port or pick another with {flag}") from None


async def _bind_grpc(config: ServeConfig, token: str) -> tuple[grpc.aio.Server, int]:
    """Create the gRPC server on the running loop and bind its port (not serving yet)."""
    if config.port and not config.reuse_port:
        _check_port_free(config.host, config.port)
    server = grpc.aio.server(
        interceptors=[BearerTokenInterceptor(token)] if token else None,
        # Beyond this many RPCs gRPC answers RESOURCE_EXHAUSTED at once, so a flood cannot
        # grow memory and latency without bound.
        maximum_concurrent_rpcs=config.max_in_flight,
        options=[("grpc.max_send_message_length", config.max_message_bytes),
                 ("grpc.max_receive_message_length", config.max_message_bytes),
                 # Off unless asked: a second server could otherwise bind the same port
                 # silently. The multi-process supervisor's workers share it on purpose.
                 ("grpc.so_reuseport", 1 if config.reuse_port else 0)])
    credentials = server_credentials(config)
    address = f"{config.host}:{config.port}"
    try:
        port = (server.add_secure_port(address, credentials) if credentials
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise ServiceError(f"cannot listen on {config.host}:{config.port}: {exc}") from None
    return server, port


async def _start_grpc(server: grpc.aio.Server, config: ServeConfig, plane: DataPlane,
                      edge: Edge, repository: ModelRepository) -> HealthServicer:
    """Add the services and start serving; health turns SERVING last."""
    add_servicer(pb_grpc.add_GeneratorServiceServicer_to_server,
                 GeneratorServicer(plane, edge, config.max_message_bytes), server)
    add_servicer(v2_grpc.add_GRPCInferenceServiceServicer_to_server,
                 InferenceServicer(plane, edge, repository), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, V2_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    await server.start()

    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", SERVICE_NAME, *(model_health_name(m.name) for m in plane.registry)):
        await health_servicer.set(name, serving)
    return health_servicer


async def _start_health_port(config: ServeConfig, health_servicer: HealthServicer
                             ) -> tuple[grpc.aio.Server, int]:
    """A second, plaintext gRPC server with nothing but the health service (the same statuses):
    Kubernetes' gRPC probes and the image's HEALTHCHECK cannot speak TLS or present a client
    certificate. It reveals only SERVING / NOT_SERVING, and takes MAX_HEALTH_CALLS at once."""
    server = grpc.aio.server(maximum_concurrent_rpcs=MAX_HEALTH_CALLS,
                             options=[("grpc.so_reuseport", 1 if config.reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(PlaintextHealth(health_servicer), server)
    try:
        port = server.add_insecure_port(f"{config.host}:{config.health_port}")
    except RuntimeError as exc:
        raise ServiceError(f"cannot listen on {config.host}:{config.health_port}: {exc}; "
                           "pick another port with --health-port") from None
    await server.start()
    return server, port


async def _start_http(config: ServeConfig, plane: DataPlane, edge: Edge,
                      repository: ModelRepository, token: str) -> tuple[web.AppRunner, int]:
    """Serve the HTTP front door on the same loop as gRPC; returns the runner and its port."""
    v2 = InferenceRoutes(plane, edge, repository, config.max_message_bytes)
    images = ImageRoutes(plane, edge, private=bool(token))
    routes = v2.routes() + images.routes()
    images.api_document = openapi_document(routes, v2.version, plane.max_images)
    app = web.Application(client_max_size=config.max_message_bytes,
                          middlewares=[door(token, config.max_in_flight)])
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    # aiohttp's own access log is off: the edge logs each call at DEBUG, as for gRPC. A caller
    # that disconnects cancels its handler, so its queued images are dropped unrun.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                           shutdown_timeout=config.grace_seconds)
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


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    loop.call_soon_threadsafe(loop.stop)


def serve(config: ServeConfig) -> None:
    running = create_server(config)
    # The handlers only note the signal: a handler runs on the main thread between two
    # bytecodes, perhaps inside a lock it would then wait for (an Event's, say) for ever.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see what a stuck
    # server is waiting on without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    while True:
        # Wake up now and then rather than block for good: a signal that lands on one of
        # grpc's or onnxruntime's threads only flags the main thread, whose Python handler
        # then runs the next time it executes bytecode.
        while not received:
            time.sleep(0.25)
        signum = received.pop(0)
        if signum != signal.SIGHUP:
            break
        log.info("SIGHUP: reloading the model files")
        threading.Thread(target=running.reload, name="reload", daemon=True).start()
    log.info("%s: draining (up to %.1fs)", signal.Signals(signum).name, config.grace_seconds)
    # A watchdog for the drain itself: should anything hang past the grace period, print
    # every thread's stack and exit 1 rather than wait for a SIGKILL that explains nothing.
    faulthandler.dump_traceback_later(config.grace_seconds + 15, exit=True)
    running.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if config.resolved_processes > 1:
            return supervise(config, sys.argv[1:] if argv is None else argv)
        serve(config)
    except ServiceError as exc:  # bad model file, port in use, CUDA missing: say which
        log.error("%s", exc)
        print(f"dcgan-serve: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
