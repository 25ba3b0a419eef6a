"""Dynamic batching: concurrent requests for one model share onnxruntime runs.

Each served model has one `Batcher` (`make_batcher`) over its queue (`run_queue.py`). Where a
run happens is decided in `submit` and `_dispatch`, by rules measured in docs/decisions.md:

* a lone caller's small request runs at once on the event loop's thread, on a session with
  every core (a hand-off to a thread costs about what a batch-1 run does);
* under load, runs go to worker threads (one per core, single-threaded sessions); helpers
  join the first worker only when MIN_PIECE images or more wait, and a big request that
  finds every worker idle is cut into a piece per worker;
* with one worker (`--processes` with a core apiece) small batches run on the loop, which
  lets calls still on their way join for up to LOAD_WINDOW_S.

Big requests never run on the loop. Requests whose caller left or whose deadline passed are
dropped before their run. A row gets the same bytes whatever batch it runs in: latents are
made before batching and the exported generator computes each row on its own (tested).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import Overloaded, ShuttingDown
from service.plane.run_queue import MIN_PIECE, QueuedRequest, RunQueue, deliver, drop
from service.runtime import OnnxGenerator, RuntimeOptions

__all__ = ["MIN_PIECE", "Batcher", "BatchLimits", "make_batcher"]

#: From this many images a run goes to a worker thread, never the event loop.
BIG_REQUEST = 2 * MIN_PIECE

#: With one worker under load: how long the oldest queued request may wait for calls that
#: have reached gRPC but not yet the loop, so they share its run.
LOAD_WINDOW_S = 0.0003

#: Turns of the event loop the dispatcher yields at most, while each brings more requests.
MAX_YIELDS = 16


@dataclass(frozen=True)
class BatchLimits:
    max_run_images: int = 0        # most images in one run; 0: 64 on a CPU, 256 on CUDA
    max_delay_s: float = 0.0       # how long a lone request waits for company
    max_queued_images: int = 4096  # past this, new requests are refused (backpressure)


def make_batcher(path: Path, device: str, workers: int, limits: BatchLimits | None = None
                 ) -> "Batcher":
    """The batcher of one model file, over its generators.

    Every worker shares one single-threaded session (onnxruntime's `run` is thread-safe); the
    lone caller's generator may use all `workers` cores. On CUDA one session does everything:
    the GPU, not the CPU threads, runs the model.
    """
    generator = OnnxGenerator(path, RuntimeOptions(device=device, intra_op_threads=1))
    on_cuda = "CUDAExecutionProvider" in generator.providers
    lone = generator
    if workers > 1 and not on_cuda:
        lone = OnnxGenerator(path, RuntimeOptions(device=device, intra_op_threads=workers))
    limits = limits or BatchLimits()
    if not limits.max_run_images:
        # A CPU makes images as fast per image from 8 to 128 a run and slows at 256, whose
        # activations leave the cache; a GPU wants the biggest runs it can get.
        limits = dataclasses.replace(limits, max_run_images=256 if on_cuda else 64)
    return Batcher(generator, lone, workers, limits)


class Batcher:
    def __init__(self, generator: OnnxGenerator, lone_generator: OnnxGenerator, workers: int,
                 limits: BatchLimits, observe=None):
        self.generator = generator
        self.lone_generator = lone_generator
        self.workers = workers
        self.limits = limits
        self.queue = RunQueue(observe or (lambda *_: None), limits.max_run_images)
        # Calls using this batcher now, from before their first submit to after their last
        # (`calling`, on the event loop): a retired model's batcher closes when none is left.
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, from the first call
        self._scheduled = False  # a call to _dispatch is pending on the loop
        self._yields = self._seen = 0
        self._threads = [threading.Thread(target=self._worker, args=(
            self.queue.cv if i == 0 else self.queue.help,), name=f"inference-{i}", daemon=True)
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
                     deadline: float | None = None, call=None) -> np.ndarray:
        """uint8 images [N, C, H, W] for float32 latents [N, latent_dim] (and labels [N]).

        Raises Overloaded when the queue is full, DeadlineExceeded when `deadline`
        (time.perf_counter()) passes before the run starts, ShuttingDown once the model is
        retired; a cancelled caller's request is dropped unrun. `call` (an edge CallRecord)
        gets the request's queue wait and run time.
        """
        queue = self.queue
        self._loop = self._loop or asyncio.get_running_loop()
        n = len(latents)
        request = QueuedRequest(latents, labels, deadline, self._loop.create_future(), call)
        with queue.cv:
            if queue.closed:
                raise ShuttingDown("the model was unloaded or reloaded while this call ran: "
                                   "send it again")
            if queue.images and queue.images + n > self.limits.max_queued_images:
                raise Overloaded(f"server overloaded: {queue.images} images already queued "
                                 f"for this model (limit {self.limits.max_queued_images}); "
                                 "retry with back-off")
            queue.requests.append(request)
            queue.images += n
            small = queue.images < BIG_REQUEST
            lone = (small and not self.limits.max_delay_s and queue.on_threads == 0
                    and queue.found_idle())
            for_loop = small and not lone and self.workers == 1
            if lone:  # a lone caller's: run it now, right here
                batch, dropped = queue.take(BIG_REQUEST - 1, first_cut=0)
            elif for_loop:  # one worker: small batches run on the loop, after the dispatcher
                queue.loop_turn = True  # has let the requests arriving together queue
            elif queue.may_take():  # else a busy worker takes it when its run ends
                queue.wake_workers()
        if lone:
            drop(dropped)  # its deadline had passed already
            if batch:
                deliver(batch, *queue.execute(self.lone_generator, batch))
        elif for_loop and not self._scheduled:
            self._scheduled, self._yields, self._seen = True, 0, 0
            self._loop.call_soon(self._dispatch)
        images = await request.future
        if call is not None:  # its pieces may have run side by side: the time they covered
            runs = sorted(request.runs)
            call.queue_s += runs[0][0] - request.queued_at
            covered, until = 0.0, runs[0][0]
            for start, end in runs:
                covered += max(0.0, end - max(start, until))
                until = max(until, end)
            call.infer_s += covered
        return images

    @contextlib.contextmanager
    def calling(self):
        """Count one call as using this batcher while it is inside."""
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1

    def close(self) -> None:
        """Refuse new requests, let the workers finish what is queued, and stop them."""
        with self.queue.cv:
            self.queue.closed = True
            self.queue.cv.notify_all()
            self.queue.help.notify_all()
        for thread in self._threads:
            thread.join()

    # --- on the event loop: small batches of a one-worker process ---------------------------------

    def _dispatch(self) -> None:
        """Run what is queued for the loop once the requests that arrived together have
        queued: yield to the loop while each turn brings more, under load (the last run
        served several requests) for up to LOAD_WINDOW_S, and for up to --batch-max-delay-ms
        when one is set."""
        queue = self.queue
        queued = len(queue.requests)
        if queued and queue.images < self.max_run_images and self._yields < MAX_YIELDS:
            oldest = time.perf_counter() - queue.requests[0].queued_at
            if self.limits.max_delay_s > oldest:
                self._loop.call_later(self.limits.max_delay_s - oldest, self._dispatch)
                return
            if queued > self._seen or (queue.last_callers > 1 and oldest < LOAD_WINDOW_S):
                self._yields, self._seen = self._yields + 1, queued
                self._loop.call_soon(self._dispatch)
                return
        self._scheduled = False
        with queue.cv:
            queue.loop_turn = False
            batch, dropped = queue.take(BIG_REQUEST - 1, first_cut=0)
            if queue.may_take():  # a big request left for the worker
                queue.wake_workers()
        drop(dropped)
        if batch:
            deliver(batch, *queue.execute(self.generator, batch))

    # --- on the worker threads --------------------------------------------------------------------

    def _worker(self, waiting: threading.Condition) -> None:
        queue = self.queue
        while True:
            with queue.cv:
                if not queue.wait_for_work(waiting, self.limits.max_delay_s):
                    return
                batch, dropped = queue.take_for_worker(self.workers)
                queue.on_threads += bool(batch)
                if queue.may_take():
                    queue.help.notify()  # another worker may help with the rest
            if dropped:
                self._hand_back(drop, dropped)
            if batch:
                self._hand_back(deliver, batch, *queue.execute(self.generator, batch))
                with queue.cv:
                    queue.on_threads -= 1

    def _hand_back(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has stopped: nobody waits for these any more
            pass
