"""An engine of a batch job that goes silent without a word (SIGKILL: no SIGTERM came first) leaves its
tasks parked while the cluster's witness listens, until the scheduler's word arrives: the scheduler ended the
element (node failure, walltime, preemption, a cancel), so the load-balanced task it ran runs again without a
retry and its direct task fails naming the reason; or it did not, and both fail as before, with the
scheduler's word added; or nothing comes in time, and both fail saying so.

The witness here is a client playing its part (the real one, reading Slurm, is tested in
tests/schedulers/test_witness.py), and the engines say they are elements of a Slurm job through the
environment a job gives them."""
from __future__ import annotations

import os
import signal
import threading

import pytest

import ipphpc
from ipphpc import EngineError

from .helpers import ship_by_value, wait_until
from .test_no_hang import mark_then_sleep, nap

ship_by_value(__name__)

FAST = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_misses=3", "--Controller.engine_wait=30",
        "--Controller.verdict_wait=8")
NO_ASKING = "--Engine.ask_scheduler=False"  # no Slurm job 4242 to ask about


class FakeWitness:
    """Long-polls the controller as ipphpc.cluster.witness.Witness does, and keeps what it was told."""

    def __init__(self, rc):
        self.rc, self.lost, self.polls, self.stop = rc, [], 0, threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self):
        while not self.stop.is_set():
            try:
                self.lost += self.rc._request("watch_engines", {"wait": 1.0}, timeout=10)["lost"]
                self.polls += 1
            except Exception:  # noqa: BLE001 - the client closing at the end of the test
                return

    def verdict(self, eid, ended, says):
        return self.rc._request("verdict", {"eid": eid, "ended": ended, "says": says})


def element_env(index: int) -> dict:
    return {**os.environ, "SLURM_JOB_ID": str(4242 + index), "SLURM_ARRAY_JOB_ID": "4242",
            "SLURM_ARRAY_TASK_ID": str(index)}


@pytest.fixture
def batch(spawner, pdir, tmp_path):
    """A controller with a fast heartbeat, a witness, and one engine saying it is element 0 of Slurm job 4242,
    running a load-balanced task (no retries) and holding a direct one when it is SIGKILLed."""
    spawner.controller(pdir, "verdict", *FAST)
    spawner.engine(pdir, "verdict", NO_ASKING, env=element_env(0))
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id="verdict")
    rc.wait_for_engines(1, timeout=30)
    witness = FakeWitness(ipphpc.Client(profile_dir=str(pdir), cluster_id="verdict"))
    wait_until(lambda: witness.polls >= 1, 10, what="the witness to listen")
    (victim,) = rc.ids
    marker = tmp_path / "running"
    lb = rc.load_balanced_view().apply_async(mark_then_sleep, str(marker), 1.0)
    direct = rc[victim].apply_async(nap, 0.1)
    wait_until(marker.exists, 20, what="the task to start")
    os.kill(rc.engines[victim]["pid"], signal.SIGKILL)
    wait_until(lambda: witness.lost, 10, what="the witness to be told of the silent engine")
    (lost,) = witness.lost
    assert (lost["eid"], lost["job_id"], lost["array_index"]) == (victim, "4242", 0), lost
    assert 0 < lost["answer_within"] <= 8
    assert not lb.ready() and not direct.ready()  # parked, waiting for the scheduler's word
    yield rc, witness, victim, lb, direct
    witness.stop.set()
    witness.rc.close()
    rc.close()


def test_scheduler_ended_it_the_task_runs_again_and_the_direct_one_names_why(batch, spawner, pdir):
    rc, witness, victim, lb, direct = batch
    spawner.engine(pdir, "verdict", NO_ASKING, env=element_env(1))  # the element that replaces it
    rc.wait_for_engines(1, timeout=30)
    assert witness.verdict(victim, "its node failed, or the scheduler lost its job", "NODE_FAIL")["known"] is True
    with pytest.raises(EngineError, match=r"before it started this task: its node failed, or the scheduler lost "
                                          r"its job \(the scheduler says NODE_FAIL\)"):
        direct.get(timeout=10)
    (new,) = rc.ids
    assert lb.get(timeout=20) == rc.engines[new]["pid"]  # ran again, although it had no retries


def test_element_not_ended_by_the_scheduler_fails_as_before_with_its_word(batch):
    rc, witness, victim, lb, direct = batch
    witness.verdict(victim, "", "OUT_OF_MEMORY")
    with pytest.raises(EngineError, match=r"while running this task: no heartbeat for 0.6 s; the scheduler says "
                                          r"its element OUT_OF_MEMORY"):
        lb.get(timeout=10)
    with pytest.raises(EngineError, match=r"before it started this task: no heartbeat"):
        direct.get(timeout=10)


def test_no_word_in_time_fails_saying_so(batch):
    rc, witness, victim, lb, direct = batch
    with pytest.raises(EngineError, match=r"no heartbeat for 0.6 s \(the scheduler gave no reason within 8 s\)"):
        lb.get(timeout=20)
    with pytest.raises(EngineError, match=r"gave no reason"):
        direct.get(timeout=5)
    assert witness.verdict(victim, "too late", "NODE_FAIL")["known"] is False


def test_without_a_witness_nothing_waits(spawner, pdir, tmp_path):
    spawner.controller(pdir, "verdict", *FAST)
    spawner.engine(pdir, "verdict", NO_ASKING, env=element_env(0))
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id="verdict")
    rc.wait_for_engines(1, timeout=30)
    marker = tmp_path / "running"
    lb = rc.load_balanced_view().apply_async(mark_then_sleep, str(marker), 5.0)
    wait_until(marker.exists, 20, what="the task to start")
    os.kill(rc.engines[rc.ids[0]]["pid"], signal.SIGKILL)
    with pytest.raises(EngineError, match=r"while running this task: no heartbeat for 0.6 s$"):
        lb.get(timeout=5)  # at once: no one would answer
    rc.close()
