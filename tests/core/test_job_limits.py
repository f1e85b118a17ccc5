"""An engine in a user's own batch script learns when its job ends from its scheduler: the parsers against
captured output (Slurm, SGE, Torque: real; PBS Pro and LSF: their documented formats), the job shell's start
time, and the engine reporting the end it was told (a fake `squeue` on PATH answers like the real one)."""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ipphpc
from ipphpc.engine import job_limits
from ipphpc.engine.job_limits import ask_scheduler, clock, parse_htcondor, parse_lsf, parse_pbs, parse_sge, parse_slurm

SAMPLES = Path(__file__).resolve().parents[1] / "batch" / "samples"
REAL_AD = Path("/work/shared/samples/htcondor/condor_q-long-3.0.txt")


def local(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_clock():
    assert [clock(t) for t in ("420", "7:00", "01:00:00", "1-02:00:00", "0:00:05", "UNLIMITED", "-", "")] == \
        [420, 420, 3600, 93600, 5, None, None, None]


def test_slurm():
    assert parse_slurm((SAMPLES / "slurm" / "squeue-j-o-S-e.txt").read_text()) == \
        (local("2026-12-06T20:49:21"), 420.0)
    assert parse_slurm((SAMPLES / "slurm" / "squeue-j-o-S-e-unlimited.txt").read_text()) is None
    assert parse_slurm("") is None


def test_sge():
    assert parse_sge((SAMPLES / "sge" / "qstat-j-running-h_rt.txt").read_text()) == (None, 420.0)
    assert parse_sge("hard resource_list:         mem_free=1G,h_rt=01:30:00\n") == (None, 5400.0)
    assert parse_sge("hard resource_list:         mem_free=1G\n") is None


def test_pbs():
    torque = (SAMPLES / "pbs" / "qstat-torque-f-t.txt").read_text()
    assert parse_pbs(torque) == (1795590005.0, 3600.0)
    pbspro = ("Job Id: 12[3].server\n    Resource_List.ncpus = 1\n    Resource_List.walltime = 00:10:00\n"
              "    stime = Sun Dec  6 20:49:21 2026\n")
    assert parse_pbs(pbspro) == (time.mktime((2026, 12, 6, 20, 49, 21, 0, 0, -1)), 600.0)
    assert parse_pbs("Job Id: 12.server\n    Resource_List.ncpus = 1\n") is None


def test_lsf():
    assert parse_lsf("60.0\n") == (None, 3600.0)
    assert parse_lsf("600.0/hostA\n") == (None, 36000.0)
    assert parse_lsf("-\n") is None and parse_lsf("") is None


def test_htcondor():
    ad = REAL_AD.read_text() if REAL_AD.exists() else "JobCurrentStartDate = 1795587214\n"
    assert parse_htcondor(ad + "IpphpcWalltime = 3600\n") == (1795587214.0, 3600.0)
    assert parse_htcondor(ad.replace("IpphpcWalltime", "X") + "AllowedJobDuration = 600\n") == (1795587214.0, 600.0)
    assert parse_htcondor("JobCurrentStartDate = 1795587214\n") is None


def test_job_shell_start_through_a_named_daemon(tmp_path):
    daemon = tmp_path / "fake_stepd"
    daemon.write_bytes(Path("/bin/bash").read_bytes())
    daemon.chmod(0o755)
    before = time.time()
    code = f"import sys; sys.path[:0] = {sys.path!r}; from ipphpc.engine.job_limits import job_shell_start; " \
           f"print(job_shell_start('fake_stepd'))"
    # fake_stepd -> bash (the job's shell, sleeping first) -> python
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nsleep 1\n{sys.executable} -c {code!r}\n")
    script.chmod(0o755)
    out = subprocess.run([str(daemon), "-c", f"{script}; true"], capture_output=True, text=True, timeout=30)
    start = float(out.stdout.strip())
    assert before - 1 <= start <= before + 0.9, (before, start, out.stderr)  # the shell's start, not python's


def test_ask_scheduler_runs_the_query_with_the_jobs_id(tmp_path, monkeypatch):
    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/bash\necho "$@" > %s/args\necho "2026-12-06T20:49:21|2026-12-06T21:49:21"\n' % tmp_path)
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    start = local("2026-12-06T20:49:21")
    assert ask_scheduler("slurm", {"SLURM_JOB_ID": "77"}) == (start, start + 3600)
    assert (tmp_path / "args").read_text().split() == ["-h", "-j", "77", "-o", "%S|%e"]
    assert ask_scheduler("slurm", {}) is None  # not in a Slurm job after all
    # an array's last element has the array's own id, which would name every element: the element is asked
    ask_scheduler("slurm", {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"})
    assert (tmp_path / "args").read_text().split() == ["-h", "-j", "12_3", "-o", "%S|%e"]
    start, end = ask_scheduler("pbs", {"PBS_WALLTIME": "600", "PBS_JOBID": "9.server"}, now=100.0)
    assert end - start == 600  # Torque's environment says it: no query
    assert ask_scheduler("nosuch", {}) is None


def test_an_engine_in_a_users_slurm_script_reports_its_end(spawner, pdir, tmp_path):
    """No --walltime and no IPPHPC_WALLTIME (not ipphpc's script): the engine asks `squeue` for its job (here a
    script on PATH answering as Slurm does) and registers with that end and a drain time before it."""
    squeue = tmp_path / "bin" / "squeue"
    squeue.parent.mkdir()
    now = datetime.datetime.now().replace(microsecond=0)
    end = now + datetime.timedelta(hours=1)
    squeue.write_text(f'#!/bin/bash\necho "{now.isoformat()}|{end.isoformat()}"\n')
    squeue.chmod(0o755)
    spawner.controller(pdir, "limits")
    env = {**os.environ, "PATH": f"{squeue.parent}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_ARRAY_JOB_ID": "76", "SLURM_ARRAY_TASK_ID": "1"}
    env.pop("IPPHPC_WALLTIME", None)
    spawner.engine(pdir, "limits", env=env)
    with ipphpc.Client(profile_dir=str(pdir), cluster_id="limits") as rc:
        rc.wait_for_engines(1, timeout=30)
        info = _wait_for_end(rc)
        assert info["ends"] == end.timestamp()
        assert info["ends"] - 90 <= info["drain_at"] <= info["ends"] - 60  # drain_margin 60, stagger 30


def _wait_for_end(rc, timeout: float = 30.0) -> dict:
    """The one engine's info once it carries the end of its job (sent after registration)."""
    deadline = time.monotonic() + timeout
    while True:
        (info,) = rc.engines.values()
        if "ends" in info:
            return info
        assert time.monotonic() < deadline, f"no job end reported within {timeout:g} s: {info}"
        time.sleep(0.05)


def test_a_slow_scheduler_does_not_hold_up_registration(spawner, pdir, tmp_path):
    """`squeue` answers only once the test lets it, after the engine registered: the end arrives later, and
    the controller and its clients, present and later ones, get it."""
    release = tmp_path / "release"
    squeue = tmp_path / "bin" / "squeue"
    squeue.parent.mkdir()
    now = datetime.datetime.now().replace(microsecond=0)
    end = now + datetime.timedelta(hours=2)
    squeue.write_text(f'#!/bin/bash\nfor i in $(seq 300); do [ -e {release} ] && break; sleep 0.1; done\n'
                      f'echo "{now.isoformat()}|{end.isoformat()}"\n')
    squeue.chmod(0o755)
    spawner.controller(pdir, "slow")
    env = {**os.environ, "PATH": f"{squeue.parent}:{os.environ['PATH']}", "SLURM_JOB_ID": "78"}
    env.pop("IPPHPC_WALLTIME", None)
    spawner.engine(pdir, "slow", env=env)
    with ipphpc.Client(profile_dir=str(pdir), cluster_id="slow") as rc:
        rc.wait_for_engines(1, timeout=20)  # squeue has not answered yet
        (eid, info), = rc.engines.items()
        assert "ends" not in info
        assert rc[eid].apply_sync(sum, [1, 2]) == 3  # the engine works meanwhile
        release.touch()
        info = _wait_for_end(rc)
        assert info["ends"] == end.timestamp()
        assert info["ends"] - 90 <= info["drain_at"] <= info["ends"] - 60
        assert rc.controller_status()["engines"][str(eid)]["ends"] == info["ends"]
    with ipphpc.Client(profile_dir=str(pdir), cluster_id="slow") as rc2:  # a client that came later
        rc2.wait_for_engines(1, timeout=20)
        assert rc2.engines[eid]["ends"] == end.timestamp()


@pytest.mark.parametrize("answer", ["", "garbage", "N/A|N/A"])
def test_no_answer_means_no_end(answer, tmp_path, monkeypatch):
    squeue = tmp_path / "squeue"
    squeue.write_text(f'#!/bin/bash\necho "{answer}"\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert job_limits.ask_scheduler("slurm", {"SLURM_JOB_ID": "1"}, pause=0) is None
