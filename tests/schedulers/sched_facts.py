"""What the behavioural suite (test_every_scheduler.py) knows about each scheduler.

One `Sched` per scheduler: the name ipphpc knows it by, how it numbers array elements, how a job
is held, deferred, released and cancelled, the native words it uses for those states, what its own
commands (squeue/sacct, qstat/qacct, condor_q/condor_history, and qstat/bjobs of the emulators)
say about a job, and what it cannot do. Tests are written once against these facts.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ..core.helpers import procs_matching
from ..services import declared
from .emulator_support import Emulator, group_alive
from .htcondor_support import CHROOT, ENGINE_CMD, JOB_PYTHON, JOB_UID, SHARED_DIR, ensure_project_in_chroot
from .scheduler_support import process_environment, tracked_job_ids, wait_until

#: a native state and the detail the scheduler gives with it (Slurm's reason, else "")
Native = tuple[str, str]


def query(argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode in ok, f"{argv}: exit {r.returncode}: {r.stderr}"
    return r.stdout


def number(job_id: str) -> str:
    """The job number of an id ipphpc prints: 12, 12[].server, 12.server -> 12."""
    return job_id.split("[")[0].split(".")[0]


class Sched:
    """The facts of one scheduler, bound to one test's directory."""

    name = ""  # the parameter id: slurm, sge, htcondor, pbspro, torque, lsf
    scheduler = ""  # what --scheduler / HPCCluster(scheduler=) take
    origin = ""  # what engines report as their scheduler
    submitted_as = ""  # "submitted <this> job(s) ..." on stderr
    submit_cmd = ""
    base = 0  # the first array index
    single_index: int | None = None  # the index the scheduler gives a job that is no array
    index_var = ""  # the array index in an element's environment
    #: launcher options that submit a job held, and a deferred (not yet eligible) one
    hold: dict[str, list[str]] = {}
    release_cmd = ""  # how a user releases a held job, as ipphpc tells them
    defer: dict[str, list[str]] | None = None
    #: (native state, detail) the scheduler's own queue shows for a held element
    held_in_queue: Native = ("", "")
    held_native = ""
    deferred_native = ""
    deferred_reason: str | None = None
    running_natives: tuple[str, ...] = ()  # what its queue shows for a running element
    status_natives: tuple[str, ...] = ()  # what `ipphpc status` shows for it, when not the same words
    #: final native states the scheduler remembers (None: it forgets jobs that left)
    cancelled_native: str | None = None
    failed_native: str | None = None
    timeout_native: str | None = None
    #: what the accounting says of a completed and a failed element
    accounted_ok = ""
    accounted_failed = ""
    accounted_timeout: str | None = None
    walltime = "00:00:05"
    walltime_within = 90.0
    timeout_notice = ""  # the scheduler's own words in the output of a job it killed at its walltime
    cannot: dict[str, str] = {}  # behaviour -> why this scheduler cannot show it

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: list[str] = []  # job ids a test submitted outside ipphpc's pollers

    # -- a test's directory and options ---------------------------------------------------------
    def setup(self, monkeypatch: pytest.MonkeyPatch) -> Path:
        """Make this scheduler usable by the test: IPPHPC_DIR and the current directory; the workdir."""
        monkeypatch.setenv("IPPHPC_DIR", str(self.root / "ipphpc"))
        monkeypatch.chdir(self.root)
        return self.root

    def profile(self, path: Path, cluster_id: str = "") -> Path:
        """A profile directory jobs can write into."""
        return path

    def cluster_options(self, batch_controller: bool = False) -> dict[str, Any]:
        return {}

    def cli_options(self) -> list[str]:
        return []

    @property
    def python(self) -> str:
        """The Python an element runs."""
        return sys.executable

    def engine_cmd(self) -> list[str]:
        return [self.python, "-m", "ipphpc", "engine"]

    def stopped_cleanly(self, state: str, code: int | str | None) -> bool:
        """Whether the accounting of an element whose engines were stopped says it ended well."""
        return code == 0

    def element_output(self, text: str) -> list[str]:
        """The lines an element's output file holds of its own (some schedulers add a report)."""
        return text.splitlines()

    def held_reason_ok(self, reason: str) -> bool:
        """Whether the reason the poller gives for a held element is the scheduler's word for a hold."""
        return True

    def skip_unless(self, behaviour: str) -> None:
        if behaviour in self.cannot:
            pytest.skip(f"{self.name}: {self.cannot[behaviour]}")

    # -- the script ------------------------------------------------------------------------------
    def script_lines(self, n: int, walltime: str) -> list[str]:
        """Lines the engines script of n elements with this (normalized) walltime holds."""
        raise NotImplementedError

    def submit_line(self, script: str) -> str:
        raise NotImplementedError

    def engine_job_id(self, job: str, index: int) -> str:
        """The job id an engine of element `index` reports."""
        return job

    # -- the scheduler's own view ----------------------------------------------------------------
    def where(self, pid: int) -> tuple[str, int | None]:
        """(job number, array index) of the job that runs `pid`, as the scheduler set it up."""
        raise NotImplementedError

    def queued(self, job: str) -> dict[int | None, Native]:
        """Elements of `job` the scheduler has not finished with: index -> (native state, detail)."""
        raise NotImplementedError

    def running(self, job: str, n: int) -> bool:
        """True when the queue shows `n` elements of `job`, all running."""
        queue = self.queued(job)
        return len(queue) == n and all(s in self.running_natives for s, _ in queue.values())

    def final(self, job: str) -> dict[int | None, str] | None:
        """Native end state of each element of a job that left the queue (None: not remembered)."""
        return None

    def accounting(self, job: str) -> dict[int | None, tuple[str, int | None]]:
        """index -> (state, exit code) from the accounting; empty until it has the job."""
        raise NotImplementedError

    def release(self, job: str) -> None:
        raise NotImplementedError

    def cancel(self, *jobs: str) -> None:
        raise NotImplementedError

    def submissions(self) -> int | None:
        """How many submissions the scheduler saw (None: it does not say)."""
        return None

    # -- waits -----------------------------------------------------------------------------------
    def left_queue(self, *jobs: str, timeout: float = 60) -> None:
        for job in jobs:
            wait_until(lambda j=job: not self.queued(j), timeout, f"{self.name} job {job} to leave the queue")

    def final_states(self, *jobs: str, timeout: float = 60) -> set[str] | None:
        """Once the jobs left the queue: the set of their elements' native end states."""
        self.left_queue(*jobs, timeout=timeout)
        states: set[str] = set()
        for job in jobs:
            found = self.final(job)
            if found is None:
                return None
            assert found, f"{self.name} remembers nothing of job {job}"
            states |= set(found.values())
        return states

    def accounted(self, job: str, indices: list[int | None], states: set[str] | None = None,
                  timeout: float = 60) -> dict[int | None, tuple[str, int | None]]:
        """Wait until the accounting has every element of `indices` (ended in one of `states`)."""
        def done():
            rows = self.accounting(job)
            if all(i in rows and (states is None or rows[i][0] in states) for i in indices):
                return rows
            return None
        return wait_until(done, timeout, f"the accounting of {self.name} job {job} to show {indices}", interval=1)

    # -- cleanup ----------------------------------------------------------------------------------
    def our_jobs(self) -> list[str]:
        jobs = list(self.jobs)
        for cache in self.root.glob(f"**/pid/batch-cache-{self.scheduler}.json"):
            jobs += tracked_job_ids(cache.parent.parent, self.scheduler)
        return sorted(set(jobs))

    def nothing_left(self) -> None:
        """After a test: none of its jobs queued, none of its processes alive (both removed if so)."""
        left = [j for j in self.our_jobs() if self.queued(j)]
        if left:  # a cancelled job may take a moment to leave
            deadline = time.monotonic() + 15
            while left and time.monotonic() < deadline:
                time.sleep(0.5)
                left = [j for j in left if self.queued(j)]
            if left:
                self.cancel(*left)
        deadline = time.monotonic() + 15  # a cancelled job's processes get SIGTERM, then SIGKILL
        while procs_matching(str(self.root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        procs = procs_matching(str(self.root))
        for pid, _ in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.close()
        assert not left, f"{self.name} jobs left in the queue (now cancelled): {left}"
        assert not procs, f"processes left running (now killed): {procs}"

    def close(self) -> None:
        pass


def _index(text: str) -> int | None:
    return int(text) if text.isdigit() else None


# -- Slurm ----------------------------------------------------------------------------------------
class Slurm(Sched):
    name = scheduler = origin = submitted_as = "slurm"
    submit_cmd = "sbatch"
    index_var = "SLURM_ARRAY_TASK_ID"
    hold = {"submit_args": ["--hold"]}
    release_cmd = "scontrol release"
    defer = {"submit_args": ["--begin=now+1hour"]}
    held_in_queue = ("PENDING", "JobHeldUser")
    held_native = deferred_native = "PENDING"
    deferred_reason = "BeginTime"
    running_natives = ("RUNNING",)
    cancelled_native, failed_native, timeout_native = "CANCELLED", "FAILED", "TIMEOUT"
    accounted_ok, accounted_failed, accounted_timeout = "COMPLETED", "FAILED", "TIMEOUT"
    # Slurm limits are whole minutes, checked every 30 s: a 1-minute job ends 60-90 s after it starts
    walltime = "0:01:00"
    walltime_within = 150.0
    ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
             "OUT_OF_MEMORY"}

    def held_reason_ok(self, reason: str) -> bool:
        return reason == "JobHeldUser"

    def script_lines(self, n: int, walltime: str) -> list[str]:
        return [f"#SBATCH --array=0-{n - 1}", f"#SBATCH --time={walltime}"]

    def submit_line(self, script: str) -> str:
        return f"sbatch --parsable {script}"

    def where(self, pid: int) -> tuple[str, int | None]:
        env = process_environment(pid)
        return env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"], _index(env.get("SLURM_ARRAY_TASK_ID", ""))

    def squeue(self, job: str) -> dict[int | None, tuple[str, str, str]]:
        """index -> (state, reason, raw id) of every element, finished ones included."""
        r = subprocess.run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={job}",
                            "--format=%F|%K|%A|%T|%r"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 or "Invalid job id" in r.stderr, r.stderr
        rows = {}
        for line in r.stdout.splitlines():
            array, index, raw, state, reason = line.strip().split("|")
            if array == job:
                rows[_index(index)] = (state, reason, raw)
        return rows

    def queued(self, job: str) -> dict[int | None, Native]:
        return {i: (s, reason) for i, (s, reason, _) in self.squeue(job).items() if s not in self.ENDED}

    def final(self, job: str) -> dict[int | None, str] | None:
        return {i: s for i, (s, _, _) in self.squeue(job).items()}

    def sacct(self, job: str) -> dict[int | None, tuple[str, str, str]]:
        """index -> (state, exit code as n:m, raw id) from the accounting (it lags slurmctld)."""
        out = query(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job}",
                     "--format=JobID,JobIDRaw,State,ExitCode"])
        rows = {}
        for line in out.splitlines():
            jobid, raw, state, code = line.split("|")
            array, _, index = jobid.partition("_")
            if array == job and "[" not in index:  # 12_[0-3]: elements not started yet
                rows[_index(index)] = (state.split()[0], code, raw)
        return rows

    def accounting(self, job: str) -> dict[int | None, tuple[str, int | None]]:
        # exit code n:m, m the signal that ended it: the code alone when no signal did
        return {i: (state, int(code.split(":")[0]) if code.endswith(":0") else code)
                for i, (state, code, _) in self.sacct(job).items()}

    def stopped_cleanly(self, state: str, code: int | str | None) -> bool:
        return state in ("COMPLETED", "CANCELLED")

    def release(self, job: str) -> None:
        query(["scontrol", "release", job])

    def cancel(self, *jobs: str) -> None:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)

    def our_jobs(self) -> list[str]:
        # also what no poller followed: every queued job whose batch script lies in this test's directory
        out = query(["squeue", "--noheader", "--format=%F|%o"])
        mine = {line.split("|", 1)[0] for line in out.splitlines() if str(self.root) in line}
        return sorted(mine | set(super().our_jobs()))

    def check_engines(self, rc: Any, job: str, n: int) -> None:
        """Each engine runs in the element squeue lists for it, under that element's own job id, and
        the accounting names the same ids once the array has ended (checked by `check_accounted`)."""
        queue = self.squeue(job)
        assert sorted(queue) == list(range(n)) and {s for s, _, _ in queue.values()} == {"RUNNING"}, queue
        self.raw_ids = {}
        for info in rc.engines.values():
            raw = process_environment(info["pid"])["SLURM_JOB_ID"]
            assert queue[info["array_index"]][2] == raw, (info, queue)
            self.raw_ids[info["array_index"]] = raw
        assert len(set(self.raw_ids.values())) == n

    def check_accounted(self, job: str, rows: dict) -> None:
        acct = self.sacct(job)
        assert {i: acct[i][2] for i in self.raw_ids} == self.raw_ids, acct


# -- SGE ------------------------------------------------------------------------------------------
class SGE(Sched):
    name = scheduler = origin = submitted_as = "sge"
    submit_cmd = "qsub"
    base = 1
    index_var = "SGE_TASK_ID"
    hold = {"submit_args": ["-h"]}
    release_cmd = "qrls"
    held_in_queue = ("hqw", "")
    held_native, deferred_native = "hqw", "qw"
    running_natives = ("r", "t")  # t: being transferred to the host, while the job already runs there
    accounted_ok = accounted_failed = "0"  # qacct's `failed`: 0 when the job script ran to its end

    @property
    def defer(self) -> dict[str, list[str]]:  # type: ignore[override]
        later = (datetime.datetime.now() + datetime.timedelta(hours=1)).strftime("%Y%m%d%H%M")
        return {"submit_args": ["-a", later]}

    def held_reason_ok(self, reason: str) -> bool:
        return reason == "on hold"

    def script_lines(self, n: int, walltime: str) -> list[str]:
        return [f"#$ -t 1-{n}", f"#$ -l h_rt={walltime}"]

    def submit_line(self, script: str) -> str:
        return f"qsub -terse {script}"

    def where(self, pid: int) -> tuple[str, int | None]:
        env = process_environment(pid)
        return env["JOB_ID"], _index(env.get("SGE_TASK_ID", ""))

    def queued(self, job: str) -> dict[int | None, Native]:
        out = query(["/usr/bin/qstat", "-xml", "-u", "*", "-g", "d"])
        rows: dict[int | None, Native] = {}
        for jl in ET.fromstring(out).iter("job_list"):
            if (jl.findtext("JB_job_number") or "").strip() != job:
                continue
            state = (jl.findtext("state") or "").strip()
            tasks = (jl.findtext("tasks") or "").strip()
            if tasks.isdigit():
                rows[int(tasks)] = (state, "")
            elif tasks:  # a range of tasks still waiting: 1-3:1
                lo, hi = re.match(r"(\d+)(?:-(\d+))?", tasks).groups()
                for i in range(int(lo), int(hi or lo) + 1):
                    rows[i] = (state, "")
            else:
                rows[None] = (state, "")
        return rows

    def accounting(self, job: str) -> dict[int | None, tuple[str, int | None]]:
        out = subprocess.run(["/usr/bin/qacct", "-j", job], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            return {}
        tasks: dict[int | None, tuple[str, int | None]] = {}
        for block in out.stdout.split("=" * 20)[1:]:
            fields = dict(line.split(None, 1) for line in block.strip().splitlines() if len(line.split(None, 1)) == 2)
            if fields.get("jobnumber", "").strip() == job:
                index = _index(fields["taskid"].strip())
                tasks[index] = (fields["failed"].split()[0], int(fields["exit_status"].split()[0]))
        return tasks

    def release(self, job: str) -> None:
        query(["/usr/bin/qrls", job])

    def cancel(self, *jobs: str) -> None:
        subprocess.run(["/usr/bin/qdel", *jobs], capture_output=True, timeout=60)


# -- HTCondor -------------------------------------------------------------------------------------
RUNNER = os.environ.get("IPPHPC_HTCONDOR_RUN", "/var/lib/ipphpc-ci/htcondor/bin/condor-chroot-run")


class HTCondor(Sched):
    """Jobs run in the pool's chroot as its job user, with the chroot's Python; so does the controller,
    through the pool's runner, and the profile lives on the shared file system, the job user's."""

    name = scheduler = origin = submitted_as = "htcondor"
    submit_cmd = "condor_submit"
    hold = {"extra_directives": ["hold = true"]}
    release_cmd = "condor_release"
    # no slot has 100 TB of memory: the job stays Idle
    defer = {"extra_directives": ["requirements = (TARGET.Memory > 100000000)"]}
    held_in_queue = ("5", "")
    held_native, deferred_native = "Held", "Idle"
    running_natives = ("2",)
    status_natives = ("Running",)
    cancelled_native = timeout_native = "3"  # Removed (by condor_rm, or by periodic_remove at the walltime)
    failed_native = "4"  # Completed, with the exit code the job had
    single_index = 0  # every job is a process of an HTCondor cluster
    index_var = "IPPHPC_CONDOR_PROCESS"  # HTCondor sets none: the template passes $(Process)
    accounted_ok = accounted_failed = "4"  # Completed, whatever the exit code
    controller_cmd = [RUNNER, JOB_PYTHON, "-m", "ipphpc", "controller"]

    def setup(self, monkeypatch: pytest.MonkeyPatch) -> Path:
        ensure_project_in_chroot()
        SHARED_DIR.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="ipphpc-test-", dir=SHARED_DIR))
        os.chown(self.root, JOB_UID, JOB_UID)
        # condor_submit works from the shared file system only; the jobs' profile is the job user's
        self.profile(self.root / "ipphpc" / "profile_default")
        return super().setup(monkeypatch)

    def profile(self, path: Path, cluster_id: str = "") -> Path:
        for d in (path.parent, path, path / "security", path / "log", path / "pid", path / "log" / cluster_id):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, JOB_UID, JOB_UID)
        return path

    @property
    def python(self) -> str:
        return JOB_PYTHON

    def cluster_options(self, batch_controller: bool = False) -> dict[str, Any]:
        # a controller job runs in the chroot already; one on the submit host goes through the runner
        return {"engine_cmd": ENGINE_CMD,
                "controller_cmd": self.controller_cmd[1:] if batch_controller else self.controller_cmd}

    def cli_options(self) -> list[str]:
        return [f"--HPCCluster.engine_cmd={ENGINE_CMD!r}", f"--HPCCluster.controller_cmd={self.controller_cmd!r}"]

    def held_reason_ok(self, reason: str) -> bool:
        return "hold" in reason.lower()

    def script_lines(self, n: int, walltime: str) -> list[str]:
        h, m, s = (int(x) for x in walltime.split(":"))
        return [f"queue {n}", f"+IpphpcWalltime = {h * 3600 + m * 60 + s}"]

    def submit_line(self, script: str) -> str:
        return f"condor_submit -terse {script}"

    def where(self, pid: int) -> tuple[str, int | None]:
        path = process_environment(pid)["_CONDOR_JOB_AD"]  # a path inside the chroot
        ad = {}
        for line in (CHROOT / path.lstrip("/")).read_text().splitlines():
            key, _, value = line.partition(" = ")
            ad[key] = value.strip()
        return ad["ClusterId"], int(ad["ProcId"])

    def _af(self, command: str, job: str, *attrs: str) -> dict[int, list[str]]:
        out = query([command, job, "-af:j", *attrs])
        rows = {}
        for line in out.splitlines():
            if line.strip():
                jobid, *values = line.split()
                rows[int(jobid.split(".")[1])] = values
        return rows

    def queued(self, job: str) -> dict[int | None, Native]:
        return {i: (v[0], "") for i, v in self._af("condor_q", job, "JobStatus").items()}

    def final(self, job: str) -> dict[int | None, str] | None:
        return {i: v[0] for i, v in self._af("condor_history", job, "JobStatus").items()}

    def accounting(self, job: str) -> dict[int | None, tuple[str, int | None]]:
        rows = self._af("condor_history", job, "JobStatus", "ExitCode")
        return {i: (v[0], int(v[1]) if v[1].lstrip("-").isdigit() else None) for i, v in rows.items()}

    def release(self, job: str) -> None:
        query(["condor_release", job])

    def cancel(self, *jobs: str) -> None:
        subprocess.run(["condor_rm", *jobs], capture_output=True, timeout=60)

    def check_engines(self, rc: Any, job: str, n: int) -> None:
        """The engines run as the pool's job user, with the chroot's Python and venv."""
        dv = rc[:]
        for info in rc.engines.values():
            assert os.stat(f"/proc/{info['pid']}").st_uid == JOB_UID
        version = query([RUNNER, JOB_PYTHON, "-c", "import platform; print(platform.python_version())"]).strip()
        import platform
        assert dv.apply_sync(platform.python_version) == [version] * n
        dv.execute("import sys; where = sys.prefix", block=True)
        assert dv.pull("where", block=True) == ["/opt/ipphpc-venv"] * n

    def check_controller(self, pid: int) -> None:
        assert os.stat(f"/proc/{pid}").st_uid == JOB_UID  # the controller runs as the job user

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# -- PBS Pro, Torque and LSF through the emulators ------------------------------------------------
class Emulated(Sched):
    """A scheduler of tests/emulators, with a state directory of its own for the test."""

    flavor = ""
    running_natives = ("R",)
    walltime = "00:00:02"
    cannot = {"defer": "the emulator has no begin time (qsub -a / bsub -b), so a job waits only when held"}

    def setup(self, monkeypatch: pytest.MonkeyPatch) -> Path:
        self.emu = Emulator(self.flavor, self.root, monkeypatch)
        return super().setup(monkeypatch)

    def submissions(self) -> int | None:
        return self.emu.submissions()

    def where(self, pid: int) -> tuple[str, int | None]:
        elements = self.emu.elements()
        pgid = os.getpgid(pid)
        assert pgid in elements, f"pid {pid} (process group {pgid}) is in no element the emulator started"
        seq, index, _ = elements[pgid]
        return str(seq), index

    def engine_job_id(self, job: str, index: int) -> str:
        return self.emu.expected_job_id(int(number(job)), index)

    def accounting(self, job: str) -> dict[int | None, tuple[str, int | None]]:
        record = self.emu.jobs().get(int(number(job)), {})
        key = "exit_code" if self.emu.kind == "lsf" else "exit_status"
        return {_index(str(e.get("index"))): (e["status"], e.get(key)) for e in record.get("elements", {}).values()
                if e.get("status") not in ("queued", "held", "running")}

    def nothing_left(self) -> None:
        try:
            wait_until(lambda: not self.emu.unfinished(), 30, "the scheduler to forget the jobs")
            for pgid in self.emu.elements():  # the kill's last signal may take a moment
                wait_until(lambda g=pgid: not group_alive(g), 15, f"element process group {pgid} to end")
            super().nothing_left()
        finally:
            self.emu.cleanup()


class PBSPro(Emulated):
    name = flavor = submitted_as = "pbspro"
    scheduler = "pbs"
    origin = "pbs"
    submit_cmd = "qsub"
    index_var = "PBS_ARRAY_INDEX"
    hold = {"submit_args": ["-h"]}
    release_cmd = "qrls"
    held_in_queue = ("H", "")
    held_native = "H"
    accounted_ok = accounted_failed = "done"
    timeout_notice = "=>> PBS: job killed: walltime"

    def script_lines(self, n: int, walltime: str) -> list[str]:
        return [f"#PBS -J 0-{n - 1}", f"#PBS -l walltime={walltime}"]

    def submit_line(self, script: str) -> str:
        return f"qsub {script}"

    def queued(self, job: str) -> dict[int | None, Native]:
        out = self.emu.run("qstat", "-t")
        rows: dict[int | None, Native] = {}
        for line in out.stdout.splitlines()[2:]:
            fields = line.split()
            if len(fields) < 5 or number(fields[0]) != number(job) or fields[-2] in ("C", "F", "X"):
                continue
            m = re.search(r"\[(\d+)\]", fields[0])
            if m or "[]" not in fields[0]:  # the array's own row stands for no element
                rows[int(m.group(1)) if m else None] = (fields[-2], "")
        return rows

    def release(self, job: str) -> None:
        out = self.emu.run("qrls", job)
        assert out.returncode == 0, out.stderr

    def cancel(self, *jobs: str) -> None:
        self.emu.run("qdel", *jobs)


class Torque(PBSPro):
    name = flavor = submitted_as = scheduler = "torque"
    index_var = "PBS_ARRAYID"

    def script_lines(self, n: int, walltime: str) -> list[str]:
        return [f"#PBS -t 0-{n - 1}", f"#PBS -l walltime={walltime}"]


class LSF(Emulated):
    name = flavor = scheduler = origin = submitted_as = "lsf"
    submit_cmd = "bsub"
    base = 1
    index_var = "LSB_JOBINDEX"
    hold = {"submit_args": ["-H"]}
    release_cmd = "bresume"
    held_in_queue = ("PSUSP", "")
    held_native = "PSUSP"
    running_natives = ("RUN",)
    accounted_ok = accounted_failed = "done"
    walltime = "0:01:00"  # the emulator's minute lasts one second here

    def setup(self, monkeypatch: pytest.MonkeyPatch) -> Path:
        root = super().setup(monkeypatch)
        monkeypatch.setenv("IPPHPC_EMU_LSF_SECONDS_PER_MINUTE", "1")
        monkeypatch.setenv("IPPHPC_EMU_LSF_RUNLIMIT_GRACE", "1")
        return root

    def element_output(self, text: str) -> list[str]:
        # the job report LSF writes first, then the job's own output
        return text.split("The output (if any) follows:\n\n", 1)[1].splitlines()

    def script_lines(self, n: int, walltime: str) -> list[str]:
        h, m, _ = walltime.split(":")
        return [f'#BSUB -J "ipphpc-engines[1-{n}]"', f"#BSUB -W {int(h)}:{m}"]

    def submit_line(self, script: str) -> str:
        return f"bsub < {script}"

    def queued(self, job: str) -> dict[int | None, Native]:
        out = self.emu.run("bjobs", "-w", "-noheader", number(job))
        rows: dict[int | None, Native] = {}
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) < 7 or fields[0] != number(job) or fields[2] in ("DONE", "EXIT"):
                continue
            m = re.search(r"\[(\d+)\]", line)
            rows[int(m.group(1)) if m else None] = (fields[2], "")
        return rows

    def release(self, job: str) -> None:
        out = self.emu.run("bresume", number(job))
        assert out.returncode == 0, out.stderr

    def cancel(self, *jobs: str) -> None:
        self.emu.run("bkill", *(number(j) for j in jobs))


# -- the parameter --------------------------------------------------------------------------------
SCHEDULERS: dict[str, type[Sched]] = {s.name: s for s in (Slurm, SGE, HTCondor, PBSPro, Torque, LSF)}
#: the service each real scheduler needs, how to bring it up, and a command that works when it is up
SERVICES = {"slurm": ("bash .ci/services/slurm.sh", ["sinfo", "--noheader"]),
            "sge": ("bash .ci/services/sge.sh", ["/usr/bin/qstat", "-u", "*"]),
            "htcondor": ("bash .ci/services/htcondor.sh", ["condor_status", "-total"])}
MARKS = {"slurm": "slurm", "sge": "sge", "htcondor": "htcondor", "pbspro": "pbs", "torque": "pbs", "lsf": "lsf"}
_healthy: dict[str, str] = {}


def check_service(name: str) -> None:
    """Skip when the scheduler's service is not declared; fail when it is declared but does not answer."""
    if name not in SERVICES:
        return
    how, probe = SERVICES[name]
    if not declared(name):
        pytest.skip(f"{name} not declared in IPPHPC_CI_SERVICES; run `{how}` first")
    if name not in _healthy:
        r = subprocess.run(probe, capture_output=True, text=True, timeout=60, cwd=str(SHARED_DIR)
                           if name == "htcondor" and SHARED_DIR.exists() else None)
        _healthy[name] = "" if r.returncode == 0 else f"{probe} exited {r.returncode}: {r.stderr.strip()}"
    if _healthy[name]:
        pytest.fail(f"{name} is declared in IPPHPC_CI_SERVICES but does not work: {_healthy[name]}")
