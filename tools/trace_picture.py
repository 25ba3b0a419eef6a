"""Draw one real request's trace, as docs/tracing.md shows it.

    python tools/trace_picture.py --out docs/img/trace.png

Starts dcgan-serve (the bundled models) with OTLP tracing on, exporting to a receiver this
script runs on 127.0.0.1; sends one `Generate` (a PNG grid of 4 seeds) carrying a W3C
traceparent, with three other callers at the same moment so that they share its run; then
prints the spans the receiver got, as a collector's debug output would, and draws the
request's trace and its run's span as a waterfall (matplotlib).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc  # noqa: E402

from service.api.dcgan.v1 import generator_pb2 as pb  # noqa: E402
from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc  # noqa: E402

TRACE_ID, CALLER_SPAN = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"


class Receiver(otlp_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []

    def Export(self, request, context):
        self.spans += [s for r in request.resource_spans for sc in r.scope_spans for s in sc.spans]
        return otlp.ExportTraceServiceResponse()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "trace.png")
    args = parser.parse_args()
    receiver = Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(2))
    otlp_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    os.environ.update(OTEL_TRACES_EXPORTER="otlp",
                      OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                      OTEL_BSP_SCHEDULE_DELAY="50")
    from service.process.config import ServeConfig
    from service.process.server import create_server
    running = create_server(ServeConfig(host="127.0.0.1", port=0, http_port=-1, metrics_port=-1,
                                        batch_max_delay_ms=5))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            stub.Generate(pb.GenerateRequest(seeds=[0, 1], format=pb.IMAGE_FORMAT_PNG_GRID),
                          timeout=10)  # warm, the encoder too
            start = threading.Barrier(4)

            def call(seeds: list[int], **kwargs) -> None:
                start.wait()
                stub.Generate(pb.GenerateRequest(seeds=seeds, **kwargs), timeout=10,
                              metadata=kwargs and [("traceparent", TRACEPARENT)] or None)
            callers = [threading.Thread(target=call, args=(list(range(4 * i, 4 * i + 4)),))
                       for i in range(1, 4)]
            callers.append(threading.Thread(target=call, args=(list(range(100, 104)),),
                                            kwargs={"format": pb.IMAGE_FORMAT_PNG_GRID}))
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
    finally:
        running.stop(grace=1)
        collector.stop(0)

    ours = [s for s in receiver.spans if int.from_bytes(s.trace_id, "big") == TRACE_ID]
    [call] = [s for s in ours if int.from_bytes(s.parent_span_id, "big") == CALLER_SPAN]
    run_ids = {link.span_id for s in ours for link in s.links}
    runs = [s for s in receiver.spans if s.span_id in run_ids]
    shown = [call] + sorted((s for s in ours if s is not call),
                            key=lambda s: s.start_time_unix_nano) + runs
    for span in shown:
        attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
        print(f"{span.name:<40} trace {span.trace_id.hex()[:8]}… span {span.span_id.hex()} "
              f"parent {span.parent_span_id.hex() or '-':<16} "
              f"{(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6:7.3f} ms "
              f"links {len(span.links)} {attributes}")
    _draw(shown, call, args.out)
    print(f"wrote {args.out}")
    return 0


def _draw(spans, call, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t0 = min(s.start_time_unix_nano for s in spans)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(spans) + 1.2))
    for row, span in enumerate(spans):
        start = (span.start_time_unix_nano - t0) / 1e6
        width = max((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 0.01)
        own = span.trace_id == call.trace_id
        ax.barh(row, width, left=start, color="#4c72b0" if own else "#dd8452")
        label = span.name if span.span_id == call.span_id else (
            f"  {span.name}" if own else f"{span.name} (own trace, {len(span.links)} links)")
        ax.text(start + width + 0.02, row, f"{label}  {width:.2f} ms", va="center", fontsize=8)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the call arrived")
    ax.set_title("One Generate call (4 seeds, PNG grid) and the run it shared with others",
                 fontsize=10)
    ax.set_xlim(0, (max(s.end_time_unix_nano for s in spans) - t0) / 1e6 * 1.45)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
