"""ipphpc on a real HTCondor pool (condor_submit/condor_q/condor_history/condor_rm).

The pool runs its jobs inside a chroot, as the unprivileged user ipptest (uid 1500), with
the chroot's Python (/opt/ipphpc-venv, where this source tree is installed first). As on
any cluster, everything of the ipphpc cluster runs as that one user: the engines (HTCondor
jobs) and the controller too, which is started through the pool's chroot runner with the
same Python (`controller_cmd`). The profile lives on the "shared file system"
(/tmp/ipphpc-shared) and belongs to that user, so the controller's 0600 connection files are
the job user's own and stay private. The test process (root) is the submit host and the
client: root reads the user's connection files, and its submit and query commands go
through the pool's shims.

Engines run Python 3.13, the client may not: tasks are functions sent by reference
(`os.getpid`, `pow`, ...) or code strings, never code objects pickled by value.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State
from ipphpc.launch.batch import BatchLauncher, scheduler_launcher
from ipphpc.launch.poller import Poller

from ..batch.test_launcher import _e2e
from ..services import require
from .htcondor_support import CHROOT, ENGINE_CMD, JOB_PYTHON, JOB_UID, SHARED_DIR, ensure_project_in_chroot
from .scheduler_support import (
    parse_table,
    process_environment,
    run_ipphpc,
    running_status,
    stop_if_running,
    tracked_job_ids,
    wait_until,
)

pytestmark = [pytest.mark.htcondor, pytest.mark.slow,
              require("htcondor", "run `bash .ci/services/htcondor.sh` first")]

RUNNER = os.environ.get("IPPHPC_HTCONDOR_RUN", "/var/lib/ipphpc-ci/htcondor/bin/condor-chroot-run")
#: the controller runs as the job user, with the pool's Python, like the engines
CONTROLLER_CMD = [RUNNER, JOB_PYTHON, "-m", "ipphpc", "controller"]


def queued(cluster: str) -> dict[str, int]:
    """`<cluster>.<proc>` -> JobStatus of the jobs condor_q still lists."""
    out = subprocess.run(["condor_q", cluster, "-af:j", "JobStatus"], capture_output=True, text=True,
                         timeout=60, check=True)
    return {job: int(status) for job, status in (line.split() for line in out.stdout.splitlines() if line.strip())}


def history(cluster: str) -> dict[str, int]:
    """`<cluster>.<proc>` -> JobStatus of the jobs condor_history knows."""
    out = subprocess.run(["condor_history", cluster, "-af:j", "JobStatus"], capture_output=True, text=True,
                         timeout=60, check=True)
    return {job: int(status) for job, status in (line.split() for line in out.stdout.splitlines() if line.strip())}


def job_ad(pid: int) -> dict[str, str]:
    """ClusterId and ProcId from the job ad HTCondor gave the job that runs `pid`."""
    path = process_environment(pid)["_CONDOR_JOB_AD"]  # a path inside the chroot
    ad = {}
    for line in (CHROOT / path.lstrip("/")).read_text().splitlines():
        key, _, value = line.partition(" = ")
        if key in ("ClusterId", "ProcId"):
            ad[key] = value.strip()
    return ad


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def job_user_profile(path: Path, cluster_id: str) -> Path:
    """A profile owned by the job user, with the log folder its jobs write into."""
    for d in (path, path / "security", path / "log", path / "pid", path / "log" / cluster_id):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, JOB_UID, JOB_UID)
    return path


@pytest.fixture(scope="session")
def project_in_chroot() -> None:
    ensure_project_in_chroot()


@pytest.fixture
def workdir(project_in_chroot, monkeypatch):
    """A private directory on the shared file system, the job user's; the current directory
    (condor_submit only works from there) and IPPHPC_DIR."""
    SHARED_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="ipphpc-test-", dir=SHARED_DIR))
    os.chown(path, JOB_UID, JOB_UID)
    monkeypatch.chdir(path)
    monkeypatch.setenv("IPPHPC_DIR", str(path / "ipphpc"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def condor_jobs():
    """Cluster ids a test submitted; whatever is still queued at the end is removed."""
    jobs: list[str] = []
    yield jobs
    left = [j for j in jobs if queued(j)]
    if left:
        subprocess.run(["condor_rm", *left], capture_output=True, timeout=60)


def test_a_cluster_runs_tasks_on_one_htcondor_cluster(workdir, condor_jobs) -> None:
    profile = job_user_profile(workdir / "profile", "condor3")
    cluster = HPCCluster(scheduler="htcondor", n=3, profile_dir=str(profile), cluster_id="condor3",
                         walltime="00:10:00", controller_cmd=CONTROLLER_CMD, engine_cmd=ENGINE_CMD,
                         engine_timeout=240, shutdown_atexit=False)
    try:
        with cluster as rc:
            (engines,) = cluster.engine_sets
            condor_jobs.extend(engines.job_ids)
            # ONE submission: "queue 3" makes the three jobs of one HTCondor cluster
            assert len(engines.submissions) == 1
            (job_id,) = engines.job_ids
            assert engines.poller.counter.count("condor_submit") == 1
            submit = Path(engines.submissions[0].script).read_text().splitlines()
            assert "queue 3" in submit and "+IpphpcWalltime = 600" in submit
            assert sorted(queued(job_id)) == [f"{job_id}.{p}" for p in range(3)]

            info = rc.engines
            assert len(info) == 3
            assert {(e["scheduler"], e["job_id"]) for e in info.values()} == {("htcondor", job_id)}
            assert sorted(e["array_index"] for e in info.values()) == [0, 1, 2]

            # DirectView: every engine answers, from inside the job HTCondor says it runs
            dv = rc[:]
            pids = dv.apply_sync(os.getpid)
            assert len(set(pids)) == 3 and os.getpid() not in pids
            for eid, pid in zip(rc.ids, pids):
                assert job_ad(pid) == {"ClusterId": job_id, "ProcId": str(info[eid]["array_index"])}
                assert os.stat(f"/proc/{pid}").st_uid == JOB_UID
            # the engines run the pool's Python, not the client's
            chroot_version = subprocess.run(
                [RUNNER, JOB_PYTHON, "-c", "import platform; print(platform.python_version())"],
                capture_output=True, text=True, timeout=60, check=True).stdout.strip()
            assert dv.apply_sync(platform.python_version) == [chroot_version] * 3
            dv.execute("import sys; where = sys.prefix", block=True)
            assert dv.pull("where", block=True) == ["/opt/ipphpc-venv"] * 3

            # load-balanced map: results in order, computed on the engines
            ar = rc.load_balanced_view().map(pow, range(40), [3] * 40)
            assert ar.get(timeout=120) == [x ** 3 for x in range(40)]
            assert set(ar.engine_id) <= set(rc.ids)

            # the poller follows at its own pace: the scheduler says RUNNING within a poll or two
            assert engines.poller.wait_until(
                lambda recs: all(r.state is State.RUNNING for r in recs), 60, engines.job_ids), engines.states()
            assert all(s.host for s in engines.states())
        # the with block stopped everything: the jobs left the queue and are in the history
        wait_until(lambda: not queued(job_id), 60, f"cluster {job_id} to leave condor_q")
        done = wait_until(lambda: len(history(job_id)) == 3 and history(job_id), 60,
                          f"condor_history to list the 3 jobs of cluster {job_id}")
        assert sorted(done) == [f"{job_id}.{p}" for p in range(3)]
        assert not cluster.controller_launcher.running
    finally:
        stop_if_running(cluster)


def test_a_failing_element_is_reported_and_the_rest_is_stopped(workdir, condor_jobs) -> None:
    # element 1 (ProcId 1) cannot start its engine; the others can
    engine_cmd = ["bash", "-c", 'if [ "$IPPHPC_ELEMENT" = 1 ]; then echo "no python on $(hostname)" >&2; exit 7; fi; '
                  'exec "$0" -m ipphpc engine "$@"', JOB_PYTHON]
    profile = job_user_profile(workdir / "profile", "bad")
    cluster = HPCCluster(scheduler="htcondor", n=3, profile_dir=str(profile), cluster_id="bad",
                         controller_cmd=CONTROLLER_CMD, engine_cmd=engine_cmd, engine_timeout=150,
                         shutdown_atexit=False)
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as info:
            with cluster:
                pass
        assert time.monotonic() - started < 120, "the failure was noticed only at the engine timeout"
        message = str(info.value)
        assert "no more will come" in message
        failed = re.search(r"job (\d+) element 1: FAILED, exit code 7", message)
        assert failed, message
        assert "no python on" in message  # from the job's .err file
        assert "element 0:" not in message and "element 2:" not in message
        job_id = failed.group(1)
        condor_jobs.append(job_id)
        # the failed start stopped the controller and the jobs that did start
        assert cluster.controller_launcher is not None and not cluster.controller_launcher.running
        wait_until(lambda: not queued(job_id), 60, f"cluster {job_id} to leave condor_q")
    finally:
        stop_if_running(cluster)


def test_running_failed_cancelled_and_timeout_states(workdir, condor_jobs) -> None:
    # a submission of 3 with a failing element and its output in the report, condor_rm, and
    # the templates' walltime (IpphpcWalltime + periodic_remove) as TIMEOUT
    job_user_profile(workdir / "profile", "e2e")
    try:
        _e2e("htcondor", workdir, walltime="00:00:05")
    finally:
        condor_jobs.extend(tracked_job_ids(workdir / "profile", "htcondor"))


def _launcher(profile: Path, n: int, **kwargs: Any) -> BatchLauncher:
    poller = Poller("htcondor", profile, min_interval=0.2, max_interval=1.0, lost_grace=30)
    return scheduler_launcher("htcondor")("engines", n, profile_dir=str(profile), cluster_id="states",
                                          poller=poller, **kwargs)


def test_held_and_idle_jobs(workdir, condor_jobs) -> None:
    profile = job_user_profile(workdir / "profile", "states")
    held = _launcher(profile, 2, extra_directives=["hold = true"])
    held.start(["bash", "-c", "echo released element $IPPHPC_ELEMENT"], profile / "log" / "ipengine-states.out")
    (held_id,) = held.job_ids
    condor_jobs.append(held_id)
    assert held.poller.wait_until(
        lambda recs: all(r.state is State.HELD and r.source == "status" for r in recs), 60), held.states()
    assert {r.native_state for r in held.states()} == {"Held"}
    assert all("hold" in r.reason.lower() for r in held.states()), held.states()
    assert held.running and held.exit_code is None
    held.poller.poll_once(force=True)
    assert {r.state for r in held.states()} == {State.HELD}  # a hold is not released by itself

    subprocess.run(["condor_release", held_id], check=True, capture_output=True, timeout=60)
    assert held.poller.wait_until(lambda recs: all(r.finished for r in recs), 120), held.states()
    assert [(r.array_index, r.state, r.exit_code) for r in held.states()] == [
        (0, State.COMPLETED, 0), (1, State.COMPLETED, 0)]
    log_dir = profile / "log" / "states"
    lines = (log_dir / f"engines-{held_id}.1.out").read_text().splitlines()
    # between the element's start and stop lines
    assert lines[1:-1] == ["released element 1"] and lines[-1].endswith("exit status 0"), lines

    # no slot has 100 TB of memory: the job stays Idle
    idle = _launcher(profile, 1, extra_directives=["requirements = (TARGET.Memory > 100000000)"])
    idle.start(["sleep", "300"], profile / "log" / "ipengine-states.out")
    (idle_id,) = idle.job_ids
    condor_jobs.append(idle_id)
    assert idle.poller.wait_until(
        lambda recs: all(r.state is State.PENDING and r.source == "status" for r in recs), 60), idle.states()
    assert [r.native_state for r in idle.states()] == ["Idle"]
    assert idle.stop(timeout=60) == []
    assert [r.state for r in idle.states()] == [State.CANCELLED]
    wait_until(lambda: not queued(idle_id), 60, f"cluster {idle_id} to leave condor_q")
    assert history(idle_id) == {f"{idle_id}.0": 3}  # Removed


def test_the_command_line_submit_status_stop(workdir, condor_jobs) -> None:
    profile = job_user_profile(workdir / "cli-profile", "cli")
    # what a user of this pool puts into the profile: the Python of the execute nodes
    (profile / "ipphpc_cluster_config.py").write_text(
        "c = get_config()  # noqa\n"
        f"c.HPCCluster.engine_cmd = {ENGINE_CMD!r}\n"
        f"c.HPCCluster.controller_cmd = {CONTROLLER_CMD!r}\n")
    common = ["--profile-dir", str(profile)]
    try:
        submitted = run_ipphpc("submit", "--scheduler", "htcondor", "-n", "2", "--wait", "--timeout", "240",
                               "--cluster-id", "cli", *common)
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "cli"
        found = re.search(r"^submitted htcondor job\(s\) (\d+)$", submitted.stderr, re.MULTILINE)
        assert found, submitted.stderr
        job_id = found.group(1)
        condor_jobs.append(job_id)
        assert sorted(queued(job_id)) == [f"{job_id}.0", f"{job_id}.1"]

        status = wait_until(running_status(*common), 60, "`ipphpc status` to show the elements RUNNING", interval=1)
        assert "cluster cli (htcondor): 2 of 2 engines registered" in status.stdout
        rows = parse_table(status.stdout)
        (controller,) = [r for r in rows if r["ROLE"] == "controller"]
        assert controller["STATE"] == "RUNNING"
        pid = int(controller["JOB"].split()[1])
        assert os.stat(f"/proc/{pid}").st_uid == JOB_UID  # the controller runs as the job user
        elements = sorted((r for r in rows if r["ROLE"] == "engines"), key=lambda r: r["INDEX"])
        assert [(r["JOB"], r["INDEX"], r["STATE"], r["NATIVE"]) for r in elements] == [
            (job_id, "0", "RUNNING", "Running"), (job_id, "1", "RUNNING", "Running")]
        assert all(r["HOST"] for r in elements)
        assert sorted(r["ENGINES"] for r in elements) == ["0", "1"]

        stopped = run_ipphpc("stop", *common)
        assert stopped.returncode == 0, stopped.stderr
        assert "cluster cli: stopped" in stopped.stdout
        wait_until(lambda: not queued(job_id), 60, f"cluster {job_id} to leave condor_q")
        wait_until(lambda: not alive(pid), 30, f"controller pid {pid} to exit")
        after = run_ipphpc("status", *common)
        assert after.returncode == 1 and "no cluster" in after.stderr
    finally:
        run_ipphpc("stop", "--all", *common, timeout=120)
