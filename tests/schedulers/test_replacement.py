"""A batch cluster keeps n engines while its elements reach their walltime: engines drain, leave, their
elements end COMPLETED, and the cluster submits one array that replaces them; a stream of tasks goes on
with no task failed and none lost. Run on the real Slurm and SGE (the drain itself is checked on every
scheduler in test_walltime_drain.py; replacement only depends on what the poller and controller say)."""
from __future__ import annotations

import time

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State
from ipphpc.cluster.replace import job_number, lost_elements

from .sched_facts import Sched

WALLTIME = {"slurm": ("0:01:00", 30), "sge": ("0:00:20", 6)}


class Rec:
    def __init__(self, job_id: str, index: int, state, native: str = ""):
        self.job_id, self.array_index, self.state, self.native_state, self.reason = job_id, index, state, native, ""


def test_which_elements_are_lost():
    from ipphpc.batch.states import State
    recs = [Rec("12_0", 0, State.TIMEOUT), Rec("12_1", 1, State.COMPLETED), Rec("12_2", 2, State.COMPLETED),
            Rec("12_3", 3, State.FAILED), Rec("12_4", 4, State.LOST), Rec("12_5", 5, State.CANCELLED),
            Rec("12_6", 6, State.RUNNING), Rec("12_7", 7, State.FAILED, "NODE_FAIL"),
            Rec("12_8", 8, State.FAILED, "OUT_OF_MEMORY")]
    assert lost_elements(recs, drained={("12", 2)}) == {("12", 0), ("12", 2), ("12", 4), ("12", 5), ("12", 7)}
    assert [job_number(j) for j in ("12_3", "12[3].pbs", "12.3", "12", 7)] == ["12", "12", "12", "12", "7"]


@pytest.mark.parametrize("sched", sorted(WALLTIME), indirect=True)
def test_drained_elements_are_replaced_and_no_task_is_lost(sched: Sched) -> None:
    walltime, margin = WALLTIME[sched.name]
    profile = sched.profile(sched.root / "profile", "keep")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime=walltime, profile_dir=str(profile),
                         cluster_id="keep", engine_timeout=240, shutdown_atexit=False, replace_interval=1.0,
                         engine_args=[f"--Engine.drain_margin={margin}", "--Engine.drain_stagger=0"],
                         **sched.cluster_options())
    with cluster as rc:
        (first,) = cluster.engine_sets
        (job,) = first.job_ids
        old = set(rc.ids)
        old_jobs = {rc.engines[e]["job_id"] for e in old}
        ends = max(i["ends"] for i in rc.engines.values())
        lv = rc.load_balanced_view()
        ars = []
        deadline = ends + 90
        # 1 s tasks, two at a time, until replacement engines have run some
        while time.time() < deadline:
            ars += [lv.apply_async(time.sleep, 1.0) for _ in range(2)]
            ars[-1].wait(3)
            new = set(rc.ids) - old
            if len(new) == 2 and sum(1 for ar in ars if ar.ready() and ar.engine_id in new) >= 4:
                break
        assert len(set(rc.ids) - old) == 2 and not old & set(rc.ids), (old, rc.ids)
        # the first array's elements ended because their engines drained: COMPLETED, before their walltime
        assert first.poller.wait_until(lambda recs: all(r.state is State.COMPLETED for r in recs), 30,
                                       first.job_ids), first.states()
        for ar in ars:
            ar.get(timeout=60)  # every task completes, none failed with the engines that drained
        assert len(cluster.engine_sets) == 2 and cluster._replacer.count == 2, cluster.engine_sets
        second = cluster.engine_sets[1]
        assert len(second.submissions) == 1 and second.n == 2  # one array for both
        assert {rc.engines[e]["job_id"] for e in rc.ids}.isdisjoint(old_jobs)
    sched.left_queue(job)
    rows = sched.accounted(job, [sched.base, sched.base + 1], timeout=30)
    assert all(sched.stopped_cleanly(*row) for row in rows.values()), rows
