"""On the real Slurm: an engine that hangs (SIGSTOP: its heartbeat stops, no SIGTERM is seen) is declared lost
by the controller, which parks its tasks; its element is then cancelled. The cluster's witness reads Slurm's
word and tells the controller: the load-balanced task it was running runs again on the other engine, although
it had no retries, and its direct task fails with an EngineError saying the scheduler cancelled its job."""
from __future__ import annotations

import os
import signal
import time

import pytest

from ipphpc import EngineError, HPCCluster
from tests.core.helpers import ship_by_value

from .sched_facts import Sched
from .scheduler_support import wait_until


def mark_and_sleep(marker: str, seconds: float) -> int:
    import os as _os
    import time as _t
    with open(marker, "w") as f:
        f.write(str(_os.getpid()))
    _t.sleep(seconds)
    return _os.getpid()


@pytest.mark.parametrize("sched", ["slurm"], indirect=True)
def test_hung_engine_whose_element_is_cancelled(sched: Sched) -> None:
    profile = sched.profile(sched.root / "profile", "witness")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="witness", engine_timeout=240, shutdown_atexit=False, replace_lost=False,
                         controller_args=["--Controller.heartbeat_period=0.5", "--Controller.heartbeat_misses=4"],
                         **sched.cluster_options())
    with cluster as rc:
        (engines,) = cluster.engine_sets
        (job,) = engines.job_ids
        marker = sched.root / "running"
        lb = rc.load_balanced_view().apply_async(mark_and_sleep, str(marker), 3.0)
        wait_until(marker.exists, 60, what="the task to start")
        pid = int(marker.read_text())
        victim = next(e for e, i in rc.engines.items() if i["pid"] == pid)
        index = rc.engines[victim]["array_index"]
        other_pid = next(i["pid"] for e, i in rc.engines.items() if e != victim)
        direct = rc[victim].apply_async(time.sleep, 0.1)
        time.sleep(0.5)  # the direct task reaches the engine before it hangs
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: victim not in rc.ids, 30, what="the controller to take the hung engine for lost")
        time.sleep(1)
        assert not lb.ready() and not direct.ready(), (lb.exception() if lb.ready() else None)  # parked
        sched.cancel(f"{job}_{index}")
        with pytest.raises(EngineError, match=r"its job was cancelled \(the scheduler says CANCELLED"):
            direct.get(timeout=60)
        assert lb.get(timeout=60) == other_pid  # ran again on the other engine, with no retries asked for
        assert cluster._witness.answered == 1


ship_by_value(__name__)  # the task function goes to the engines by value: a batch job cannot import tests/
