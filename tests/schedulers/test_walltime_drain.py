"""Engines live with their walltime: the job script (common to every scheduler) tells them when their allocation
ends, they stop taking tasks before it and leave on their own, so no task fails and the element ends as
a job that finished (COMPLETED, exit 0), not one the scheduler killed (TIMEOUT).

Here on HTCondor and the PBS emulator (Torque shares it); Slurm and SGE show it in test_replacement.py,
where the drained elements are also replaced. LSF's emulator runs a minute of walltime in one second, too
short for an engine to start.
"""
from __future__ import annotations

import time

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State

from .sched_facts import Sched

# the walltime each scheduler is given and the margin engines keep; Slurm and SGE drain their engines in
# test_replacement.py, where the drained elements are also replaced (Slurm counts whole minutes)
WALLTIME = {"htcondor": ("0:00:20", 6), "pbspro": ("0:00:20", 6)}  # Torque shares PBS Pro's emulator


def started(ar) -> float:
    """When a task started on its engine, as epoch seconds (tasks are stdlib calls: under HTCondor the
    engines run another Python, so nothing of this module is sent)."""
    t = ar.metadata["started"]
    return t.timestamp() if hasattr(t, "timestamp") else float(t)


@pytest.mark.parametrize("sched", sorted(WALLTIME), indirect=True)
def test_engine_drains_before_its_walltime_and_its_element_completes(sched: Sched) -> None:
    walltime, margin = WALLTIME[sched.name]
    profile = sched.profile(sched.root / "profile", "drain")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime=walltime, profile_dir=str(profile),
                         cluster_id="drain", engine_timeout=240, shutdown_atexit=False,
                         engine_args=[f"--Engine.drain_margin={margin}", "--Engine.drain_stagger=0"],
                         **sched.cluster_options())
    try:
        with cluster as rc:
            (engines,) = cluster.engine_sets
            (job,) = engines.job_ids
            info = {eid: rc.engines[eid] for eid in rc.ids}
            assert len(info) == 2
            for i in info.values():
                assert i["ends"] - i["drain_at"] == pytest.approx(margin, abs=0.01), i
            ends, drain_at = min(i["ends"] for i in info.values()), max(i["drain_at"] for i in info.values())
            lv = rc.load_balanced_view()
            ars = []
            while rc.ids and time.time() < ends + 10:  # tasks of 1 s, two at a time, until the engines leave
                ars += [lv.apply_async(time.sleep, 1.0) for _ in range(2)]
                wait = time.monotonic() + 5
                # watched closely: tasks sent once the engines drained never run, and the time the engines left
                # is what is checked (a 5 s wait on them made it up to 5 s late)
                while rc.ids and not ars[-1].ready() and time.monotonic() < wait:
                    time.sleep(0.02)
            left = time.time()
            assert not rc.ids and left < ends, f"engines left {left - ends:+.1f} s from their end"
            done = [ar for ar in ars if ar.ready()]
            assert all(ar.successful() for ar in done), [ar.exception() for ar in done if not ar.successful()]
            assert max(started(ar) for ar in done) < drain_at + 0.5
            # the element ends because its engine left, before the scheduler's limit
            assert engines.poller.wait_until(lambda recs: all(r.state is State.COMPLETED for r in recs),
                                             max(5.0, ends - time.time()) + 30, engines.job_ids), engines.states()
        sched.left_queue(job)
        rows = sched.accounted(job, [sched.base, sched.base + 1], timeout=10)
        assert all(sched.stopped_cleanly(*row) for row in rows.values()), rows
    finally:
        cluster.stop_cluster_sync()
