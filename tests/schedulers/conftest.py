"""Shared pieces for tests that drive ipphpc through a batch scheduler: the `sched` parameter of the
behavioural suite (test_every_scheduler.py), and checks of a job through its states.

Nothing here knows one scheduler: jobs are submitted through :class:`BatchLauncher` or
HPCCluster, and judged through their poller. A job inherits the environment of the process
that submits it, so the private IPPHPC_DIR the `sched` fixture sets reaches the engines too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ipphpc.batch.registry import get_backend
from ipphpc.batch.states import State
from ipphpc.launch.batch import BatchLauncher, scheduler_launcher
from ipphpc.launch.poller import Poller


def quick_launcher(scheduler: str, profile: Path, n: int = 1, cluster_id: str = "states",
                   **options: Any) -> BatchLauncher:
    """An engines launcher whose poller looks every 0.2-1 s (a real one backs off to 30 s)."""
    poller = Poller(scheduler, profile, min_interval=0.2, max_interval=1.0, lost_grace=30)
    return scheduler_launcher(scheduler)("engines", n, profile_dir=str(profile), cluster_id=cluster_id,
                                         poller=poller, **options)


def start(launcher: BatchLauncher, cmd: list[str]) -> BatchLauncher:
    launcher.start(cmd, Path(launcher.profile_dir) / "log" / f"ipengine-{launcher.cluster_id}.out")
    return launcher


#: element 1 fails with exit code 3 after a line on stderr; the others sleep a little and succeed
WORK = ("echo element $IPPHPC_ELEMENT on $(hostname); sleep 2; "
        "if [ $IPPHPC_ELEMENT = 1 ]; then echo bad input >&2; exit 3; fi")


def check_run_and_end(launcher: BatchLauncher, timeout: float = 60) -> None:
    """WORK as 3 elements: RUNNING (with a host), then COMPLETED twice and FAILED with exit
    code 3, whose output tail the failure report shows."""
    assert launcher.n == 3
    start(launcher, ["bash", "-c", WORK])
    poller = launcher.poller
    assert poller.counter.count() == 1  # one submission for the whole array
    running: list = []

    def running_with_hosts(recs: list) -> bool:
        # HTCondor may list a job as running a moment before it names the host running it
        running[:] = [r for r in recs if r.state is State.RUNNING]
        return bool(running) and all(r.host for r in running)
    assert poller.wait_until(running_with_hosts, timeout), launcher.states()
    assert launcher.running and launcher.exit_code is None
    assert poller.wait_until(lambda recs: all(r.finished for r in recs), timeout), launcher.states()
    states = {r.array_index: r for r in launcher.states()}
    base = get_backend(launcher.scheduler).array_index_base
    assert (states[base].state, states[base].exit_code) == (State.COMPLETED, 0), states
    assert states[base + 2].state is State.COMPLETED, states
    assert (states[base + 1].state, states[base + 1].exit_code) == (State.FAILED, 3), states
    assert launcher.exit_code == 3 and not launcher.running
    report = launcher.failure_report()
    assert f"element {base + 1}: FAILED, exit code 3" in report, report
    assert "element 1 on" in report and "bad input" in report, report


def check_cancel(launcher: BatchLauncher, timeout: float = 60) -> None:
    """Running elements end CANCELLED after ONE cancel command, and stop() confirms it."""
    cancel = get_backend(launcher.scheduler).cancel_command([])[0]
    before = launcher.poller.counter.count(cancel)
    assert launcher.stop(timeout=timeout) == []
    assert launcher.poller.counter.count(cancel) == before + 1
    assert {r.state for r in launcher.states()} == {State.CANCELLED}, launcher.states()
    assert not launcher.running


def check_timed_out(launcher: BatchLauncher, timeout: float) -> None:
    """A job started with a walltime ends TIMEOUT (not FAILED, not LOST) within `timeout`."""
    assert launcher.poller.wait_until(lambda recs: all(r.finished for r in recs), timeout), launcher.states()
    records = launcher.states()
    assert {r.state for r in records} == {State.TIMEOUT}, records
    assert "TIMEOUT" in launcher.failure_report()


# -- the scheduler a behavioural test runs against -------------------------------------------------
def _sched_params() -> list:
    from .sched_facts import MARKS, SCHEDULERS
    slow = {"sge", "htcondor"}
    return [pytest.param(name, id=name, marks=[getattr(pytest.mark, MARKS[name])]
                         + ([pytest.mark.slow] if name in slow else [])) for name in SCHEDULERS]


@pytest.fixture(params=_sched_params())
def sched(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The facts of one scheduler (tests/schedulers/sched_facts.py), set up for this test: its service
    checked (skipped when not declared, failed when declared and broken), a private IPPHPC_DIR and
    working directory; afterwards none of the test's jobs may be queued and none of its processes alive."""
    from .sched_facts import SCHEDULERS, check_service
    check_service(request.param)
    facts = SCHEDULERS[request.param](tmp_path.resolve())
    facts.setup(monkeypatch)
    yield facts
    facts.nothing_left()
