"""The IPython Parallel client API against a real controller and two real engines."""
from __future__ import annotations

import concurrent.futures
import datetime
import os
import time

import numpy as np
import pytest

from ipphpc import AsyncResult, Client, CompositeError, RemoteError, TaskAborted, TaskTimeout
from ipphpc.client.view import DirectView, LoadBalancedView

from .helpers import ship_by_value, wait_for_file, wait_until

ship_by_value(__name__)


def fail_first_time(marker: str) -> str:
    """Raise unless `marker` exists; create it on the way out, so a second attempt succeeds."""
    import os as _os
    if not _os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return f"ok on {_os.getpid()}"


def boom(x=0):
    return 1 / x


@pytest.fixture
def gates(tmp_path):
    """Paths that engine tasks wait on; all are opened at the end, so no engine stays blocked."""
    made: list[str] = []

    def new() -> str:
        made.append(str(tmp_path / f"gate{len(made)}"))
        return made[-1]
    yield new
    for g in made:
        open(g, "a").close()


def release(gate: str) -> None:
    open(gate, "a").close()


# -- engines and views ------------------------------------------------------------------------------

def test_ids_and_engines(rc):
    """rc.ids lists the registered engines; rc.engines describes each one."""
    ids = rc.ids
    assert len(ids) == 2 and ids == sorted(ids)
    assert set(rc.engines) == set(ids)
    assert len(rc) == 2
    pids = rc[:].apply_sync(os.getpid)
    assert sorted(pids) == sorted(rc.engines[i]["pid"] for i in ids)


def test_wait_for_engines_and_timeout(rc):
    """wait_for_engines returns once enough engines are there and raises TimeoutError otherwise."""
    rc.wait_for_engines(2, timeout=5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="2 of 3 engines"):
        rc.wait_for_engines(3, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 5


def test_direct_views_apply(rc):
    """rc[:], rc[i] and rc.direct_view([...]) run on the chosen engines, in order."""
    ids = rc.ids
    everyone = rc[:]
    assert isinstance(everyone, DirectView)
    pids = everyone.apply_sync(os.getpid)
    assert len(set(pids)) == 2
    assert ids[0] == 0 and rc[0].apply_sync(os.getpid) == pids[0]
    assert rc[ids[1]].apply_sync(os.getpid) == pids[1]  # one engine: a scalar, not a list
    assert rc.direct_view([ids[1]]).apply_sync(os.getpid) == [pids[1]]
    assert rc.direct_view([ids[1], ids[0]]).apply_sync(os.getpid) == [pids[1], pids[0]]
    ar = everyone.apply_async(lambda a, b=0: a + b, 1, b=2)
    assert isinstance(ar, AsyncResult) and ar.get(timeout=10) == [3, 3]
    ar = everyone.apply(lambda: 5)  # non-blocking by default
    assert isinstance(ar, AsyncResult) and ar.get(10) == [5, 5]
    blocking = rc.direct_view(ids, block=True)
    assert blocking.apply(lambda: 6) == [6, 6]
    with pytest.raises(IndexError):
        rc[max(ids) + 100]


def test_execute_push_pull_and_item_access(rc):
    """execute, push, pull and view['x'] read and write the engines' namespaces."""
    dv = rc[:]
    dv.execute("exec_value = 10 * 3", block=True)
    assert dv.pull("exec_value", block=True) == [30, 30]
    dv.push({"pa": 1, "pb": [2, 3]}, block=True)
    assert dv.pull(["pa", "pb"], block=True) == [[1, [2, 3]], [1, [2, 3]]]
    assert rc[rc.ids[0]].pull("pa", block=True) == 1
    dv["item"] = {"k": "v"}
    assert dv["item"] == [{"k": "v"}, {"k": "v"}]
    rc[rc.ids[1]]["only_one"] = 9
    assert rc[rc.ids[1]]["only_one"] == 9
    with pytest.raises(RemoteError) as err:
        rc[rc.ids[0]].pull("only_one", block=True)
    assert err.value.ename == "NameError"
    ar = dv.execute("raise ValueError('from execute')", block=False)
    with pytest.raises(CompositeError):
        ar.get(10)


def test_scatter_gather_lists_and_arrays(rc):
    """scatter splits a sequence into contiguous pieces, one per engine; gather joins them back."""
    dv = rc[:]
    data = list(range(7))
    dv.scatter("part", data, block=True)
    assert dv.pull("part", block=True) == [[0, 1, 2, 3], [4, 5, 6]]
    assert dv.gather("part", block=True) == data

    arr = np.arange(21, dtype=np.int32).reshape(7, 3)
    dv.scatter("apart", arr, block=True)
    pieces = dv.pull("apart", block=True)
    assert [p.shape for p in pieces] == [(4, 3), (3, 3)]
    back = dv.gather("apart", block=True)
    assert isinstance(back, np.ndarray) and back.dtype == np.int32 and np.array_equal(back, arr)

    big = np.random.default_rng(2).random(40_000)  # pieces over 64 KiB travel out of band
    dv.scatter("big", big, block=True)
    assert np.array_equal(dv.gather("big", block=True), big)
    assert dv.apply_sync(lambda: float(big.sum())) != [0.0, 0.0]  # a closure: the test's array
    sums = dv.pull("big", block=True)
    assert np.isclose(sum(float(p.sum()) for p in sums), big.sum())


def test_direct_view_map(rc):
    """DirectView.map splits the sequences over the engines and returns results in order."""
    dv = rc[:]
    assert dv.map_sync(lambda x: x * x, range(10)) == [x * x for x in range(10)]
    assert dv.map_sync(lambda a, b: a - b, [10, 20, 30], [1, 2, 3]) == [9, 18, 27]
    who = dv.map_sync(lambda _: os.getpid(), range(4))
    assert len(set(who)) == 2
    ar = dv.map(lambda x: x + 1, range(5), block=False)
    assert list(ar) == [1, 2, 3, 4, 5]


# -- load balancing ----------------------------------------------------------------------------------

def test_load_balanced_apply_and_map(rc):
    """A load-balanced view applies and maps with chunksize, over several sequences."""
    lv = rc.load_balanced_view()
    assert isinstance(lv, LoadBalancedView)
    assert lv.apply_sync(lambda x: x + 1, 1) == 2
    assert lv.apply(lambda: "x").get(10) == "x"
    ar = lv.map(lambda a, b: a * b, range(10), range(10, 20), chunksize=3)
    assert len(ar) == 4  # ceil(10 / 3) tasks
    assert ar.get(10) == [a * b for a, b in zip(range(10), range(10, 20))]
    assert lv.map_sync(str, range(25)) == [str(i) for i in range(25)]
    assert lv.map(lambda x: x, [], block=True) == []
    ran_on = set(lv.map_sync(lambda _: os.getpid(), range(200), chunksize=1))
    assert ran_on <= set(rc[:].apply_sync(os.getpid))


def test_map_ordered_and_unordered_iteration(rc, gates):
    """Ordered iteration yields in input order even when a later chunk finishes first; unordered
    iteration yields whatever finished first."""
    lv = rc.load_balanced_view()
    # a task of 0.1 s makes the controller queue at most one task per engine (its prefetch limit drops
    # to 1), so the chunks below land on different engines
    lv.apply_sync(time.sleep, 0.1)
    assert rc.controller_status()["limit"] == 1
    gate, gate2 = gates(), gates()

    def job(x):
        if x == "slow":
            return wait_for_file(gate)
        return x

    ar = lv.map(job, ["slow", "fast"], chunksize=1, ordered=False)
    wait_until(lambda: ar.progress >= 1, 20, what="the fast chunk to finish")
    it = iter(ar)
    assert next(it) == "fast"  # the slow chunk waits for the gate, which is still closed
    release(gate)
    assert next(it) == "released"

    ar = lv.map(lambda x: wait_for_file(gate2) if x == 0 else x, [0, 1, 2], chunksize=1, ordered=True)
    wait_until(lambda: ar.progress >= 2, 20, what="the fast chunks to finish")
    assert not ar.done()
    release(gate2)
    assert list(ar) == ["released", 1, 2]


def test_imap(rc):
    """imap yields all results, in order by default and as a permutation unordered."""
    lv = rc.load_balanced_view()
    assert list(lv.imap(lambda x: x * 3, range(30))) == [x * 3 for x in range(30)]
    out = list(lv.imap(lambda x: -x, range(30), ordered=False, chunksize=4))
    assert sorted(out) == sorted(-x for x in range(30))


def test_retries(rc, tmp_path):
    """With retries=1 a task that fails on its first attempt succeeds; with retries=0 it raises."""
    marker = str(tmp_path / "attempted")
    result = rc.load_balanced_view(retries=1).apply(fail_first_time, marker).get(timeout=20)
    assert result.startswith("ok on ") and os.path.exists(marker)

    marker2 = str(tmp_path / "attempted2")
    with pytest.raises(RemoteError, match="first attempt fails"):
        rc.load_balanced_view().apply(fail_first_time, marker2).get(timeout=20)
    with pytest.raises(RemoteError):
        rc.load_balanced_view(retries=2).apply(boom).get(timeout=20)


def test_timeout_for_task_that_cannot_start(rc, gates):
    """A task with `timeout` queued behind busy engines fails with TaskTimeout; the others still run."""
    gate = gates()
    lv = rc.load_balanced_view()
    status = rc.controller_status()
    assert status["queued"] == 0
    # fill every engine's queue up to the controller's prefetch limit, then one more waits in the controller
    blockers = [lv.apply(wait_for_file, gate) for _ in range(status["limit"] * len(rc.ids) + 1)]
    while rc.controller_status()["queued"] == 0:
        assert len(blockers) < 1000, "the controller never queued a task"
        blockers.append(lv.apply(wait_for_file, gate))
    n_block = len(blockers)
    t0 = time.monotonic()
    late = rc.load_balanced_view(timeout=0.3).apply(lambda: "ran")
    with pytest.raises(TaskTimeout):
        late.get(timeout=20)
    assert time.monotonic() - t0 < 10
    release(gate)
    assert [b.get(timeout=30) for b in blockers] == ["released"] * n_block
    assert rc.load_balanced_view(timeout=5).apply_sync(lambda: "in time") == "in time"


# -- AsyncResult -----------------------------------------------------------------------------------

def test_async_result_future_api(rc, gates):
    """AsyncResult is a Future: get(timeout) raises TimeoutError while pending; wait, ready, successful."""
    gate = gates()
    ar = rc[rc.ids[0]].apply_async(wait_for_file, gate)
    assert isinstance(ar, concurrent.futures.Future)
    with pytest.raises(TimeoutError):
        ar.get(timeout=0.2)
    assert not ar.ready() and not ar.wait(0.05)
    with pytest.raises(AssertionError):
        ar.successful()
    release(gate)
    assert ar.wait(20) is True
    assert ar.ready() and ar.successful() and ar.get() == "released"
    assert ar.result() == "released"
    bad = rc[rc.ids[0]].apply_async(boom)
    bad.wait(20)
    assert bad.ready() and not bad.successful()
    assert isinstance(bad.exception(), RemoteError)


def test_metadata(rc):
    """metadata carries submitted/started/completed/received times, engine id, stdout and stderr."""
    eid = rc.ids[1]

    def talk(n):
        import sys
        import time as _t
        print("to stdout", n)
        print("to stderr", n, file=sys.stderr)
        _t.sleep(0.05)
        return n

    ar = rc[eid].apply_async(talk, 3)
    assert ar.get(10) == 3
    md = ar.metadata
    for k in ("submitted", "started", "completed", "received"):
        assert isinstance(md[k], datetime.datetime), k
    assert md.submitted <= md.started < md.completed <= md.received
    assert (md.completed - md.started).total_seconds() >= 0.05
    assert md.engine_id == eid == ar.engine_id
    assert md.stdout == "to stdout 3\n" and ar.stdout == md.stdout
    assert md.stderr == "to stderr 3\n" and ar.stderr == md.stderr
    assert ar.elapsed >= 0.05 and ar.elapsed < 10

    multi = rc[:].apply_async(talk, 1)
    multi.get(10)
    assert [m.engine_id for m in multi.metadata] == rc.ids
    assert multi.stdout == ["to stdout 1\n"] * 2


def test_wait_interactive(rc, capsys):
    """wait_interactive shows progress and returns once every task is done."""
    ar = rc.load_balanced_view().map(lambda x: (time.sleep(0.02), x)[1], range(8), chunksize=1)
    ar.wait_interactive(interval=0.01)
    assert ar.done() and ar.progress == 8
    assert ar.get() == list(range(8))
    assert "8/8" in capsys.readouterr().err


def test_remote_error_carries_traceback(rc):
    """A remote exception arrives as RemoteError with ename, evalue and the remote traceback text."""
    with pytest.raises(RemoteError) as err:
        rc[rc.ids[0]].apply_sync(boom)
    e = err.value
    assert e.ename == "ZeroDivisionError" and "division by zero" in e.evalue
    assert "in boom" in e.traceback and e.traceback.rstrip().endswith("ZeroDivisionError: division by zero")
    assert e.engine_info["engine_id"] == rc.ids[0]
    assert "ZeroDivisionError" in str(e)


def test_composite_error(rc):
    """Failures on several engines come back as one CompositeError listing each engine's RemoteError."""
    with pytest.raises(CompositeError) as err:
        rc[:].apply_sync(boom)
    e = err.value
    assert isinstance(e, RemoteError) and len(e.elist) == 2
    assert {x.engine_info["engine_id"] for x in e.elist} == set(rc.ids)
    assert all(x.ename == "ZeroDivisionError" for x in e.elist)
    with pytest.raises(RemoteError) as first:
        e.raise_exception()
    assert first.value is e.elist[0]

    pid0 = rc[rc.ids[0]].apply_sync(os.getpid)
    with pytest.raises(CompositeError) as err:
        rc[:].apply_sync(lambda: boom(0) if os.getpid() == pid0 else 1)
    assert len(err.value.elist) == 1 and err.value.elist[0].engine_info["engine_id"] == rc.ids[0]
    assert "1 of 2" in str(err.value)


def test_executor(rc):
    """rc.executor() is a concurrent.futures.Executor: submit, map and as_completed work."""
    ex = rc.executor()
    assert isinstance(ex, concurrent.futures.Executor)
    futs = [ex.submit(lambda x: x * 10, i) for i in range(6)]
    done = {f.result() for f in concurrent.futures.as_completed(futs, timeout=20)}
    assert done == {i * 10 for i in range(6)}
    assert list(ex.map(lambda a, b: a + b, range(5), range(5), timeout=20)) == [0, 2, 4, 6, 8]
    with rc.executor() as ex2:
        f = ex2.submit(pow, 2, 10)
    assert f.done() and f.result() == 1024
    wait = concurrent.futures.wait([ex.submit(boom)], timeout=20)
    (failed,) = wait.done
    assert isinstance(failed.exception(), RemoteError)


def test_close_aborts_pending_tasks(cluster, rc, gates):
    """Closing a client fails its unfinished tasks with TaskAborted instead of leaving them pending."""
    gate = gates()
    other = Client(cluster.client_file)
    ar = other[other.ids[0]].apply_async(wait_for_file, gate)
    other.close()
    with pytest.raises(TaskAborted):
        ar.get(timeout=10)
    release(gate)
    assert rc[rc.ids[0]].apply_sync(lambda: "free again") == "free again"


def test_undeserializable_result_fails_instead_of_hanging(rc):
    """A result the client cannot unpickle (its class lives in a module only the engine has) fails the
    AsyncResult with the reason, instead of leaving it pending forever."""
    eid = rc.ids[0]
    rc[eid].execute("import sys, types\n"
                    "m = types.ModuleType('engine_only_module')\n"
                    "exec('class Thing:\\n    pass', m.__dict__)\n"
                    "sys.modules['engine_only_module'] = m\n", block=True)
    ar = rc[eid].apply_async(lambda: __import__("engine_only_module").Thing())
    with pytest.raises(Exception) as err:  # any error naming the cause, but not a hang
        ar.get(timeout=5)
    assert not isinstance(err.value, TimeoutError), "the result never completed"
    assert "engine_only_module" in str(err.value)
    assert rc[eid].apply_sync(lambda: "next task fine") == "next task fine"


def test_synchronous_calls_from_many_threads(cluster):
    """Each thread's apply_sync gets its own result (direct and load-balanced) on its own channel;
    the channels say goodbye when the client closes, and asynchronous calls are unaffected."""
    with Client(cluster.client_file) as base:
        before = base.controller_status()["clients"]
        rc = Client(cluster.client_file)
        ids = rc.ids

        def work(k: int) -> list:
            lb = rc.load_balanced_view()
            return [(rc[ids[i % len(ids)]].apply_sync(lambda x: x * 3, k * 1000 + i),
                     lb.apply_sync(lambda x: -x, k * 1000 + i)) for i in range(40)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(work, range(4)))
        for k, pairs in enumerate(results):
            assert pairs == [(3 * (k * 1000 + i), -(k * 1000 + i)) for i in range(40)]
        assert rc[ids[0]].apply_async(lambda: "async").get(10) == "async"
        assert base.controller_status()["clients"] == before + 1 + 4  # the client and the threads' channels
        rc.close()
        wait_until(lambda: base.controller_status()["clients"] == before, 10, what="the channels' goodbyes")
