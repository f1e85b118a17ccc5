"""An engine holds the results of a run of short tasks and sends them together, never for long."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from ipphpc import Client, wire
from ipphpc.engine.holding import ResultHold

from .helpers import ship_by_value, wait_for_file, wait_until

ship_by_value(__name__)


class _Sink:
    """Where a ResultHold's thread writes: the messages, and whether the main thread was inside a task."""

    def __init__(self):
        self.sent: list[list] = []
        self.in_task = threading.Event()
        self.during_task: list[bool] = []

    def __call__(self, frames: list) -> None:
        self.during_task.append(self.in_task.is_set())
        self.sent.append(frames)


@contextlib.contextmanager
def _holding(seconds: float):
    """A ResultHold that writes to a _Sink, closed (its thread stopped) at the end."""
    sink = _Sink()
    hold = ResultHold(sink, hold=seconds)
    try:
        yield hold, sink
    finally:
        hold.close()


def _results(message: list) -> list[bytes]:
    return [m[0] for m in wire.unwrap(message) or [message]]


def test_held_results_leave_in_order_when_taken():
    with _holding(60.0) as (hold, sink):
        for i in range(5):
            hold.add([b"result %d" % i])
        assert hold.take() == [[b"result %d" % i] for i in range(5)]
        assert hold.take() == []
        assert sink.sent == []


def test_a_task_that_runs_long_does_not_keep_the_results_before_it():
    """While the main thread is inside a task, the thread sends what was held once it is due."""
    with _holding(0.02) as (hold, sink):
        hold.add([b"r0"])
        hold.add([b"r1"])
        assert hold.enter() == []  # not due yet: the task starts with them held
        sink.in_task.set()
        wait_until(lambda: sink.sent, 10, what="the held results to be sent during the task")
        assert [r for m in sink.sent for r in _results(m)] == [b"r0", b"r1"]
        assert sink.during_task == [True]
        sink.in_task.clear()
        hold.leave()


def test_between_tasks_the_thread_leaves_the_socket_to_the_main_thread():
    with _holding(0.01) as (hold, sink):
        hold.add([b"r0"])
        time.sleep(0.2)  # well past due: still the main thread's to send
        assert sink.sent == []
        assert hold.enter() == [[b"r0"]]  # due: handed back to send before the next task
        hold.leave()


def _quick(i: int) -> int:
    return i


def test_results_of_short_tasks_do_not_wait_for_a_long_task_of_the_same_run(spawner, pdir, tmp_path: Path):
    """Short tasks and a long one reach the engine in one envelope (queued while the controller was
    stopped); the short ones' results reach the client while the long one still runs."""
    ctl, _, _ = spawner.controller(pdir, "hold")
    spawner.engine(pdir, "hold")
    gate = tmp_path / "gate"
    with Client(profile_dir=str(pdir), cluster_id="hold") as rc:
        rc.wait_for_engines(1, timeout=60)
        view = rc[rc.ids[0]]
        assert view.apply_sync(_quick, -1) == -1
        os.kill(ctl.pid, signal.SIGSTOP)
        try:
            short = [view.apply_async(_quick, i) for i in range(8)]
            long = view.apply_async(wait_for_file, str(gate), 60)
            time.sleep(0.3)  # all of them at the controller when it wakes
        finally:
            os.kill(ctl.pid, signal.SIGCONT)
        try:
            wait_until(lambda: all(a.ready() for a in short), 30, what="the short tasks' results")
            assert [a.get() for a in short] == list(range(8))
            assert not long.ready()
        finally:
            gate.touch()
        assert long.get(timeout=60) == "released"
        assert rc.controller_status()["stats"]["envelopes_out"] >= 1


def test_results_before_a_task_whose_frames_are_pulled_leave_before_it_waits(spawner, pdir, monkeypatch):
    """A load-balanced task's large argument waits in the client until its engine asks for it (no shared
    memory, as across hosts). Short tasks of the same envelope ran before it: their results leave before the
    engine waits for that frame, which here the client is slow to send."""
    import numpy as np

    from ipphpc import bulk
    from ipphpc.client.direct import DirectLinks

    asked, gate = threading.Event(), threading.Event()
    serve = DirectLinks._serve

    def slow_serve(self, ch, tid):  # the client's answer to the engine's request, in the connection's thread
        asked.set()
        gate.wait(60)
        serve(self, ch, tid)
    monkeypatch.setattr(DirectLinks, "_serve", slow_serve)

    ctl, _, _ = spawner.controller(pdir, "pulled", "--no-shm")
    spawner.engine(pdir, "pulled")
    big = np.arange(3 * bulk.BULK_MIN // 8, dtype=np.float64)
    with Client(profile_dir=str(pdir), cluster_id="pulled") as rc:
        rc.wait_for_engines(1, timeout=60)
        lview = rc.load_balanced_view()
        assert lview.apply_sync(_quick, -1) == -1
        os.kill(ctl.pid, signal.SIGSTOP)
        try:
            short = [lview.apply_async(_quick, i) for i in range(8)]
            pulled = lview.apply_async(len, big)
            time.sleep(0.3)  # all of them at the controller when it wakes
        finally:
            os.kill(ctl.pid, signal.SIGCONT)
        try:
            assert asked.wait(30), "the engine never asked for the large frame"
            wait_until(lambda: all(a.ready() for a in short), 10, what="the short tasks' results")
            assert [a.get() for a in short] == list(range(8))
            assert not pulled.ready()
        finally:
            gate.set()
        assert pulled.get(timeout=60) == len(big)
        assert rc.controller_status()["stats"]["envelopes_out"] >= 1
        recs = rc.db_query({"msg_id": pulled.msg_ids[0]}, keys=["header"])
        assert recs[0]["header"]["bp"] == [1]  # it did take the pull path
