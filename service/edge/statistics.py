"""Per model and version statistics since start, as Triton's statistics extension defines them,
so `tritonclient` and Triton's perf tools read them unmodified: images, runs, generating calls
by outcome, each successful call's phases (queue, compute_input: latents, compute_infer: its
runs, compute_output: encoding) and each run size's. Counts match the Prometheus metrics'.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

NS = 1_000_000_000
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _duration() -> list[int]:
    return [0, 0]  # count, ns


class _Model:
    def __init__(self) -> None:
        self.last_inference_ms = self.inference_count = self.execution_count = 0
        self.phases = {phase: _duration() for phase in PHASES}
        self.batches: dict[int, dict] = defaultdict(lambda: {"compute_input": _duration(),
                                                             "compute_infer": _duration()})

    def add(self, phase: str, seconds: float, durations: dict | None = None) -> None:
        duration = (durations or self.phases)[phase]
        duration[0] += 1
        duration[1] += int(seconds * NS)


class Statistics:
    def __init__(self) -> None:
        self._models: dict[tuple[str, str], _Model] = defaultdict(_Model)
        self._lock = threading.Lock()  # calls end on the loop, runs end on worker threads

    def record_call(self, call) -> None:
        """A generating call that reached its model, ended (an edge.call.CallRecord)."""
        seconds = time.perf_counter() - call.started
        with self._lock:
            model = self._models[call.model, call.version]
            model.last_inference_ms = time.time_ns() // 1_000_000
            if call.code != "OK":
                model.add("fail", seconds)
                return
            model.inference_count += call.images
            for phase, value in (("success", seconds), ("queue", call.queue_s),
                                 ("compute_input", call.input_s),
                                 ("compute_infer", call.infer_s),
                                 ("compute_output", call.output_s)):
                model.add(phase, value)

    def run_observer(self, name: str, version: str):
        """For one model's batcher: each run's size and times."""
        def observe(images: int, waited: float, gathered: float, seconds: float) -> None:
            with self._lock:
                model = self._models[name, version]
                model.execution_count += 1
                model.add("compute_input", gathered, model.batches[images])
                model.add("compute_infer", seconds, model.batches[images])
        return observe

    def report(self, served: list[tuple[str, str]]) -> dict:
        """Triton's JSON for these (name, version) pairs, zeros for one never called."""
        with self._lock:
            return {"model_stats": [_report(name, version, self._models.get((name, version),
                                                                              _Model()))
                                    for name, version in served]}


def _report(name: str, version: str, model: _Model) -> dict:
    def report(duration: list[int]) -> dict:
        return {"count": duration[0], "ns": duration[1]}
    zero = report(_duration())
    return {
        "name": name, "version": version, "last_inference": model.last_inference_ms,
        "inference_count": model.inference_count, "execution_count": model.execution_count,
        "inference_stats": {**{phase: report(d) for phase, d in model.phases.items()},
                            "cache_hit": zero, "cache_miss": zero},
        # A run's output is sliced per caller, not copied: nothing to time.
        "batch_stats": [{"batch_size": size, **{k: report(d) for k, d in batch.items()},
                         "compute_output": {"count": batch["compute_infer"][0], "ns": 0}}
                        for size, batch in sorted(model.batches.items())],
        "memory_usage": [],
    }
