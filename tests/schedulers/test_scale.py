"""Scaling a batch cluster: growing submits one more array; shrinking stops engines once idle, their
elements end COMPLETED, and nothing replaces them (they were not lost)."""
from __future__ import annotations

import time

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State

from .sched_facts import Sched


@pytest.mark.parametrize("sched", ["slurm", "sge"], indirect=True)
def test_scale_up_and_down(sched: Sched) -> None:
    profile = sched.profile(sched.root / "profile", "scale")
    cluster = HPCCluster(scheduler=sched.scheduler, n=1, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="scale", engine_timeout=240, shutdown_atexit=False, replace_interval=0.5,
                         **sched.cluster_options())
    with cluster as rc:
        assert cluster.scale_sync(3) == {"added": 2}
        second = cluster.engine_sets[1]
        assert second.n == 2 and len(second.submissions) == 1  # one array for both
        assert cluster.scale_sync(3) == {}  # elements still queued count as engines to come
        rc.wait_for_engines(3, timeout=120)
        new = sorted(rc.ids)[1:]
        assert cluster.scale_sync(1, timeout=60) == {"stopped": new}
        assert second.poller.wait_until(lambda recs: all(r.state is State.COMPLETED for r in recs), 60,
                                        second.job_ids), second.states()
        time.sleep(2)  # four looks of the replacer: nothing to replace
        assert len(cluster.engine_sets) == 2 and cluster._replacer.count == 0 and len(rc.ids) == 1
        assert rc[:].apply_sync(lambda: 1) == [1]
