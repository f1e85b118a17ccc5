"""Cancelling one element of a running array during a long map loses nothing: its engine finishes the
task it runs (the scheduler's SIGTERM comes before its kill), the tasks it held go to the other engine,
and the element is replaced."""
from __future__ import annotations

import time

import pytest

from ipphpc import EngineError, HPCCluster
from tests.core.helpers import ship_by_value

from .sched_facts import Sched
from .scheduler_support import wait_until


@pytest.mark.parametrize("sched", ["slurm"], indirect=True)
def test_scancel_of_one_element_during_a_map(sched: Sched) -> None:
    profile = sched.profile(sched.root / "profile", "cancel1")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="cancel1", engine_timeout=240, shutdown_atexit=False, replace_interval=0.5,
                         **sched.cluster_options())
    with cluster as rc:
        (engines,) = cluster.engine_sets
        (job,) = engines.job_ids
        victim = next(e for e, i in rc.engines.items() if i["array_index"] == 0)
        ar = rc.load_balanced_view().map_async(time.sleep, [0.5] * 40)
        wait_until(lambda: ar.progress >= 4, 60, what="the map to be under way")
        sched.cancel(f"{job}_0")
        assert ar.get(timeout=120) == [None] * 40  # every task ran, none failed
        assert victim in set(ar.engine_id)
        wait_until(lambda: victim not in rc.ids, 30, what="the cancelled element's engine to leave")
        wait_until(lambda: len(cluster.engine_sets) == 2 and len(rc.ids) == 2, 120,
                   what=f"a replacement for the cancelled element ({cluster.engine_sets}, {rc.ids})")
        assert cluster.engine_sets[1].n == 1


def mark_and_sleep(seconds: float) -> int:
    import os as _os
    import time as _t
    _t.sleep(seconds)
    return _os.getpid()


@pytest.mark.parametrize("sched", ["slurm"], indirect=True)
def test_a_task_longer_than_the_grace_time_runs_again(sched: Sched) -> None:
    """scancel of an element whose engine runs a task longer than Slurm's KillWait (5 s here): SIGTERM, then
    SIGKILL mid-task. The engine told the controller at the SIGTERM, so the task runs again on the other
    engine, without a retry being asked for; a direct task queued on it fails with the scheduler's reason,
    which the cluster's witness read from Slurm."""
    profile = sched.profile(sched.root / "profile", "cancel2")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="cancel2", engine_timeout=240, shutdown_atexit=False, replace_lost=False,
                         **sched.cluster_options())
    with cluster as rc:
        (engines,) = cluster.engine_sets
        (job,) = engines.job_ids
        victim = next(e for e, i in rc.engines.items() if i["array_index"] == 0)
        victim_pid = rc.engines[victim]["pid"]
        lv = rc.load_balanced_view()
        ars = [lv.apply_async(mark_and_sleep, 8) for _ in range(2)]
        wait_until(lambda: all(rc.controller_status()["engines"][str(e)]["outstanding"] for e in rc.ids), 60,
                   what="both engines to run a task")
        direct = rc[victim].apply_async(time.sleep, 0.1)  # waits behind the 8 s task
        time.sleep(1)
        sched.cancel(f"{job}_0")
        pids = [ar.get(timeout=120) for ar in ars]  # both finish, none raises
        assert victim_pid not in pids
        assert victim not in rc.ids
        with pytest.raises(EngineError, match=r"before it started this task: its job was cancelled \(the "
                                              r"scheduler says CANCELLED"):
            direct.get(timeout=60)


ship_by_value(__name__)  # the task function goes to the engines by value: a batch job cannot import tests/
