"""Held jobs: the launcher says which elements the scheduler holds, why and how to release them, and only
once a fresh query confirms it; an interrupted poll leaves the shared cache's lock free.

Against a fake Slurm (a function standing in for sbatch, squeue and scancel), so the timing is the test's.
"""
from __future__ import annotations

import fcntl
import re
from pathlib import Path

import pytest

from ipphpc.batch.states import State
from ipphpc.cluster.cluster import JobsHeld
from ipphpc.launch.batch import BatchLauncher, index_ranges
from ipphpc.launch.commands import CommandResult
from ipphpc.launch.poller import Poller


class HoldingSlurm:
    """sbatch submits an array whose elements are PENDING with a reason; squeue lists them; scancel ends them."""

    def __init__(self) -> None:
        self.reasons: dict[int, str] = {}
        self.calls: list[list[str]] = []
        self.interrupt = False

    def __call__(self, argv, input=None, timeout=None, cwd=None) -> CommandResult:
        self.calls.append(list(argv))
        if self.interrupt:
            raise KeyboardInterrupt  # Ctrl-C while the command runs
        if argv[0] == "sbatch":
            n = int(re.search(r"^#SBATCH --array=0-(\d+)$", Path(argv[-1]).read_text(), re.MULTILINE).group(1)) + 1
            self.reasons = {i: "JobHeldUser" for i in range(n)}
            return CommandResult(0, "77\n", "")
        if argv[0] == "scancel":
            self.reasons = {}
            return CommandResult(0, "", "")
        if argv[0] == "squeue":
            return CommandResult(0, "".join(f"77|{i}|{78 + i}|PENDING|{r}|\n" for i, r in self.reasons.items()), "")
        return CommandResult(0, "", "")  # sacct: nothing

    def squeues(self) -> int:
        return sum(c[0] == "squeue" for c in self.calls)


def held_launcher(fake: HoldingSlurm, profile: Path, n: int = 4) -> BatchLauncher:
    poller = Poller("slurm", profile, runner=fake, min_interval=0.01, max_interval=0.05)
    launcher = BatchLauncher("engines", n, scheduler="slurm", profile_dir=str(profile), cluster_id="c1", poller=poller)
    launcher.start(["python", "-m", "ipphpc", "engine"], profile / "log" / "ipengine-c1.out")
    return launcher


def test_held_elements_are_reported_after_the_grace_with_reason_and_release_command(tmp_path) -> None:
    """Within the grace nothing is reported; past it, the elements held (a fresh squeue confirms them) are
    named as ranges with the scheduler's reason and `scontrol release` for their job, grouped by reason."""
    fake = HoldingSlurm()
    launcher = held_launcher(fake, tmp_path)
    launcher.poller.poll_once(force=True)
    assert {s.state for s in launcher.states()} == {State.HELD}
    assert launcher.held(grace=3600) == []
    fake.reasons[3] = "JobHeldAdmin"
    before = fake.squeues()
    held = launcher.held(grace=0)
    assert fake.squeues() == before + 1  # confirmed by a query of its own, not the cached word
    assert sorted(s.array_index for s in held) == [0, 1, 2, 3]
    report = launcher.held_report(held)
    assert re.fullmatch(r'engines job 77 elements 0-2 HELD for \d+ s \(Slurm says "JobHeldUser"\); '
                        r'`scontrol release 77` releases it; '
                        r'engines job 77 element 3 HELD for \d+ s \(Slurm says "JobHeldAdmin"\); '
                        r'`scontrol release 77` releases it', report), report


def test_a_release_seen_by_the_confirming_query_reports_nothing(tmp_path) -> None:
    """The cached word says HELD, but the job was released since: the forced query finds it PENDING for
    resources and nobody gives up."""
    fake = HoldingSlurm()
    launcher = held_launcher(fake, tmp_path, n=2)
    launcher.poller.poll_once(force=True)
    fake.reasons = {0: "Resources", 1: "Priority"}
    assert launcher.held(grace=0) == []
    assert {s.state for s in launcher.states()} == {State.PENDING}


def test_jobs_held_says_whether_the_jobs_were_left_or_cancelled() -> None:
    """One line either way: left queued (release, or `ipphpc stop ID`), or stopped and cancelled."""
    left = str(JobsHeld("c7", "engines job 5 element 0 HELD for 20 s"))
    assert left == ("cluster c7: engines job 5 element 0 HELD for 20 s; its jobs are left queued: release them to "
                    "go on, or `ipphpc stop c7` cancels them")
    stopped = str(JobsHeld("c7", "engines job 5 element 0 HELD for 20 s", stopped=True))
    assert "stopped the cluster and cancelled its jobs" in stopped and "\n" not in stopped


def test_index_ranges() -> None:
    assert index_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert index_ranges([3]) == "3"


def test_an_interrupted_poll_releases_the_shared_cache_lock(tmp_path) -> None:
    """Ctrl-C while squeue runs: the poll's lock on the profile's cache is released at once, so the stop
    that follows in the same process does not wait for itself."""
    fake = HoldingSlurm()
    launcher = held_launcher(fake, tmp_path, n=1)
    fake.interrupt = True
    with pytest.raises(KeyboardInterrupt) as info:
        launcher.poller.poll_once(force=True)
    lock = tmp_path / "pid" / "batch-cache-slurm.lock"
    with open(lock, "a+") as handle:  # still inside the handler: the traceback holds the poll's frames
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if it were held
    assert info.type is KeyboardInterrupt
