"""Dynamic batching: concurrent requests for one model share onnxruntime runs.

Each model has one `Batcher`, built by `make_engine`. Requests queue in it from the server's
event loop; where each batch runs is decided in two places, `submit` and `_dispatch`:

* **A lone caller runs at once, on the event loop's thread**, on a session that uses every
  core of the process: no hand-off to a thread and back, which at batch 1 costs about as much
  as the run itself. A request is a lone caller's when it is small, finds nothing else queued
  or running, the last run served one caller too, and it arrived longer after that run ended
  than the run took (requests that come faster than runs end are load).
* **Under load, runs go to worker threads**, one per core, each on a single-threaded session
  (two single-threaded runs side by side beat one two-threaded run on these small
  generators). The first worker takes everything queued when it is free; the others join
  only when MIN_PIECE images or more wait, and then each takes its share: a trickle of tiny
  requests runs faster in one worker's growing batches than split between workers that then
  wait on each other and on the loop for the GIL. A big request that finds every worker idle
  is cut into a piece per worker, so it uses every core; under load requests stay whole.
* **With one worker** (what `--processes` gives each process when there is a core apiece)
  a thread buys no parallelism, only hand-offs, so small batches always run on the loop, and
  under load the loop lets calls still on their way join the batch for up to LOAD_WINDOW_S.

Big requests (BIG_REQUEST images or more) always run on the worker threads: a long run must
not stop the event loop. Requests whose caller went away or whose deadline passed are dropped
before their run. The measurements behind these rules are in docs/decisions.md.

Why the images stay identical: each seed's latent is computed before batching, and the
exported generator computes every row independently (eval-mode BatchNorm, no cross-row ops),
so a row gets the same bytes whatever batch it runs in (the tests check this exactly).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from service.errors import DeadlineExceeded, Overloaded
from service.plane.runtime import OnnxGenerator, RuntimeOptions

#: Fewer queued images than this are not worth a second worker, and a request is not cut into
#: pieces smaller than this.
MIN_PIECE = 8

#: From this many images a run goes to a worker thread, never the event loop.
BIG_REQUEST = 2 * MIN_PIECE

#: With one worker under load: how long the oldest queued request may wait for calls that
#: have reached gRPC but not yet the loop, so they share its run.
LOAD_WINDOW_S = 0.0003

#: Turns of the event loop the dispatcher yields at most, while each brings more requests.
MAX_YIELDS = 16

#: Called once per run with (images in the run, seconds its oldest request waited, seconds
#: gathering its requests' latents, seconds onnxruntime took).
BatchObserver = Callable[[int, float, float, float], None]


@dataclass(frozen=True)
class BatchLimits:
    max_run_images: int = 0        # most images in one run; 0: 64 on a CPU, 256 on CUDA
    max_delay_s: float = 0.0       # how long a lone request waits for company
    max_queued_images: int = 4096  # past this, new requests are refused (backpressure)


def make_engine(path: Path, device: str, workers: int, limits: BatchLimits | None = None
                ) -> "Batcher":
    """The engine of one model file: its sessions and its batcher.

    Every worker shares one single-threaded session (onnxruntime's `run` is thread-safe); the
    lone caller's session may use all `workers` cores. On CUDA one session does everything:
    the GPU, not the CPU threads, runs the model.
    """
    runner = OnnxGenerator(path, RuntimeOptions(device=device, intra_op_threads=1))
    on_cuda = "CUDAExecutionProvider" in runner.providers
    lone = runner
    if workers > 1 and not on_cuda:
        lone = OnnxGenerator(path, RuntimeOptions(device=device, intra_op_threads=workers))
    limits = limits or BatchLimits()
    if not limits.max_run_images:
        # A CPU makes images as fast per image from 8 to 128 a run and slows at 256, whose
        # activations leave the cache; a GPU wants the biggest runs it can get.
        limits = dataclasses.replace(limits, max_run_images=256 if on_cuda else 64)
    return Batcher(runner, lone, workers, limits)


@dataclass(eq=False)
class _Request:
    """One caller's latents, waiting in the queue; runs may take it in slices."""

    latents: np.ndarray
    labels: np.ndarray | None
    deadline: float | None  # time.perf_counter() after which nobody wants the result
    future: asyncio.Future
    call: object = None     # the caller's calls.CallRecord, if any
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
class _Slice:
    request: _Request
    start: int
    stop: int


class Batcher:
    def __init__(self, runner: OnnxGenerator, lone_runner: OnnxGenerator, workers: int,
                 limits: BatchLimits, observe: BatchObserver | None = None):
        self.runner = runner
        self.lone_runner = lone_runner
        self.workers = workers
        self.limits = limits
        # Set by whoever builds the engine (process.server.EngineMaker): the metrics' and
        # statistics' per-run observers.
        self.observe = observe or (lambda *_: None)
        # Set when tracing is on (tracing.Tracing.run_hook): called after each run that
        # served traced requests.
        self.trace_run: Callable | None = None
        # Calls using this engine now, from before their first submit to after their last
        # (`calling`, on the event loop): an unloaded model's engine closes when none is left.
        self.calls = 0
        # The queue is filled on the event loop and emptied by the loop's dispatcher (small
        # batches) and by the worker threads; `lock` guards it.
        # The first worker waits on `_cv`; the others wait apart on `_help`, woken only when
        # there is work to share, so a trickle of requests stays with one warm worker.
        lock = threading.Lock()
        self._cv = threading.Condition(lock)
        self._help = threading.Condition(lock)
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._on_threads = 0          # workers busy with a run
        self._loop_turn = False       # the loop's dispatcher looks at the queue first
        self._last_end = 0.0          # when the last run ended (time.perf_counter())
        self._last_run_s = 0.0        # and how long it took
        self._last_callers = 0        # and how many requests it served
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, from the first call
        self._scheduled = False       # a call to _dispatch is pending on the loop
        self._yields = self._seen = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._worker, args=(self._cv if i == 0 else
                                                                     self._help,),
                                          name=f"inference-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def max_run_images(self) -> int:
        return self.limits.max_run_images

    def describe(self) -> str:
        return (f"batching up to {self.max_run_images} images a run on {self.workers} worker "
                f"thread(s), a lone caller's on the event loop")

    async def submit(self, latents: np.ndarray, labels: np.ndarray | None,
                     timeout: float | None = None, call=None) -> np.ndarray:
        """uint8 images [N, C, H, W] for float32 latents [N, latent_dim] (and labels [N]).

        Raises Overloaded when the queue is full, DeadlineExceeded when `timeout` seconds
        pass before the run starts; a cancelled caller's request is dropped unrun. `call`
        (a calls.CallRecord) gets the request's queue wait and run time.
        """
        if self._closed:
            raise RuntimeError("the batcher is closed")
        self._loop = self._loop or asyncio.get_running_loop()
        n = len(latents)
        deadline = None if timeout is None else time.perf_counter() + timeout
        request = _Request(latents, labels, deadline, self._loop.create_future(), call)
        with self._cv:
            if self._queued_images and self._queued_images + n > self.limits.max_queued_images:
                raise Overloaded(f"server overloaded: {self._queued_images} images already "
                                 f"queued for this model (limit {self.limits.max_queued_images})"
                                 "; retry with back-off")
            self._queue.append(request)
            self._queued_images += n
            small = self._queued_images < BIG_REQUEST
            lone = (small and not self.limits.max_delay_s and self._on_threads == 0
                    and self._found_idle())
            for_loop = small and not lone and self.workers == 1
            if lone:  # a lone caller's: run it now, right here
                batch, dropped = self._take(BIG_REQUEST - 1, first_cut=0)
            elif for_loop:  # one worker: small batches run on the loop, after the dispatcher
                self._loop_turn = True  # has let the requests arriving together queue
            elif self._may_take():  # else a busy worker takes it when its run ends
                self._wake_workers()
        if lone:
            self._drop(dropped)  # its deadline had passed already
            if batch:
                self._deliver(batch, *self._execute(self.lone_runner, batch))
        elif for_loop and not self._scheduled:
            self._scheduled, self._yields, self._seen = True, 0, 0
            self._loop.call_soon(self._dispatch)
        images = await request.future
        if call is not None:  # (its pieces may have run side by side, finishing in any order)
            call.queue_s += min(start for start, _ in request.runs) - request.queued_at
            call.infer_s += sum(end - start for start, end in request.runs)
        return images

    @contextlib.contextmanager
    def calling(self):
        """Count one call as using this engine while it is inside."""
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1

    def close(self) -> None:
        """Refuse new requests, let the workers finish what is queued, and stop them."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            self._help.notify_all()
        for thread in self._threads:
            thread.join()

    # --- on the event loop: small batches of a one-worker process ---------------------------------

    def _dispatch(self) -> None:
        """Run what is queued for the loop once the requests that arrived together have
        queued: yield to the loop while each turn brings more, under load (the last run
        served several requests) for up to LOAD_WINDOW_S, and for up to --batch-max-delay-ms
        when one is set."""
        queued = len(self._queue)
        if queued and self._queued_images < self.max_run_images and self._yields < MAX_YIELDS:
            oldest = time.perf_counter() - self._queue[0].queued_at
            if self.limits.max_delay_s > oldest:
                self._loop.call_later(self.limits.max_delay_s - oldest, self._dispatch)
                return
            if queued > self._seen or (self._last_callers > 1 and oldest < LOAD_WINDOW_S):
                self._yields, self._seen = self._yields + 1, queued
                self._loop.call_soon(self._dispatch)
                return
        self._scheduled = False
        with self._cv:
            self._loop_turn = False
            batch, dropped = self._take(BIG_REQUEST - 1, first_cut=0)
            if self._may_take():  # a big request left for the worker
                self._wake_workers()
        self._drop(dropped)
        if batch:
            self._deliver(batch, *self._execute(self.runner, batch))

    def _found_idle(self) -> bool:
        """(Lock held.) Whether the one queued request is a lone caller's: the last run served
        one caller too, and this request arrived longer after it ended than it took. Requests
        that come in groups, or faster than runs end, are load: they share runs on the
        workers."""
        return (len(self._queue) == 1 and self._last_callers <= 1
                and self._queue[0].queued_at - self._last_end > self._last_run_s)

    # --- on the worker threads --------------------------------------------------------------------

    def _wake_workers(self) -> None:
        """(Lock held.) The first worker, and a helper if there is enough to share."""
        self._cv.notify()
        if self._on_threads or self._queued_images >= MIN_PIECE:
            self._help.notify()

    def _worker(self, waiting: threading.Condition) -> None:
        while True:
            with self._cv:
                if not self._wait_for_work(waiting):
                    return
                if self._on_threads == 0 and len(self._queue) == 1:
                    # One request and every worker idle: a piece per worker, so it uses
                    # every core (whole, if too small to be worth cutting).
                    queued = self._queued_images
                    pieces = max(math.ceil(queued / self.max_run_images),
                                 min(self.workers, queued // MIN_PIECE), 1)
                    batch, dropped = self._take(math.ceil(queued / pieces))
                else:  # whole requests: all of a trickle, else this worker's share
                    sharing = self.workers if self._queued_images >= MIN_PIECE else 1
                    share = math.ceil(self._queued_images / sharing)
                    batch, dropped = self._take(min(self.max_run_images, share),
                                                first_cut=self.max_run_images)
                self._on_threads += bool(batch)
                if self._may_take():
                    self._help.notify()  # another worker may help with the rest
            if dropped:
                self._hand_back(self._drop, dropped)
            if batch:
                self._hand_back(self._deliver, batch, *self._execute(self.runner, batch))
                with self._cv:
                    self._on_threads -= 1

    def _hand_back(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has stopped: nobody waits for these any more
            pass

    def _wait_for_work(self, waiting: threading.Condition) -> bool:
        """(Lock held.) Wait until there is work to take, and with --batch-max-delay-ms
        until the oldest request has waited that long or a batch is full; False once closed
        with nothing left."""
        while True:
            if not self._may_take():
                if self._closed and not self._queue:
                    return False
                waiting.wait()
                continue
            remaining = (self._queue[0].queued_at + self.limits.max_delay_s
                         - time.perf_counter())
            if remaining <= 0 or self._queued_images >= self.max_run_images or self._closed:
                return True
            waiting.wait(remaining)

    def _may_take(self) -> bool:
        """(Lock held.) Whether a worker should take work now: there is some the loop is not
        about to run, and either no worker is busy or there is enough to share (a trickle of
        tiny requests runs faster in the busy worker's next, bigger batch than split up)."""
        if not self._queue or self._loop_turn:
            return False
        if self._closed:
            return True
        return self._on_threads == 0 or self._queued_images >= MIN_PIECE

    # --- batches ----------------------------------------------------------------------------------

    def _take(self, limit: int, first_cut: int | None = None
              ) -> tuple[list[_Slice], list[_Request]]:
        """(Lock held.) Slices from the head of the queue: whole requests up to `limit`
        images, the first one cut at `first_cut` (default `limit`; 0: a first request
        bigger than `limit` stays queued). Also the requests dropped unrun because their
        caller went away or their deadline passed."""
        first_cut = limit if first_cut is None else first_cut
        batch: list[_Slice] = []
        dropped: list[_Request] = []
        images = 0
        now = time.perf_counter()
        while self._queue:
            request = self._queue[0]
            left = request.size - request.taken
            if request.unwanted(now):
                self._queue.popleft()
                self._queued_images -= left
                dropped.append(request)
                continue
            if batch and images + left > limit:
                break
            count = left if batch or left <= limit else min(left, first_cut)
            if count == 0:
                break
            batch.append(_Slice(request, request.taken, request.taken + count))
            request.taken += count
            images += count
            self._queued_images -= count
            if request.taken < request.size:
                break  # cut: the rest waits for the next run
            self._queue.popleft()
        return batch, dropped

    def _execute(self, runner: OnnxGenerator, batch: list[_Slice]
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
            images = runner.run(latents, labels)
            self._last_end = time.perf_counter()
            self._last_run_s = self._last_end - started
            self._last_callers = len({id(s.request) for s in batch})
            for s in batch:
                s.request.runs.append((started, self._last_end))
            self.observe(len(latents), started - min(s.request.queued_at for s in batch),
                         started - gathering, self._last_run_s)
            if self.trace_run is not None:
                served = [(s.request.call.trace, s.request.queued_at, s.start == 0)
                          for s in batch if s.request.call is not None
                          and s.request.call.trace is not None]
                if served:
                    self.trace_run(served, started, self._last_end, len(latents))
            return images, None
        except Exception as exc:  # the callers get the error; the worker or loop carries on
            return None, exc

    # --- handing results back, on the loop ----------------------------------------------------

    @staticmethod
    def _deliver(batch: list[_Slice], images: np.ndarray | None,
                 error: BaseException | None) -> None:
        """Each caller gets its rows once all of them have run, or the error."""
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

    @staticmethod
    def _drop(dropped: list[_Request]) -> None:
        """Tell the callers whose deadline passed (those who went away are gone)."""
        for request in dropped:
            if not request.future.done():
                request.future.set_exception(DeadlineExceeded(
                    "the deadline passed while the request waited in the queue"))
