"""Five minutes of 20 s tasks on engines whose jobs have a 90 s walltime (Slurm counts whole minutes: 2 min
there). Every task completes exactly once, no error reaches the caller, no element is killed at its walltime
(each ends COMPLETED once its engines drained), and replacements keep the cluster at its size. On every
scheduler (PBS and LSF through their emulators, which enforce the walltime as the real ones do).

A soak: skipped unless selected with `-m soak` or IPPHPC_SOAK=1 (about 6 minutes per scheduler).
"""
from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State

from .sched_facts import Sched

TASK, MINUTES = 20.0, 5.0


@pytest.mark.soak
@pytest.mark.timeout(900)
@pytest.mark.parametrize("sched", ["slurm", "sge", "htcondor", "pbspro", "lsf"], indirect=True)
def test_five_minutes_of_tasks_across_walltimes(sched: Sched, monkeypatch: pytest.MonkeyPatch) -> None:
    if sched.name == "lsf":  # the other LSF tests run the emulator's minutes in a second; here they last a minute
        monkeypatch.setenv("IPPHPC_EMU_LSF_SECONDS_PER_MINUTE", "60")
    marks = sched.root / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # HTCondor's jobs run as the pool's job user
    profile = sched.profile(sched.root / "profile", "soak")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime="0:01:30", profile_dir=str(profile),
                         cluster_id="soak", engine_timeout=240, shutdown_atexit=False, replace_interval=2.0,
                         engine_args=["--Engine.drain_margin=10", "--Engine.drain_stagger=5"],
                         **sched.cluster_options())
    with cluster as rc:
        lv = rc.load_balanced_view()
        ars = []
        sizes = []
        end = time.monotonic() + MINUTES * 60
        while time.monotonic() < end:
            while sum(1 for ar in ars if not ar.ready()) < 4:  # two per engine, all the time
                # a stdlib call (under HTCondor the engines run another Python): each run leaves a file
                # named by the task and by the shell that ran it
                ars.append(lv.apply_async(os.system, f"touch {marks}/{len(ars)}.$$ && sleep {TASK:g}"))
            sizes.append(len(rc.ids))
            time.sleep(1)
        results = [ar.get(timeout=240) for ar in ars]  # raises on the first error that reached the caller
        assert results == [0] * len(ars)
        runs = collections.Counter(p.name.split(".")[0] for p in Path(marks).iterdir())
        assert sorted(int(k) for k in runs) == list(range(len(ars))) and set(runs.values()) == {1}, \
            {k: n for k, n in runs.items() if n != 1}
        assert cluster._replacer.count >= 4, cluster._replacer.count  # each 90 s, both elements, for 5 minutes
        ended = [r for launcher in cluster.engine_sets for r in launcher.states() if r.state.finished]
        assert ended and all(r.state is State.COMPLETED for r in ended), [(r.job_id, r.state) for r in ended]
        # the cluster kept its size: engines were missing only while a replacement started
        assert sum(1 for n in sizes if n == 2) >= 0.6 * len(sizes), collections.Counter(sizes)
