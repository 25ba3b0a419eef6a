"""One call's life at the edge, whichever transport brought it.

`Edge.handling` is the one place that times a call (`CallRecord`, from which its metrics,
statistics and trace are made when it ends), refuses a caller without the token (decided by
the transport before any body is read), admits it by category (`Admission`) and records the
status of whatever escapes. The transports answer with that status, mapped here once
(`STATUS_FOR`, `HTTP_STATUS`); anything unmapped is a bug: INTERNAL, logged, not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import threading
import time
from typing import Callable, Mapping

import grpc

from service.contract import ContractError
from service.edge.metrics import Metrics
from service.edge.statistics import Statistics
from service.errors import (DeadlineExceeded, DeviceUnavailable, InvalidRequest,
                            ModelLoadError, ModelNotFound, NotAllowed, Overloaded,
                            ShuttingDown, Unauthenticated)

UNKNOWN_MODEL = "_unknown"

STATUS_FOR: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ContractError: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    DeviceUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    NotAllowed: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}

# How each status reads over HTTP (google/rpc/code.proto's mapping).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Statuses that mean the server failed (OpenTelemetry's RPC conventions): a span ends in error
# for these; a bad request or a missing model is the caller's and leaves it unset.
SERVER_ERRORS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def http_status_for(exc: BaseException) -> int:
    return getattr(exc, "http_status", 0) or HTTP_STATUS[status_for(exc)]


# What a transport says about a call for its trace, asked only when tracing is on:
# (span name, the headers or metadata that may carry a traceparent, attributes).
Traced = Callable[[], tuple[str, Mapping[str, str], dict]]


# --- admission: who gets in ---------------------------------------------------------------------

#: health Watch streams served at once, per port: each holds a task, so they are bounded.
MAX_WATCHES = 16


class Category(enum.Enum):
    """A call's kind, as Triton's restricted protocols group them, so operations traffic never
    competes with inference: health (Check, V2 live and ready) and page (the playground, the
    API document) are open and never limited; health-watch streams are MAX_WATCHES at once;
    the others need the token and have --max-in-flight calls each. Inference is also refused
    while draining, and the drain waits for it."""

    HEALTH = "health"
    PAGE = "page"
    WATCH = "health-watch"
    METADATA = "metadata"
    STATISTICS = "statistics"
    REPOSITORY = "model-repository"
    INFERENCE = "inference"

    @property
    def open(self) -> bool:
        """Needs no bearer token."""
        return self in (Category.HEALTH, Category.PAGE)


def limits(max_in_flight: int) -> dict[Category, tuple[int, str]]:
    """Each limited category's (limit, the setting that sets it)."""
    shared = {c: (max_in_flight, "--max-in-flight") for c in Category
              if c not in (Category.HEALTH, Category.PAGE, Category.WATCH)}
    return {**shared, Category.WATCH: (MAX_WATCHES, "MAX_WATCHES")}


class Admission:
    def __init__(self, limits: dict[Category, tuple[int, str]]):
        self._limits = limits
        self._counts = dict.fromkeys(Category, 0)
        self._changed = threading.Condition()
        self.draining = False
        self._last_call = time.monotonic()

    @contextlib.contextmanager
    def admitted(self, category: Category):
        """Count a call in, or refuse it (Overloaded past its category's limit; ShuttingDown
        for inference once draining)."""
        if category not in self._limits:
            yield
            return
        limit, setting = self._limits[category]
        inference = category is Category.INFERENCE
        with self._changed:
            if inference:
                self._last_call = time.monotonic()
                if self.draining:
                    raise ShuttingDown("the server is shutting down: retry on another replica")
            if self._counts[category] >= limit:
                raise Overloaded(f"{self._counts[category]} {category.value} calls are in "
                                 f"progress, the most this server takes ({setting}): retry "
                                 "shortly")
            self._counts[category] += 1
        try:
            yield
        finally:
            with self._changed:
                self._counts[category] -= 1
                if inference:  # its caller may send the next call at once: quiet from here
                    self._last_call = time.monotonic()
                    self._changed.notify_all()

    def drain(self, timeout: float, quiet: float = 0.1, max_quiet_wait: float = 2.0) -> bool:
        """Refuse new inference calls and wait for the admitted ones; True if all finished.

        Then keep refusing until no call has arrived or finished for `quiet` seconds (at most
        `max_quiet_wait`): a caller whose call just finished may already have sent the next
        one, and grpc cancels, rather than answers, calls it holds when the server stops.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            self.draining = True
            while self._counts[Category.INFERENCE] and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            drained = self._counts[Category.INFERENCE] == 0
        quiet_until = min(deadline, time.monotonic() + max_quiet_wait)
        while (time.monotonic() - self._last_call < quiet
               and time.monotonic() < quiet_until):
            time.sleep(quiet / 4)
        return drained


class CallRecord:
    """What one call learnt as it went, read when it ends: the edge sets the status and the
    deadline, the data plane the model, version, kind, images and the time of each step, the
    batcher the queue wait and the runs."""

    __slots__ = ("started", "deadline", "model", "version", "code", "images", "kind",
                 "http_status", "trace", "ran", "input_s", "queue_s", "infer_s", "output_s")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.deadline: float | None = None  # time.perf_counter() after which nobody waits
        self.model = UNKNOWN_MODEL
        self.version = ""
        self.code = "OK"
        self.images = 0
        self.kind = "seed"
        self.http_status = 0  # an HTTP route's answer, once it has one
        self.trace = None     # a tracing.CallTrace when tracing is on
        # Set once the call runs on its model: the seconds of its steps, latents (input),
        # waiting for a run (queue), the runs that served it (infer) and encoding (output).
        self.ran = False
        self.input_s = self.queue_s = self.infer_s = self.output_s = 0.0

    def expire_in(self, seconds: float | None) -> None:
        """The caller waits at most `seconds` more (the earliest deadline sent wins)."""
        if seconds is not None:
            deadline = time.perf_counter() + seconds
            self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()


class Edge:
    """What every call of every door meets: the token, admission, where its figures go."""

    def __init__(self, metrics: Metrics, statistics: Statistics, admission: Admission,
                 token: str = "", tracing=None):
        self.metrics = metrics
        self.statistics = statistics
        self.admission = admission
        self.tracing = tracing
        self._token = token.encode()
        self.asks_for_token = bool(token)

    def authorized(self, category: Category, credentials: str | None) -> bool:
        """Whether a caller sending `credentials` (its Authorization value) may make a call
        of `category`. The scheme is case-insensitive (RFC 7235); the token is compared in
        constant time."""
        if not self._token or category.open:
            return True
        scheme, _, token = (credentials or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                  self._token)

    @contextlib.contextmanager
    def handling(self, name: str, category: Category, denied: str = "",
                 traced: Traced | None = None):
        call = CallRecord()
        if self.tracing is not None and traced is not None:
            call.trace = self.tracing.start_call(call.started, *traced())
        try:
            if denied:  # no token, or the wrong one: `denied` says what to send
                raise Unauthenticated(denied)
            with self.admission.admitted(category):
                gauge = self.metrics.in_flight_gauge(name)
                gauge.inc()
                try:
                    yield call
                finally:
                    gauge.dec()
        # The caller went away: grpc cancels our task if we await a run, or closes a
        # streaming handler (GeneratorExit at its yield) that waits to be read.
        except (asyncio.CancelledError, GeneratorExit):
            call.code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception as exc:
            call.code = status_for(exc).name
            raise
        finally:
            self.metrics.record(name, call)
            if category is Category.INFERENCE and call.model != UNKNOWN_MODEL \
                    and (call.ran or call.code != "OK"):
                self.statistics.record_call(call)
            if call.trace is not None:
                self._end_trace(call)

    def _end_trace(self, call: CallRecord) -> None:
        code = grpc.StatusCode[call.code]
        if call.trace.is_grpc:
            status, failed = {"rpc.grpc.status_code": code.value[0]}, code in SERVER_ERRORS
        else:  # its response's status, or the one its error will be answered with
            http = call.http_status or HTTP_STATUS[code]
            status, failed = {"http.response.status_code": http}, http >= 500
        self.tracing.end_call(call.trace, call, status, failed)
