"""Engine failure detection: a killed engine fails its tasks promptly with EngineError and the others keep
working; a busy engine is not mistaken for a dead one."""
from __future__ import annotations

import os
import signal
import time

import pytest

from ipphpc import EngineError, HPCCluster

from .helpers import alive, kill_matching, ship_by_value, wait_until

ship_by_value(__name__)

HEARTBEAT, MISSES = 0.2, 3


def mark_then_sleep(marker: str, seconds: float) -> str:
    import time as _t
    open(marker, "w").close()
    _t.sleep(seconds)
    return "slept"


@pytest.fixture
def fast_cluster(tmp_path):
    """Three engines in one process group, with a controller that declares an engine dead after 0.6 s."""
    root = tmp_path.resolve()
    c = HPCCluster(n=3, profile_dir=str(root / "profile"), shutdown_atexit=False,
                   controller_args=[f"--Controller.heartbeat_period={HEARTBEAT}",
                                    f"--Controller.heartbeat_misses={MISSES}"])
    try:
        c.start_and_connect_sync()
        yield c
    finally:
        c.stop_cluster_sync()
        left = kill_matching(str(root))
        assert not left, f"processes left behind: {left}"


def test_killed_engine_fails_its_task_promptly(fast_cluster, tmp_path):
    """SIGKILL of an engine running a sleeping task raises EngineError within a few heartbeats."""
    rc = fast_cluster.client
    victim, *others = rc.ids
    pid = rc[victim].apply_sync(os.getpid)
    marker = str(tmp_path / "started")
    ar = rc[victim].apply_async(mark_then_sleep, marker, 60)
    lb = rc.load_balanced_view()
    wait_until(lambda: os.path.exists(marker), 20, what="the task to start")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineError, match=f"engine {victim}"):
        ar.get(timeout=30)
    took = time.monotonic() - t0
    assert took < MISSES * HEARTBEAT + 4.0, f"EngineError after {took:.2f} s"
    wait_until(lambda: victim not in rc.ids, 10, what="the dead engine to leave rc.ids")
    assert not alive(pid)
    assert rc.controller_status()["stats"]["engines_died"] >= 1
    # the survivors keep working, directly and load-balanced
    assert sorted(rc.ids) == sorted(others)
    assert len(set(rc[:].apply_sync(os.getpid))) == len(others)
    assert lb.map_sync(lambda x: x + 1, range(20)) == list(range(1, 21))


def test_killed_engine_fails_load_balanced_task(fast_cluster, tmp_path):
    """A load-balanced task running on an engine that dies fails with EngineError, not a hang."""
    rc = fast_cluster.client
    marker = str(tmp_path / "started")
    ar = rc.load_balanced_view().apply(lambda m: (mark_then_sleep(m, 60), os.getpid())[1], marker)
    wait_until(lambda: os.path.exists(marker), 20, what="the task to start")
    busy = [i for i, info in rc.controller_status()["engines"].items() if info["outstanding"]]
    assert len(busy) == 1
    os.kill(rc.engines[int(busy[0])]["pid"], signal.SIGKILL)
    with pytest.raises(EngineError):
        ar.get(timeout=30)
    assert rc.load_balanced_view().apply_sync(lambda: "ok") == "ok"


def test_busy_engine_is_not_declared_dead(fast_cluster):
    """An engine holding the GIL in a long C loop keeps answering heartbeats and is not unregistered."""
    rc = fast_cluster.client
    died = rc.controller_status()["stats"]["engines_died"]
    eid = rc.ids[0]

    def hog():
        import time as _t
        t0 = _t.monotonic()
        total = 0
        while _t.monotonic() - t0 < 1.5:
            total += sum(range(10**7))  # a C loop that never releases the GIL
        return _t.monotonic() - t0

    took = rc[eid].apply_sync(hog)
    assert took >= 1.5 > MISSES * HEARTBEAT * 2
    assert eid in rc.ids
    assert rc.controller_status()["stats"]["engines_died"] == died


def test_killed_engine_fails_a_synchronous_call_promptly(fast_cluster, tmp_path):
    """A blocking apply_sync on an engine that dies raises EngineError promptly, and others keep serving."""
    import threading
    rc = fast_cluster.client
    victim = rc.ids[0]
    pid = rc[victim].apply_sync(os.getpid)
    marker = str(tmp_path / "started")
    threading.Thread(target=lambda: (wait_until(lambda: os.path.exists(marker), 20, what="the task to start"),
                                     os.kill(pid, signal.SIGKILL)), daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=f"engine {victim}"):
        rc[victim].apply_sync(mark_then_sleep, marker, 60)
    assert time.monotonic() - t0 < MISSES * HEARTBEAT + 6.0
    assert rc.load_balanced_view().apply_sync(lambda: "still served") == "still served"


def slow_the_first_time(marker: str) -> int:
    import os as _os
    import time as _t
    if not _os.path.exists(marker):
        open(marker, "w").close()
        _t.sleep(60)
    return _os.getpid()


def test_task_cut_short_by_the_scheduler_runs_again_elsewhere(fast_cluster, tmp_path):
    """SIGTERM, then SIGKILL before the running task ends, as a scheduler ends a job (Slurm's KillWait): the
    load-balanced task runs again on another engine without using a retry, and the caller gets its result;
    a direct task on that engine fails with an EngineError that says SIGTERM came first."""
    rc = fast_cluster.client
    marker = str(tmp_path / "started")
    ar = rc.load_balanced_view().apply(slow_the_first_time, marker)  # retries=0
    wait_until(lambda: os.path.exists(marker), 20, what="the task to start")
    busy = [int(i) for i, info in rc.controller_status()["engines"].items() if info["outstanding"]]
    assert len(busy) == 1
    victim = busy[0]
    pid = rc.engines[victim]["pid"]
    direct = rc[victim].apply_async(os.getpid)  # queued behind the running task
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: rc.controller_status()["engines"][str(victim)]["leaving"], 10,
               what="the controller to hear the engine is leaving")
    assert alive(pid)  # still running its task, as a job does during the scheduler's grace time
    os.kill(pid, signal.SIGKILL)
    ran_on = ar.get(timeout=30)
    assert ran_on != pid and ran_on in [rc.engines[i]["pid"] for i in rc.ids]
    assert ar.engine_id != victim
    with pytest.raises(EngineError, match="SIGTERM"):
        direct.get(timeout=30)
