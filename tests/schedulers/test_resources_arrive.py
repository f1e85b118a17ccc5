"""The batch options reach the real schedulers of .ci/services/: what the scheduler says a job
asked for (`scontrol show job`, `qstat -j`, `condor_q -l`) is what the user gave, per engine
times the engines of an element.

Each job is held by an extra directive (given without its prefix where the scheduler has one),
read, then cancelled: nothing runs.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ipphpc.launch.commands import SchedulerCommandError

from ..services import require
from .conftest import quick_launcher, start
from .htcondor_support import JOB_UID, SHARED_DIR, ensure_project_in_chroot

needs_slurm = require("slurm", "run `bash .ci/services/slurm.sh` first")
needs_sge = require("sge", "run `bash .ci/services/sge.sh` first")
needs_htcondor = require("htcondor", "run `bash .ci/services/htcondor.sh` first")
FEATURE = "ipphpc-ci"  # the node feature .ci/services/slurm.sh configures


def query(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@contextmanager
def held_job(scheduler: str, profile: Path, **options) -> Iterator[str]:
    """Submit 4 engines, 2 per element, as a held array; yield its job id; cancel it."""
    launcher = quick_launcher(scheduler, profile, n=4, cluster_id="resources", engines_per_task=2,
                              job_name="ipphpc-res", **options)
    start(launcher, ["sleep", "60"])
    try:
        (job,) = launcher.job_ids
        yield job
    finally:
        assert launcher.stop(timeout=60) == []


@pytest.mark.slurm
@needs_slurm
def test_slurm(tmp_path: Path) -> None:
    with held_job("slurm", tmp_path / "profile", cores=2, memory="200M", walltime="2:00", constraint=FEATURE,
                  partition="batch", extra_directives=["--hold"]) as job:
        first = query("scontrol", "--oneliner", "show", "job", job).splitlines()[0]
        fields = dict(re.findall(r"(\S+?)=(\S*)", first))
    assert (fields["JobState"], fields["Reason"]) == ("PENDING", "JobHeldUser"), fields
    # 2 engines of 2 cores and 200M each per element; "2:00" is two minutes, as Slurm reads it
    assert (fields["NumCPUs"], fields["CPUs/Task"], fields["MinMemoryNode"]) == ("4", "4", "400M"), fields
    assert (fields["TimeLimit"], fields["Features"], fields["Partition"]) == ("00:02:00", FEATURE, "batch"), fields
    assert (fields["JobName"], fields["ArrayTaskId"]) == ("ipphpc-res", "0-1"), fields


@pytest.mark.slurm
@needs_slurm
def test_slurm_refuses_a_constraint_no_node_has(tmp_path: Path) -> None:
    launcher = quick_launcher("slurm", tmp_path / "profile", n=1, cluster_id="nofeature", constraint="no-such")
    with pytest.raises(SchedulerCommandError) as err:
        start(launcher, ["true"])
    assert "sbatch: error: Batch job submission failed: Invalid feature specification" in str(err.value)
    assert launcher.job_ids == []


@pytest.mark.sge
@needs_sge
def test_sge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the job starts where it was submitted (#$ -cwd)
    with held_job("sge", tmp_path / "profile", cores=2, memory="100M", walltime="2:00",
                  constraint="arch=lx-amd64", extra_directives=["-h"]) as job:
        text = query("qstat", "-j", job)
    info = {m[1].strip(): m[2].strip() for m in re.finditer(r"^([a-z_ -]+):\s+(.*)$", text, re.M)}
    # 2 engines x 2 cores = 4 slots; 2 x 100M over 4 slots is 50M each (h_vmem is per slot)
    assert info["parallel environment"] == "smp range: 4", info
    assert sorted(info["hard resource_list"].split(",")) == ["arch=lx-amd64", "h_rt=120", "h_vmem=50M"], info
    assert (info["job_name"], info["job-array tasks"]) == ("ipphpc-res", "1-2:1"), info
    assert info["scheduling info"] == "Job is in hold state", info


@pytest.fixture
def shared_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of the pool's job user on the shared file system (condor_submit works from there)."""
    ensure_project_in_chroot()
    SHARED_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="ipphpc-test-", dir=SHARED_DIR))
    os.chown(path, JOB_UID, JOB_UID)
    monkeypatch.chdir(path)
    return path


@pytest.mark.htcondor
@needs_htcondor
def test_htcondor(shared_dir: Path) -> None:
    with held_job("htcondor", shared_dir / "profile", cores=1, memory="100M", account="group_ipphpc",
                  constraint='OpSys == "LINUX"', extra_directives=["hold = true"]) as job:
        ad = dict(line.split(" = ", 1) for line in query("condor_q", f"{job}.0", "-l").splitlines() if " = " in line)
        procs = query("condor_q", job, "-af", "ProcId").split()
    assert (ad["RequestCpus"], ad["RequestMemory"], ad["JobBatchName"]) == ("2", "200", '"ipphpc-res"'), ad
    assert '(OpSys == "LINUX")' in ad["Requirements"], ad["Requirements"]
    assert (ad["AcctGroup"], ad["JobStatus"]) == ('"group_ipphpc"', "5"), ad  # 5: held
    assert sorted(procs) == ["0", "1"]
