"""AsyncResult's waits, fed by a thread as the client's I/O thread feeds it."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from ipphpc.client.asyncresult import AsyncMapResult, AsyncResult
from ipphpc.error import RemoteError


def _later(delay: float, fn, *args) -> threading.Thread:
    def run():
        time.sleep(delay)
        fn(*args)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_one_task_ending_does_not_wake_a_wait_for_the_whole_result_early() -> None:
    ar = AsyncResult(2, single=False)
    _later(0.05, ar._child_done, 0, "a", None, {})
    _later(0.3, ar._child_done, 1, "b", None, {})
    assert ar.result(timeout=10) == ["a", "b"]  # a wake-up at the first task's end would raise TimeoutError


def test_first_exception_returns_while_other_tasks_run() -> None:
    ar = AsyncResult(3, single=False)
    _later(0.05, ar._child_done, 1, None, RemoteError("ValueError", "boom"), {})
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="boom"):
        ar.get(timeout=10, return_when=concurrent.futures.FIRST_EXCEPTION)
    assert time.monotonic() - t0 < 5  # not the 10 s timeout: the other two never finish
    assert not ar.done()


def test_first_exception_times_out_when_nothing_fails() -> None:
    ar = AsyncResult(2, single=False)
    _later(0.05, ar._child_done, 0, 1, None, {})
    with pytest.raises(TimeoutError, match="1 of 2 tasks not done"):
        ar.get(timeout=0.3, return_when=concurrent.futures.FIRST_EXCEPTION)


def test_iteration_waits_for_each_task_in_order() -> None:
    ar = AsyncResult(3, single=False)
    for i, delay in enumerate((0.2, 0.05, 0.1)):
        _later(delay, ar._child_done, i, i * 10, None, {})
    assert list(ar) == [0, 10, 20]


def test_unordered_map_iteration_yields_chunks_as_they_end() -> None:
    amr = AsyncMapResult(3, ordered=False)
    for i, delay in ((0, 0.3), (1, 0.05), (2, 0.15)):
        _later(delay, amr._child_done, i, [i, i], None, {})
    assert list(amr) == [1, 1, 2, 2, 0, 0]


def test_split_and_join_pass_results_on() -> None:
    ar = AsyncResult(2, single=False)
    ar.msg_ids[:] = ["m0", "m1"]
    first, second = ar.split()
    joined = AsyncResult.join(second, first)
    _later(0.05, ar._child_done, 1, "y", None, {})
    _later(0.1, ar._child_done, 0, "x", None, {})
    assert joined.get(10) == ["y", "x"]
    assert (first.get(10), second.get(10)) == ("x", "y")


def test_published_data_appears_per_task() -> None:
    ar = AsyncResult(2, single=False)
    assert ar.data == [{}, {}]
    ar._on_data(1, {"step": 3})
    assert ar.data == [{}, {"step": 3}]
