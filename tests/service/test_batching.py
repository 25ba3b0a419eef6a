"""Dynamic batching over real onnxruntime: coalesced callers get exactly their own images."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.batching import Batcher, Unbatched
from service.client import images_from_response
from service.contract import default_labels, seeds_to_latents
from service.runtime import OnnxGenerator


@pytest.fixture(scope="module")
def runner(tiny_cond_onnx):
    return OnnxGenerator(tiny_cond_onnx)


def _request(seeds):
    return seeds_to_latents(seeds, 100), default_labels(seeds, 10)


class HeldRunner:
    """A runner whose runs wait until `release` is set: it keeps a batcher's worker busy so a
    test can queue requests behind it. `runs` records (worker thread, images) as each starts."""

    def __init__(self, runner):
        self.runner = runner
        self.release = threading.Event()
        self.runs: list[tuple[str, int]] = []

    @property
    def sizes(self) -> list[int]:
        return [images for _, images in self.runs]

    def generate(self, z, y):
        self.runs.append((threading.current_thread().name, len(z)))
        self.release.wait(10)
        return self.runner.generate(z, y)


def test_concurrent_callers_get_exactly_their_unbatched_images(runner):
    batches = []
    batcher = Batcher(runner, max_batch=64, max_delay_s=0.02,
                      observe=lambda n, waited, secs: batches.append(n))
    requests = [list(range(i * 7, i * 7 + 1 + i % 5)) for i in range(24)]
    expected = [runner.generate(*_request(seeds)) for seeds in requests]
    start = threading.Barrier(24)

    def call(seeds):
        start.wait()
        return batcher.generate(*_request(seeds))

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(call, requests))
    batcher.close()
    for got, want in zip(results, expected):
        assert got.shape == want.shape and got.tobytes() == want.tobytes()
    assert sum(batches) == sum(len(r) for r in requests)
    assert max(batches) > 1 and len(batches) < len(requests)  # requests really were coalesced
    assert max(batches) <= 64


def test_a_request_larger_than_the_batch_runs_in_pieces(runner):
    sizes = []
    batcher = Batcher(runner, max_batch=16, max_delay_s=0,
                      observe=lambda n, waited, secs: sizes.append(n))
    seeds = list(range(50))
    got = batcher.generate(*_request(seeds))
    batcher.close()
    assert got.tobytes() == runner.generate(*_request(seeds)).tobytes()
    assert sorted(sizes) == [12, 12, 13, 13]  # cut into ceil(50/16) = 4 pieces


def test_one_request_is_shared_between_the_workers(runner):
    sizes = []
    batcher = Batcher(runner, max_batch=256, max_delay_s=0, workers=2,
                      observe=lambda n, waited, secs: sizes.append(n))
    seeds = list(range(64))
    got = batcher.generate(*_request(seeds))
    small = batcher.generate(*_request(seeds[:10]))  # under 2 x MIN_PIECE: not split
    batcher.close()
    assert got.tobytes() == runner.generate(*_request(seeds)).tobytes()
    assert small.tobytes() == runner.generate(*_request(seeds[:10])).tobytes()
    assert sorted(sizes) == [10, 32, 32]


def test_a_failed_run_reaches_every_caller_and_the_worker_survives(runner):
    batcher = Batcher(runner, max_batch=64, max_delay_s=0.05)
    bad = batcher.submit(np.zeros((2, 7), np.float32), np.zeros(2, np.int64))  # wrong latent size
    with pytest.raises(Exception):
        bad.result(timeout=10)
    good = batcher.generate(*_request([1, 2]))
    batcher.close()
    assert good.shape == (2, 1, 28, 28)


def test_unbatched_engine_reports_each_run(runner):
    seen = []
    engine = Unbatched(runner, observe=lambda n, waited, secs: seen.append((n, waited)))
    engine.generate(*_request([3, 4, 5]))
    assert seen == [(3, 0.0)]


@pytest.fixture(scope="module", params=[2, 1], ids=["worker-threads", "on-the-loop"])
def waiting_server(request, tiny_onnx):
    """A server whose batcher waits up to 5 ms for company: concurrent calls then share runs
    for certain (with no wait, how many coalesce depends on how the threads are scheduled).
    Two inference workers batch on worker threads; one batches on the event loop itself."""
    from service.batching import Batcher, LoopBatcher
    from service.config import ServeConfig
    from service.server import create_server
    running = create_server(ServeConfig(
        host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
        models=(("plain", str(tiny_onnx)),), device="cpu", batch_max_delay_ms=5,
        inference_workers=request.param))
    engine = running.registry.get("plain").engine
    assert type(engine) is (LoopBatcher if request.param == 1 else Batcher)
    assert (engine.max_batch, engine.max_queued_images) == (64, 4096)  # the defaults on a CPU
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


def test_a_small_request_on_an_idle_batcher_runs_on_the_callers_thread(runner):
    threads = []

    class Recording:
        metadata = runner.metadata

        def generate(self, z, y):
            threads.append(threading.get_ident())
            return runner.generate(z, y)

    batcher = Batcher(Recording(), max_batch=64, max_delay_s=0, workers=2)
    try:
        z, y = _request([1, 2, 3])
        np.testing.assert_array_equal(batcher.generate(z, y), runner.generate(z, y))
        assert threads == [threading.get_ident()]  # no hand-off to a worker and back
        # A configured wait for company turns the shortcut off: it goes through a worker.
        waiting = Batcher(Recording(), max_batch=64, max_delay_s=0.001, workers=2)
        waiting.generate(z, y)
        waiting.close()
        assert threads[-1] != threading.get_ident()
    finally:
        batcher.close()


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the calls other threads hand it (each is one wake-up)."""

    handed = 0

    def call_soon_threadsafe(self, callback, *args, **kwargs):
        self.handed += 1
        return super().call_soon_threadsafe(callback, *args, **kwargs)


def test_event_loop_callers_of_one_batch_are_answered_in_one_wake_up_of_the_loop(runner):
    sizes = []
    batcher = Batcher(runner, max_batch=64, max_delay_s=0.05, workers=1,
                      observe=lambda n, waited, secs: sizes.append(n))
    requests = [[1], [2, 3], [4], [5, 6, 7], [8], [9]]
    async def main():
        return await asyncio.gather(*(batcher.generate_async(*_request(s)) for s in requests))

    loop = _CountingLoop()
    try:
        got = loop.run_until_complete(main())
    finally:
        loop.close()
        batcher.close()
    for seeds, images in zip(requests, got):
        assert images.tobytes() == runner.generate(*_request(seeds)).tobytes()
    assert sizes == [9]  # the 50 ms wait gathered all six callers into one run...
    assert loop.handed == 1  # ...and the worker woke the loop once for all six, not six times


def test_batcher_drops_expired_and_cancelled_event_loop_callers_unrun(runner):
    from service.errors import DeadlineExceeded
    slow = HeldRunner(runner)
    batcher = Batcher(slow, max_batch=64, max_delay_s=0, workers=1)

    async def main():
        first = asyncio.ensure_future(batcher.generate_async(*_request([1])))
        await asyncio.sleep(0.1)  # the worker has taken `first` and is held
        cancelled = asyncio.ensure_future(batcher.generate_async(*_request([2, 3])))
        expired = asyncio.ensure_future(batcher.generate_async(*_request([4, 5]), timeout=0.05))
        kept = asyncio.ensure_future(batcher.generate_async(*_request([6])))
        await asyncio.sleep(0.1)  # all three queued behind it; the deadline passes
        cancelled.cancel()
        await asyncio.sleep(0.01)  # the cancellation reaches the queued piece
        slow.release.set()
        with pytest.raises(DeadlineExceeded, match="waited in the queue"):
            await expired
        return await first, await kept, cancelled.cancelled()

    first, kept, was_cancelled = asyncio.run(main())
    batcher.close()
    assert was_cancelled
    assert first.tobytes() == runner.generate(*_request([1])).tobytes()
    assert kept.tobytes() == runner.generate(*_request([6])).tobytes()
    assert slow.sizes == [1, 1]  # the cancelled and the expired requests never reached onnxruntime


def _wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def test_small_requests_stay_with_the_first_worker_until_there_is_work_to_share(runner):
    """Who runs what: small requests, a share of a queue, big requests alone and under load."""
    held = HeldRunner(runner)
    gate, started = held.release, held.runs
    batcher = Batcher(held, max_batch=64, max_delay_s=0, workers=2, name="w")
    try:
        first = batcher.submit(*_request([1]))
        _wait_for(lambda: started)  # the first worker is in its run
        few = [batcher.submit(*_request([s])) for s in range(2, 5)]
        time.sleep(0.2)
        # Three one-image requests queued behind a one-image run: the second worker leaves
        # them for the first, whose next batch takes them all at once.
        assert started == [("w-0", 1)]
        more = [batcher.submit(*_request([s])) for s in range(5, 10)]
        time.sleep(0.2)
        # Eight queued (MIN_PIECE): now the second worker takes its share, half of them,
        # while the first is busy; the rest waits for whichever is back first.
        assert started == [("w-0", 1), ("w-1", 4)]
        gate.set()
        for seeds, future in zip([[1]] + [[s] for s in range(2, 10)], [first] + few + more):
            assert future.result(10).tobytes() == runner.generate(*_request(seeds)).tobytes()
        assert sorted(images for _, images in started) == [1, 4, 4]
        # A big request is cut into one piece per worker, and the second worker takes its
        # piece while the first is busy with the other.
        _wait_for(lambda: batcher._idle == 2)  # both back from their runs, so they share it
        started.clear()
        gate.clear()
        with ThreadPoolExecutor(1) as pool:
            big = pool.submit(batcher.generate, *_request(list(range(64))))
            _wait_for(lambda: len(started) == 2)
            assert sorted(started) == [("w-0", 32), ("w-1", 32)]
            gate.set()
            want = runner.generate(*_request(list(range(64))))
            assert big.result(10).tobytes() == want.tobytes()
        # But a big request that finds a worker busy stays whole: the other worker runs all
        # of it, rather than half of it now and half after the busy one's run.
        _wait_for(lambda: batcher._idle == 2)
        started.clear()
        gate.clear()
        lone = batcher.submit(*_request([7]))
        _wait_for(lambda: started)
        with ThreadPoolExecutor(1) as pool:
            whole = pool.submit(batcher.generate, *_request(list(range(20))))
            _wait_for(lambda: len(started) == 2)
            assert started == [("w-0", 1), ("w-1", 20)]
            gate.set()
            assert lone.result(10).tobytes() == runner.generate(*_request([7])).tobytes()
            want = runner.generate(*_request(list(range(20))))
            assert whole.result(10).tobytes() == want.tobytes()
    finally:
        gate.set()
        batcher.close()


# --- LoopBatcher: the same batching run on the event loop itself ------------------------------

def _loop_batcher(runner, **kwargs):
    from service.batching import LoopBatcher
    sizes = []
    kwargs.setdefault("max_delay_s", 0)
    batcher = LoopBatcher(runner, observe=lambda n, waited, secs: sizes.append(n), **kwargs)
    return batcher, sizes


def test_loop_batcher_coalesces_concurrent_callers_into_their_exact_images(runner):
    import asyncio
    batcher, sizes = _loop_batcher(runner, max_batch=64)
    requests = [list(range(i * 7, i * 7 + 1 + i % 5)) for i in range(24)]
    expected = [runner.generate(*_request(seeds)) for seeds in requests]

    async def main():
        return await asyncio.gather(*(batcher.generate_async(*_request(s)) for s in requests))

    results = asyncio.run(main())
    for got, want in zip(results, expected):
        assert got.shape == want.shape and got.tobytes() == want.tobytes()
    assert sum(sizes) == sum(len(r) for r in requests)
    # All 24 arrived in the same turn of the loop: they share runs, never more than 64 images.
    assert len(sizes) < len(requests) and max(sizes) <= 64


def test_loop_batcher_cuts_a_large_request_and_keeps_its_order(runner):
    import asyncio
    batcher, sizes = _loop_batcher(runner, max_batch=16)
    seeds = list(range(50))
    got = asyncio.run(batcher.generate_async(*_request(seeds)))
    assert got.tobytes() == runner.generate(*_request(seeds)).tobytes()
    assert sizes == [12, 13, 12, 13]  # ceil(50/16) = 4 pieces, run one by one in order


def test_loop_batcher_drops_expired_and_cancelled_requests_unrun(runner):
    import asyncio

    from service.errors import DeadlineExceeded
    batcher, sizes = _loop_batcher(runner, max_batch=64, max_delay_s=0.01)

    async def main():
        cancelled = asyncio.ensure_future(batcher.generate_async(*_request([1, 2, 3])))
        expired = asyncio.ensure_future(batcher.generate_async(*_request([4, 5]), timeout=0))
        kept = asyncio.ensure_future(batcher.generate_async(*_request([6])))
        await asyncio.sleep(0)  # all three are queued, the run waits 10 ms for company
        cancelled.cancel()
        with pytest.raises(DeadlineExceeded):
            await expired
        return await kept, cancelled.cancelled()

    kept, was_cancelled = asyncio.run(main())
    assert was_cancelled and kept.tobytes() == runner.generate(*_request([6])).tobytes()
    assert sizes == [1]  # only the live request ran


def test_loop_batcher_failures_reach_their_callers_and_backpressure_refuses(runner):
    import asyncio

    from service.errors import Overloaded
    batcher, sizes = _loop_batcher(runner, max_batch=8, max_queued_images=8)

    async def main():
        with pytest.raises(Exception, match="z"):  # wrong latent size: onnxruntime's own error
            await batcher.generate_async(np.zeros((2, 7), np.float32), np.zeros(2, np.int64))
        first = asyncio.ensure_future(batcher.generate_async(*_request(list(range(6)))))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="6 images already queued"):
            await batcher.generate_async(*_request([7, 8, 9]))
        return await first

    assert asyncio.run(main()).shape == (6, 1, 28, 28)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(batcher.generate_async(*_request([1])))


def test_loop_batcher_sends_big_requests_to_its_worker_threads_and_keeps_small_on_the_loop(
        runner):
    import asyncio

    from service.batching import BIG_REQUEST
    threads = []

    def observe(n, waited, secs):
        threads.append((n, threading.current_thread().name))

    offload = Batcher(runner, max_batch=64, max_delay_s=0, workers=2, name="offload",
                      observe=observe)
    batcher, _ = _loop_batcher(runner, max_batch=64, offload=offload)
    batcher.observe = observe
    big, small = list(range(BIG_REQUEST + 4)), list(range(100, 100 + BIG_REQUEST - 1))

    async def main():
        return await asyncio.gather(batcher.generate_async(*_request(big)),
                                    batcher.generate_async(*_request(small)))

    loop_thread = threading.current_thread().name
    got_big, got_small = asyncio.run(main())
    assert got_big.tobytes() == runner.generate(*_request(big)).tobytes()
    assert got_small.tobytes() == runner.generate(*_request(small)).tobytes()
    # The big one was cut in two pieces, one per worker thread; the small one ran on the loop.
    assert sorted(n for n, name in threads if name.startswith("offload")) == [10, 10]
    assert [(n, name) for n, name in threads if name == loop_thread] == [(len(small), loop_thread)]
    assert batcher.queued_images == 0
    batcher.close()  # closes the offload too: its threads are gone
    assert not any(t.name.startswith("offload") for t in threading.enumerate())
