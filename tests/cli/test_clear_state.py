"""Clear state: nothing of a cluster outlives `ipphpc stop`, Ctrl-C or held jobs.

* `ipphpc stop ID` of a cluster whose controller was killed with SIGKILL (so it never cleaned up) removes its
  pid file, connection files and cluster file, for a local controller, one started by hand and a Slurm job;
* Ctrl-C during `ipphpc submit --wait` stops the cluster it started, asks nothing, and says so in one line;
* `ipphpc submit --wait` gives up on jobs Slurm holds after --held-grace, in one line with the reason.

Every wait is bounded; Slurm tests run when slurm is declared in IPPHPC_CI_SERVICES.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from ipphpc import paths

from ..core.helpers import PY, alive, procs_matching, wait_until
from ..schedulers.sched_facts import Slurm, check_service

#: an engine that never registers: local engines that "take long"
NEVER_REGISTERS = "--HPCCluster.engine_cmd=['bash', '-c', 'exec sleep 300', 'engine']"


def ipphpc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ipphpc", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def cluster_files(pdir: Path, cid: str) -> list[Path]:
    """The files a cluster leaves in its profile while it exists."""
    candidates = [paths.cluster_file(pdir, cid), paths.connection_file(pdir, "client", cid),
                  paths.connection_file(pdir, "engine", cid), paths.pid_file(pdir, "ipcontroller", cid)]
    return [p for p in candidates if p.exists()]


def kill_controller(pdir: Path, cid: str) -> int:
    """SIGKILL the controller of cluster `cid` (its pid file names it); returns its pid once it is gone."""
    pid = int(paths.pid_file(pdir, "ipcontroller", cid).read_text())
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, what=f"controller pid {pid} to die")
    return pid


def assert_gone(pdir: Path, cid: str) -> None:
    assert cluster_files(pdir, cid) == []
    assert ipphpc("list").stdout.strip().startswith("no clusters")


def submit_in_background(out: Path, *args: str) -> subprocess.Popen:
    """`ipphpc submit ARGS` in a session of its own (as a terminal's foreground job), output to files."""
    with open(out / "stdout", "w") as stdout, open(out / "stderr", "w") as stderr:
        return subprocess.Popen([PY, "-m", "ipphpc", "submit", *args], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, start_new_session=True)


def started(out: Path, cid: str) -> bool:
    """`submit` said it started the cluster: from now on it waits."""
    return f"cluster {cid}: controller pid" in (out / "stderr").read_text()


def ctrl_c(proc: subprocess.Popen, out: Path, timeout: float = 120) -> tuple[int, str]:
    """Ctrl-C as a terminal sends it (SIGINT to the foreground process group); exit status and stderr."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, (out / "stderr").read_text()


# -- a controller killed with SIGKILL -----------------------------------------------------------
def test_stop_after_the_controller_was_killed_removes_its_files(ipphpc_dir) -> None:
    """A local cluster whose controller died by SIGKILL left its pid and connection files: `ipphpc stop ID`
    stops the orphaned engine and removes every file of the cluster, so `list` no longer shows it."""
    pdir = paths.profile_dir()
    r = ipphpc("submit", "-n", "1", "--cluster-id", "k9")
    assert r.returncode == 0, r.stderr
    try:
        kill_controller(pdir, "k9")
        assert len(cluster_files(pdir, "k9")) == 4  # what it could not clean up
        assert "stopped" in ipphpc("list").stdout
    finally:
        r = ipphpc("stop", "k9")
    assert r.returncode == 0 and r.stdout.strip() == "cluster k9: stopped", r.stdout + r.stderr
    assert_gone(pdir, "k9")
    wait_until(lambda: not procs_matching(str(pdir)), 10, what="the orphaned engine to end")


def test_stop_after_a_controller_started_by_hand_was_killed(ipphpc_dir, tmp_path) -> None:
    """`ipphpc controller --cluster-id hand` wrote its own cluster file; killed with SIGKILL, `ipphpc stop hand`
    removes that file, its pid file and its connection files."""
    pdir = paths.profile_dir()
    with open(tmp_path / "controller.out", "w") as out:
        proc = subprocess.Popen([PY, "-m", "ipphpc", "controller", "--cluster-id", "hand"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(cluster_files(pdir, "hand")) == 4, 30, what="the controller's files")
        kill_controller(pdir, "hand")
        proc.wait(10)
        r = ipphpc("stop", "hand")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert r.returncode == 0 and r.stdout.strip() == "cluster hand: stopped", r.stdout + r.stderr
    assert_gone(pdir, "hand")


def test_a_cleanly_stopped_controller_keeps_its_reused_connection_files(ipphpc_dir, tmp_path) -> None:
    """Only a controller that died without cleaning up (its pid file left) loses its files to `stop`: one
    stopped cleanly with --reuse keeps its connection files, for the next controller to reuse."""
    pdir = paths.profile_dir()
    with open(tmp_path / "controller.out", "w") as out:
        proc = subprocess.Popen([PY, "-m", "ipphpc", "controller", "--cluster-id", "keep", "--reuse"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(cluster_files(pdir, "keep")) == 4, 30, what="the controller's files")
        r = ipphpc("stop", "keep")
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert r.returncode == 0, r.stderr
    left = cluster_files(pdir, "keep")
    assert left == [paths.connection_file(pdir, "client", "keep"), paths.connection_file(pdir, "engine", "keep")]


# -- Ctrl-C during `submit --wait` ----------------------------------------------------------------
def test_ctrl_c_while_waiting_for_local_engines_stops_the_cluster(ipphpc_dir, tmp_path) -> None:
    """Ctrl-C while `submit` waits for local engines that take long: it asks nothing, stops the controller and
    the engines, removes the cluster's files and exits 130 with one line saying so."""
    pdir = paths.profile_dir()
    proc = submit_in_background(tmp_path, "-n", "1", "--cluster-id", "sigint", "--timeout", "120", NEVER_REGISTERS)
    try:
        def waiting() -> dict | None:
            """The cluster file, once the controller wrote its files and the engine runs (submit then waits)."""
            if not (started(tmp_path, "sigint") and paths.connection_file(pdir, "client", "sigint").exists()):
                return None
            record = json.loads(paths.cluster_file(pdir, "sigint").read_text())
            return record if record["engine_sets"] and alive(record["engine_sets"][0]["pid"]) else None
        record = wait_until(waiting, 30, what="the controller's files and the engine process")
        controller, engines = record["controller"]["pid"], record["engine_sets"][0]["pid"]
        code, err = ctrl_c(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err
    assert err.splitlines()[-1] == "ipphpc submit: interrupted; stopped cluster sigint", err
    assert "Traceback" not in err
    assert not alive(controller) and not alive(engines) and procs_matching(str(pdir)) == []
    assert_gone(pdir, "sigint")


# -- Slurm ----------------------------------------------------------------------------------------
@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Slurm's facts for a test in its own IPPHPC_DIR; afterwards none of its jobs queued, no process left."""
    check_service("slurm")
    facts = Slurm(tmp_path.resolve())
    facts.setup(monkeypatch)
    yield facts
    facts.nothing_left()


HOLD = "--BatchEngineSetLauncher.submit_args=['--hold']"


def submitted_job(stderr: str) -> str:
    (job,) = re.findall(r"^submitted slurm job\(s\) (\S+)$", stderr, re.MULTILINE)
    return job


@pytest.mark.slurm
def test_submit_wait_gives_up_on_held_engines_with_slurms_reason(slurm: Slurm) -> None:
    """`submit --wait` of engines Slurm holds fails after --held-grace (not at --timeout, which would say
    "registered after 60 s") with one line: the job, its elements, HELD, Slurm's reason, `scontrol release`,
    and that it stopped the cluster; the job leaves the queue and no file of the cluster is left."""
    pdir = paths.profile_dir()
    r = ipphpc("submit", "--scheduler", "slurm", "-n", "2", "--walltime", "0:10:00", "--wait", "--timeout", "60",
               "--held-grace", "1", "--cluster-id", "held", HOLD, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    job = submitted_job(r.stderr)
    last = r.stderr.splitlines()[-1]
    assert re.fullmatch(rf'ipphpc submit: cluster held: engines job {job} elements 0-1 HELD for \d+ s '
                        rf'\(Slurm says "JobHeldUser"\); `scontrol release {job}` releases it; stopped the cluster '
                        rf'and cancelled its jobs \(.*\)', last), r.stderr
    assert "Traceback" not in r.stderr
    assert not slurm.queued(job)
    assert_gone(pdir, "held")


@pytest.mark.slurm
def test_ctrl_c_while_waiting_for_held_engines_cancels_them(slurm: Slurm) -> None:
    """Ctrl-C while `submit --wait` waits for engines Slurm holds (well within --held-grace): the job is
    cancelled and gone from squeue, the controller ended, the files removed, and one line says so."""
    pdir = paths.profile_dir()
    proc = submit_in_background(slurm.root, "--scheduler", "slurm", "-n", "2", "--walltime", "0:10:00", "--wait",
                                "--held-grace", "600", "--cluster-id", "sigint", HOLD)
    try:
        def held_job() -> str | None:
            if not started(slurm.root, "sigint"):
                return None
            try:
                job = submitted_job((slurm.root / "stderr").read_text())
            except ValueError:
                return None
            return job if set(slurm.queued(job).values()) == {slurm.held_in_queue} else None
        job = wait_until(held_job, 60, what="the held engines job in squeue")
        controller = json.loads(paths.cluster_file(pdir, "sigint").read_text())["controller"]["pid"]
        code, err = ctrl_c(proc, slurm.root)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err
    assert err.splitlines()[-1] == f"ipphpc submit: interrupted; stopped cluster sigint and cancelled its job(s) {job}"
    assert "Traceback" not in err
    assert not slurm.queued(job) and not alive(controller)
    assert_gone(pdir, "sigint")


@pytest.mark.slurm
def test_stop_after_a_batch_controller_was_killed(slurm: Slurm) -> None:
    """The controller as a Slurm job, killed with SIGKILL inside it: `ipphpc stop ID` cancels the engines job,
    and removes the pid, connection and cluster files the controller left."""
    pdir = paths.profile_dir()
    r = ipphpc("submit", "--scheduler", "slurm", "--controller", "batch", "-n", "1", "--walltime", "0:10:00",
               "--cluster-id", "k9")
    assert r.returncode == 0, r.stderr
    record = json.loads(paths.cluster_file(pdir, "k9").read_text())
    jobs = [s["job_id"] for launcher in [record["controller"], *record["engine_sets"]] for s in launcher["submissions"]]
    try:
        wait_until(lambda: len(cluster_files(pdir, "k9")) == 4, 60, what="the controller job to write its files")
        kill_controller(pdir, "k9")
    finally:
        r = ipphpc("stop", "k9")
    assert r.returncode == 0 and r.stdout.strip() == "cluster k9: stopped", r.stdout + r.stderr
    assert [j for j in jobs if slurm.queued(j)] == []
    assert_gone(pdir, "k9")


def test_ctrl_c_when_the_cluster_cannot_be_stopped_says_how(ipphpc_dir, monkeypatch, capsys) -> None:
    """When stopping after Ctrl-C fails, or leaves something running, one line says so and names `ipphpc stop ID`."""
    from ipphpc import HPCCluster
    from ipphpc.cli import commands

    def refuse() -> None:
        raise RuntimeError("scancel: Unable to contact slurm controller")

    cluster = HPCCluster(n=1, cluster_id="stuck", shutdown_atexit=False)
    monkeypatch.setattr(cluster, "stop_cluster_sync", refuse)
    assert commands._interrupted(cluster) == 130
    assert capsys.readouterr().err == ("ipphpc submit: interrupted; stopping cluster stuck failed (scancel: Unable to "
                                       "contact slurm controller); `ipphpc stop stuck` stops it\n")

    class Unkillable:
        role, pid, running = "controller", 4242, True

    monkeypatch.setattr(cluster, "stop_cluster_sync", lambda: None)
    cluster.controller_launcher = Unkillable()
    assert commands._interrupted(cluster) == 130
    assert capsys.readouterr().err == ("ipphpc submit: interrupted; cluster stuck is not stopped yet (controller pid "
                                       "4242 still running); `ipphpc stop stuck` stops it\n")
