"""Server-side dynamic batching: concurrent requests for one model share onnxruntime runs.

Each model has one `Batcher` with `workers` threads (one per core by default), each calling
`session.run` with a single-threaded onnxruntime session. On these small convolutional
generators two single-threaded runs side by side beat one two-threaded run by about a third
(measured on 2 cores, batch 16 to 256), so the parallelism comes from running batches
concurrently rather than from onnxruntime's intra-op threads.

A request is cut into pieces: at least one per `max_batch` images, and, when it has at least
2 x MIN_PIECE images and finds every worker idle, one per worker, so one big request uses
every core. Each worker takes its share of the queued pieces (the queue divided between the
workers), up to `max_batch` images, runs them as one batch, and hands each caller its own
rows back. The first worker takes whatever is queued; the others only help
when there is work to share (MIN_PIECE images queued, or the first worker busy with that
many): a trickle of tiny requests runs faster in one worker's growing batches than split
between workers whose runs then wait on each other, and on the event loop, for the GIL
(`_worth_helping`).

If the oldest piece in the queue is younger than `max_delay`, the worker waits up to that
long for more to arrive, but never while a full batch is waiting. With `generate`
(blocking), a small request that finds every worker idle and no delay configured runs on its
caller's thread instead (nothing to batch with; it saves two thread hand-offs).
`generate_async`, the server's path, never does: on the event loop that would stop every
other call for the length of a run, and under load the loop would end up running the model
itself one request at a time (measured: batch 1 x 8 clients fell to batch size 1 and ~950
calls/s).

A process with one core to itself (`--inference-workers 1`, which `--processes N` gives each
worker when there is a core per process) uses `LoopBatcher` instead: the same queue, but the
batches run on the event loop's own thread. A hand-off to a worker thread and back (two
wake-ups and two GIL transfers per request) cost about as much as a batch-1 run itself here;
with one core there is no parallelism to buy with it, so the loop runs the model and no
small request ever changes threads. A big request (BIG_REQUEST images or more) is the
opposite case: its run is long beside a hand-off, and it should not stop the loop for that
long, so it goes to a `Batcher` over all the machine's cores (`offload`), which also lets one
big request use the cores other processes leave idle.

With `--processes`, each worker process has its own batchers, and all of them take turns on
the machine's cores: a run waits while older work queued in another process has no core yet
(`core_share.CoreTurns`), so callers are served alike whichever process their connection
landed on.

Why the images stay identical: each seed's latent is computed before batching, and the
exported generator computes every row independently (eval-mode BatchNorm, no cross-row ops);
onnxruntime's CPU kernels give the same bytes for a row whatever batch it is in, which the
tests check exactly.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from service.core_share import CoreTurns
from service.errors import DeadlineExceeded, Overloaded
from service.runtime import OnnxGenerator

#: Requests smaller than twice this are not split across workers: tiny runs cost more than
#: they save.
MIN_PIECE = 8

#: From this many images a request to a `LoopBatcher` runs on its worker threads instead of the
#: loop (measured on 2 cores with `--processes 2`: batch 16 and 64 with one client went from
#: ~2,900-3,100 img/s on the loop to ~4,500-5,800, as fast as the single process).
BIG_REQUEST = 2 * MIN_PIECE

#: Called once per executed batch with (images in the batch, seconds the oldest request
#: waited in the queue, seconds onnxruntime took).
BatchObserver = Callable[[int, float, float], None]


class _LoopFuture:
    """What a `Batcher` worker holds for a piece awaited on an event loop (`generate_async`).

    The worker only records the outcome here; `Batcher._run` then hands every outcome of its
    batch to the loop in one `call_soon_threadsafe`. A `concurrent.futures.Future` wrapped for
    the loop would wake the loop once per piece, and each wake-up is another hand-over of the
    GIL between the worker and the loop (measured on 2 cores, default single process, batch 1 x
    8 clients: 1,860-1,870 against 1,630 calls/s, and about 10% less CPU per call).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.future = loop.create_future()  # what the caller awaits, on its loop
        self.outcome: tuple[np.ndarray | None, BaseException | None] | None = None

    def set_running_or_notify_cancel(self) -> bool:
        # Read from the worker without the loop: a cancel that lands just after this is
        # harmless, since `_settle` skips futures that are already done.
        return not self.future.cancelled()

    def set_result(self, images: np.ndarray) -> None:
        self.outcome = (images, None)

    def set_exception(self, exc: BaseException) -> None:
        self.outcome = (None, exc)


def _settle(pieces: list[_LoopFuture]) -> None:
    """On the loop: give each awaiting caller the outcome its worker recorded."""
    for piece in pieces:
        images, exc = piece.outcome
        if piece.future.done():  # cancelled: the caller went away
            continue
        if exc is not None:
            piece.future.set_exception(exc)
        else:
            piece.future.set_result(images)


@dataclass
class _Pending:
    """One queued piece of a request. Its future is, in `Batcher`, a thread-safe
    `concurrent.futures.Future` for blocking callers or a `_LoopFuture` for callers on an event
    loop; in `LoopBatcher`, an `asyncio.Future` of the server's loop."""

    latents: np.ndarray
    labels: np.ndarray | None
    deadline: float | None = None  # time.perf_counter() after which nobody wants the result
    future: Future | _LoopFuture | asyncio.Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.latents)


def _check_room(queued: int, more: int, limit: int) -> None:
    """Backpressure: past `limit` queued images new requests are refused at once, so memory
    and latency stay bounded under overload."""
    if queued and queued + more > limit:
        raise Overloaded(f"server overloaded: {queued} images already queued for this model "
                         f"(limit {limit}); retry with back-off")


def _take(queue: deque[_Pending], limit: int) -> tuple[list[_Pending], int]:
    """Pop queued pieces in order up to `limit` images (always at least one)."""
    batch, images = [], 0
    while queue and (not batch or images + queue[0].size <= limit):
        item = queue.popleft()
        batch.append(item)
        images += item.size
    return batch, images


def _expired(item: _Pending, now: float) -> bool:
    """Fail a piece whose caller's deadline passed while it was queued; True if it did."""
    if item.deadline is not None and now > item.deadline:
        item.future.set_exception(DeadlineExceeded(
            "the deadline passed while the request waited in the queue"))
        return True
    return False


def _run_together(live: list[_Pending], runner: OnnxGenerator, observe: BatchObserver,
                  waited: float, catch: type[BaseException] = Exception) -> None:
    """One onnxruntime run for all `live` pieces; each future gets its own rows, or the error."""
    try:
        latents = np.concatenate([p.latents for p in live]) if len(live) > 1 \
            else live[0].latents
        labels = None
        if live[0].labels is not None:
            labels = np.concatenate([p.labels for p in live]) if len(live) > 1 \
                else live[0].labels
        started = time.perf_counter()
        images = runner.generate(latents, labels)
        observe(len(latents), waited, time.perf_counter() - started)
    except catch as exc:
        for p in live:
            p.future.set_exception(exc)
        return
    offset = 0
    for p in live:
        p.future.set_result(images[offset:offset + p.size])
        offset += p.size


class Batcher:
    def __init__(self, runner: OnnxGenerator, max_batch: int, max_delay_s: float,
                 observe: BatchObserver | None = None, workers: int = 1,
                 name: str = "batcher", lone_runner: OnnxGenerator | None = None,
                 max_queued_images: int | None = None, turns: CoreTurns | None = None):
        self.runner = runner
        # With --processes, turns on the cores shared with the other processes (core_share).
        self.turns = turns
        self._running = 0  # this batcher's runs in progress, for `turns`
        self._turn_sleepers = 0  # workers asleep on `turns` (not on the conditions below)
        # A multi-threaded session for a batch that runs alone (every other worker idle,
        # nothing queued): one request then gets all the cores, which cuts its latency. Only
        # from MIN_PIECE images: a smaller run is faster on one thread than handing it over.
        self.lone_runner = lone_runner
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.workers = workers
        # Backpressure: past this many queued images new requests are refused at once, so
        # memory and latency stay bounded under overload.
        self.max_queued_images = max_queued_images or 16 * max_batch
        self.observe = observe or (lambda *_: None)
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._idle = 0  # workers waiting in _take
        self._inline = 0  # requests running on their caller's thread (the idle fast path)
        lock = threading.RLock()
        self._cv = threading.Condition(lock)  # the first worker waits on it
        self._help = threading.Condition(lock)  # the other workers wait on it
        self._first_running = 0  # images in the first worker's current run (0: it is idle)
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, args=(i == 0,), name=f"{name}-{i}",
                                          daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, latents: np.ndarray, labels: np.ndarray | None,
               timeout: float | None = None) -> Future:
        """Queue one request; the future's result is its uint8 images [N, C, H, W]."""
        return self._submit_pieces([(latents, labels)], timeout, Future)[0]

    def _submit_pieces(self, pieces, timeout: float | None, new_future: Callable
                       ) -> list[Future | _LoopFuture]:
        deadline = None if timeout is None else time.perf_counter() + timeout
        items = [_Pending(latents, labels, deadline, new_future()) for latents, labels in pieces]
        size = sum(item.size for item in items)
        with self._cv:  # all pieces at once, so idle workers see them together
            if self._closed:
                raise RuntimeError("the batcher is closed")
            _check_room(self._queued_images, size, self.max_queued_images)
            self._queue.extend(items)
            self._queued_images += sum(item.size for item in items)
            self._cv.notify()
            if self._worth_helping():
                self._help.notify_all() if len(items) > 1 else self._help.notify()
            if self._turn_sleepers:  # one may have slept through its queue emptying
                self.turns.wake_here()
        return [item.future for item in items]

    def generate(self, latents: np.ndarray, labels: np.ndarray | None,
                 timeout: float | None = None) -> np.ndarray:
        """Images for one request, its pieces run by as many workers as help (blocking).

        `timeout` (seconds) is the caller's remaining deadline: pieces still queued when it
        passes are dropped unrun and the call raises DeadlineExceeded.
        """
        if (images := self._try_inline(latents, labels)) is not None:
            return images
        futures = self._submit_request(latents, labels, timeout, Future)
        try:
            results = [f.result() for f in futures]
        except BaseException:
            for f in futures:  # e.g. the caller was cancelled: drop what has not started
                f.cancel()
            raise
        return results[0] if len(results) == 1 else np.concatenate(results)

    async def generate_async(self, latents: np.ndarray, labels: np.ndarray | None,
                             timeout: float | None = None) -> np.ndarray:
        """`generate` for an event loop: the loop is free while the workers run the pieces.

        If the awaiting task is cancelled (the caller went away), pieces not yet started are
        dropped.
        """
        loop = asyncio.get_running_loop()
        pieces = self._submit_request(latents, labels, timeout, lambda: _LoopFuture(loop))
        if len(pieces) == 1:  # the common case: no gather
            return await pieces[0].future
        try:
            results = await asyncio.gather(*(piece.future for piece in pieces))
        except BaseException:
            for piece in pieces:  # pieces not yet started are then skipped by the workers
                piece.future.cancel()
            raise
        return np.concatenate(results)

    def _submit_request(self, latents: np.ndarray, labels: np.ndarray | None,
                        timeout: float | None, new_future: Callable
                        ) -> list[Future | _LoopFuture]:
        """Cut one request into pieces (see the module docstring) and queue them."""
        n = len(latents)
        # Cut across the workers only a request that finds them all idle (read without the
        # lock: a hint). Under load the other workers have work of their own, and a request in
        # pieces then waits for two runs (measured on 2 cores, batch 16 x 8 clients: whole
        # requests, with the share rule of `_take`, 5,260-5,490 against 4,840-5,200 img/s).
        alone = self._idle == self.workers and not self._queue
        if n <= self.max_batch and (n < MIN_PIECE * 2 or not alone):  # one piece
            return self._submit_pieces([(latents, labels)], timeout, new_future)
        per_worker = min(self.workers, n // MIN_PIECE) if alone else 1
        pieces = max(math.ceil(n / self.max_batch), per_worker, 1)
        bounds = np.linspace(0, n, pieces + 1).astype(int)
        return self._submit_pieces([(latents[a:b], None if labels is None else labels[a:b])
                                    for a, b in zip(bounds[:-1], bounds[1:])], timeout,
                                   new_future)

    def _try_inline(self, latents: np.ndarray, labels: np.ndarray | None) -> np.ndarray | None:
        """Run a small request on the caller's own thread when the server is idle.

        With every worker waiting and nothing queued there is nothing to batch with, and the
        two thread hand-offs (to a worker and back) would be most of a batch-1 request's
        latency. One such run at a time; anything arriving meanwhile is batched as usual.
        """
        if len(latents) >= MIN_PIECE * 2:
            return None
        with self._cv:
            if (self._closed or self._queue or self._inline or self.max_delay_s > 0
                    or self._idle < self.workers):
                return None
            self._inline += 1
        try:
            started = time.perf_counter()
            images = self._runner_for(len(latents), alone=True).generate(latents, labels)
            self.observe(len(latents), 0.0, time.perf_counter() - started)
            return images
        finally:
            with self._cv:
                self._inline -= 1

    def _runner_for(self, images: int, alone: bool) -> OnnxGenerator:
        """The multi-threaded session for a run of MIN_PIECE+ images alone, else a 1-thread one."""
        if alone and self.lone_runner is not None and images >= MIN_PIECE:
            return self.lone_runner
        return self.runner

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            self._help.notify_all()
        for thread in self._threads:
            thread.join()

    # --- the worker --------------------------------------------------------------------------

    def _loop(self, first: bool) -> None:
        while True:
            taken = self._take(first)
            if taken is None:
                return
            self._run(*taken)

    def _worth_helping(self) -> bool:
        """Whether the other workers should run batches too, not only the first one.

        Small requests under load (batch 1 x 8 clients) are served fastest by the first worker
        alone: its batches grow while it runs, and a second worker taking the few images queued
        meanwhile only splits them into more, smaller runs, and each run then waits for the GIL
        held by the loop or the other worker when it ends (measured on 2 cores, batch 1 x 8
        clients, ~130 us per image; see docs/benchmarks/compare-h2load-cpu.md; throughput
        2,730-2,920 against 1,850-1,900 calls/s; batch 4 to 64 unchanged). So the others join
        in when there is real work to share: a piece's worth of images queued, or the first
        worker busy with a run of that many. (Waiting for a full batch's worth before helping
        was slower: 2,110-2,390 calls/s.)
        """
        return self._queued_images >= MIN_PIECE or self._first_running >= MIN_PIECE

    def _take(self, first: bool) -> tuple[list[_Pending], bool] | None:
        """The next batch, and whether it runs alone (other workers idle, queue empty)."""
        with self._cv:
            self._idle += 1
            if first:
                self._first_running = 0  # back from its run, if it had one
            try:
                waiting = self._cv if first else self._help
                while True:
                    # The others also help to drain the queue when closing.
                    while not (self._queue and (first or self._closed or self._worth_helping())):
                        if self._closed and not self._queue:
                            return None
                        waiting.wait()
                    # Wait a little for company, unless the batch is full or we are closing.
                    deadline = self._queue[0].queued_at + self.max_delay_s
                    while (self._queued_images < self.max_batch and not self._closed
                           and (remaining := deadline - time.perf_counter()) > 0):
                        waiting.wait(remaining)
                    if self._my_turn():
                        break
                    # Other processes' older work comes first. Sleep until a run ends
                    # somewhere; another worker of ours may take this batch meanwhile, so
                    # the loop starts over.
                    self._turn_sleepers += 1
                    self._cv.release()
                    try:
                        self.turns.wait()
                    finally:
                        self._cv.acquire()
                        self._turn_sleepers -= 1
                # Take a fair share, leaving the rest to the other workers if they help, busy
                # ones included: one back from its run soon finds work, rather than idling
                # while this one runs everything (measured on 2 cores, against a share of the
                # idle workers only: batch 1 x 32 clients 1,980-2,030 against 1,730-1,850
                # calls/s, batch 16 x 8 5,390-5,550 against 5,100-5,250 img/s).
                sharing = self.workers if self._closed or self._worth_helping() else 1
                limit = min(self.max_batch, math.ceil(self._queued_images / sharing))
                batch, images = _take(self._queue, limit)
                self._queued_images -= images
                if first:
                    self._first_running = images
                    if self._queue and self._worth_helping():
                        self._help.notify()
                alone = self._idle == self.workers and not self._queue and not self._inline
                if self.turns is not None:
                    self._running += 1
                    self._publish_turns()
                return batch, alone
            finally:
                self._idle -= 1

    def _run(self, batch: list[_Pending], alone: bool = False) -> None:
        try:
            now = time.perf_counter()
            # set_running_or_notify_cancel is False for a piece cancelled while queued.
            live = [p for p in batch if p.future.set_running_or_notify_cancel()
                    and not _expired(p, now)]
            if live:
                waited = time.perf_counter() - min(p.queued_at for p in live)
                runner = self._runner_for(sum(p.size for p in live), alone)
                # Any failure goes to the callers; the worker thread stays alive.
                _run_together(live, runner, self.observe, waited, catch=BaseException)
        finally:
            if self.turns is not None:
                with self._cv:
                    self._running -= 1
                    self._publish_turns()
                self.turns.ended()
            _hand_to_loops([p.future for p in batch if isinstance(p.future, _LoopFuture)
                            and p.future.outcome is not None])

    def _publish_turns(self) -> None:
        """(With the lock held.) Tell the other processes our oldest waiting piece and runs."""
        self.turns.publish(self._queue[0].queued_at if self._queue else None, self._running)

    def _my_turn(self) -> bool:
        """Whether the queue's head may run now (always, unless cores are shared with other
        processes; a closing batcher drains without waiting)."""
        return self.turns is None or self._closed or self.turns.may_run(self._queue[0].queued_at)


def _hand_to_loops(pieces: list[_LoopFuture]) -> None:
    """One call onto each loop (there is normally one) with all its pieces' outcomes."""
    for loop in {piece.loop for piece in pieces}:
        try:
            loop.call_soon_threadsafe(_settle, [p for p in pieces if p.loop is loop])
        except RuntimeError:  # the loop is closed: the server stopped and nobody awaits these
            pass


class Unbatched:
    """The same interface with batching off: each request runs on its own.

    `generate` runs on the caller's thread; `generate_async` on one of `workers` threads, so
    an event loop is never blocked by a run.
    """

    def __init__(self, runner: OnnxGenerator, observe: BatchObserver | None = None,
                 workers: int = 1, name: str = "unbatched"):
        self.runner = runner
        self.observe = observe or (lambda *_: None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    def generate(self, latents: np.ndarray, labels: np.ndarray | None,
                 timeout: float | None = None) -> np.ndarray:
        started = time.perf_counter()
        images = self.runner.generate(latents, labels)
        self.observe(len(latents), 0.0, time.perf_counter() - started)
        return images

    async def generate_async(self, latents: np.ndarray, labels: np.ndarray | None,
                             timeout: float | None = None) -> np.ndarray:
        return await asyncio.wrap_future(self._pool.submit(self.generate, latents, labels))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


#: How many times a batch on the event loop lets other callbacks go first (see LoopBatcher);
#: a bound, since callbacks that keep rescheduling themselves would otherwise hold a batch
#: back for ever.
MAX_YIELDS = 64

#: Under load, how long the oldest queued request may wait for company before the loop runs
#: it. Calls that have reached gRPC's threads but not yet the loop cannot be seen from here;
#: with 8 clients at batch 1 on 2 cores, waiting up to this long for them took the mean batch
#: from 1.1 to about 3 and throughput up by about 40% (0.1 to 2 ms all measured alike).
LOAD_WINDOW_S = 0.0003


class LoopBatcher:
    """Dynamic batching run on the event loop's own thread: no worker threads, no hand-offs.

    A request queues its pieces (one per `max_batch` images) and awaits them. The first piece
    into an empty queue schedules a run; before starting it, the run lets every callback that
    is already ready on the loop go first, which is how the calls that arrived together, or
    while the previous batch ran, join the batch; and when the previous batch coalesced
    several requests (the server is under load), it also keeps yielding for up to
    LOAD_WINDOW_S for calls still on their way (never more than MAX_YIELDS rounds; a lone
    caller on an idle server waits for nothing). Then the loop runs
    one batch of up to `max_batch` images with a single-threaded session and hands each caller
    its rows. While a batch runs, the loop answers nothing else: a run of a full batch takes
    tens of milliseconds on a CPU, and gRPC keeps what arrives meanwhile for the next turn.
    Cancelled or expired pieces are dropped unrun, as in `Batcher`.

    A request of BIG_REQUEST images or more goes to `offload` when there is one (a `Batcher`
    whose threads span the machine's cores): it neither stops the loop nor waits behind it.
    """

    def __init__(self, runner: OnnxGenerator, max_batch: int, max_delay_s: float,
                 observe: BatchObserver | None = None, max_queued_images: int | None = None,
                 offload: Batcher | None = None, turns: CoreTurns | None = None):
        self.runner = runner
        self.offload = offload
        # The loop's runs take a core without waiting for a turn (the loop cannot wait), but
        # they are counted, so the other processes' big runs leave that core to it.
        self.turns = turns
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queued_images = max_queued_images or 16 * max_batch
        self.observe = observe or (lambda *_: None)
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._scheduled = False  # a call to _run_next is pending on the loop
        self._yields = 0
        self._busy = False  # the last batch coalesced more than one request
        self._closed = False

    async def generate_async(self, latents: np.ndarray, labels: np.ndarray | None,
                             timeout: float | None = None) -> np.ndarray:
        """Images for one request; pieces still queued when `timeout` passes are dropped and
        raise DeadlineExceeded, and a cancelled caller's pieces are dropped."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        n = len(latents)
        if self.offload is not None and n >= BIG_REQUEST:
            return await self.offload.generate_async(latents, labels, timeout)
        _check_room(self.queued_images, n, self.max_queued_images)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.perf_counter() + timeout
        if n <= self.max_batch:
            items = [_Pending(latents, labels, deadline, loop.create_future())]
        else:  # equal pieces of at most max_batch, as Batcher cuts them
            bounds = np.linspace(0, n, math.ceil(n / self.max_batch) + 1).astype(int)
            items = [_Pending(latents[a:b], None if labels is None else labels[a:b], deadline,
                              loop.create_future())
                     for a, b in zip(bounds[:-1], bounds[1:])]
        self._queue.extend(items)
        self._queued_images += n
        if not self._scheduled:
            self._scheduled, self._yields = True, 0
            loop.call_soon(self._run_next, loop)
        if len(items) == 1:  # the common case: no gather, one future less per call
            return await items[0].future
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            for item in items:  # the caller went away: drop the pieces not yet run
                item.future.cancel()
            raise
        return np.concatenate(results)

    @property
    def queued_images(self) -> int:
        return self._queued_images + (self.offload.queued_images if self.offload else 0)

    def close(self) -> None:
        """Refuse new requests; what is queued still runs (on the loop, or the offload's
        threads, which this waits for)."""
        self._closed = True
        if self.offload is not None:
            self.offload.close()

    def _run_next(self, loop: asyncio.AbstractEventLoop) -> None:
        full = self._queued_images >= self.max_batch
        if not full and self._yields < MAX_YIELDS and (
                # CPython's loop keeps its ready callbacks in `_ready`; another loop (uvloop)
                # has no such list and goes by the load window alone.
                getattr(loop, "_ready", None)
                or (self._busy and
                    time.perf_counter() - self._queue[0].queued_at < LOAD_WINDOW_S)):
            self._yields += 1
            loop.call_soon(self._run_next, loop)
            return
        if self.max_delay_s > 0 and not full:
            remaining = self._queue[0].queued_at + self.max_delay_s - time.perf_counter()
            if remaining > 0:
                loop.call_later(remaining, self._run_next, loop)
                return
        batch, images = _take(self._queue, self.max_batch)
        self._queued_images -= images
        self._busy = len(batch) > 1
        try:
            self._run(batch)
        finally:
            if self._queue:
                self._yields = 0
                loop.call_soon(self._run_next, loop)
            else:
                self._scheduled = False

    def _run(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        # A done future here was cancelled while queued (its caller went away).
        live = [item for item in batch if not item.future.done() and not _expired(item, now)]
        if live:
            if self.turns is not None:
                self.turns.loop_running(True)
            # A failure goes to the callers; the loop carries on.
            _run_together(live, self.runner, self.observe,
                          now - min(item.queued_at for item in live))
            if self.turns is not None:
                self.turns.loop_running(False)
                self.turns.ended()
