"""Growing and shrinking a running cluster: more engines as one more set; fewer by stopping engines once
they have run what they hold, so no task is killed or lost."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ipphpc import HPCCluster

from .helpers import kill_matching, ship_by_value, wait_until

ship_by_value(__name__)


@pytest.fixture
def two(tmp_path):
    root = tmp_path.resolve()
    c = HPCCluster(n=2, profile_dir=str(root / "profile"), cluster_id="sc", shutdown_atexit=False)
    try:
        c.start_and_connect_sync()
        yield c
    finally:
        c.stop_cluster_sync()
        left = kill_matching(str(root))
        assert not left, f"processes left behind: {left}"


def test_scale_up_then_down_while_tasks_run(two):
    rc = two.client
    assert two.scale_sync(4) == {"added": 2}
    rc.wait_for_engines(4, timeout=30)
    assert len(two.engine_sets) == 2
    assert two.scale_sync(4) == {}
    lv = rc.load_balanced_view()
    ar = lv.map_async(lambda x: (__import__("time").sleep(0.5), x)[1], range(12))
    wait_until(lambda: sum(v["tasks"] for k, v in rc.queue_status().items() if k != "unassigned") >= 4, 10,
               what="every engine to hold a task")
    done = two.scale_sync(1, timeout=60)
    assert len(done["stopped"]) == 3 and set(done["stopped"]) < set(range(4))
    assert ar.get(timeout=60) == list(range(12))  # nothing killed, nothing lost
    assert len(rc.ids) == 1


def test_stop_engine_by_id_and_bad_input(two):
    rc = two.client
    first, second = rc.ids
    two.stop_engine_sync(second)
    assert rc.ids == [first]
    with pytest.raises(KeyError, match=r"no engine\(s\) \[7\]"):
        two.stop_engine_sync(7)
    with pytest.raises(ValueError, match="cannot be negative"):
        two.scale_sync(-1)


def test_cli_scale(two, tmp_path):
    pdir = str(tmp_path.resolve() / "profile")
    out = subprocess.run([sys.executable, "-m", "ipphpc", "scale", "sc", "3", "--profile-dir", pdir],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "cluster sc: added 1 engine(s); 3 engine(s) wanted", out
    two.client.wait_for_engines(3, timeout=30)
    out = subprocess.run([sys.executable, "-m", "ipphpc", "scale", "nope", "3", "--profile-dir", pdir],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no cluster 'nope'" in out.stderr and "sc" in out.stderr, out
