"""The Poller against a fake Slurm: one query per interval, ramp-up, backoff, fallbacks, shared cache.

Time is a fake clock that the tests move by hand, so every interval is
checked exactly and no test depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ipphpc.batch.states import State, exit_file_path
from ipphpc.launch.commands import (
    COUNTER,
    CommandCounter,
    CommandResult,
    SchedulerCommandError,
    run_command,
)
from ipphpc.launch.poller import ElementStatus, Poller

REPO = Path(__file__).resolve().parents[2]
CONTROLLER_DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


class Clock:
    """A clock that only moves when told; ``sleep`` moves it."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class FakeSlurm:
    """Answers squeue and sacct the way Slurm prints them, from two dicts.

    ``queue`` holds what squeue lists, ``history`` what sacct knows:
    ``{(job, index): (state, reason_or_exit, host)}``.
    """

    def __init__(self) -> None:
        self.queue: dict[tuple[str, int | None], tuple[str, str, str]] = {}
        self.history: dict[tuple[str, int | None], tuple[str, str, str]] = {}
        self.calls: list[list[str]] = []
        self.fail: dict[str, CommandResult | Exception] = {}

    def add(self, job: str, indices, state: str = "PENDING", host: str = "") -> None:
        for index in indices:
            self.queue[(job, index)] = (state, "None" if state != "PENDING" else "Priority", host)

    def set(self, job: str, index: int | None, state: str, host: str = "node1") -> None:
        self.queue[(job, index)] = (state, "None", host)

    def finish(self, job: str, index: int | None, state: str, exit_code: str, keep_in_queue: bool = False) -> None:
        self.history[(job, index)] = (state, exit_code, "node1")
        if keep_in_queue:
            self.queue[(job, index)] = (state, "None", "node1")
        else:
            self.queue.pop((job, index), None)

    def count(self, command: str) -> int:
        return sum(1 for c in self.calls if c[0] == command)

    def __call__(self, argv, input=None, timeout=None, cwd=None) -> CommandResult:
        self.calls.append(list(argv))
        failure = self.fail.get(argv[0])
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return failure
        jobs = next(a.split("=", 1)[1].split(",") for a in argv if a.startswith("--jobs="))
        lines = []
        if argv[0] == "squeue":
            for (job, index), (state, reason, host) in sorted(self.queue.items(), key=str):
                if job in jobs:
                    task = "N/A" if index is None else str(index)
                    lines.append(f"{job}|{task}|{job}{index or ''}|{state}|{reason}|{host}")
        elif argv[0] == "sacct":
            for (job, index), (state, exit_code, host) in sorted(self.history.items(), key=str):
                if job in jobs:
                    name = job if index is None else f"{job}_{index}"
                    lines.append(f"{name}|{job}{index or ''}|{state}|{exit_code}|{host}")
        return CommandResult(0, "".join(line + "\n" for line in lines), "")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slurm() -> FakeSlurm:
    return FakeSlurm()


def make_poller(slurm, clock, profile_dir=None, **kwargs) -> Poller:
    options = dict(min_interval=1.0, max_interval=8.0, max_backoff=16.0, lost_grace=30.0)
    options.update(kwargs)
    return Poller("slurm", profile_dir, runner=slurm, clock=clock, sleep=clock.sleep, **options)


def run_for(pollers, clock: Clock, seconds: float, step: float = 0.25) -> list[float]:
    """Call poll_if_due on every poller at each step; return the times a command ran."""
    pollers = pollers if isinstance(pollers, list) else [pollers]
    times = []
    end = clock.t + seconds
    while clock.t < end:
        for poller in pollers:
            calls = poller.counter.total
            poller.poll_if_due()
            if poller.counter.total > calls:
                times.append(clock.t)
        clock.sleep(step)
    return times


def states(poller: Poller) -> dict:
    return {(r.job_id, r.array_index): r.state for r in poller.records()}


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


# -- one query per interval ------------------------------------------------------------------
def test_one_status_call_per_interval_for_one_job_and_for_1000_elements(slurm, clock) -> None:
    small = make_poller(slurm, clock, min_interval=4, max_interval=4)
    slurm.add("10", [None], "RUNNING")
    small.track("10", [None])
    run_for(small, clock, 40)
    one_job_calls = slurm.count("squeue")

    big_slurm = FakeSlurm()
    big = make_poller(big_slurm, clock, min_interval=4, max_interval=4)
    for job in ("20", "21", "22", "23"):
        big_slurm.add(job, range(250), "RUNNING")
        big.track_array(job, 250)
    run_for(big, clock, 40)

    assert one_job_calls == 10
    assert big_slurm.count("squeue") == one_job_calls
    assert len(big.records()) == 1000
    assert all(r.state is State.RUNNING for r in big.records())
    # every query names all four arrays at once
    assert all("--jobs=20,21,22,23" in call for call in big_slurm.calls)
    assert big.counter.count("squeue") == one_job_calls


def test_interval_ramps_up_and_resets_on_change_and_on_request(slurm, clock) -> None:
    slurm.add("10", [0, 1], "PENDING")
    poller = make_poller(slurm, clock)
    poller.track_array("10", 2)
    times = run_for(poller, clock, 30)
    assert gaps(times) == [2, 4, 8, 8]
    assert poller.interval == 8

    slurm.set("10", 0, "RUNNING")
    clock.t = times[-1] + 8  # the next due poll
    changed = poller.poll_if_due()
    assert [c.key for c in changed] == [("10", 0)]
    assert poller.interval == 1

    changed_at = clock.t
    times = run_for(poller, clock, 7.9)
    assert gaps([changed_at, *times]) == [1, 2, 4]

    poller.request_fast_poll()
    assert poller.due()
    assert poller.interval == 1


def test_errors_back_off_and_keep_the_last_known_states(slurm, clock) -> None:
    slurm.add("10", [0, 1], "RUNNING")
    poller = make_poller(slurm, clock)
    poller.track_array("10", 2)
    poller.poll_once()
    good = clock.t
    assert set(states(poller).values()) == {State.RUNNING}

    slurm.fail["squeue"] = CommandResult(1, "", CONTROLLER_DOWN)
    clock.sleep(1)
    times = run_for(poller, clock, 60)
    assert gaps(times) == [2, 4, 8, 16, 16]
    assert set(states(poller).values()) == {State.RUNNING}
    assert slurm.count("sacct") == 0  # a failed query is no reason to look anything up
    health = poller.health()
    assert health["last_good_poll"] == good
    assert "Unable to contact slurm controller" in health["last_error"]
    assert health["errors"] == len(times)

    del slurm.fail["squeue"]
    slurm.finish("10", 0, "COMPLETED", "0:0", keep_in_queue=True)
    clock.sleep(16)
    poller.poll_if_due()
    assert poller.errors == 0
    assert poller.health()["last_good_poll"] == clock.t
    assert poller.record("10", 0).state is State.COMPLETED
    assert poller.record("10", 1).state is State.RUNNING


def test_a_timeout_or_a_missing_command_is_an_error_not_a_failed_job(slurm, clock) -> None:
    slurm.add("10", [None], "RUNNING")
    poller = make_poller(slurm, clock)
    poller.track("10")
    poller.poll_once()
    slurm.fail["squeue"] = SchedulerCommandError("`squeue ...` did not finish within 60 s", ["squeue"], "timeout")
    clock.sleep(2)
    assert poller.poll_once() == []
    assert poller.record("10").state is State.RUNNING
    assert "did not finish" in poller.last_error
    slurm.fail["squeue"] = FileNotFoundError("squeue")
    clock.sleep(10)
    poller.poll_once()
    assert poller.record("10").state is State.RUNNING
    assert poller.errors == 2


def test_unreadable_output_is_an_error_and_states_stay(clock) -> None:
    calls = []

    def pbs(argv, input=None, timeout=None, cwd=None):
        calls.append(argv)
        if len(calls) == 1:
            return CommandResult(0, json.dumps({"Jobs": {"5.srv": {"job_state": "R", "exec_host": "n1/0"}}}), "")
        return CommandResult(0, '{"Jobs": {"5.srv": {"job_state": "R"', "")

    poller = Poller("pbspro", runner=pbs, clock=clock, sleep=clock.sleep)
    poller.track("5.srv")
    poller.poll_once()
    assert poller.record("5.srv").state is State.RUNNING
    assert poller.record("5.srv").host == "n1"
    clock.sleep(5)
    poller.poll_once()
    assert poller.record("5.srv").state is State.RUNNING
    assert "cannot be read" in poller.last_error


# -- jobs that left the queue ----------------------------------------------------------------
def test_accounting_tells_how_elements_that_left_the_queue_ended(slurm, clock) -> None:
    slurm.add("10", range(3), "RUNNING")
    poller = make_poller(slurm, clock)
    poller.track_array("10", 3)
    poller.poll_once()
    slurm.finish("10", 0, "COMPLETED", "0:0")
    slurm.finish("10", 1, "FAILED", "3:0")
    slurm.finish("10", 2, "TIMEOUT", "0:15")
    clock.sleep(2)
    poller.poll_once()
    got = {r.array_index: r for r in poller.records()}
    assert (got[0].state, got[0].exit_code) == (State.COMPLETED, 0)
    assert (got[1].state, got[1].exit_code) == (State.FAILED, 3)
    assert got[2].state is State.TIMEOUT
    assert {r.source for r in got.values()} == {"accounting"}
    # one squeue and one sacct for the whole array, and nothing once all have ended
    assert (slurm.count("squeue"), slurm.count("sacct")) == (2, 1)
    run_for(poller, clock, 60)
    assert (slurm.count("squeue"), slurm.count("sacct")) == (2, 1)


def test_a_finished_state_without_exit_code_is_completed_from_accounting(slurm, clock) -> None:
    slurm.add("10", [None], "RUNNING")
    poller = make_poller(slurm, clock)
    poller.track("10")
    poller.poll_once()
    # squeue --states=all still lists it, without an exit code; sacct has the code
    slurm.finish("10", None, "FAILED", "7:0", keep_in_queue=True)
    clock.sleep(2)
    poller.poll_once()
    record = poller.record("10")
    assert (record.state, record.exit_code) == (State.FAILED, 7)
    assert slurm.count("sacct") == 1


def test_exit_files_answer_when_accounting_does_not(slurm, clock, tmp_path) -> None:
    slurm.add("10", range(3), "RUNNING")
    poller = make_poller(slurm, clock, tmp_path, shared_cache=False)
    poller.track_array("10", 3, cluster_id="c1")
    poller.poll_once()
    for index, code in ((0, "0\n"), (1, "3\n")):
        path = exit_file_path(tmp_path, "c1", "10", index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    slurm.queue.clear()  # all three left the queue; sacct knows none of them
    clock.sleep(2)
    poller.poll_once()
    got = {r.array_index: r for r in poller.records()}
    assert (got[0].state, got[0].exit_code, got[0].source) == (State.COMPLETED, 0, "exit-file")
    assert (got[1].state, got[1].exit_code, got[1].source) == (State.FAILED, 3, "exit-file")
    # no word about element 2 yet: it keeps its last known state until the grace is over
    assert got[2].state is State.RUNNING
    assert got[2].missing_since == clock.t


def test_a_failure_accounted_with_status_0_takes_the_exit_files_code(slurm, clock, tmp_path) -> None:
    slurm.add("10", [0, 1], "RUNNING")
    poller = make_poller(slurm, clock, tmp_path, shared_cache=False)
    poller.track_array("10", 2, cluster_id="c1")
    poller.poll_once()
    path = exit_file_path(tmp_path, "c1", "10", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("127\n")
    slurm.finish("10", 0, "FAILED", "0:0")  # the element's script exited 127
    slurm.finish("10", 1, "FAILED", "0:0")  # no exit file: the accounting's word stays
    clock.sleep(2)
    poller.poll_once()
    got = {r.array_index: r for r in poller.records()}
    assert (got[0].state, got[0].exit_code) == (State.FAILED, 127)
    assert (got[1].state, got[1].exit_code) == (State.FAILED, 0)


def test_lost_only_after_the_grace_period(slurm, clock) -> None:
    slurm.add("10", [0, 1], "RUNNING")
    poller = make_poller(slurm, clock, lost_grace=30)
    poller.track_array("10", 2)
    poller.poll_once()
    slurm.queue.pop(("10", 1))
    clock.sleep(1)
    poller.poll_once()
    gone = clock.t
    while clock.t < gone + 29:
        poller.poll_if_due()
        clock.sleep(0.5)
    assert poller.record("10", 1).state is State.RUNNING
    clock.t = gone + 31
    poller.poll_once()
    record = poller.record("10", 1)
    assert record.state is State.LOST
    assert "left the queue" in record.reason and "sacct" in record.reason
    assert record.since == clock.t
    assert poller.record("10", 0).state is State.RUNNING


def test_an_accounting_failure_never_makes_an_element_lost(slurm, clock) -> None:
    slurm.add("10", [None], "RUNNING")
    poller = make_poller(slurm, clock, lost_grace=5)
    poller.track("10")
    poller.poll_once()
    slurm.queue.clear()
    slurm.fail["sacct"] = CommandResult(1, "", "sacct: error: Problem talking to the database")
    run_for(poller, clock, 60)
    assert poller.record("10").state is State.RUNNING
    assert "Problem talking to the database" in poller.accounting_error


def test_cancelled_elements_that_vanish_are_cancelled_not_lost(slurm, clock) -> None:
    slurm.add("10", [0, 1], "PENDING")
    poller = make_poller(slurm, clock)
    poller.track_array("10", 2)
    poller.poll_once()
    poller.mark_cancelled(["10"])
    slurm.queue.clear()
    poller.poll_once()
    assert set(states(poller).values()) == {State.CANCELLED}


def test_unknown_job_answer_is_not_an_error(slurm, clock) -> None:
    slurm.add("10", [None], "RUNNING")
    poller = make_poller(slurm, clock)
    poller.track("10")
    poller.poll_once()
    slurm.fail["squeue"] = CommandResult(1, "", "slurm_load_jobs error: Invalid job id specified\n")
    slurm.finish("10", None, "COMPLETED", "0:0")
    clock.sleep(2)
    poller.poll_once()
    assert poller.errors == 0
    assert poller.record("10").state is State.COMPLETED


def test_since_is_when_the_state_was_entered(slurm, clock) -> None:
    slurm.add("10", [None], "PENDING")
    poller = make_poller(slurm, clock)
    submitted = clock.t
    poller.track("10")
    poller.poll_once()
    assert poller.record("10").since == submitted
    clock.sleep(5)
    slurm.set("10", None, "RUNNING", host="node7")
    poller.poll_once()
    started = clock.t
    clock.sleep(4)
    poller.poll_once()
    record = poller.record("10")
    assert (record.state, record.since, record.host, record.updated) == (State.RUNNING, started, "node7", clock.t)
    clock.sleep(3)
    slurm.finish("10", None, "COMPLETED", "0:0")
    poller.poll_once()
    assert poller.record("10").since == clock.t


def test_listeners_hear_about_changes(slurm, clock) -> None:
    slurm.add("10", [0, 1], "PENDING")
    poller = make_poller(slurm, clock)
    poller.track_array("10", 2)
    heard: list[list[ElementStatus]] = []
    poller.add_listener(heard.append)
    poller.poll_once()
    slurm.set("10", 1, "RUNNING")
    clock.sleep(2)
    poller.poll_once()
    assert [[s.key for s in batch] for batch in heard] == [[("10", 1)]]


# -- the shared cache ------------------------------------------------------------------------
def test_two_pollers_of_one_profile_share_each_query(slurm, clock, tmp_path) -> None:
    slurm.add("10", range(4), "RUNNING")
    first = make_poller(slurm, clock, tmp_path, min_interval=4, max_interval=4)
    second = make_poller(slurm, clock, tmp_path, min_interval=4, max_interval=4)
    for poller in (first, second):
        poller.track_array("10", 4)
    run_for([first, second], clock, 40)
    assert slurm.count("squeue") == 10
    assert states(second) == states(first) == {("10", i): State.RUNNING for i in range(4)}
    assert (tmp_path / "pid" / "batch-cache-slurm.json").exists()


def test_pollers_with_different_jobs_are_served_by_one_query(slurm, clock, tmp_path) -> None:
    slurm.add("10", [None], "RUNNING")
    slurm.add("20", [None], "PENDING")
    first = make_poller(slurm, clock, tmp_path, min_interval=4, max_interval=4)
    second = make_poller(slurm, clock, tmp_path, min_interval=4, max_interval=4)
    first.track("10")
    second.track("20")
    run_for([first, second], clock, 40)
    # the first interval needs one query each; from then on one query covers both
    assert slurm.count("squeue") == 11
    assert all("--jobs=10,20" in call or "--jobs=20,10" in call for call in slurm.calls[1:])
    assert second.record("20").state is State.PENDING
    assert first.record("10").state is State.RUNNING


def test_a_fresh_cache_serves_a_new_poller_and_a_backoff_is_shared(slurm, clock, tmp_path) -> None:
    slurm.add("10", [None], "RUNNING")
    first = make_poller(slurm, clock, tmp_path)
    first.track("10")
    first.poll_once()
    late = make_poller(slurm, clock, tmp_path)
    late.track("10")
    assert late.record("10").state is State.RUNNING  # taken from the cache at once
    late.poll_once()
    assert slurm.count("squeue") == 1

    slurm.fail["squeue"] = CommandResult(1, "", CONTROLLER_DOWN)
    clock.sleep(2)
    first.poll_once()
    late.poll_once(), late.poll_once()
    assert slurm.count("squeue") == 2  # the other poller waits out the backoff
    assert "Unable to contact" in late.health()["last_error"]
    late.poll_once(force=True)
    assert slurm.count("squeue") == 3


HELPER = textwrap.dedent('''
    import fcntl, json, sys, time
    from pathlib import Path
    from ipphpc.launch.commands import CommandResult
    from ipphpc.launch.poller import Poller

    profile, calls, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    def runner(argv, input=None, timeout=None, cwd=None):
        with open(calls, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(argv) + "\\n")
        time.sleep(0.2)  # a slow scheduler: the other process must wait, not query too
        return CommandResult(0, "10|0|11|RUNNING|None|node1\\n10|1|12|PENDING|Priority|\\n", "")

    poller = Poller("slurm", profile, runner=runner, min_interval=600, max_interval=600)
    poller.track_array("10", 2)
    while not go.exists():
        time.sleep(0.01)
    for _ in range(5):
        poller.poll_once()
    print(json.dumps({str(r.array_index): r.state.value for r in poller.records()}))
''')


def test_two_processes_share_one_query(tmp_path) -> None:
    script = tmp_path / "poll.py"
    script.write_text(HELPER)
    calls, go = tmp_path / "calls.log", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "profile"), str(calls), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert json.loads(out) == {"0": "RUNNING", "1": "PENDING"}
    assert len(calls.read_text().splitlines()) == 1


# -- waiting -----------------------------------------------------------------------------------
def test_wait_until_polls_until_the_elements_finish(slurm) -> None:
    slurm.add("10", [0, 1], "RUNNING")
    real = FakeSlurm.__call__

    def scripted(argv, input=None, timeout=None, cwd=None):
        if slurm.count("squeue") == 3:
            slurm.finish("10", 0, "COMPLETED", "0:0")
            slurm.finish("10", 1, "FAILED", "2:0")
        return real(slurm, argv, input, timeout, cwd)

    poller = Poller("slurm", runner=scripted, min_interval=0.01, max_interval=0.05)
    poller.track_array("10", 2)
    assert poller.wait_until(lambda recs: all(r.finished for r in recs), timeout=30)
    assert slurm.count("squeue") >= 4
    assert [r.state for r in poller.records()] == [State.COMPLETED, State.FAILED]


def test_the_runner_is_used_and_counted(clock) -> None:
    seen = []

    def runner(argv, input=None, timeout=None, cwd=None):
        seen.append(argv[0])
        return CommandResult(0, "10|N/A|10|RUNNING|None|n1\n", "")

    poller = Poller("slurm", runner=runner, clock=clock)
    poller.track("10")
    poller.poll_once()
    assert seen == ["squeue"]
    assert poller.record("10").state is State.RUNNING
    assert poller.counter.count("squeue") == 1


# -- running commands ------------------------------------------------------------------------
def test_run_command_returns_rc_stdout_stderr_and_counts(tmp_path) -> None:
    counter = CommandCounter(log_path=tmp_path / "calls.log")
    before = COUNTER.total
    rc, out, err = run_command(["sh", "-c", "cat; echo err >&2; exit 3"], input="in\n", counter=counter)
    assert (rc, out, err) == (3, "in\n", "err\n")
    with pytest.raises(SchedulerCommandError) as info:
        run_command(["sh", "-c", "echo boom >&2; exit 4"], check=True, counter=counter)
    assert "exit code 4" in str(info.value) and "boom" in str(info.value)
    assert info.value.rc == 4 and info.value.kind == "failed"
    assert counter.count("sh") == 2 and counter.errors == 2
    assert COUNTER.total == before  # a counter without parent keeps its calls to itself
    logged = [json.loads(line) for line in (tmp_path / "calls.log").read_text().splitlines()]
    assert [entry["rc"] for entry in logged] == [3, 4]


def test_missing_scheduler_command_says_what_to_check(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SchedulerCommandError) as info:
        run_command(["sbatch", "x.sh"], scheduler="slurm")
    assert str(info.value).startswith("sbatch not found on PATH: is Slurm's client installed here")
    assert info.value.kind == "missing"
    fake_qconf = tmp_path / "qconf"
    fake_qconf.write_text("#!/bin/sh\n")
    fake_qconf.chmod(0o755)
    with pytest.raises(SchedulerCommandError, match=r"or did you mean --scheduler sge\?"):
        run_command(["sbatch", "x.sh"], scheduler="slurm")


def test_timeouts_raise() -> None:
    with pytest.raises(SchedulerCommandError) as info:
        run_command(["sleep", "5"], timeout=0.2)
    assert info.value.kind == "timeout"


def test_run_command_feeds_stdin_and_counts_on_its_counter() -> None:
    counter = CommandCounter(parent=None)
    result = run_command(["sh", "-c", "cat; exit 2"], input="x", counter=counter)
    assert result == (2, "x", "")
    assert counter.total == 1


def test_a_trapped_cancel_is_cancelled_but_the_same_code_alone_is_a_failure(slurm, clock) -> None:
    slurm.add("10", [0, 1], "RUNNING")
    slurm.add("20", [None], "RUNNING")
    poller = make_poller(slurm, clock)
    poller.track_array("10", 2)
    poller.track("20")
    poller.poll_once()
    poller.mark_cancelled(["10"])
    for key in (("10", 0), ("10", 1), ("20", None)):
        slurm.finish(*key, "FAILED", "143:0")
    poller.poll_once()
    assert states(poller) == {("10", 0): State.CANCELLED, ("10", 1): State.CANCELLED, ("20", None): State.FAILED}
    assert poller.record("10", 0).exit_code == 143
