"""One behavioural suite, run against every scheduler: Slurm, SGE and HTCondor of .ci/services/, and
PBS Pro, Torque and LSF through the emulators of tests/emulators (`sched`, see sched_facts.py).

A cluster's engines run as one job array and run tasks; `ipphpc submit/status/stop` and `--dry-run`
work from the shell; a controller can be a batch job of its own; engines that fail make the start
fail promptly with the scheduler's report; and a job walks through the states the scheduler gives
it: PENDING, HELD, RUNNING, COMPLETED, FAILED (with its exit code and output), CANCELLED and TIMEOUT.
What ipphpc reports is checked against what the scheduler's own commands say.

Run one scheduler alone with `-m slurm` (sge, htcondor, pbs, lsf). After each test none of its jobs
may be queued and none of its processes running.
"""
from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import pytest
from traitlets.config import Config

from ipphpc import Client, HPCCluster, connection, paths
from ipphpc.batch.states import State
from ipphpc.cluster.cluster import JobsHeld
from ipphpc.error import CompositeError

from ..services import declared
from .conftest import check_cancel, check_run_and_end, check_timed_out, quick_launcher, start
from .sched_facts import SCHEDULERS, SERVICES, Sched, number
from .scheduler_support import parse_table, run_ipphpc, running_status, stop_if_running, wait_until


def check_engines_match_queue(sched: Sched, rc: Client, job: str, n: int) -> dict[int, int]:
    """Each engine says which job and element it runs in, and the scheduler set that process up in
    that element (its environment, job ad or process group); one element per engine; every element
    RUNNING in the scheduler's queue. Returns array index -> engine id."""
    indices = list(range(sched.base, sched.base + n))
    queue = sched.queued(job)
    assert sorted(queue) == indices and {s for s, _ in queue.values()} <= set(sched.running_natives), queue
    info = rc.engines
    assert sorted(info) == sorted(rc.ids) and len(info) == n
    assert sorted(e["array_index"] for e in info.values()) == indices
    pids = rc[:].apply_sync(os.getpid)
    assert pids == [info[eid]["pid"] for eid in rc.ids] and len(set(pids)) == n and os.getpid() not in pids
    index_vars = rc[:].apply_sync(os.getenv, sched.index_var)
    for eid, index_var in zip(rc.ids, index_vars):
        engine = info[eid]
        expected = (sched.origin, sched.engine_job_id(job, engine["array_index"]))
        assert (engine["scheduler"], engine["job_id"]) == expected, engine
        assert sched.where(engine["pid"]) == (number(job), engine["array_index"]), engine
        assert index_var == str(engine["array_index"]), (engine, index_var)
    if hasattr(sched, "check_engines"):
        sched.check_engines(rc, job, n)
    return {e["array_index"]: eid for eid, e in info.items()}


# -- whole clusters -----------------------------------------------------------------------------
def test_cluster_runs_its_engines_as_one_job_array(sched: Sched) -> None:
    """HPCCluster(scheduler=..., n=3): one submission of a 3-element array whose engines run tasks
    (a DirectView, a load-balanced map, SIGINT through the engines), and after the `with` block every
    element has left the queue and is accounted as ended, and nothing runs."""
    profile = sched.profile(sched.root / "profile", "three")
    cluster = HPCCluster(scheduler=sched.scheduler, n=3, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="three", engine_timeout=240, shutdown_atexit=False, **sched.cluster_options())
    try:
        with cluster as rc:
            (engines,) = cluster.engine_sets
            (job,) = engines.job_ids
            assert len(engines.submissions) == 1 and engines.poller.counter.count(sched.submit_cmd) == 1
            assert sched.submissions() in (None, 1)
            script = Path(engines.submissions[0].script).read_text().splitlines()
            assert all(line in script for line in sched.script_lines(3, "00:10:00")), script
            check_engines_match_queue(sched, rc, job, 3)
            # functions sent by reference only: under HTCondor the engines run another Python
            ar = rc.load_balanced_view().map(pow, range(40), [2] * 40)
            assert ar.get(timeout=120) == [x * x for x in range(40)]
            assert set(ar.engine_id) <= set(rc.ids)
            # a signal reaches array elements through the engines themselves: tasks interrupted, engines serve on
            ar = rc[:].apply_async(time.sleep, 60)
            time.sleep(0.5)
            assert sorted(cluster.signal_engines_sync("SIGINT")) == rc.ids
            with pytest.raises(CompositeError) as err:
                ar.get(30)
            assert {e.ename for e in err.value.elist} == {"KeyboardInterrupt"}
            assert len(rc[:].apply_sync(os.getpid)) == 3
            # the poller follows at its own pace: the scheduler says RUNNING within a poll or two
            assert engines.poller.wait_until(
                lambda recs: all(r.state is State.RUNNING for r in recs), 60, engines.job_ids), engines.states()
            assert all(s.host for s in engines.states()), engines.states()
        sched.left_queue(job)
        indices = list(range(sched.base, sched.base + 3))
        rows = sched.accounted(job, indices)
        assert sorted(rows) == indices and all(sched.stopped_cleanly(*row) for row in rows.values()), rows
        if hasattr(sched, "check_accounted"):
            sched.check_accounted(job, rows)
        assert not cluster.controller_launcher.running
        assert not cluster.cluster_file.exists()
    finally:
        stop_if_running(cluster)


def test_cli_submit_status_client_stop(sched: Sched) -> None:
    """`ipphpc submit --scheduler X -n 2 --wait`, then `status` shows each array element RUNNING with the
    engine it registered, `ipphpc.Client()` runs work there, and `stop` empties the queue."""
    sched.profile(sched.root / "ipphpc" / "profile_default", "cli")
    stopped = False
    try:
        r = run_ipphpc("submit", "--scheduler", sched.scheduler, "-n", "2", "--walltime", "0:10:00", "--wait",
                       "--timeout", "240", "--cluster-id", "cli", *sched.cli_options())
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "cli"
        (job,) = re.findall(rf"^submitted {sched.submitted_as} job\(s\) (\S+)$", r.stderr, re.MULTILINE)
        assert sched.submissions() in (None, 1)
        indices = [str(sched.base), str(sched.base + 1)]

        status = wait_until(running_status(), 60, "`ipphpc status` to show the elements RUNNING", interval=1)
        assert "cluster cli (%s): 2 of 2 engines registered" % sched.scheduler in status.stdout, status.stdout
        rows = parse_table(status.stdout)
        (controller,) = [row for row in rows if row["ROLE"] == "controller"]
        assert controller["STATE"] == "RUNNING"
        pid = int(controller["JOB"].split()[1])
        if hasattr(sched, "check_controller"):
            sched.check_controller(pid)
        elements = sorted((row for row in rows if row["ROLE"] == "engines"), key=lambda row: row["INDEX"])
        assert [(row["JOB"], row["INDEX"], row["STATE"]) for row in elements] == [
            (job, i, "RUNNING") for i in indices], status.stdout
        natives = set(sched.status_natives or sched.running_natives)
        assert {row["NATIVE"] for row in elements} <= natives, status.stdout
        assert all(row["HOST"] for row in elements)
        assert sorted(row["ENGINES"] for row in elements) == ["0", "1"]
        with Client() as rc:  # the newest cluster of the default profile in IPPHPC_DIR
            assert sorted(rc.ids) == [0, 1]
            assert rc.load_balanced_view().map_sync(pow, range(12), [2] * 12) == [x * x for x in range(12)]
            eids = check_engines_match_queue(sched, rc, job, 2)
        assert {row["INDEX"]: row["ENGINES"] for row in elements} == {str(i): str(e) for i, e in eids.items()}

        stop = run_ipphpc("stop")
        assert stop.returncode == 0, stop.stderr
        assert "cluster cli: stopped" in stop.stdout
        stopped = True
        sched.left_queue(job)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30, f"controller pid {pid} to exit")
        after = run_ipphpc("status")
        assert after.returncode == 1 and "no cluster" in after.stderr
        assert run_ipphpc("list").stdout.strip().startswith("no clusters")
    finally:
        if not stopped:
            run_ipphpc("stop", "--all", timeout=120)


def test_cli_dry_run_prints_the_script_and_submits_nothing(sched: Sched) -> None:
    """`submit --dry-run` prints the array script and the exact submit command; nothing is queued or written."""
    r = run_ipphpc("submit", "--scheduler", sched.scheduler, "-n", "3", "--walltime", "0:10:00", "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(line in lines for line in sched.script_lines(3, "00:10:00")), r.stdout
    script = re.findall(r"^# --- (\S+/engines-\w+\.\w+) ---$", r.stdout, re.MULTILINE)[0]
    assert f"# submit: {sched.submit_line(script)}" in lines, r.stdout
    assert not Path(script).exists()
    assert sched.submissions() in (None, 0)
    assert sched.our_jobs() == []
    assert list((sched.root / "ipphpc" / "profile_default" / "security").glob("cluster-*.json")) == []


def test_controller_as_a_batch_job(sched: Sched) -> None:
    """controller='batch': the controller is a job of its own and the engines are submitted with it, not
    after it starts. Held back, it keeps the engines RUNNING and waiting for its connection file;
    released, it gets them, tasks run in its job, and stopping ends both jobs."""
    sched.skip_unless("controller")
    config = Config()
    for name, value in sched.hold.items():
        setattr(config.BatchControllerLauncher, name, value)  # the controller cannot start yet
    profile = sched.profile(sched.root / "profile", "batchctl")
    cluster = HPCCluster(scheduler=sched.scheduler, controller="batch", n=2, walltime="0:10:00", config=config,
                         profile_dir=str(profile), cluster_id="batchctl", engine_timeout=120, shutdown_atexit=False,
                         **sched.cluster_options(batch_controller=True))
    try:
        cluster.start_cluster_sync()
        (controller,) = cluster.controller_launcher.job_ids
        (engines,) = [e.job_ids[0] for e in cluster.engine_sets]
        assert set(sched.queued(controller).values()) == {sched.held_in_queue}
        wait_until(lambda: sched.running(engines, 2), 30,
                   "the engines to run while the controller is held")
        assert not cluster.client_file.exists()
        sched.release(controller)
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(2, timeout=60)
        assert sched.running(controller, 1), sched.queued(controller)
        # the process that wrote the connection file runs inside the controller job
        pid = connection.read(cluster.client_file)["pid"]
        assert sched.where(pid)[0] == number(controller)
        assert rc.load_balanced_view().map_sync(pow, range(10), [2] * 10) == [x * x for x in range(10)]
        check_engines_match_queue(sched, rc, engines, 2)
    finally:
        cluster.stop_cluster_sync()
    sched.left_queue(controller, engines)
    rows = {**sched.accounted(controller, [sched.single_index]), **{
        (engines, i): row for i, row in sched.accounted(engines, [sched.base, sched.base + 1]).items()}}
    assert len(rows) == 3 and all(sched.stopped_cleanly(*row) for row in rows.values()), rows


# -- engines that cannot start ------------------------------------------------------------------
def start_fails_promptly(cluster: HPCCluster) -> str:
    """Start `cluster` and expect it to give up within a minute (not at its timeout); the reason."""
    began = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        with cluster:
            pass
    assert time.monotonic() - began < 60, "the failure was noticed only at the engine timeout"
    assert cluster.controller_launcher is not None and not cluster.controller_launcher.running
    return str(info.value)


def test_one_failing_element_fails_start_promptly(sched: Sched) -> None:
    """One element of three fails at once while the others register: no waiting for an engine that
    cannot come; the report names that element with its output, and stopping ends the others."""
    broken = ('if [ "$IPPHPC_ELEMENT" = 1 ]; then echo element 1 is broken; echo "no python on $(hostname)" >&2; '
              'exit 7; fi; exec "$@"')
    profile = sched.profile(sched.root / "profile", "bad")
    options = {**sched.cluster_options(), "engine_cmd": ["bash", "-c", broken, "engine", *sched.engine_cmd()]}
    cluster = HPCCluster(scheduler=sched.scheduler, n=3, walltime="0:10:00", profile_dir=str(profile),
                         cluster_id="bad", engine_timeout=300, shutdown_atexit=False, **options)
    try:
        text = start_fails_promptly(cluster)
    finally:
        stop_if_running(cluster)
    assert "of 3 engines registered, and no more will come" in text, text
    failed = re.search(rf"job (\S+) element {sched.base + 1}: FAILED, exit code 7", text)
    assert failed and "no python on" in text, text
    if "stdout" not in sched.cannot:
        assert "element 1 is broken" in text, text
    assert f"element {sched.base}:" not in text and f"element {sched.base + 2}:" not in text, text
    sched.left_queue(failed.group(1))


def test_engines_that_cannot_start_fail_submit_wait_promptly(sched: Sched) -> None:
    """Engines that cannot start: `submit --wait` exits 1 within seconds (not at its timeout) with the
    scheduler's state, the exit code and the tail of each element's output, and stops what it started;
    the accounting says both elements failed."""
    missing = sched.root / "no-such-python"
    sched.profile(sched.root / "ipphpc" / "profile_default", "nopython")
    began = time.monotonic()
    r = run_ipphpc("submit", "--scheduler", sched.scheduler, "-n", "2", "--walltime", "0:10:00", "--wait",
                   "--timeout", "300", "--cluster-id", "nopython", *sched.cli_options(),
                   f"--HPCCluster.engine_cmd={[str(missing), '-m', 'ipphpc', 'engine']!r}")
    assert time.monotonic() - began < 60, "the failure was noticed only at the engine timeout"
    assert r.returncode == 1, r.stdout + r.stderr
    assert "0 of 2 engines registered, and no more will come" in r.stderr, r.stderr
    # the first failed element is enough to give up: the report names each one seen failed so far
    failed = re.findall(r"job (\S+) element (\d+): FAILED, exit code 127", r.stderr)
    assert failed and {index for _, index in failed} <= {str(sched.base), str(sched.base + 1)}, r.stderr
    assert r.stderr.count(f"{missing}: No such file or directory") == len(failed), r.stderr
    (job,) = re.findall(rf"submitted {sched.submitted_as} job\(s\) (\S+)", r.stderr)
    assert {j for j, _ in failed} == {job}, r.stderr
    assert sched.final_states(job) in (None, {sched.failed_native})
    # and both really failed, as the accounting says
    rows = sched.accounted(job, [sched.base, sched.base + 1])
    assert [rows[i] for i in (sched.base, sched.base + 1)] == [(sched.accounted_failed, 127)] * 2, rows
    assert run_ipphpc("list").stdout.strip().startswith("no clusters")


def test_held_engines_end_the_wait_with_the_schedulers_reason(sched: Sched) -> None:
    """Engines the scheduler holds: the start gives up once they were HELD for held_grace (not at the engine
    timeout, which would raise TimeoutError) with one line naming the job, its elements, the state, the
    scheduler's reason and its release command; the `with` block stops the cluster, so the job leaves the queue."""
    config = Config()
    for name, value in sched.hold.items():
        setattr(config.BatchEngineSetLauncher, name, value)
    profile = sched.profile(sched.root / "profile", "held")
    cluster = HPCCluster(scheduler=sched.scheduler, n=2, walltime="0:10:00", config=config, profile_dir=str(profile),
                         cluster_id="held", engine_timeout=120, held_grace=1, shutdown_atexit=False,
                         **sched.cluster_options())
    try:
        with pytest.raises(JobsHeld) as info:
            with cluster:
                pass
    finally:
        stop_if_running(cluster)
    text = str(info.value)
    found = re.fullmatch(r'cluster held: engines job (\S+) elements? (\S+) HELD for \d+ s \((.+?)\); '
                         r'`(.+?)` releases it; stopped the cluster and cancelled its jobs \(.*\)', text)
    assert found, text
    job, elements, why, release = found.groups()
    assert elements == f"{sched.base}-{sched.base + 1}", text
    assert release == shlex.join([*sched.release_cmd.split(), job]), text
    reason = re.fullmatch(r'\S+(?: \S+)? says "(.*)"|\S+(?: \S+)? gives no reason', why)
    assert reason and sched.held_reason_ok(reason.group(1) or ""), text
    sched.left_queue(job)
    assert not cluster.cluster_file.exists() and not cluster.client_file.exists()
    assert not paths.pid_file(profile, "ipcontroller", "held").exists()


# -- one job through its states -----------------------------------------------------------------
def test_pending_held_released_cancelled(sched: Sched) -> None:
    """A job that may not begin yet is PENDING, a held one HELD, and stays so; released, its elements run
    and complete with their output between the start and stop lines; stop() cancels the waiting job
    with one cancel command, and it ends CANCELLED."""
    profile = sched.profile(sched.root / "profile", "states")
    later = None
    if sched.defer is not None and "defer" not in sched.cannot:
        later = start(quick_launcher(sched.scheduler, profile, 1, cluster_id="states", **sched.defer), ["sleep", "300"])
    go = sched.root / "go"
    held = start(quick_launcher(sched.scheduler, profile, 2, cluster_id="states", **sched.hold),
                 ["bash", "-c", f"echo released element $IPPHPC_ELEMENT; while [ ! -e {go} ]; do sleep 0.2; done"])
    (job,) = held.job_ids
    assert held.poller.wait_until(lambda recs: all(
        r.state is State.HELD and r.source == "status" and sched.held_reason_ok(r.reason) for r in recs), 60), \
        held.states()
    assert [(r.state, r.native_state) for r in held.states()] == [(State.HELD, sched.held_native)] * 2
    assert set(sched.queued(job).values()) == {sched.held_in_queue}
    if later is not None:
        assert later.poller.wait_until(lambda recs: all(
            r.state is State.PENDING and r.source == "status" and sched.deferred_reason in (None, r.reason)
            for r in recs), 60), later.states()
        assert [(r.state, r.native_state) for r in later.states()] == [(State.PENDING, sched.deferred_native)]
        if sched.deferred_reason is not None:
            assert [r.reason for r in later.states()] == [sched.deferred_reason], later.states()
        assert later.running and later.exit_code is None
    assert held.running and held.exit_code is None
    held.poller.poll_once(force=True)
    assert {r.state for r in held.states()} == {State.HELD}  # a hold is not released by itself

    sched.release(job)
    assert held.poller.wait_until(lambda recs: all(r.state is State.RUNNING for r in recs), 60), held.states()
    assert all(r.host for r in held.states())
    go.touch()
    assert held.poller.wait_until(lambda recs: all(r.finished for r in recs), 90), held.states()
    assert [(r.array_index, r.state, r.exit_code) for r in held.states()] == [
        (sched.base, State.COMPLETED, 0), (sched.base + 1, State.COMPLETED, 0)]
    status = next(r for r in held.states() if r.array_index == sched.base + 1)
    lines = sched.element_output(held.output_path(status).read_text())
    # between the element's start and stop lines
    assert lines[1:-1] == ["released element 1"] and lines[-1].endswith("exit status 0"), lines

    if later is not None:
        check_cancel(later)  # deleted before it started: CANCELLED, and gone from the queue
        assert sched.final_states(*later.job_ids) in (None, {sched.cancelled_native})


def test_running_completed_failed_cancelled(sched: Sched) -> None:
    """Three elements run; two complete, one fails with exit code 3 and its output in the report, as the
    accounting agrees; then two running elements are cancelled with one cancel command."""
    profile = sched.profile(sched.root / "profile", "states")
    launcher = quick_launcher(sched.scheduler, profile, 3)
    check_run_and_end(launcher)
    (job,) = launcher.job_ids
    indices = [sched.base, sched.base + 1, sched.base + 2]
    acct = sched.accounted(job, indices)
    assert [acct[i] for i in indices] == [(sched.accounted_ok, 0), (sched.accounted_failed, 3),
                                          (sched.accounted_ok, 0)], acct

    sched.profile(sched.root / "profile", "slow")  # its log directory, writable by the jobs
    slow = start(quick_launcher(sched.scheduler, profile, 2, cluster_id="slow"), ["sleep", "300"])
    assert slow.poller.wait_until(lambda recs: all(r.state is State.RUNNING for r in recs), 30), slow.states()
    check_cancel(slow)
    assert sched.final_states(*slow.job_ids) in (None, {sched.cancelled_native})


# A walltime takes a while to be enforced (Slurm's limits are whole minutes): the job of that test is
# submitted to each real scheduler before the first test of this module runs, so the waits overlap.
@pytest.fixture(scope="module")
def early_walltime_jobs(request, tmp_path_factory):
    wanted = {item.callspec.params.get("sched") for item in request.session.items
              if item.originalname == "test_walltime_limit_ends_in_timeout" and hasattr(item, "callspec")}
    jobs, facts = {}, []
    try:
        for name in sorted(wanted & set(SERVICES)):
            if not declared(name):
                continue  # (the test says whether the scheduler works)
            sched = SCHEDULERS[name](tmp_path_factory.mktemp(f"walltime-{name}"))
            with pytest.MonkeyPatch.context() as mp:
                sched.setup(mp)
                facts.append(sched)
                profile = sched.profile(sched.root / "profile", "walltime")
                jobs[name] = start(quick_launcher(name, profile, 1, cluster_id="walltime", walltime=sched.walltime),
                                   ["sleep", "300"])
        yield jobs
    finally:
        for launcher in jobs.values():
            launcher.stop(timeout=30)  # nothing left to do once it timed out
        for sched in facts:
            sched.close()


@pytest.fixture(scope="module", autouse=True)
def _start_the_walltime_clock(early_walltime_jobs) -> None:
    pass


@pytest.mark.slow
def test_walltime_limit_ends_in_timeout(sched: Sched, early_walltime_jobs: dict) -> None:
    """A job over its walltime ends TIMEOUT (not FAILED or LOST) as soon as the scheduler enforces it."""
    launcher = early_walltime_jobs.pop(sched.name, None)
    if launcher is None:
        launcher = quick_launcher(sched.scheduler, sched.profile(sched.root / "profile", "walltime"), 1,
                                  cluster_id="walltime", walltime=sched.walltime)
        start(launcher, ["sleep", "300"])
    seconds = launcher.resources.walltime_seconds
    walltime = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    script = Path(launcher.submissions[0].script).read_text().splitlines()
    assert sched.script_lines(1, walltime)[1] in script, script
    check_timed_out(launcher, timeout=sched.walltime_within)
    if sched.timeout_notice:  # the scheduler's own notice is in the element's output
        assert sched.timeout_notice in launcher.failure_report(), launcher.failure_report()
    (job,) = launcher.job_ids
    assert sched.final_states(job) in (None, {sched.timeout_native})
    if sched.accounted_timeout is not None:
        sched.accounted(job, [sched.base], {sched.accounted_timeout})
