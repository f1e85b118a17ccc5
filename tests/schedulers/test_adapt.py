"""An adaptive batch cluster from 0 engines to its maximum (8) and back: one submission for the tasks that
wait, engines released once idle (their elements end COMPLETED and are not replaced), and at rest no
scheduler calls at all."""
from __future__ import annotations

import time

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State
from ipphpc.launch.commands import COUNTER

from .sched_facts import Sched
from .scheduler_support import wait_until


@pytest.mark.parametrize("sched", ["slurm"], indirect=True)
def test_adapt_from_zero_to_eight_and_back(sched: Sched) -> None:
    profile = sched.profile(sched.root / "profile", "adapt")
    cluster = HPCCluster(scheduler=sched.scheduler, n=0, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="adapt", engine_timeout=240, shutdown_atexit=False, **sched.cluster_options())
    with cluster as rc:
        ar = rc.load_balanced_view().map_async(time.sleep, [1.0] * 8, chunksize=1)  # 8 tasks
        # adapt's first look must see every task, or it submits for some and then again for the rest
        wait_until(lambda: rc.queue_status().get("unassigned") == len(ar.msg_ids), 30,
                   what="the map's tasks to reach the controller")
        adaptive = cluster.adapt(minimum=0, maximum=8, idle_timeout=3, interval=0.5)
        ar.get(timeout=180)
        (engines,) = cluster.engine_sets  # one array for the waiting tasks
        assert len(ar.msg_ids) == 8 and engines.n == 8 and len(engines.submissions) == 1
        assert engines.poller.counter.count(sched.submit_cmd) == 1
        wait_until(lambda: not rc.ids and adaptive.released == 8, 60, what="the idle engines to be released")
        assert engines.poller.wait_until(lambda recs: all(r.state is State.COMPLETED for r in recs), 60,
                                         engines.job_ids), engines.states()
        calls = COUNTER.total
        time.sleep(3)  # six looks of adapt at rest
        assert COUNTER.total == calls, COUNTER.by_command
        assert len(cluster.engine_sets) == 1 and adaptive.added == 8
