"""Turns on the cores between `--processes` workers (service/core_share.py).

Two "processes" here are two views of one real table, each with its own real doorbell, in one
test process: the table and the bells work the same whichever process holds them.
"""

from __future__ import annotations

import select
import threading
import time

import numpy as np
import pytest

from service import core_share
from service.batching import Batcher
from service.contract import default_labels, seeds_to_latents
from service.core_share import CoreShare, create_table, remove_table
from service.errors import ServiceError
from service.runtime import OnnxGenerator


@pytest.fixture
def table():
    path = create_table(processes=2, models=1)
    yield path
    remove_table(path)


def _views(table, cores: int):
    return [CoreShare(f"{table}:{i}", cores=cores, models=1) for i in range(2)]


def test_the_oldest_waiting_work_gets_the_free_core(table):
    a, b = (share.turns(0) for share in _views(table, cores=1))
    assert a.may_run(1.0)  # nothing else anywhere
    a.publish(3.0, running=1)  # a runs, and has more queued (at 3.0)
    assert not b.may_run(2.0)  # no core free
    a.publish(3.0, running=0)  # a's run ended
    assert not a.may_run(3.0)  # b's work, queued at 2.0, is older
    assert b.may_run(2.0)
    b.publish(None, running=1)  # b took it, nothing left waiting
    assert not a.may_run(3.0)  # the one core is b's now
    b.publish(None, running=0)
    assert a.may_run(3.0)


def test_runs_on_the_event_loop_hold_a_core_and_more_cores_admit_more(table):
    a, b = (share.turns(0) for share in _views(table, cores=2))
    b.loop_running(True)
    a.publish(None, running=1)
    assert not a.may_run(1.0)  # two cores, both busy: a's thread and b's loop
    b.loop_running(False)
    assert not b.may_run(2.0)  # one free core, and a's work (queued at 1.0) is older
    assert a.may_run(1.0)
    b.publish(5.0, running=0)
    a.publish(None, running=0)
    assert a.may_run(6.0)  # two free cores: one for b's older work, one for a


def test_a_run_that_ends_rings_only_the_processes_with_work_waiting(table, monkeypatch):
    monkeypatch.setattr(core_share, "BELL_TIMEOUT_S", 30)  # only a ring may end the wait
    share_a, share_b = _views(table, cores=1)
    a, b = share_a.turns(0), share_b.turns(0)

    a.ended()  # nobody waits: no bell rings
    assert not select.select([share_b._bell], [], [], 0)[0]

    a.publish(None, running=1)
    assert not b.may_run(2.0)  # b's work now waits, published in the table
    woken = threading.Event()
    sleeper = threading.Thread(target=lambda: (b.wait(), woken.set()))
    sleeper.start()
    a.publish(None, running=0)
    a.ended()
    sleeper.join(10)
    assert woken.is_set()
    assert b.may_run(2.0)


def test_a_batcher_waits_for_its_turn_and_still_gives_exact_images(tiny_cond_onnx, table):
    runner = OnnxGenerator(tiny_cond_onnx)
    other, ours = _views(table, cores=1)
    elsewhere = other.turns(0)  # another process's model, holding the only core
    elsewhere.publish(None, running=1)
    batcher = Batcher(runner, max_batch=64, max_delay_s=0, workers=2, turns=ours.turns(0))
    try:
        seeds = list(range(20))
        z, y = seeds_to_latents(seeds, 100), default_labels(seeds, 10)
        future = batcher.submit(z, y)
        time.sleep(0.3)
        assert not future.done()  # no core for it yet
        elsewhere.publish(None, running=0)
        elsewhere.ended()  # the core is free: its bell rings
        np.testing.assert_array_equal(future.result(timeout=10), runner.generate(z, y))
    finally:
        batcher.close()
    assert elsewhere.may_run(time.perf_counter())  # our runs ended and left the table


def test_two_processes_batchers_never_run_more_at_once_than_cores(tiny_cond_onnx, table):
    runner = OnnxGenerator(tiny_cond_onnx)
    running, most, lock = [0], [0], threading.Lock()

    class Counted:
        """The real runner, counting the runs in progress across both batchers."""
        def generate(self, z, y):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            try:
                time.sleep(0.002)  # long enough for the other batcher to want the core
                return runner.generate(z, y)
            finally:
                with lock:
                    running[0] -= 1

    batchers = [Batcher(Counted(), max_batch=32, max_delay_s=0, workers=2, turns=view.turns(0))
                for view in _views(table, cores=1)]
    try:
        requests = [list(range(i, i + 16 + i % 5)) for i in range(24)]
        futures = [(seeds, batchers[i % 2].submit(seeds_to_latents(seeds, 100),
                                                  default_labels(seeds, 10)))
                   for i, seeds in enumerate(requests)]
        for seeds, future in futures:
            np.testing.assert_array_equal(
                future.result(timeout=30),
                runner.generate(seeds_to_latents(seeds, 100), default_labels(seeds, 10)))
    finally:
        for batcher in batchers:
            batcher.close()
    assert most[0] == 1


def test_a_bad_core_share_spec_says_what_is_expected(tmp_path):
    with pytest.raises(ServiceError, match="--core-share expects PATH:INDEX"):
        CoreShare(f"{tmp_path / 'missing'}:0", cores=2, models=1)
    table = create_table(processes=1, models=2)
    try:
        with pytest.raises(ServiceError, match="no rows for process 1"):
            CoreShare(f"{table}:1", cores=2, models=2)
    finally:
        remove_table(table)


def test_the_table_falls_back_to_the_temporary_folder_and_says_when_it_cannot(tmp_path,
                                                                              monkeypatch):
    missing = str(tmp_path / "no-such-folder")
    monkeypatch.setattr(core_share, "TABLE_FOLDERS", (missing, str(tmp_path)))
    table = create_table(processes=2, models=1)
    try:
        assert table.parent == tmp_path and table.stat().st_size == 2 * 3 * 8
    finally:
        remove_table(table)
    monkeypatch.setattr(core_share, "TABLE_FOLDERS", (missing,))
    with pytest.raises(ServiceError, match="cannot create the --processes workers' shared core"):
        create_table(processes=2, models=1)
