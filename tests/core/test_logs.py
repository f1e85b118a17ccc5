"""`ipphpc logs` and the files it shows: engine logs named by cluster, job, element, host and pid,
and array element outputs that say when and where the element started and stopped."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from ipphpc import Client, paths
from ipphpc.batch.render import JobSpec, render_template

from .helpers import PY, clean_env, pgid_members, procs_matching, wait_until
from .test_cli import ipphpc

HOST = socket.gethostname()
BASH = shutil.which("bash")


def sections(out: str) -> dict[str, list[str]]:
    """`==> path <==` headers and the lines under each."""
    found: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        m = re.fullmatch(r"==> (.+) <==", line)
        if m:
            current = m.group(1)
            found[current] = []
        else:
            assert current is not None, f"text before the first header: {line!r}"
            found[current].append(line)
    return found


def test_logs_of_a_local_cluster(ipphpc_dir, tmp_path):
    pdir = paths.profile_dir()
    r = ipphpc("logs")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == (f"ipphpc logs: no clusters and no logs in profile {pdir}; "
                                f"`ipphpc submit` starts a cluster")
    r = ipphpc("submit", "-n", "2", "--cluster-id", "L")
    assert r.returncode == 0, r.stderr
    try:
        with Client(cluster_id="L") as rc:
            engines = rc.engines
        log = pdir / "log"
        expected = {eid: log / f"ipengine-L-{HOST}-{info['pid']}.log" for eid, info in engines.items()}
        assert all(p.exists() for p in expected.values()), sorted(os.listdir(log))

        r = ipphpc("logs")
        assert r.returncode == 0, r.stderr
        shown = sections(r.stdout)
        controller_logs = [p for p in shown if Path(p).name.startswith("ipcontroller-L-")]
        assert len(controller_logs) == 1 and Path(controller_logs[0]).read_text().splitlines() == \
            shown[controller_logs[0]]
        for eid, path in expected.items():
            assert f"registered as engine {eid} " in "\n".join(shown[str(path)])

        r = ipphpc("logs", "--tail", "1")
        assert r.returncode == 0, r.stderr
        for path, lines in sections(r.stdout).items():
            full = Path(path).read_text().splitlines()
            assert lines == full[-1:], path

        r = ipphpc("logs", "L", "e1")
        assert r.returncode == 0, r.stderr
        assert list(sections(r.stdout)) == [str(expected[1])]
        r = ipphpc("logs", "e7")
        assert r.returncode == 1 and r.stderr.strip() == "ipphpc logs: no engine 7 in cluster L (engines: 0, 1)"
    finally:
        assert ipphpc("stop", "L").returncode == 0
    assert procs_matching(str(pdir)) == []

    # the logs outlive the cluster file
    r = ipphpc("logs", "L", "--tail", "1")
    assert r.returncode == 0, r.stderr
    last = sections(r.stdout)[controller_logs[0]]
    assert last == Path(controller_logs[0]).read_text().splitlines()[-1:] and "controller stopped" in last[0]
    r = ipphpc("logs", "L7")
    assert r.returncode == 1
    assert r.stderr.strip() == f"ipphpc logs: no cluster 'L7' in profile {pdir} (clusters there: L)"

    # --follow prints what is appended until Ctrl-C
    out = tmp_path / "follow.out"
    with open(out, "wb") as f:
        follower = subprocess.Popen([PY, "-m", "ipphpc", "logs", "L", "--follow", "--tail", "1"], stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: out.read_text().count("==> ") == len(shown), 20, what="the first lines of each file")
        # the controller log comes first, so its header shows again when it grows
        with open(controller_logs[0], "a") as f:
            f.write("a line written later\n")
        wait_until(lambda: out.read_text().endswith(f"==> {controller_logs[0]} <==\na line written later\n"), 20,
                   what="the appended line")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(5)


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_an_array_element_logs_start_stop_and_its_engine(spawner, ipphpc_dir):
    """The engines script of a Slurm array, run as element 1 of job 77 would be: its output starts and ends
    with a line naming the element, host, time and exit status; its engine's log carries job and index;
    `ipphpc logs CLUSTER 1` shows both."""
    pdir = paths.profile_dir()
    ctl, _, _ = spawner.controller(pdir, "arr")
    spec = JobSpec(n=2, engines_per_task=1, profile_dir=str(pdir), cluster_id="arr",
                   engine_command=f"{PY} -m ipphpc engine --profile-dir {pdir} --cluster-id arr")
    script = pdir / "engines.sbatch"
    script.write_text(render_template("slurm", spec))
    out = pdir / "log" / "arr" / "engines-77_1.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        element = subprocess.Popen([BASH, str(script)], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=clean_env(SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="1"),
                                   start_new_session=True, cwd=pdir)
    try:
        def engine_log():
            found = list((pdir / "log").glob(f"ipengine-arr-77_1-{HOST}-*.log"))
            return len(found) == 1 and "registered as engine 0" in found[0].read_text() and found[0]
        log = wait_until(engine_log, 30, interval=0.1, what="the engine of element 1 to register")
        assert re.fullmatch(rf"ipengine-arr-77_1-{re.escape(HOST)}-\d+\.log", log.name)
        r = ipphpc("stop", "arr")
        assert r.returncode == 0, r.stderr
        assert element.wait(20) == 0
    finally:
        for pid in pgid_members(element.pid):
            os.kill(pid, signal.SIGKILL)
        element.wait(5)
    lines = out.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}"
    assert re.fullmatch(rf"ipphpc: element 1 of job 77 started on {re.escape(HOST)} at {stamp}", lines[0]), lines
    assert re.fullmatch(rf"ipphpc: element 1 of job 77 stopped on {re.escape(HOST)} at {stamp}, exit status 0",
                        lines[-1]), lines
    r = ipphpc("logs", "arr", "1")
    assert r.returncode == 0, r.stderr
    shown = sections(r.stdout)
    assert set(shown) == {str(log), str(out)}
    assert shown[str(out)] == lines
    r = ipphpc("logs", "arr", "0")
    assert r.returncode == 1
    assert r.stderr.strip() == ("ipphpc logs: no logs of element 0 in cluster arr (elements with logs: 1; "
                                "engines are chosen as e<ID>)")
    assert ctl.wait(10) == 0


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_a_failing_element_logs_its_exit_status(tmp_path):
    spec = JobSpec(n=5, engines_per_task=1, profile_dir=str(tmp_path / "p"), cluster_id="c",
                   engine_command="sh -c 'exit 3'")
    script = tmp_path / "job.sh"
    script.write_text(render_template("lsf", spec))
    r = subprocess.run([BASH, str(script)], env=clean_env(LSB_JOBID="31", LSB_JOBINDEX="4"), capture_output=True,
                       text=True, timeout=20, cwd=tmp_path)
    assert r.returncode == 3
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"ipphpc: element 4 of job 31 started on {HOST} at ")
    assert lines[-1].startswith(f"ipphpc: element 4 of job 31 stopped on {HOST} at ")
    assert lines[-1].endswith(", exit status 3")
