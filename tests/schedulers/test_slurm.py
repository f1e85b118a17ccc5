"""ipphpc through the real Slurm of .ci/services/slurm.sh, driven as a user drives it.

Whole clusters (HPCCluster and the `ipphpc` command) run their engines as one Slurm job array,
and what ipphpc reports is checked against what `squeue` and `sacct` say. The launcher tests
walk a job through the states the scheduler gives it: PENDING (begin time), HELD, RUNNING,
COMPLETED, FAILED (with its exit code and output), CANCELLED and TIMEOUT.

Other users may share this Slurm: every check names its own job ids (or the test's own
directory), never the whole queue. After each test no job of its own may still be queued and
no process of its own may be running.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import cloudpickle
import pytest
from traitlets.config import Config

from ipphpc import Client, HPCCluster, connection
from ipphpc.batch.states import State
from ipphpc.error import CompositeError

from ..services import require
from .conftest import (
    check_cancel,
    check_run_and_end,
    check_timed_out,
    procs_matching,
    quick_launcher,
    run_ipphpc,
    start,
    wait_for,
)

pytestmark = [pytest.mark.slurm, require("slurm", "run `bash .ci/services/slurm.sh` first")]

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # engines cannot import this test module

#: states after which a Slurm job never runs again by itself
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY"}


# -- what Slurm itself says ---------------------------------------------------------------------
class Row(NamedTuple):
    raw_id: str  # the element's own job id (SLURM_JOB_ID inside it)
    state: str
    detail: str  # squeue: the reason; sacct: the exit code


def _index(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def squeue(*job_ids: str) -> dict[tuple[str, int | None], Row]:
    """(array job id, index) -> Row for every element of `job_ids`, finished ones included."""
    r = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--jobs=" + ",".join(job_ids),
                        "--format=%F|%K|%A|%T|%r"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 or "Invalid job id" in r.stderr, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        array, index, raw, state, reason = line.strip().split("|")
        rows[(array, _index(index))] = Row(raw, state, reason)
    return rows


def sacct(*job_ids: str) -> dict[tuple[str, int | None], Row]:
    """(array job id, index) -> Row from the accounting (slurmdbd lags slurmctld by a few seconds)."""
    r = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs=" + ",".join(job_ids),
                        "--format=JobID,JobIDRaw,State,ExitCode"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        job, raw, state, code = line.split("|")
        array, _, index = job.partition("_")
        if "[" not in index:  # 12_[0-3]: elements not started yet
            rows[(array, _index(index))] = Row(raw, state.split()[0], code)
    return rows


def left_queue(*job_ids: str) -> dict[tuple[str, int | None], Row]:
    """Wait until every element of `job_ids` has ended in squeue; its rows."""
    def ended():
        rows = squeue(*job_ids)
        return rows if rows and all(row.state in ENDED for row in rows.values()) else None
    return wait_for(ended, 30, f"jobs {', '.join(job_ids)} to leave the queue")


def accounted(keys: list[tuple[str, int | None]], states: set[str]) -> dict[tuple[str, int | None], Row]:
    """Wait until sacct shows each element of `keys` ended in one of `states`; its rows."""
    jobs = sorted({job for job, _ in keys})

    def done():
        rows = sacct(*jobs)
        return rows if all(k in rows and rows[k].state in states for k in keys) else None
    return wait_for(done, 60, f"sacct to show {keys} ended as {sorted(states)}", interval=1)


def our_active_jobs(marker: str) -> list[str]:
    """Queued or running jobs whose batch script lies under `marker` (a test's own directory)."""
    r = subprocess.run(["squeue", "--noheader", "--format=%F|%o"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return sorted({line.split("|", 1)[0] for line in r.stdout.splitlines() if marker in line})


@pytest.fixture(autouse=True)
def _nothing_left(tmp_path: Path):
    """After the test: none of its jobs queued, none of its processes alive (both removed if so)."""
    yield
    marker = str(tmp_path)
    jobs = our_active_jobs(marker)
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)
    deadline = time.monotonic() + 15  # a cancelled job's processes get SIGTERM, then SIGKILL
    while procs_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    procs = procs_matching(marker)
    for pid, _ in procs:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not jobs, f"jobs left in the queue (now cancelled): {jobs}"
    assert not procs, f"processes left running (now killed): {procs}"


# -- run on the engines -------------------------------------------------------------------------
def square(x: int) -> int:
    return x * x


def slurm_ids() -> dict:
    """The job ids Slurm gave the element this engine runs in."""
    import os
    return {"pid": os.getpid(), "array": os.environ.get("SLURM_ARRAY_JOB_ID"),
            "index": int(os.environ["SLURM_ARRAY_TASK_ID"]), "raw": os.environ.get("SLURM_JOB_ID")}


def check_engines_match_queue(rc: Client, job: str, n: int) -> dict[int, str]:
    """Each engine's job id and array index (rc.engines) are those squeue lists as RUNNING for the
    element the engine runs in; one element per engine. Returns index -> the element's own job id."""
    queue = squeue(job)
    assert sorted(queue) == [(job, i) for i in range(n)], queue
    assert {row.state for row in queue.values()} == {"RUNNING"}, queue
    info = rc.engines
    assert sorted(info) == sorted(rc.ids) and len(info) == n
    by_pid = {e["pid"]: eid for eid, e in info.items()}
    seen = rc[:].apply_sync(slurm_ids)
    for where in seen:
        engine = info[by_pid[where["pid"]]]
        assert (engine["scheduler"], engine["job_id"], engine["array_index"]) == ("slurm", job, where["index"])
        assert where["array"] == job
        assert queue[(job, where["index"])].raw_id == where["raw"], (where, queue)
    assert sorted(e["array_index"] for e in info.values()) == list(range(n))
    return {where["index"]: where["raw"] for where in seen}


# -- whole clusters -----------------------------------------------------------------------------
def sleep_long() -> None:
    import time as _time
    _time.sleep(60)


def test_cluster_runs_its_engines_as_one_job_array(tmp_path: Path) -> None:
    """HPCCluster(scheduler='slurm', n=4): one sbatch for 4 array elements, tasks run on them,
    rc.engines names each engine's job and element as Slurm does, and after the `with` block
    every element has left the queue and is accounted as ended."""
    cluster = HPCCluster(scheduler="slurm", n=4, walltime="0:10:00", profile_dir=str(tmp_path / "profile"),
                         engine_timeout=120, shutdown_atexit=False)
    with cluster as rc:
        (engines,) = cluster.engine_sets
        (job,) = engines.job_ids
        assert engines.poller.counter.count("sbatch") == 1
        assert rc.load_balanced_view().map_sync(square, range(40)) == [x * x for x in range(40)]
        raw_ids = check_engines_match_queue(rc, job, 4)
        assert len(set(raw_ids.values())) == 4
        # a signal reaches array elements through the engines themselves: tasks interrupted, engines serve on
        ar = rc[:].apply_async(sleep_long)
        time.sleep(0.5)
        assert sorted(cluster.signal_engines_sync("SIGINT")) == rc.ids
        with pytest.raises(CompositeError) as err:
            ar.get(30)
        assert {e.ename for e in err.value.elist} == {"KeyboardInterrupt"}
        assert len(rc[:].apply_sync(os.getpid)) == 4
    rows = left_queue(job)
    assert sorted(rows) == [(job, i) for i in range(4)]
    acct = accounted(list(rows), {"COMPLETED", "CANCELLED"})
    assert {i: acct[(job, i)].raw_id for i in range(4)} == raw_ids


def _table(text: str) -> list[dict[str, str]]:
    """The rows of a table `ipphpc status` printed, as {header: cell}; columns from the dashes line."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans = [m.span() for m in re.finditer(r"-+", lines[rule])]
    spans[-1] = (spans[-1][0], None)
    cells = lambda line: [line[a:b].strip() for a, b in spans]  # noqa: E731
    headers = cells(lines[rule - 1])
    return [dict(zip(headers, cells(line))) for line in lines[rule + 1:] if line.strip()]


def test_cli_submit_status_client_stop(ipphpc_home: Path) -> None:
    """`ipphpc submit --scheduler slurm -n 3 --wait`, then `status` shows each array element
    RUNNING with the engine it registered, `ipphpc.Client()` runs work, and `stop` empties the queue."""
    r = run_ipphpc("submit", "--scheduler", "slurm", "-n", "3", "--walltime", "0:10:00", "--wait", "--timeout", "120")
    assert r.returncode == 0, r.stderr
    cluster_id = r.stdout.strip()
    (job,) = re.findall(r"submitted slurm job\(s\) (\d+)", r.stderr)
    try:
        st = run_ipphpc("status")
        assert st.returncode == 0, st.stderr
        assert f"cluster {cluster_id} (slurm): 3 of 3 engines registered" in st.stdout, st.stdout
        rows = [row for row in _table(st.stdout) if row["ROLE"] == "engines"]
        assert [(row["JOB"], row["INDEX"], row["STATE"]) for row in rows] == [
            (job, str(i), "RUNNING") for i in range(3)], st.stdout
        listed = {int(row["INDEX"]): row["ENGINES"] for row in rows}
        with Client() as rc:  # the newest cluster of the default profile in IPPHPC_DIR
            assert sorted(rc.ids) == [0, 1, 2]
            assert rc.load_balanced_view().map_sync(square, range(12)) == [x * x for x in range(12)]
            check_engines_match_queue(rc, job, 3)
            assert listed == {e["array_index"]: str(eid) for eid, e in rc.engines.items()}, st.stdout
    finally:
        stop = run_ipphpc("stop")
    assert stop.returncode == 0, stop.stderr
    assert f"cluster {cluster_id}: stopped" in stop.stdout
    assert sorted(left_queue(job)) == [(job, i) for i in range(3)]
    assert run_ipphpc("list").stdout.strip().startswith("no clusters")


def test_cli_dry_run_prints_the_script_and_submits_nothing(ipphpc_home: Path) -> None:
    """`submit --dry-run` prints the array script and the exact sbatch command; nothing is queued or written."""
    r = run_ipphpc("submit", "--scheduler", "slurm", "-n", "3", "--walltime", "0:10:00", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "#SBATCH --array=0-2" in lines and "#SBATCH --time=00:10:00" in lines, r.stdout
    (script,) = re.findall(r"^# --- (\S+/engines-\w+\.sbatch) ---$", r.stdout, re.MULTILINE)
    assert f"# submit: sbatch --parsable {script}" in lines, r.stdout
    assert not Path(script).exists()
    assert our_active_jobs(str(ipphpc_home)) == []
    assert list((ipphpc_home / "profile_default" / "security").glob("cluster-*.json")) == []


def test_controller_as_a_batch_job(tmp_path: Path) -> None:
    """controller='batch': the controller is its own Slurm job and the engines are submitted with
    it, not after it starts. Held back, it keeps the engines RUNNING and waiting for its connection
    file; released, it gets them, tasks run, and stopping ends both jobs."""
    config = Config()
    config.SlurmControllerLauncher.submit_args = ["--hold"]  # the controller cannot start yet
    cluster = HPCCluster(scheduler="slurm", controller="batch", n=2, walltime="0:10:00", config=config,
                         profile_dir=str(tmp_path / "profile"), engine_timeout=120, shutdown_atexit=False)
    try:
        cluster.start_cluster_sync()
        (controller,) = cluster.controller_launcher.job_ids
        (engines,) = [e.job_ids[0] for e in cluster.engine_sets]
        assert squeue(controller)[(controller, None)][1:] == ("PENDING", "JobHeldUser")
        wait_for(lambda: {row.state for row in squeue(engines).values()} == {"RUNNING"}, 30,
                 "the engines to run while the controller is held")
        assert not cluster.client_file.exists()
        subprocess.run(["scontrol", "release", controller], check=True, capture_output=True, timeout=30)
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(2, timeout=60)
        assert squeue(controller)[(controller, None)].state == "RUNNING"
        # the process that wrote the connection file runs inside the controller job
        pid = connection.read(cluster.client_file)["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"SLURM_JOB_ID={controller}".encode() in environ
        assert rc.load_balanced_view().map_sync(square, range(10)) == [x * x for x in range(10)]
        check_engines_match_queue(rc, engines, 2)
    finally:
        cluster.stop_cluster_sync()
    rows = left_queue(controller, engines)
    assert sorted(rows) == [(controller, None), (engines, 0), (engines, 1)]
    accounted(list(rows), {"COMPLETED", "CANCELLED"})


def start_fails_promptly(cluster: HPCCluster) -> str:
    """Start `cluster` and expect it to give up within a minute (not at its timeout); the reason."""
    began = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        with cluster:
            pass
    assert time.monotonic() - began < 60
    return str(info.value)


def test_bad_engine_command_fails_start_promptly(tmp_path: Path) -> None:
    """Engines that cannot start: start_and_connect fails within seconds (not at its timeout) with
    the scheduler's state, the exit code and the tail of each element's output."""
    missing = tmp_path / "no-such-python"
    cluster = HPCCluster(scheduler="slurm", n=2, walltime="0:10:00", profile_dir=str(tmp_path / "profile"),
                         engine_cmd=[str(missing), "-m", "ipphpc", "engine"], engine_timeout=300,
                         shutdown_atexit=False)
    text = start_fails_promptly(cluster)
    assert "0 of 2 engines registered, and no more will come" in text, text
    # the first failed element is enough to give up: the report names each one seen failed so far
    failed = re.findall(r"job (\d+) element (\d+): FAILED, exit code 127", text)
    assert failed and {index for _, index in failed} <= {"0", "1"}, text
    assert text.count(f"{missing}: No such file or directory") == len(failed), text
    # and both really failed, as the accounting says
    accounted([(failed[0][0], 0), (failed[0][0], 1)], {"FAILED"})


def test_one_failing_element_fails_start_promptly(tmp_path: Path) -> None:
    """One element of three fails at once while the others register: no waiting for an engine
    that cannot come; the report names that element, and stopping ends the others."""
    engine = [sys.executable, "-m", "ipphpc", "engine"]
    broken = 'if [ "$IPPHPC_ELEMENT" = 1 ]; then echo element 1 is broken; exit 3; fi; exec "$@"'
    cluster = HPCCluster(scheduler="slurm", n=3, walltime="0:10:00", profile_dir=str(tmp_path / "profile"),
                         engine_cmd=["bash", "-c", broken, "engine", *engine], engine_timeout=300,
                         shutdown_atexit=False)
    text = start_fails_promptly(cluster)
    assert "of 3 engines registered, and no more will come" in text, text
    assert re.search(r"job \d+ element 1: FAILED, exit code 3", text) and "element 1 is broken" in text, text
    assert "element 0:" not in text and "element 2:" not in text, text


def test_cli_submit_wait_fails_with_the_report(ipphpc_home: Path) -> None:
    """`submit --wait` with engines that cannot start exits 1 with the report and stops what it started."""
    missing = ipphpc_home / "no-such-python"
    r = run_ipphpc("submit", "--scheduler", "slurm", "-n", "2", "--walltime", "0:10:00", "--wait",
                   "--timeout", "300", f"--HPCCluster.engine_cmd={[str(missing), '-m', 'ipphpc', 'engine']!r}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no more will come" in r.stderr and "FAILED, exit code 127" in r.stderr, r.stderr
    assert f"{missing}: No such file or directory" in r.stderr, r.stderr
    (job,) = re.findall(r"submitted slurm job\(s\) (\d+)", r.stderr)
    assert {row.state for row in left_queue(job).values()} == {"FAILED"}
    assert run_ipphpc("list").stdout.strip().startswith("no clusters")


# -- one job through its states -----------------------------------------------------------------
def test_pending_held_running_cancelled(tmp_path: Path) -> None:
    """A job that may not begin yet is PENDING (BeginTime), a held one HELD (JobHeldUser); released,
    it runs; stop() cancels each with one scancel, and both end CANCELLED."""
    profile = tmp_path / "profile"
    later = start(quick_launcher("slurm", profile, 1, cluster_id="later", submit_args=["--begin=now+1hour"]),
                  ["sleep", "300"])
    held = start(quick_launcher("slurm", profile, 2, cluster_id="held", submit_args=["--hold"]), ["sleep", "300"])
    assert later.poller.wait_until(lambda recs: all(r.reason == "BeginTime" for r in recs), 30), later.states()
    assert [(r.state, r.native_state) for r in later.states()] == [(State.PENDING, "PENDING")]
    assert held.poller.wait_until(lambda recs: all(r.reason == "JobHeldUser" for r in recs), 30), held.states()
    assert [(r.state, r.native_state) for r in held.states()] == [(State.HELD, "PENDING")] * 2
    assert later.running and held.running and later.exit_code is None and held.exit_code is None
    (job,) = held.job_ids
    assert {row.detail for row in squeue(job).values()} == {"JobHeldUser"}

    subprocess.run(["scontrol", "release", job], check=True, capture_output=True, timeout=30)
    assert held.poller.wait_until(lambda recs: all(r.state is State.RUNNING for r in recs), 30), held.states()
    assert all(r.host for r in held.states())
    check_cancel(held)
    check_cancel(later)
    rows = left_queue(job, *later.job_ids)
    assert {row.state for row in rows.values()} == {"CANCELLED"}


def test_running_completed_failed(tmp_path: Path) -> None:
    """Three elements run; two complete, one fails with exit code 3 and its output in the report;
    sacct agrees."""
    launcher = quick_launcher("slurm", tmp_path / "profile", 3)
    check_run_and_end(launcher)
    (job,) = launcher.job_ids
    acct = accounted([(job, i) for i in range(3)], {"COMPLETED", "FAILED"})
    assert [(acct[(job, i)].state, acct[(job, i)].detail) for i in range(3)] == [
        ("COMPLETED", "0:0"), ("FAILED", "3:0"), ("COMPLETED", "0:0")]


# Slurm limits are whole minutes, and slurmctld checks them every 30 s: a job with a 1-minute
# limit ends 60-90 s after it starts. The job is submitted before the first test of this module
# runs, so that wait overlaps with the other tests.
@pytest.fixture(scope="module")
def walltime_job(tmp_path_factory):
    launcher = quick_launcher("slurm", tmp_path_factory.mktemp("walltime") / "profile", 1, cluster_id="walltime",
                              walltime="0:01:00")
    start(launcher, ["sleep", "300"])
    yield launcher
    launcher.stop(timeout=30)  # nothing left to do once it timed out


@pytest.fixture(scope="module", autouse=True)
def _start_the_walltime_clock(request):
    if any(item.name == "test_walltime_limit_ends_in_timeout" for item in request.session.items):
        request.getfixturevalue("walltime_job")


@pytest.mark.slow
def test_walltime_limit_ends_in_timeout(walltime_job) -> None:
    """A job over its walltime ends TIMEOUT (not FAILED or LOST) as soon as Slurm enforces it."""
    assert "#SBATCH --time=00:01:00" in Path(walltime_job.submissions[0].script).read_text()
    check_timed_out(walltime_job, timeout=150)
    (job,) = walltime_job.job_ids
    assert {row.state for row in left_queue(job).values()} == {"TIMEOUT"}
    accounted([(job, 0)], {"TIMEOUT"})
