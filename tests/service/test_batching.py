"""Dynamic batching over real onnxruntime, through the batcher's public interface: coalesced
callers get exactly their own images, and runs go where the module docstring says."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.plane.batching import MIN_PIECE, Batcher, BatchLimits
from service.client import images_from_response
from service.contract import default_labels, seeds_to_latents
from service.errors import DeadlineExceeded, Overloaded
from service.runtime import OnnxGenerator


@pytest.fixture(scope="module")
def runner(tiny_cond_onnx):
    return OnnxGenerator(tiny_cond_onnx)


def _request(seeds):
    return seeds_to_latents(seeds, 100), default_labels(seeds, 10)


def _want(runner, seeds):
    return runner.run(*_request(seeds)).tobytes()


class Recorder:
    """A runner that records each run as (where, images): "loop" when it ran on the thread
    of the event loop (these tests run it in the main thread), else "thread". Its runs on a
    worker thread wait for `release` (one on the loop never waits: that would stop the loop)."""

    def __init__(self, runner, hold: bool = False):
        self.runner = runner
        self.metadata = runner.metadata
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.runs: list[tuple[str, int]] = []

    def run(self, z, y):
        on_loop = threading.current_thread() is threading.main_thread()
        self.runs.append(("loop" if on_loop else "thread", len(z)))
        if not on_loop:
            self.release.wait(10)
        return self.runner.run(z, y)

    @property
    def sizes(self) -> list[int]:
        return [n for _, n in self.runs]

    def where(self) -> list[str]:
        return [where for where, _ in self.runs]


def _batcher(runner, workers=2, hold=False, **limits):
    recorder = Recorder(runner, hold)
    limits.setdefault("max_run_images", 64)
    return Batcher(recorder, recorder, workers, BatchLimits(**limits)), recorder


async def _until(condition, timeout=10.0):
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def test_concurrent_callers_get_exactly_their_unbatched_images(runner):
    batcher, rec = _batcher(runner, max_delay_s=0.02)
    requests = [list(range(i * 7, i * 7 + 1 + i % 5)) for i in range(24)]

    async def main():
        return await asyncio.gather(*(batcher.submit(*_request(s)) for s in requests))

    results = asyncio.run(main())
    batcher.close()
    for seeds, got in zip(requests, results):
        assert got.tobytes() == _want(runner, seeds)
    assert sum(rec.sizes) == sum(len(r) for r in requests)
    assert len(rec.sizes) < len(requests) and max(rec.sizes) <= 64  # really coalesced


def test_a_lone_small_request_runs_on_the_event_loop_and_a_crowd_on_the_workers(runner):
    batcher, rec = _batcher(runner, hold=True)

    async def main():
        alone = await batcher.submit(*_request([1, 2, 3]))
        big = asyncio.ensure_future(batcher.submit(*_request(list(range(16)))))
        await _until(lambda: len(rec.runs) == 3)  # both workers hold a piece of it
        crowd = [asyncio.ensure_future(batcher.submit(*_request([s]))) for s in range(4, 8)]
        await asyncio.sleep(0.05)
        rec.release.set()
        return alone, await big, await asyncio.gather(*crowd)

    alone, big, crowd = asyncio.run(main())
    batcher.close()
    assert alone.tobytes() == _want(runner, [1, 2, 3])
    assert big.tobytes() == _want(runner, list(range(16)))
    for seed, got in zip(range(4, 8), crowd):
        assert got.tobytes() == _want(runner, [seed])
    # No hand-off for the lone caller. The four that queued while the workers were busy share
    # one run of the first worker back.
    assert rec.runs[0] == ("loop", 3)
    assert rec.where()[1:] == ["thread"] * 3 and rec.sizes[1:] == [8, 8, 4]


def test_a_big_lone_request_is_cut_into_a_piece_per_worker(runner):
    batcher, rec = _batcher(runner, workers=2, hold=True)
    seeds = list(range(64))

    async def main():
        big = asyncio.ensure_future(batcher.submit(*_request(seeds)))
        await _until(lambda: len(rec.runs) == 2)  # both pieces run at once
        rec.release.set()
        return await big

    got = asyncio.run(main())
    batcher.close()
    assert got.tobytes() == _want(runner, seeds)
    assert rec.where() == ["thread", "thread"] and sorted(rec.sizes) == [32, 32]


def test_a_request_larger_than_the_batch_runs_in_pieces_in_order(runner):
    batcher, rec = _batcher(runner, workers=1, max_run_images=16)
    seeds = list(range(50))
    got = asyncio.run(batcher.submit(*_request(seeds)))
    batcher.close()
    assert got.tobytes() == _want(runner, seeds)
    assert sum(rec.sizes) == 50 and max(rec.sizes) <= 16 and len(rec.sizes) >= 4


def test_small_requests_wait_for_the_busy_worker_until_there_is_work_to_share(runner):
    # A wait for company (50 ms) lets the first two requests share a run for certain, and
    # turns the lone caller's path off.
    batcher, rec = _batcher(runner, workers=2, hold=True, max_delay_s=0.05)

    async def main():
        first = [asyncio.ensure_future(batcher.submit(*_request([s]))) for s in (1, 2)]
        await _until(lambda: rec.runs)  # the two arrived together: one worker runs them, held
        few = [asyncio.ensure_future(batcher.submit(*_request([s]))) for s in range(3, 6)]
        await asyncio.sleep(0.1)
        # Three one-image requests behind a busy worker: the idle one leaves them to it.
        assert rec.sizes == [2]
        more = [asyncio.ensure_future(batcher.submit(*_request([s]))) for s in range(6, 11)]
        await _until(lambda: len(rec.runs) == 2)
        # MIN_PIECE images queued: now the idle worker takes its share, half of them; the
        # rest waits for whichever worker is back first.
        assert rec.sizes == [2, MIN_PIECE // 2]
        # A big request that finds a worker busy is not cut: it runs whole on the other.
        rec.release.set()
        results = await asyncio.gather(*first, *few, *more)
        await asyncio.sleep(0.1)  # the workers are back from their runs
        rec.runs.clear()
        rec.release.clear()
        held = [asyncio.ensure_future(batcher.submit(*_request([s]))) for s in (0, 1)]
        await _until(lambda: rec.runs)
        big = asyncio.ensure_future(batcher.submit(*_request(list(range(20)))))
        await _until(lambda: len(rec.runs) == 2)
        assert rec.sizes == [2, 20]
        rec.release.set()
        return results, np.concatenate(await asyncio.gather(*held)), await big

    results, held, big = asyncio.run(main())
    batcher.close()
    for seed, got in zip(range(1, 11), results):
        assert got.tobytes() == _want(runner, [seed])
    assert held.tobytes() == _want(runner, [0, 1])
    assert big.tobytes() == _want(runner, list(range(20)))


def test_expired_and_cancelled_requests_are_dropped_unrun(runner):
    batcher, rec = _batcher(runner, workers=2, hold=True)

    async def main():
        first = asyncio.ensure_future(batcher.submit(*_request(list(range(16)))))
        await _until(lambda: len(rec.runs) == 2)  # both workers hold a piece of it
        cancelled = asyncio.ensure_future(batcher.submit(*_request([2, 3])))
        expired = asyncio.ensure_future(batcher.submit(*_request([4, 5]),
                                                     deadline=time.perf_counter() + 0.05))
        kept = asyncio.ensure_future(batcher.submit(*_request([6])))
        await asyncio.sleep(0.1)  # all three queued; the deadline passes
        cancelled.cancel()
        await asyncio.sleep(0.01)
        rec.release.set()
        with pytest.raises(DeadlineExceeded, match="waited in the queue"):
            await expired
        return await first, await kept, cancelled.cancelled()

    first, kept, was_cancelled = asyncio.run(main())
    batcher.close()
    assert was_cancelled
    assert first.tobytes() == _want(runner, list(range(16)))
    assert kept.tobytes() == _want(runner, [6])
    assert rec.sizes == [8, 8, 1]  # the cancelled and expired requests never reached onnxruntime


def test_a_failed_run_reaches_its_caller_and_the_batcher_carries_on(runner):
    batcher, _ = _batcher(runner)

    async def main():
        with pytest.raises(Exception):
            await batcher.submit(np.zeros((2, 7), np.float32), np.zeros(2, np.int64))
        with pytest.raises(Exception):  # the same on a worker thread
            await batcher.submit(np.zeros((20, 7), np.float32), np.zeros(20, np.int64))
        return await batcher.submit(*_request([1, 2]))

    good = asyncio.run(main())
    batcher.close()
    assert good.tobytes() == _want(runner, [1, 2])


def test_backpressure_refuses_at_once_past_the_queue_limit(runner):
    batcher, rec = _batcher(runner, workers=1, hold=True, max_queued_images=40)

    async def main():
        held = asyncio.ensure_future(batcher.submit(*_request(list(range(16)))))
        await _until(lambda: rec.runs)
        queued = asyncio.ensure_future(batcher.submit(*_request(list(range(30)))))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="limit 40"):
            await batcher.submit(*_request(list(range(20))))
        rec.release.set()
        return await held, await queued

    held, queued = asyncio.run(main())
    batcher.close()
    assert queued.tobytes() == _want(runner, list(range(30)))


def test_with_one_worker_small_batches_run_on_the_loop_and_big_ones_on_the_thread(runner):
    # A wait for company (10 ms) makes the five small requests share one run for certain.
    batcher, rec = _batcher(runner, workers=1, max_delay_s=0.01)

    async def main():
        small = await asyncio.gather(*(batcher.submit(*_request([s])) for s in range(5)))
        big = await batcher.submit(*_request(list(range(16))))
        return small, big

    small, big = asyncio.run(main())
    batcher.close()
    assert [got.tobytes() for got in small] == [_want(runner, [s]) for s in range(5)]
    assert big.tobytes() == _want(runner, list(range(16)))
    assert rec.where() == ["loop", "thread"] and rec.sizes == [5, 16]


@pytest.fixture(scope="module", params=[2, 1], ids=["worker-threads", "on-the-loop"])
def waiting_server(request, tiny_onnx):
    """A server whose batcher waits up to 5 ms for company: concurrent calls then share runs
    for certain (with no wait, how many coalesce depends on how the threads are scheduled).
    Two inference workers batch on worker threads; one batches on the event loop itself."""
    from service.process.config import ServeConfig
    from service.process.server import create_server
    running = create_server(ServeConfig(
        host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
        http_port=-1, models=(("plain", str(tiny_onnx)),), device="cpu", batch_max_delay_ms=5,
        inference_workers=request.param))
    batcher = running.registry.get("plain").batcher
    assert (batcher.max_run_images, batcher.limits.max_queued_images) == (64, 4096)  # CPU defaults
    yield running
    running.stop(grace=1)


def test_concurrent_grpc_calls_share_runs_and_match_sequential_answers(waiting_server):
    import grpc

    from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
    from tests.service.test_health_metrics import _scrape, _value
    server = waiting_server
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GeneratorServiceStub(channel)
    seeds = [[s, s + 1000] for s in range(40)]
    sequential = [stub.Generate(pb.GenerateRequest(seeds=s, model="plain"), timeout=10).raw
                  for s in seeds]
    before = _scrape(server)
    start = threading.Barrier(16)

    def call(s):
        start.wait() if s[0] < 16 else None
        return stub.Generate(pb.GenerateRequest(seeds=s, model="plain"), timeout=10).raw

    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(call, seeds))
    after = _scrape(server)
    assert concurrent == sequential
    runs = (_value(after, "dcgan_batch_size_count", model="plain")
            - _value(before, "dcgan_batch_size_count", model="plain"))
    images = (_value(after, "dcgan_batch_size_sum", model="plain")
              - _value(before, "dcgan_batch_size_sum", model="plain"))
    assert images == 80 and runs < 40
    assert _value(after, "dcgan_batch_queue_wait_seconds_count", model="plain") > 0
    assert images_from_response(stub.Generate(pb.GenerateRequest(seeds=[1], model="plain"),
                                              timeout=10)).shape == (1, 28, 28)
    # A big request (on the loop server: handed to its worker threads) has the same bytes.
    big = [s for pair in seeds[:12] for s in pair]
    assert stub.Generate(pb.GenerateRequest(seeds=big, model="plain"),
                         timeout=10).raw == b"".join(sequential[:12])
