"""OpenTelemetry traces of calls and runs, configured by the SDK's own OTEL_* variables.

`Tracing.from_env()` is None (nothing imported, one `is None` test per call) unless
OTEL_TRACES_EXPORTER names an exporter. On, each call gets a server span continuing the
caller's W3C `traceparent`, and when it ends children made from what it recorded: admission
(arrival -> into the batcher), queue wait, the onnxruntime run (linked to the run's own span,
which links every call it served) and encode. docs/tracing.md shows a real trace.
"""

from __future__ import annotations

import os
import time
from importlib.metadata import entry_points
from typing import Callable, Mapping

class CallTrace:
    """One call's span and the timed steps it went through (time.perf_counter() seconds;
    the call's start is its CallRecord's)."""

    __slots__ = ("span", "is_grpc", "handed_over", "steps")

    def __init__(self, span, is_grpc: bool) -> None:
        self.span = span
        self.is_grpc = is_grpc
        self.handed_over = 0.0
        self.steps: list[tuple[str, float, float, dict]] = []

    def add(self, name: str, start: float, end: float, **attributes) -> None:
        self.steps.append((name, start, end, attributes))


class Tracing:
    def __init__(self, provider, described: str = "on") -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.context import Context
        self._provider = provider
        self.described = described  # where the spans go, for the start-up line
        self._root = Context()  # a run's span starts a trace of its own
        self._tracer = provider.get_tracer("dcgan-serve")
        self._extract = propagate.extract  # W3C trace context by default; OTEL_PROPAGATORS
        self._trace = trace
        # Steps are timed with perf_counter; spans want the wall clock in nanoseconds.
        self._epoch_offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Tracing | None":
        names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
                 if n.strip() and n.strip() != "none"]
        if not names:
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        resource = Resource.create()
        if resource.attributes.get("service.name", "").startswith("unknown_service"):
            resource = resource.merge(Resource.create({"service.name": "dcgan-serve"}))
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)()))
        endpoint = (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "its default endpoint")
        return cls(provider, ",".join(names) + (f" to {endpoint}" if "otlp" in names else ""))

    def shutdown(self) -> None:
        """Export what is still queued, then stop."""
        self._provider.shutdown()

    # --- calls

    def start_call(self, started: float, name: str, carrier: Mapping[str, str],
                   attributes: dict) -> CallTrace:
        """A server span for a call that arrived at `started` (its CallRecord's), a child of
        the caller's span if `carrier` names one."""
        span = self._tracer.start_span(name, context=self._extract(carrier),
                                       kind=self._trace.SpanKind.SERVER, attributes=attributes,
                                       start_time=self._ns(started))
        return CallTrace(span, attributes.get("rpc.system") == "grpc")

    def end_call(self, trace: CallTrace, call, status: dict, failed: bool) -> None:
        """End the call's span with what the call learnt (`Metrics.track`'s record) and its
        transport's `status` attributes, its steps as children; `failed`: the server's fault."""
        span = trace.span
        if span.is_recording():
            span.set_attributes({"dcgan.model": call.model, "dcgan.model.version": call.version,
                                 "dcgan.images": call.images, "dcgan.kind": call.kind, **status})
            if failed:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, call.code))
            parent = self._trace.set_span_in_context(span)
            if trace.handed_over:
                self._span("admission", parent, call.started, trace.handed_over)
            for name, start, end, attributes in trace.steps:
                links = attributes.pop("links", ())
                self._span(name, parent, start, end, attributes, links)
        span.end(end_time=self._ns(time.perf_counter()))  # one clock for every span

    # --- runs

    def run_hook(self, model: str, version: str) -> Callable:
        """For one model's batcher: called after each run with the traced calls it served,
        as (trace, queued_at, first run of that call), and the run's start, end and size."""
        def traced_run(served: list[tuple[CallTrace, float, bool]], started: float,
                       ended: float, images: int) -> None:
            calls = [t for t, _, _ in served if t.span.is_recording()]
            if not calls:
                return
            size = {"dcgan.batch.images": images, "dcgan.batch.calls": len(served)}
            run = self._span("onnxruntime run", self._root, started, ended,
                             {"dcgan.model": model, "dcgan.model.version": version, **size},
                             [self._trace.Link(t.span.get_span_context()) for t in calls])
            for trace, queued_at, first in served:
                if first:
                    trace.add("queue wait", queued_at, started)
                trace.add("onnxruntime run", started, ended, **size,
                          links=[self._trace.Link(run.get_span_context())])
        return traced_run

    def _span(self, name: str, context, start: float, end: float, attributes=None, links=()):
        span = self._tracer.start_span(name, context=context, attributes=attributes,
                                       links=links, start_time=self._ns(start))
        span.end(end_time=self._ns(end))
        return span

    def _ns(self, perf_seconds: float) -> int:
        return int(perf_seconds * 1e9) + self._epoch_offset_ns


def _exporter(name: str, environ: Mapping[str, str]) -> Callable:
    """The exporter class OTEL_TRACES_EXPORTER names, as the SDK's own configuration finds
    it: `otlp` is OTLP over gRPC, or HTTP/protobuf when the protocol variable says so."""
    if name == "otlp":
        protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
        name = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(protocol)
        if name is None:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: "
                             "use grpc or http/protobuf")
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        known = sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed: use "
                         f"otlp, none or one of {', '.join(known)}")
    return next(iter(found)).load()
