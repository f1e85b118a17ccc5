"""Engines of a job array restart in place on every scheduler: the same processes in the same elements
execute fresh interpreters and register under their ids; nothing is submitted again."""
from __future__ import annotations

import os

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State

from .sched_facts import Sched


def test_restart_engines_in_place(sched: Sched) -> None:
    profile = sched.profile(sched.root / "profile", "again")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="again", engine_timeout=240, shutdown_atexit=False, **sched.cluster_options())
    with cluster as rc:
        (engines,) = cluster.engine_sets
        dv = rc[:]
        dv.push({"x": 1}, block=True)
        before = {eid: (i["pid"], i["job_id"]) for eid, i in rc.engines.items()}
        assert cluster.restart_engines_sync(cluster.engine_set_ids[0]) == rc.ids == sorted(before)
        assert {eid: (i["pid"], i["job_id"]) for eid, i in rc.engines.items()} == before
        assert dv.apply_sync(os.getpid) == [before[eid][0] for eid in rc.ids]
        with pytest.raises(Exception, match="x"):
            dv.pull("x", block=True)
        assert engines.poller.counter.count(sched.submit_cmd) == 1 and len(engines.submissions) == 1
        assert engines.poller.wait_until(lambda recs: all(r.state is State.RUNNING for r in recs), 30,
                                         engines.job_ids), engines.states()
