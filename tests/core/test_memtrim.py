"""Giving memory back after a burst: containers emptied by a burst are made anew, then the heap is trimmed."""
from __future__ import annotations

import gc
import sys

from ipphpc.controller.memtrim import Trimmer, tune_gc
from ipphpc.controller.taskdb.service import TaskDBService


def test_trimmer_tidies_then_trims_only_when_idle_after_enough_tasks():
    calls = []
    t = Trimmer(every=100, tidy=lambda: calls.append("tidy"))
    assert not t.check(routed=99, idle=True)
    assert not t.check(routed=500, idle=False)
    assert t.check(routed=500, idle=True) and calls == ["tidy"]
    assert not t.check(routed=550, idle=True)  # not another 100 since the last one
    assert t.check(routed=600, idle=True) and calls == ["tidy", "tidy"]


def test_the_set_of_tasks_in_flight_shrinks_once_a_burst_is_over():
    svc = TaskDBService(hub=None, store=None, recorder=None)
    svc.live.update(f"m-{i}" for i in range(200_000))
    for i in range(200_000 - 3):
        svc.live.discard(f"m-{i}")
    big = sys.getsizeof(svc.live)
    svc.tidy()
    assert svc.live == {f"m-{i}" for i in range(200_000 - 3, 200_000)}
    assert sys.getsizeof(svc.live) < big / 100, (big, sys.getsizeof(svc.live))


def test_tune_gc_freezes_startup_objects_and_collects_young_ones_less_often():
    before = gc.get_threshold()
    try:
        tune_gc(young=12_345)
        assert gc.get_threshold()[0] == 12_345
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
