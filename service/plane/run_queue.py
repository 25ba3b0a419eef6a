"""The queue of one model's batcher: what waits and what runs, under one lock. `take` cuts runs
from its head, `execute` runs one, `deliver` hands each caller its rows; `Batcher` decides.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded
from service.runtime import OnnxGenerator

#: Fewer queued images than this are not worth a second worker, and a request is not cut into
#: pieces smaller than this.
MIN_PIECE = 8


@dataclass(eq=False)
class QueuedRequest:
    """One caller's latents, waiting in the queue; runs may take it in slices."""

    latents: np.ndarray
    labels: np.ndarray | None
    deadline: float | None  # time.perf_counter() after which nobody wants the result
    future: asyncio.Future
    call: object = None     # the caller's edge.call.CallRecord, if any
    queued_at: float = field(default_factory=time.perf_counter)
    runs: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each
    taken: int = 0          # rows already handed to runs
    parts: dict[int, np.ndarray] = field(default_factory=dict)  # first row -> its images

    @property
    def size(self) -> int:
        return len(self.latents)

    def unwanted(self, now: float) -> bool:
        """The caller went away, or its deadline passed."""
        return self.future.done() or (self.deadline is not None and now > self.deadline)


@dataclass
class Slice:
    request: QueuedRequest
    start: int
    stop: int


class RunQueue:
    def __init__(self, observe, max_run_images: int) -> None:
        self.observe = observe  # (images, waited, gathered, seconds) per run
        self.trace_run = None   # set when tracing is on (tracing.Tracing.run_hook)
        self.max_run_images = max_run_images
        # The first worker waits on `cv`; the others wait apart on `help`, woken only when
        # there is work to share, so a trickle of requests stays with one warm worker.
        lock = threading.Lock()
        self.cv = threading.Condition(lock)
        self.help = threading.Condition(lock)
        self.requests: deque[QueuedRequest] = deque()
        self.images = 0             # images queued and not yet taken
        self.on_threads = 0         # workers busy with a run
        self.loop_turn = False      # the loop's dispatcher looks at the queue first
        self.closed = False
        self.last_end = 0.0         # when the last run ended (time.perf_counter())
        self.last_run_s = 0.0       # and how long it took
        self.last_callers = 0       # and how many requests it served

    def found_idle(self) -> bool:
        """(Lock held.) Whether the one queued request is a lone caller's: the last run served
        one caller too, and this request arrived longer after it ended than it took. Requests
        that come in groups, or faster than runs end, are load: they share runs."""
        return (len(self.requests) == 1 and self.last_callers <= 1
                and self.requests[0].queued_at - self.last_end > self.last_run_s)

    def may_take(self) -> bool:
        """(Lock held.) Whether a worker should take work now: there is some the loop is not
        about to run, and either no worker is busy or there is enough to share (a trickle of
        tiny requests runs faster in the busy worker's next, bigger batch than split up)."""
        if not self.requests or self.loop_turn:
            return False
        return self.closed or self.on_threads == 0 or self.images >= MIN_PIECE

    def wake_workers(self) -> None:
        """(Lock held.) The first worker, and a helper if there is enough to share."""
        self.cv.notify()
        if self.on_threads or self.images >= MIN_PIECE:
            self.help.notify()

    def take(self, limit: int, first_cut: int | None = None
             ) -> tuple[list[Slice], list[QueuedRequest]]:
        """(Lock held.) Slices from the head of the queue: whole requests up to `limit`
        images, the first one cut at `first_cut` (default `limit`; 0: a first request
        bigger than `limit` stays queued). Also the requests dropped unrun because their
        caller went away or their deadline passed."""
        first_cut = limit if first_cut is None else first_cut
        batch: list[Slice] = []
        dropped: list[QueuedRequest] = []
        images = 0
        now = time.perf_counter()
        while self.requests:
            request = self.requests[0]
            left = request.size - request.taken
            if request.unwanted(now):
                self.requests.popleft()
                self.images -= left
                dropped.append(request)
                continue
            if batch and images + left > limit:
                break
            count = left if batch or left <= limit else min(left, first_cut)
            if count == 0:
                break
            batch.append(Slice(request, request.taken, request.taken + count))
            request.taken += count
            images += count
            self.images -= count
            if request.taken < request.size:
                break  # cut: the rest waits for the next run
            self.requests.popleft()
        return batch, dropped

    def wait_for_work(self, waiting: threading.Condition, max_delay_s: float) -> bool:
        """(Lock held.) Wait until there is work to take, and with --batch-max-delay-ms
        until the oldest request has waited that long or a batch is full; False once closed
        with nothing left."""
        while True:
            if not self.may_take():
                if self.closed and not self.requests:
                    return False
                waiting.wait()
                continue
            remaining = self.requests[0].queued_at + max_delay_s - time.perf_counter()
            if remaining <= 0 or self.images >= self.max_run_images or self.closed:
                return True
            waiting.wait(remaining)

    def take_for_worker(self, workers: int) -> tuple[list[Slice], list[QueuedRequest]]:
        """(Lock held.) A worker's run: a piece of a lone request when every worker is idle,
        so it uses every core (whole, if too small to be worth cutting); else whole requests,
        all of a trickle or this worker's share."""
        if self.on_threads == 0 and len(self.requests) == 1:
            pieces = max(math.ceil(self.images / self.max_run_images),
                         min(workers, self.images // MIN_PIECE), 1)
            return self.take(math.ceil(self.images / pieces))
        share = math.ceil(self.images / (workers if self.images >= MIN_PIECE else 1))
        return self.take(min(self.max_run_images, share), first_cut=self.max_run_images)

    def execute(self, generator: OnnxGenerator, batch: list[Slice]
                ) -> tuple[np.ndarray | None, BaseException | None]:
        """One onnxruntime run for the whole batch: (images, None) or (None, the error)."""
        first = batch[0].request
        gathering = time.perf_counter()
        try:
            if len(batch) == 1:
                latents = first.latents[batch[0].start:batch[0].stop]
                labels = (None if first.labels is None
                          else first.labels[batch[0].start:batch[0].stop])
            else:
                latents = np.concatenate([s.request.latents[s.start:s.stop] for s in batch])
                labels = None if first.labels is None else np.concatenate(
                    [s.request.labels[s.start:s.stop] for s in batch])
            started = time.perf_counter()
            images = generator.run(latents, labels)
            self.last_end = time.perf_counter()
            self.last_run_s = self.last_end - started
            self.last_callers = len({id(s.request) for s in batch})
            for s in batch:
                s.request.runs.append((started, self.last_end))
            self.observe(len(latents), started - min(s.request.queued_at for s in batch),
                         started - gathering, self.last_run_s)
            if self.trace_run is not None:
                served = [(s.request.call.trace, s.request.queued_at, s.start == 0)
                          for s in batch if s.request.call is not None
                          and s.request.call.trace is not None]
                if served:
                    self.trace_run(served, started, self.last_end, len(latents))
            return images, None
        except Exception as exc:  # the callers get the error; the worker or loop carries on
            return None, exc


def deliver(batch: list[Slice], images: np.ndarray | None, error: BaseException | None) -> None:
    """(On the loop.) Each caller gets its rows once all of them have run, or the error."""
    offset = 0
    for s in batch:
        request = s.request
        if request.future.done():  # cancelled, expired or failed meanwhile
            pass
        elif error is not None:
            request.future.set_exception(error)
        elif s.start == 0 and s.stop == request.size:  # the whole request in one run
            request.future.set_result(images[offset:offset + request.size])
        else:
            request.parts[s.start] = images[offset:offset + s.stop - s.start]
            if sum(len(p) for p in request.parts.values()) == request.size:
                request.future.set_result(np.concatenate(
                    [request.parts[k] for k in sorted(request.parts)]))
        offset += s.stop - s.start

def drop(dropped: list[QueuedRequest]) -> None:
    """(On the loop.) Tell the callers whose deadline passed (those who left are gone)."""
    for request in dropped:
        if not request.future.done():
            request.future.set_exception(DeadlineExceeded(
                "the deadline passed while the request waited in the queue"))
