"""Load balancing on a fresh cluster: idle engines are used first, tasks with a timeout never wait on a busy
engine."""
from __future__ import annotations

import os

import pytest

from ipphpc import HPCCluster, TaskTimeout

from .helpers import kill_matching, ship_by_value, wait_for_file

ship_by_value(__name__)


def rendezvous(me: str, other: str, limit: float = 3.0) -> str:
    """Announce `me`, then wait for `other`: returns 'met' only if both run at the same time."""
    import os as _os
    import time as _time
    open(me, "w").close()
    deadline = _time.monotonic() + limit
    while not _os.path.exists(other):
        if _time.monotonic() > deadline:
            return "alone"
        _time.sleep(0.005)
    return "met"


@pytest.fixture
def fresh_cluster(tmp_path):
    """Two idle engines that have run nothing yet."""
    root = tmp_path.resolve()
    c = HPCCluster(n=2, profile_dir=str(root / "profile"), shutdown_atexit=False)
    try:
        c.start_and_connect_sync()
        yield c
    finally:
        c.stop_cluster_sync()
        left = kill_matching(str(root))
        assert not left, f"processes left behind: {left}"


def test_two_tasks_on_two_idle_engines_run_concurrently(fresh_cluster, tmp_path):
    """Two tasks submitted together to a fresh cluster of two idle engines run on both engines at once."""
    rc = fresh_cluster.client
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    lv = rc.load_balanced_view()
    first = lv.apply(lambda: (rendezvous(a, b), os.getpid()))
    second = lv.apply(lambda: (rendezvous(b, a), os.getpid()))
    (r1, p1), (r2, p2) = first.get(timeout=30), second.get(timeout=30)
    assert p1 != p2, "both tasks were queued on the same engine while the other one was idle"
    assert (r1, r2) == ("met", "met")


def test_timeout_task_not_queued_behind_busy_engine(fresh_cluster, tmp_path):
    """While every engine runs a long task, a load-balanced task with `timeout` fails with TaskTimeout
    rather than waiting on an engine behind the long task."""
    rc = fresh_cluster.client
    gate = str(tmp_path / "gate")
    try:
        busy = [rc[i].apply_async(wait_for_file, gate) for i in rc.ids]
        late = rc.load_balanced_view(timeout=0.3).apply(lambda: "ran late")
        with pytest.raises(TaskTimeout):
            late.get(timeout=4)
    finally:
        open(gate, "a").close()
    assert [b.get(timeout=30) for b in busy] == ["released"] * len(busy)
