"""No task left hanging: whatever goes away (engines, the controller, a client), every waiting caller
gets an answer within a bound, and work that never started is not lost with an engine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ipphpc
from ipphpc import ControllerLost, EngineError, NoEnginesRegistered

from .helpers import alive, ship_by_value, wait_until

ship_by_value(__name__)

FAST = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_misses=3", "--Controller.engine_wait=2",
        "--Controller.client_timeout=2")


def mark_then_sleep(marker: str, seconds: float) -> int:
    import os as _os
    import time as _t
    with open(marker, "w") as f:
        f.write(str(_os.getpid()))
    _t.sleep(seconds)
    return _os.getpid()


def nap(seconds: float) -> int:
    import os as _os
    import time as _t
    _t.sleep(seconds)
    return _os.getpid()


@pytest.fixture
def two(spawner, pdir):
    """A controller with a fast heartbeat, short engine and client waits, and two engines of their own."""
    ctl, _, _ = spawner.controller(pdir, "nohang", *FAST)
    for _ in range(2):
        spawner.engine(pdir, "nohang")
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id="nohang")
    rc.wait_for_engines(2, timeout=30)
    yield ctl, rc
    rc.close()


def pid_of(rc, eid: int) -> int:
    return rc.engines[eid]["pid"]


def test_tasks_queued_when_every_engine_dies_fail_with_no_engines(two, tmp_path):
    """The hang of before: 20 queued tasks and both engines killed. The 2 running fail with EngineError
    ('while running'), the 18 that never started with NoEnginesRegistered once engine_wait has passed."""
    _, rc = two
    lv = rc.load_balanced_view()
    lv.map_sync(nap, [0.3] * 4)  # the controller learns tasks are long: one task per engine at a time
    ars = [lv.apply_async(mark_then_sleep, str(tmp_path / f"m{i}"), 60) for i in range(20)]
    wait_until(lambda: sum(os.path.exists(tmp_path / f"m{i}") for i in range(20)) == 2, 20,
               what="two tasks to start")
    t0 = time.monotonic()
    for eid in rc.ids:
        os.kill(pid_of(rc, eid), signal.SIGKILL)
    errors = []
    for ar in ars:
        with pytest.raises((EngineError, NoEnginesRegistered)) as info:
            ar.get(timeout=30)
        errors.append(info.value)
    took = time.monotonic() - t0
    running = [e for e in errors if type(e) is EngineError]
    stranded = [e for e in errors if isinstance(e, NoEnginesRegistered)]
    assert len(running) == 2 and all("while running" in str(e) for e in running), running
    assert len(stranded) == 18, errors
    assert "engine_wait" in str(stranded[0]) and "no engine has been registered" in str(stranded[0])
    assert took < 2 + 0.6 + 10, f"answers after {took:.1f} s"
    # new work fails the same way, at the next heartbeat, instead of waiting
    with pytest.raises(NoEnginesRegistered):
        lv.apply_async(nap, 0).get(timeout=10)


def test_queued_tasks_of_a_lost_engine_run_on_another(two, tmp_path):
    """Tasks an engine held but had not started go to the other engine when it dies; only the one it
    was running fails."""
    _, rc = two
    lv = rc.load_balanced_view()
    marker = tmp_path / "long"
    long = lv.apply_async(mark_then_sleep, str(marker), 60)
    quick = [lv.apply_async(nap, 0.05) for _ in range(7)]
    wait_until(marker.exists, 20, what="the long task to start")
    victim = int(marker.read_text())
    status = rc.queue_status(verbose=True)
    held = [m for eid, s in status.items() if eid != "unassigned" and pid_of(rc, eid) == victim for m in s["tasks"]]
    behind = [ar for ar in quick if ar.msg_ids[0] in held]
    assert behind, f"no task queued behind the long one: {status}"
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(EngineError, match="while running"):
        long.get(timeout=20)
    survivor = [pid_of(rc, eid) for eid in rc.ids if pid_of(rc, eid) != victim]
    assert [ar.get(timeout=20) for ar in behind] == survivor * len(behind)
    assert all(ar.successful() for ar in quick)


def test_sigterm_finishes_the_running_task_and_hands_on_the_rest(two, tmp_path):
    """An engine told to go by its scheduler (SIGTERM) finishes its task, says why it leaves, and the tasks
    it held go to the other engine: nothing fails."""
    _, rc = two
    lv = rc.load_balanced_view()
    marker = tmp_path / "short"
    first = lv.apply_async(mark_then_sleep, str(marker), 1.5)
    rest = [lv.apply_async(nap, 0.05) for _ in range(7)]
    wait_until(marker.exists, 20, what="the task to start")
    victim = int(marker.read_text())
    os.kill(victim, signal.SIGTERM)
    assert first.get(timeout=20) == victim
    assert all(isinstance(ar.get(timeout=20), int) for ar in rest)
    wait_until(lambda: len(rc.ids) == 1, 10, what="the engine to leave")
    wait_until(lambda: not alive(victim), 10, what="the engine process to exit")


def test_killed_controller_fails_blocking_and_pending_calls(spawner, pdir, tmp_path):
    """kill -9 of the controller: a blocking apply_sync, a pending AsyncResult and new calls all raise
    ControllerLost within the client's controller_timeout, instead of hanging."""
    ctl, _, _ = spawner.controller(pdir, "ctlgone", *FAST)
    spawner.engine(pdir, "ctlgone")
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id="ctlgone", controller_timeout=2)
    try:
        rc.wait_for_engines(1, timeout=30)
        lv = rc.load_balanced_view()
        marker = tmp_path / "started"
        pending = lv.apply_async(mark_then_sleep, str(marker), 60)
        import threading
        threading.Thread(target=lambda: (wait_until(marker.exists, 20, what="the task to start"),
                                         os.kill(ctl.pid, signal.SIGKILL)), daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(ControllerLost, match="controller_timeout"):
            rc[rc.ids[0]].apply_sync(nap, 60)  # queued behind the running task
        assert time.monotonic() - t0 < 20
        with pytest.raises(ControllerLost):
            pending.get(timeout=10)
        with pytest.raises(ControllerLost):
            lv.apply_async(nap, 0)
    finally:
        rc.close()


def test_silent_controller_is_lost_too(spawner, pdir):
    """A controller that stops answering (SIGSTOP: its host hangs) is noticed by the connection's heartbeat."""
    ctl, _, _ = spawner.controller(pdir, "ctlstop", *FAST)
    spawner.engine(pdir, "ctlstop")
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id="ctlstop", controller_timeout=2)
    try:
        rc.wait_for_engines(1, timeout=30)
        ar = rc.load_balanced_view().apply_async(nap, 60)
        os.kill(ctl.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(ControllerLost):
            ar.get(timeout=30)
        assert time.monotonic() - t0 < 15
    finally:
        os.kill(ctl.pid, signal.SIGCONT)
        rc.close()


CLIENT = """
import sys, time
import ipphpc
rc = ipphpc.Client(profile_dir=sys.argv[1], cluster_id="nohang")
rc.wait_for_engines(2, timeout=30)
def nap(s):
    import time
    time.sleep(s)
ar = rc.load_balanced_view().map_async(nap, [1.0] * 200, chunksize=1)
print("submitted", flush=True)
time.sleep(600)
"""


def test_killed_client_leaves_idle_engines(two, pdir, tmp_path):
    """A client killed in the middle of a 200-task map: its queued tasks are dropped and its running ones
    interrupted, so the engines serve others again within seconds (client_timeout is 2 s here)."""
    _, rc = two
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CLIENT))
    p = subprocess.Popen([sys.executable, str(script), str(pdir)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "submitted"
        wait_until(lambda: rc.queue_status()["unassigned"] > 100, 20, what="the map to be queued")
        p.kill()
        p.wait(10)
        t0 = time.monotonic()

        def idle():
            s = rc.queue_status()
            return s["unassigned"] == 0 and all(v["tasks"] == 0 for k, v in s.items() if k != "unassigned")
        wait_until(idle, 15, interval=0.2, what=f"the engines to be idle ({rc.queue_status()})")
        assert time.monotonic() - t0 < 2 + 1 + 5
        assert rc.load_balanced_view().apply_sync(nap, 0) > 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


PAUSED = """
import sys
import ipphpc
from ipphpc import TaskAborted
rc = ipphpc.Client(profile_dir=sys.argv[1], cluster_id="nohang", controller_timeout=30)
rc.wait_for_engines(2, timeout=30)
def nap(s):
    import time
    time.sleep(s)
    return s
lv = rc.load_balanced_view()
lv.map_sync(nap, [0.3] * 2)
ars = [lv.apply_async(nap, 5) for _ in range(6)]
import time
deadline = time.monotonic() + 20
while True:  # the controller holds all six before the test stops this process (else some are sent after)
    st = rc.queue_status()
    held = st.pop("unassigned") + sum(v["tasks"] for v in st.values())
    if held == 6 or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print("submitted", held, flush=True)
sys.stdin.readline()  # the test stops this process, then continues it and writes a line
for ar in ars:
    try:
        print("ok", ar.get(timeout=20), flush=True)
    except TaskAborted as e:
        print("aborted", e, flush=True)
    except ipphpc.RemoteError as e:
        print("error", e.ename, flush=True)
print("again", lv.apply_sync(nap, 0), flush=True)
"""


def test_stopped_client_reads_why_its_queued_tasks_were_dropped(two, pdir, tmp_path):
    """A client process stopped (SIGSTOP) past client_timeout, then continued: its queued tasks were dropped
    with the reason, those running were interrupted, and it can send new work."""
    script = tmp_path / "paused.py"
    script.write_text(textwrap.dedent(PAUSED))
    p = subprocess.Popen([sys.executable, str(script), str(pdir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "submitted 6"
        os.kill(p.pid, signal.SIGSTOP)
        time.sleep(2 + 2)  # client_timeout, and a heartbeat or two of the controller
        os.kill(p.pid, signal.SIGCONT)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    lines = out.splitlines()
    aborted = [ln for ln in lines if ln.startswith("aborted")]
    assert len(aborted) == 4 and all("client went away" in ln for ln in aborted), out
    assert lines.count("error KeyboardInterrupt") == 2, out  # the two running were interrupted
    assert lines[-1] == "again 0", out


def test_stopped_and_continued_engine_comes_back_everywhere(two):
    """SIGSTOP longer than the heartbeat window, then SIGCONT: the engine registers again with its id and
    is in every client's rc.ids, as in the controller's list."""
    ctl, rc = two
    eid = rc.ids[0]
    pid = pid_of(rc, eid)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: eid not in rc.ids, 10, what="the stopped engine to be dropped")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: eid in rc.ids, 15, interval=0.1, what=f"engine {eid} back in rc.ids ({rc.ids})")
    assert sorted(int(k) for k in rc.controller_status()["engines"]) == sorted(rc.ids)
    assert rc[eid].apply_sync(os.getpid) == pid
