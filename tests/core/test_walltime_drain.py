"""Engines that know when their allocation ends: they stop taking tasks a margin before, leave on their
own (exit 0) once idle, and tasks with an expected duration only start where they can finish."""
from __future__ import annotations

import os
import random
import time

import pytest

import ipphpc
from ipphpc.engine.lifetime import allocation, drain_time

from .helpers import ship_by_value, wait_until

ship_by_value(__name__)

FAST = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_misses=3")


def test_allocation_from_the_job_environment_or_the_flag():
    env = {"IPPHPC_WALLTIME": "3600", "IPPHPC_JOB_START": "1000"}
    assert allocation(0, env, now=1500) == (1000, 4600)
    assert allocation(0, {"IPPHPC_WALLTIME": "60"}, now=50) == (50, 110)  # no start: now
    assert allocation(120, env, now=1500) == (1500, 1620)  # --walltime: from the engine's start
    assert allocation(0, {}, now=5) is None


def test_drain_time_is_a_staggered_margin_before_the_end_never_in_the_first_half():
    rng = random.Random(7)
    times = [drain_time(0, 3600, 60, 30, rng) for _ in range(200)]
    assert all(3600 - 90 <= t <= 3600 - 60 for t in times)
    assert max(times) - min(times) > 20  # spread, not all at once
    assert drain_time(0, 60, 60, 30, rng) == 30  # a one-minute job still works its first half


def where(seconds: float) -> tuple[int, float]:
    import os as _os
    import time as _t
    start = _t.time()
    _t.sleep(seconds)
    return _os.getpid(), start


@pytest.fixture
def mortal(spawner, pdir):
    """Two engines: one whose allocation ends 10 s after it starts (draining from 6 s), one without end."""
    ctl, _, _ = spawner.controller(pdir, "drain", *FAST)
    short = spawner.engine(pdir, "drain", "--walltime", "0:10", "--Engine.drain_margin=4", "--Engine.drain_stagger=0")
    started = time.time()
    spawner.engine(pdir, "drain")
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id="drain")
    rc.wait_for_engines(2, timeout=30)
    yield rc, short, started
    rc.close()


def test_engine_drains_before_its_walltime_and_exits_zero(mortal):
    """A steady stream of 0.5 s tasks: none fails; the short-lived engine takes no task after its drain time,
    and its process exits on its own with status 0 before its walltime (its job would end COMPLETED)."""
    rc, short, started = mortal
    info = {eid: rc.engines[eid] for eid in rc.ids}
    short_eid = next(eid for eid, i in info.items() if i["pid"] == short.pid)
    drain_at, ends = info[short_eid]["drain_at"], info[short_eid]["ends"]
    assert ends - drain_at == pytest.approx(4, abs=0.01) and ends - started == pytest.approx(10, abs=3)
    lv = rc.load_balanced_view()
    ars = []
    exited = None
    t_end = time.time() + 11
    while time.time() < t_end:
        ars.append(lv.apply_async(where, 0.5))
        time.sleep(0.25)
        if exited is None and short.poll() is not None:
            exited = time.time()
    results = [ar.get(timeout=30) for ar in ars]  # any EngineError fails the test here
    on_short = [start for pid, start in results if pid == short.pid]
    assert on_short and max(on_short) < drain_at + 0.5, (drain_at, sorted(on_short)[-3:])
    assert exited is not None and exited < ends, f"exited {exited and exited - ends:+.1f} s after its end"
    assert short.returncode == 0
    wait_until(lambda: short_eid not in rc.ids, 10, what="the drained engine to leave rc.ids")


def test_task_with_a_duration_runs_where_it_can_finish(mortal):
    """duration=60 cannot finish on the engine whose allocation ends in 10 s: all such tasks run on the other."""
    rc, short, _ = mortal
    lv = rc.load_balanced_view().set_flags(duration=60)
    pids = {pid for pid, _ in lv.map_sync(where, [0.1] * 8)}
    assert short.pid not in pids and len(pids) == 1
    with pytest.raises(ValueError, match="duration"):
        lv.set_flags(duration="long")


def test_bad_walltime_flag_is_one_line(spawner, pdir):
    p = spawner.engine(pdir, "nowhere", "--walltime", "soon")
    assert p.wait(20) == 2
    out, err = spawner.output(p)
    assert err.strip().count("\n") == 0 and "--walltime" in err and "not a time" in err, err
    assert os.path.isdir(pdir)


def test_run_times_are_learned_where_allocations_end(mortal):
    """Without a duration, a function's next tasks carry the longest of its last runs as their expected
    duration (so they start only where they can finish); a function not run yet carries none."""
    rc, _, _ = mortal
    lv = rc.load_balanced_view()

    def sent_duration(ar):
        (rec,) = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header"])
        return rec["header"].get("xd")

    first = lv.apply_async(where, 0.4)
    first.get(timeout=30)
    assert sent_duration(first) is None
    lv.apply_sync(where, 0.2)
    third = lv.apply_async(where, 0)
    third.get(timeout=30)
    assert sent_duration(third) == pytest.approx(0.4, abs=0.1)  # the longest of 0.4 and 0.2
    chunks = lv.map_async(where, [0.1] * 4, chunksize=2)
    chunks.get(timeout=30)
    assert sent_duration(chunks) is None  # a map's chunks are learned on their own
    assert sent_duration(lv.map_async(where, [0] * 2, chunksize=2)) == pytest.approx(0.2, abs=0.1)
    assert sent_duration(lv.set_flags(duration=7).apply_async(where, 0)) == 7  # a duration given wins


def test_nothing_is_learned_where_allocations_have_no_end(rc):
    lv = rc.load_balanced_view()
    lv.apply_sync(where, 0.1)
    ar = lv.apply_async(where, 0)
    ar.get(timeout=30)
    (rec,) = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header"])
    assert "xd" not in rec["header"] and not rc._durations


def test_an_engine_leaving_while_tasks_of_a_duration_wait(spawner, pdir):
    """Tasks whose duration no engine can give wait when the only engine leaves, and run on the engine that
    comes next (the controller once failed on them when an engine unregistered, and clients kept listing it)."""
    spawner.controller(pdir, "wait", *FAST)
    short = spawner.engine(pdir, "wait", "--walltime", "0:30")
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id="wait")
    try:
        rc.wait_for_engines(1, timeout=30)
        (short_eid,) = rc.ids
        waiting = rc.load_balanced_view().set_flags(duration=120).map_async(where, [0] * 3, chunksize=1)
        wait_until(lambda: rc.queue_status()["unassigned"] == 3, 10, what="the tasks to wait for a longer engine")
        short.terminate()
        assert short.wait(10) == 0
        wait_until(lambda: short_eid not in rc.ids, 10, what="the engine to leave rc.ids")
        later = spawner.engine(pdir, "wait")
        assert {pid for pid, _ in waiting.get(timeout=30)} == {later.pid}
    finally:
        rc.close()
