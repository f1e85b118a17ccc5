"""ipphpc on a real Son of Grid Engine (qsub/qstat/qacct/qdel), as a user drives it.

A cluster whose engines are one `qsub -t 1-3` array runs tasks; the poller follows held,
deferred, running, failed, cancelled and timed-out jobs; `ipphpc submit/status/stop` work
from the shell. Every test removes its jobs, whatever happens.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ipphpc import HPCCluster
from ipphpc.batch.states import State
from ipphpc.launch.batch import BatchLauncher, scheduler_launcher
from ipphpc.launch.poller import Poller

from ..batch.test_launcher import _e2e
from ..services import require
from .scheduler_support import (
    parse_table,
    process_environment,
    run_ipphpc,
    running_status,
    stop_if_running,
    tracked_job_ids,
    wait_until,
)

pytestmark = [pytest.mark.sge, pytest.mark.slow, require("sge", "run `bash .ci/services/sge.sh` first")]


def queued_jobs() -> set[str]:
    """Job numbers qstat lists, for every user (running, pending, held, being deleted)."""
    out = subprocess.run(["qstat", "-xml", "-u", "*"], capture_output=True, text=True, timeout=60, check=True)
    return {(e.text or "").strip() for e in ET.fromstring(out.stdout).iter("JB_job_number")}


def accounted_tasks(job_id: str) -> dict[int, tuple[int, int]]:
    """Task id -> (failed, exit_status) from `qacct -j`; empty until accounting has the job."""
    out = subprocess.run(["qacct", "-j", job_id], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return {}
    tasks: dict[int, tuple[int, int]] = {}
    for block in out.stdout.split("=" * 20)[1:]:
        fields = dict(line.split(None, 1) for line in block.strip().splitlines() if len(line.split(None, 1)) == 2)
        if fields.get("jobnumber", "").strip() == job_id:
            tasks[int(fields["taskid"])] = (int(fields["failed"].split()[0]), int(fields["exit_status"].split()[0]))
    return tasks


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A private IPPHPC_DIR and working directory (the jobs start in it: `#$ -cwd`)."""
    monkeypatch.setenv("IPPHPC_DIR", str(tmp_path / "ipphpc"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sge_jobs():
    """Job ids a test submitted; whatever is still queued at the end is deleted."""
    jobs: list[str] = []
    yield jobs
    left = [j for j in jobs if j in queued_jobs()]
    if left:
        subprocess.run(["qdel", *left], capture_output=True, timeout=60)


def test_a_cluster_runs_tasks_on_one_sge_array(workdir, sge_jobs) -> None:
    cluster = HPCCluster(scheduler="sge", n=3, profile_dir=str(workdir / "profile"), cluster_id="sge3",
                         walltime="00:10:00", engine_timeout=240, shutdown_atexit=False)
    try:
        with cluster as rc:
            (engines,) = cluster.engine_sets
            sge_jobs.extend(engines.job_ids)
            # ONE submission: a three-task array
            assert len(engines.submissions) == 1
            (job_id,) = engines.job_ids
            assert engines.poller.counter.count("qsub") == 1
            script = Path(engines.submissions[0].script).read_text().splitlines()
            assert "#$ -t 1-3" in script and "#$ -l h_rt=00:10:00" in script
            assert job_id in queued_jobs()

            info = rc.engines
            assert len(info) == 3
            assert {(e["scheduler"], e["job_id"]) for e in info.values()} == {("sge", job_id)}
            assert sorted(e["array_index"] for e in info.values()) == [1, 2, 3]

            # DirectView: every engine answers, from inside the SGE task it says it belongs to
            pids = rc[:].apply_sync(os.getpid)
            assert len(set(pids)) == 3 and os.getpid() not in pids
            for eid, pid in zip(rc.ids, pids):
                env = process_environment(pid)
                assert (env["JOB_ID"], int(env["SGE_TASK_ID"])) == (job_id, info[eid]["array_index"])

            # load-balanced map: results in order, computed on the engines
            out = rc.load_balanced_view().map_sync(lambda x: (x * x, os.getpid()), range(40))
            assert [v for v, _ in out] == [x * x for x in range(40)]
            assert {pid for _, pid in out} <= set(pids)

            # the poller follows at its own pace: the scheduler says RUNNING within a poll or two
            assert engines.poller.wait_until(
                lambda recs: all(r.state is State.RUNNING for r in recs), 60, engines.job_ids), engines.states()
            assert all(s.host for s in engines.states())
        # the with block stopped everything: the array left the queue, three tasks in accounting
        wait_until(lambda: job_id not in queued_jobs(), 60, f"job {job_id} to leave qstat")
        tasks = wait_until(lambda: len(accounted_tasks(job_id)) == 3 and accounted_tasks(job_id), 60,
                           f"qacct to account the 3 tasks of job {job_id}")
        assert sorted(tasks) == [1, 2, 3]
        assert not cluster.controller_launcher.running
    finally:
        stop_if_running(cluster)


def test_a_failing_element_is_reported_and_the_rest_is_stopped(workdir, sge_jobs) -> None:
    # element 1 (SGE task 2) cannot start its engine; the others can
    engine_cmd = ["bash", "-c", 'if [ "$IPPHPC_ELEMENT" = 1 ]; then echo "no python on $(hostname)" >&2; exit 7; fi; '
                  'exec "$0" -m ipphpc engine "$@"', sys.executable]
    cluster = HPCCluster(scheduler="sge", n=3, profile_dir=str(workdir / "profile"), cluster_id="bad",
                         engine_cmd=engine_cmd, engine_timeout=150, shutdown_atexit=False)
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as info:
            with cluster:
                pass
        assert time.monotonic() - started < 120, "the failure was noticed only at the engine timeout"
        message = str(info.value)
        assert "no more will come" in message
        failed = re.search(r"job (\d+) element 2: FAILED, exit code 7", message)
        assert failed, message
        assert "no python on" in message
        assert "element 1:" not in message and "element 3:" not in message
        # the failed start stopped the controller and the tasks that did start
        job_id = failed.group(1)
        sge_jobs.append(job_id)
        assert cluster.controller_launcher is not None and not cluster.controller_launcher.running
        wait_until(lambda: job_id not in queued_jobs(), 60, f"job {job_id} to leave qstat")
    finally:
        stop_if_running(cluster)


def _launcher(profile: Path, n: int, **kwargs: Any) -> BatchLauncher:
    poller = Poller("sge", profile, min_interval=0.2, max_interval=1.0, lost_grace=30)
    return scheduler_launcher("sge")("engines", n, profile_dir=str(profile), cluster_id="states",
                                     poller=poller, **kwargs)


def test_running_failed_cancelled_and_timeout_states(workdir, sge_jobs) -> None:
    # submissions, a failing task with its output in the report, qdel, and h_rt
    try:
        _e2e("sge", workdir, walltime="00:00:05")
    finally:
        sge_jobs.extend(tracked_job_ids(workdir / "profile", "sge"))


def test_held_and_deferred_jobs(workdir, sge_jobs) -> None:
    profile = workdir / "profile"
    held = _launcher(profile, 2, submit_args=["-h"])
    held.start(["bash", "-c", "echo released element $IPPHPC_ELEMENT"], profile / "log" / "ipengine-states.out")
    (held_id,) = held.job_ids
    sge_jobs.append(held_id)
    assert held.poller.wait_until(
        lambda recs: all(r.state is State.HELD and r.source == "status" for r in recs), 60), held.states()
    assert {(r.native_state, r.reason) for r in held.states()} == {("hqw", "on hold")}
    assert held.running and held.exit_code is None
    held.poller.poll_once(force=True)
    assert {r.state for r in held.states()} == {State.HELD}  # a hold is not released by itself

    subprocess.run(["qrls", held_id], check=True, capture_output=True, timeout=60)
    assert held.poller.wait_until(lambda recs: all(r.finished for r in recs), 90), held.states()
    assert [(r.array_index, r.state, r.exit_code) for r in held.states()] == [
        (1, State.COMPLETED, 0), (2, State.COMPLETED, 0)]
    log_dir = profile / "log" / "states"
    lines = (log_dir / f"engines-{held_id}.2.out").read_text().splitlines()
    # between the element's start and stop lines
    assert lines[1:-1] == ["released element 1"] and lines[-1].endswith("exit status 0"), lines

    # -a: not before a time an hour from now, so it waits in the queue (qw)
    later = (datetime.datetime.now() + datetime.timedelta(hours=1)).strftime("%Y%m%d%H%M")
    deferred = _launcher(profile, 1, submit_args=["-a", later])
    deferred.start(["sleep", "300"], profile / "log" / "ipengine-states.out")
    (deferred_id,) = deferred.job_ids
    sge_jobs.append(deferred_id)
    assert deferred.poller.wait_until(
        lambda recs: all(r.state is State.PENDING and r.source == "status" for r in recs), 60), deferred.states()
    assert [r.native_state for r in deferred.states()] == ["qw"]
    assert deferred.stop(timeout=60) == []
    # deleted before it started: CANCELLED, and gone from the queue
    assert [r.state for r in deferred.states()] == [State.CANCELLED]
    wait_until(lambda: deferred_id not in queued_jobs(), 60, f"job {deferred_id} to leave qstat")


def test_the_command_line_submit_status_stop(workdir, sge_jobs) -> None:
    profile = str(workdir / "cli-profile")
    common = ["--profile-dir", profile]
    try:
        submitted = run_ipphpc("submit", "--scheduler", "sge", "-n", "2", "--wait", "--timeout", "240",
                            "--cluster-id", "cli", *common)
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "cli"
        found = re.search(r"^submitted sge job\(s\) (\d+)$", submitted.stderr, re.MULTILINE)
        assert found, submitted.stderr
        job_id = found.group(1)
        sge_jobs.append(job_id)
        assert job_id in queued_jobs()

        status = wait_until(running_status(*common), 60, "`ipphpc status` to show the elements RUNNING", interval=1)
        assert "cluster cli (sge): 2 of 2 engines registered" in status.stdout
        rows = parse_table(status.stdout)
        (controller,) = [r for r in rows if r["ROLE"] == "controller"]
        assert controller["STATE"] == "RUNNING"
        elements = sorted((r for r in rows if r["ROLE"] == "engines"), key=lambda r: r["INDEX"])
        assert [(r["JOB"], r["INDEX"], r["STATE"]) for r in elements] == [
            (job_id, "1", "RUNNING"), (job_id, "2", "RUNNING")]
        assert all(r["HOST"] for r in elements)
        # each element runs one engine, and the two are different
        assert sorted(r["ENGINES"] for r in elements) == ["0", "1"]

        stopped = run_ipphpc("stop", *common)
        assert stopped.returncode == 0, stopped.stderr
        assert "cluster cli: stopped" in stopped.stdout
        wait_until(lambda: job_id not in queued_jobs(), 60, f"job {job_id} to leave qstat")
        after = run_ipphpc("status", *common)
        assert after.returncode == 1 and "no cluster" in after.stderr
    finally:
        run_ipphpc("stop", "--all", *common, timeout=120)
