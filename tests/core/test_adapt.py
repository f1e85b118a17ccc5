"""Adaptive clusters: engines come while tasks wait and go only after staying idle."""
from __future__ import annotations

import time

import pytest

from ipphpc import HPCCluster

from .helpers import kill_matching, ship_by_value, wait_until

ship_by_value(__name__)


def nap(s: float) -> float:
    import time as _t
    _t.sleep(s)
    return s


@pytest.fixture
def empty(tmp_path):
    root = tmp_path.resolve()
    c = HPCCluster(n=0, profile_dir=str(root / "profile"), shutdown_atexit=False)
    try:
        c.start_and_connect_sync()
        yield c
    finally:
        c.stop_cluster_sync()
        left = kill_matching(str(root))
        assert not left, f"processes left behind: {left}"


def test_adapt_from_zero_to_maximum_and_back(empty):
    rc = empty.client
    adaptive = empty.adapt(minimum=0, maximum=3, idle_timeout=4, interval=0.3)
    lv = rc.load_balanced_view()
    ar = lv.map_async(nap, [0.5] * 12)
    assert ar.get(timeout=60) == [0.5] * 12
    assert 1 <= adaptive.added <= 3 and len(set(ar.engine_id)) <= 3
    # a short pause between two computations keeps the engines
    time.sleep(0.5)
    before = set(rc.ids)
    assert lv.map_sync(nap, [0.1] * 3) == [0.1] * 3 and set(rc.ids) == before
    wait_until(lambda: not rc.ids and adaptive.released == adaptive.added, 20, interval=0.2,
               what=f"idle engines to be released ({rc.ids}, {adaptive.released} of {adaptive.added})")
    # tasks sent to an empty cluster wait for the engines adapt adds, instead of failing
    assert lv.apply_async(nap, 0).get(timeout=60) == 0
    adaptive.stop()


def test_adapt_keeps_its_minimum_and_refuses_bad_bounds(empty):
    rc = empty.client
    adaptive = empty.adapt(minimum=2, maximum=2, idle_timeout=0, interval=0.3)
    rc.wait_for_engines(2, timeout=30)
    time.sleep(1.5)
    assert len(rc.ids) == 2 and adaptive.released == 0
    adaptive.stop()
    with pytest.raises(ValueError, match="minimum <= maximum"):
        empty.adapt(minimum=3, maximum=2)
