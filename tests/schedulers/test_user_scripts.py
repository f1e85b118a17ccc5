"""Users' own batch scripts (examples/batch/) join a running cluster.

Each test submits an example script as it is, with the real scheduler (sbatch, SGE's qsub,
condor_submit) or the emulator (PBS qsub, bsub), before any controller exists: the engines
start and wait for the connection file. Then a controller starts, the engines register with
the job id and array index their scheduler gave them and run tasks, and `rc.shutdown(hub=True)`
(or `ipphpc stop ID`) ends them, so the scheduler records every element as finished with
status 0.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from ipphpc import Client, paths

from ..services import require
from .emulator_support import Emulator, emulator_fixture, procs_matching, wait_until
from .htcondor_support import JOB_UID, SHARED_DIR, ensure_project_in_chroot

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "batch"
N = 3  # engines each test asks for on the command line


def run(argv: list[str], cwd: Path | None = None, input: str | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{argv} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def job_env(monkeypatch) -> Callable[..., dict[str, str]]:
    """Point this process (and what it submits) at a private IPPHPC_DIR and this Python's `ipphpc`."""
    def setup(home: Path, profile: str | None = "userjobs", cluster_id: str | None = None) -> dict[str, str]:
        monkeypatch.setenv("IPPHPC_DIR", str(home))
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        for name, value in (("IPPHPC_PROFILE", profile), ("IPPHPC_CLUSTER_ID", cluster_id)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        return {"profile": profile or "default", "cluster_id": cluster_id or "run7"}
    return setup


def new_cluster_id(scheduler: str) -> str:
    return f"user-{scheduler}-{uuid.uuid4().hex[:8]}"


# -- controllers, as the README starts them -----------------------------------------------------
class ForegroundController:
    """`ipphpc controller --ip='*' --cluster-id=...` in the foreground, in a process group of its own."""

    def __init__(self, profile: str, cluster_id: str, log: Path) -> None:
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        # a named profile must exist before a controller uses it
        subprocess.run([sys.executable, "-m", "ipphpc", "profile", "create", profile], check=True,
                       stdout=self.log, stderr=subprocess.STDOUT, timeout=60)
        self.proc = subprocess.Popen([sys.executable, "-m", "ipphpc", "controller", "--ip=*",
                                      f"--profile={profile}", f"--cluster-id={cluster_id}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        client_file = paths.connection_file(paths.profile_dir(profile), "client", cluster_id)
        try:
            wait_until(lambda: client_file.exists() or self.proc.poll() is not None, 60,
                       what="the controller's connection file")
            assert self.proc.poll() is None, f"the controller exited with {self.proc.returncode}: {log.read_text()}"
        except BaseException:
            self.close()
            raise

    def gone(self) -> bool:
        return self.proc.poll() is not None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(15)
        self.log.close()


class SubmittedController:
    """`ipphpc submit -n 0 --ip='*'`: a detached controller alone; `ipphpc stop` ends it."""

    def __init__(self, profile: str, cluster_id: str, prefix: list[str] | None = None, cwd: Path | None = None):
        self.prefix = prefix or [sys.executable, "-m", "ipphpc"]
        self.cwd = cwd
        self.profile, self.cluster_id = profile, cluster_id
        try:
            out = run([*self.prefix, "submit", "-n", "0", "--ip=*", f"--profile={profile}",
                       f"--cluster-id={cluster_id}"], cwd=cwd, timeout=120)
            assert out.stdout.strip().splitlines()[-1] == cluster_id, out
            self.pid = int(re.search(r"controller pid (\d+)", out.stderr).group(1))
        except BaseException:
            self.close()
            raise

    def gone(self) -> bool:
        return not pid_alive(self.pid)

    def close(self) -> subprocess.CompletedProcess:
        """`ipphpc stop ID`: the controller stops every engine registered with it, then itself."""
        return run([*self.prefix, "stop", self.cluster_id, f"--profile={self.profile}"], cwd=self.cwd,
                   check=False, timeout=120)


# -- what every test checks ---------------------------------------------------------------------
def join_run_and_stop(sched: "Scheduler", job: str, controller_factory: Callable[[], object],
                      names: dict[str, str], work: Path, n: int = N, stop_with_cli: bool = False) -> None:
    """Engines already waiting in `job` (submitted from `work`) join the controller, run tasks
    there and end with status 0.

    They are stopped with `rc.shutdown(hub=True)`, or with `ipphpc stop ID` when `stop_with_cli`.
    """
    wait_until(lambda: sched.running(job) == n, 180, what=f"{n} running elements of {sched.name} job {job}")
    controller = controller_factory()
    try:
        with Client(profile=names["profile"], cluster_id=names["cluster_id"], timeout=30) as rc:
            rc.wait_for_engines(n, timeout=120)
            # no --walltime in the script: each engine asks its scheduler when its job ends, and says so once
            # the answer comes (after it registered)
            wait_until(lambda: all("ends" in i for i in rc.engines.values()), 60,
                       what="every engine reporting when its job ends")
            engines = rc.engines
            assert len(engines) == n, engines
            assert {i["scheduler"] for i in engines.values()} == {sched.origin}
            assert sorted(i["array_index"] for i in engines.values()) == sched.indices(n)
            for info in engines.values():
                assert info["job_id"] == sched.engine_job_id(job, info["array_index"]), info
                assert 3600 - 400 < info.get("ends", 0) - time.time() <= 3600 + 5, info
            # functions sent by reference only: under HTCondor the engines run another Python
            # (the pool's chroot), which cannot load this interpreter's code objects
            assert rc.load_balanced_view().map_sync(pow, range(30), [2] * 30) == [x * x for x in range(30)]
            pids = rc[:].apply_sync(os.getpid)
            assert pids == [engines[eid]["pid"] for eid in rc.ids]
            assert rc[:].apply_sync(os.getcwd) == [str(work)] * n  # where the job was submitted
            if sched.index_var:  # each engine's index is the one in its job's environment
                assert rc[:].apply_sync(os.getenv, sched.index_var) == [str(engines[eid]["array_index"])
                                                                       for eid in rc.ids]
            if not stop_with_cli:
                rc.shutdown(hub=True)
        if stop_with_cli:
            stopped = controller.close()
            assert f"cluster {names['cluster_id']}: stopped" in stopped.stdout, stopped
        wait_until(lambda: all(not pid_alive(p) for p in pids), 60, what="the engines to exit")
        wait_until(controller.gone, 30, what="the controller to exit")
        wait_until(lambda: not sched.active(job), 120, what=f"{sched.name} job {job} to leave the queue")
        codes = wait_until(lambda: (c := sched.exit_codes(job)) and len(c) == n and c, 120,
                           what=f"the accounting of {sched.name} job {job}")
        assert codes == {i: 0 for i in sched.indices(n)}, codes
    finally:
        controller.close()
    if names["cluster_id"] != "run7":  # a unique id: no process may still name it
        assert procs_matching(names["cluster_id"]) == []


class Scheduler:
    """How one scheduler submits, shows and accounts for an array of user-written engine jobs."""

    name = ""
    origin = ""  # what engines report as their scheduler
    first_index = 0
    index_var = ""  # the array index in the job's environment, if the scheduler sets one

    def indices(self, n: int) -> list[int]:
        return list(range(self.first_index, self.first_index + n))

    def engine_job_id(self, job: str, index: int) -> str:
        return job


# -- Slurm ----------------------------------------------------------------------------------------
class Slurm(Scheduler):
    name = origin = "slurm"
    index_var = "SLURM_ARRAY_TASK_ID"

    def submit(self, work: Path) -> str:
        out = run(["sbatch", "--parsable", f"--array=0-{N - 1}", str(EXAMPLES / "slurm.sbatch")], cwd=work)
        return out.stdout.strip().split(";")[0]

    def running(self, job: str) -> int:
        out = run(["squeue", "-h", "-r", "-j", job, "-o", "%T"], check=False)
        return out.stdout.split().count("RUNNING")

    def active(self, job: str) -> bool:
        out = run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], check=False)
        return bool(out.stdout.strip())

    def exit_codes(self, job: str) -> dict[int, int] | None:
        out = run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State,ExitCode"], check=False)
        codes = {}
        for line in out.stdout.splitlines():
            jobid, state, code = line.split("|")
            if state in ("PENDING", "RUNNING", "COMPLETING") or not re.fullmatch(r"\d+_\d+", jobid):
                return None  # still running, or slurmdbd has not split the array into its tasks yet
            codes[int(jobid.split("_")[1])] = int(code.split(":")[0]) if state == "COMPLETED" else f"{state} {code}"
        return codes

    def cancel(self, job: str) -> None:
        run(["scancel", job], check=False)


@pytest.mark.slurm
@require("slurm", "run `bash .ci/services/slurm.sh` first")
def test_the_slurm_example_joins_a_foreground_controller(tmp_path, job_env) -> None:
    names = job_env(tmp_path / "home", cluster_id=new_cluster_id("slurm"))
    slurm = Slurm()
    job = slurm.submit(tmp_path)
    try:
        join_run_and_stop(slurm, job, lambda: ForegroundController(names["profile"], names["cluster_id"],
                                                                   tmp_path / "controller.log"), names, tmp_path)
        assert sorted(p.name for p in tmp_path.glob("ipphpc-engines-*.out")) == \
            [f"ipphpc-engines-{job}_{i}.out" for i in range(N)]
    finally:
        slurm.cancel(job)


# -- SGE ------------------------------------------------------------------------------------------
SGE_QSUB = "/usr/bin/qsub"  # not the PBS emulator's qsub


class SGE(Scheduler):
    name = origin = "sge"
    first_index = 1
    index_var = "SGE_TASK_ID"

    def submit(self, work: Path) -> str:
        out = run([SGE_QSUB, "-terse", "-t", f"1-{N}", str(EXAMPLES / "sge.qsub")], cwd=work)
        return out.stdout.strip().split(".")[0]

    def _rows(self, job: str) -> list[list[str]]:
        out = run(["/usr/bin/qstat", "-u", "*"], check=False)
        return [r for r in (line.split() for line in out.stdout.splitlines()[2:]) if r and r[0] == job]

    def running(self, job: str) -> int:
        return sum(1 for r in self._rows(job) if r[4] == "r")

    def active(self, job: str) -> bool:
        return bool(self._rows(job))

    def exit_codes(self, job: str) -> dict[int, int] | None:
        out = run(["/usr/bin/qacct", "-j", job], check=False)
        records: list[dict[str, str]] = []
        for line in out.stdout.splitlines():
            if line.startswith("===="):
                records.append({})
            elif records and len(line.split(None, 1)) == 2:
                key, value = line.split(None, 1)
                records[-1][key] = value.strip()
        codes = {}
        for r in records:
            if "taskid" in r:
                codes[int(r["taskid"])] = int(r["exit_status"]) if r["failed"] == "0" else f"failed {r['failed']}"
        return codes

    def cancel(self, job: str) -> None:
        run(["/usr/bin/qdel", job], check=False)


@pytest.mark.sge
@require("sge", "run `bash .ci/services/sge.sh` first")
def test_the_sge_example_joins_a_submitted_controller(tmp_path, job_env) -> None:
    names = job_env(tmp_path / "home", cluster_id=new_cluster_id("sge"))
    sge = SGE()
    job = sge.submit(tmp_path)
    try:
        join_run_and_stop(sge, job, lambda: SubmittedController(names["profile"], names["cluster_id"]), names,
                          tmp_path, stop_with_cli=True)
        # -cwd: the output landed where the job was submitted
        assert sorted(p.name for p in tmp_path.glob("ipphpc-engines.o*")) == \
            [f"ipphpc-engines.o{job}.{i}" for i in range(1, N + 1)]
    finally:
        sge.cancel(job)


# -- PBS Pro, Torque and LSF through the emulators ---------------------------------------------
class Emulated(Scheduler):
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.name = emu.flavor
        self.origin = "lsf" if emu.kind == "lsf" else "pbs"
        self.first_index = 1 if emu.kind == "lsf" else 0
        self.index_var = {"lsf": "LSB_JOBINDEX", "pbspro": "PBS_ARRAY_INDEX", "torque": "PBS_ARRAYID"}[emu.flavor]

    def submit(self, work: Path, n: int | None = N) -> str:
        if self.emu.kind == "lsf":
            argv = ["bsub"] + ([] if n is None else ["-J", f"ipphpc-engines[1-{n}]"])
            out = self.emu.run(*argv, input=(EXAMPLES / "lsf.bsub").read_text(), cwd=work)
            assert out.returncode == 0, out.stderr
            return re.search(r"Job <(\d+)>", out.stdout).group(1)
        flag = "-J" if self.emu.flavor == "pbspro" else "-t"
        out = self.emu.run("qsub", flag, f"0-{n - 1}", str(EXAMPLES / "pbs.qsub"), cwd=work)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def _seq(self, job: str) -> int:
        return int(job.split("[")[0].split(".")[0])

    def engine_job_id(self, job: str, index: int) -> str:
        return self.emu.expected_job_id(self._seq(job), index)

    def running(self, job: str) -> int:
        return sum(1 for e in self.emu.jobs().get(self._seq(job), {}).get("elements", {}).values()
                   if e.get("status") == "running")

    def active(self, job: str) -> bool:
        return bool(self.emu.unfinished())

    def exit_codes(self, job: str) -> dict[int, int] | None:
        codes = {i: c for (seq, i), c in self.emu.exit_codes().items() if seq == self._seq(job)}
        return None if any(c is None for c in codes.values()) else codes


@pytest.fixture
def emulator(request, tmp_path, monkeypatch):
    yield from emulator_fixture(request.param, tmp_path, monkeypatch)


@pytest.mark.pbs
@pytest.mark.parametrize("emulator", ["pbspro", "torque"], indirect=True)
def test_the_pbs_example_joins_through_the_emulator(emulator: Emulator, tmp_path, job_env) -> None:
    names = job_env(tmp_path / "home", cluster_id=new_cluster_id(emulator.flavor))
    pbs = Emulated(emulator)
    job = pbs.submit(tmp_path)
    assert job == f"1[].{emulator.server}"
    # PBS starts jobs in $HOME: the engines run in tmp_path thanks to the script's cd
    join_run_and_stop(pbs, job, lambda: SubmittedController(names["profile"], names["cluster_id"]), names,
                      tmp_path)
    # -j oe: one output file per subjob, delivered to the submission directory
    sep = "." if emulator.flavor == "pbspro" else "-"
    assert sorted(p.name for p in tmp_path.glob("ipphpc-engines.o*")) == [f"ipphpc-engines.o1{sep}{i}"
                                                                          for i in range(N)]


@pytest.mark.lsf
@pytest.mark.parametrize("emulator", ["lsf"], indirect=True)
def test_the_lsf_example_with_its_defaults_joins_cluster_run7(emulator: Emulator, tmp_path, job_env) -> None:
    # exactly as the README says: no variables but IPPHPC_DIR, `bsub < lsf.bsub`, cluster run7
    names = job_env(tmp_path / "home", profile=None, cluster_id=None)
    lsf = Emulated(emulator)
    job = lsf.submit(tmp_path, n=None)
    join_run_and_stop(lsf, job, lambda: ForegroundController(names["profile"], names["cluster_id"],
                                                             tmp_path / "controller.log"), names, tmp_path, n=4)
    assert sorted(p.name for p in tmp_path.glob("ipphpc-engines.*.out")) == \
        [f"ipphpc-engines.{job}.{i}.out" for i in range(1, 5)]


# -- HTCondor -------------------------------------------------------------------------------------
class HTCondor(Scheduler):
    name = origin = "htcondor"

    def submit(self, work: Path) -> str:
        out = run(["condor_submit", "-terse", f"engines={N}", "htcondor.sub"], cwd=work)
        return out.stdout.strip().split(".")[0]

    def _status(self, job: str) -> list[str]:
        out = run(["condor_q", job, "-af:j", "JobStatus"], check=False)
        return [line.split()[1] for line in out.stdout.splitlines() if line.strip()]

    def running(self, job: str) -> int:
        return self._status(job).count("2")

    def active(self, job: str) -> bool:
        return bool(self._status(job))

    def exit_codes(self, job: str) -> dict[int, int] | None:
        out = run(["condor_history", job, "-af:j", "JobStatus", "ExitCode"], check=False)
        codes = {}
        for line in out.stdout.splitlines():
            jobid, status, code = line.split()
            codes[int(jobid.split(".")[1])] = int(code) if status == "4" else f"JobStatus {status}"
        return codes

    def cancel(self, job: str) -> None:
        run(["condor_rm", job], check=False)


@pytest.mark.htcondor
@require("htcondor", "run `bash .ci/services/htcondor.sh` first")
def test_the_htcondor_example_joins_a_controller_on_the_shared_filesystem(job_env) -> None:
    ensure_project_in_chroot()
    run_in_chroot = os.environ.get("IPPHPC_HTCONDOR_RUN", "/var/lib/ipphpc-ci/htcondor/bin/condor-chroot-run")
    cluster_id = new_cluster_id("htcondor")
    base = SHARED_DIR / cluster_id
    work = base / "work"
    work.mkdir(parents=True)
    # the submit directory on the shared filesystem holds the two files, copied as they are
    for name in ("htcondor.sub", "htcondor-engine.sh"):
        shutil.copy2(EXAMPLES / name, work / name)
    for path in (base, work, *work.iterdir()):
        os.chown(path, JOB_UID, JOB_UID)
    names = job_env(base / "home", cluster_id=cluster_id)
    condor = HTCondor()
    job = condor.submit(work)
    try:
        # the controller runs as the same user as the jobs (the pool's test user, in the chroot),
        # so its 0600 connection files are readable by the engines
        join_run_and_stop(condor, job, lambda: SubmittedController(names["profile"], cluster_id,
                                                                   prefix=[run_in_chroot, "ipphpc"], cwd=work),
                          names, work)
        assert sorted(p.name for p in work.glob("ipphpc-engines.*.out")) == \
            [f"ipphpc-engines.{job}.{i}.out" for i in range(N)]
    finally:
        condor.cancel(job)
        shutil.rmtree(base, ignore_errors=True)
