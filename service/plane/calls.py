"""What one call learnt as it went: one record per call of any door, read when it ends.

The edge makes it (`Metrics.track`) and sets the status; the data plane fills in the model,
version, kind, images and the time of each step; the batcher the queue wait and the runs.
When the call ends, the metrics, the statistics and the trace are made from it, so no door
records anything itself.
"""

from __future__ import annotations

import time

UNKNOWN_MODEL = "_unknown"


class CallRecord:
    __slots__ = ("started", "model", "version", "code", "images", "kind", "http_status",
                 "trace", "ran", "input_s", "queue_s", "infer_s", "output_s")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.model = UNKNOWN_MODEL
        self.version = ""
        self.code = "OK"
        self.images = 0
        self.kind = "seed"
        self.http_status = 0  # an HTTP route's answer, once it has one
        self.trace = None     # a tracing.CallTrace when tracing is on
        # Set by the plane once the call runs on its model, with the seconds of its steps:
        # latents (input), waiting for a run (queue), the runs that served it (infer) and
        # encoding (output).
        self.ran = False
        self.input_s = self.queue_s = self.infer_s = self.output_s = 0.0
