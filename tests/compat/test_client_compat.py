"""IPython Parallel's client API as its users write it, against real engines.

One test per documented behaviour: names, Client members, view flags and dependencies,
AsyncResult, signals and aborts, engine import semantics.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

import ipphpc as ipp
from tests.core.helpers import ship_by_value, wait_for_file, wait_until

ship_by_value(__name__)


def test_names_users_import():
    """The names code written for IPython Parallel uses exist, with its exception hierarchy."""
    for name in ("Client", "Cluster", "HPCCluster", "DirectView", "LoadBalancedView", "BroadcastView",
                 "AsyncResult", "AsyncMapResult", "ViewExecutor", "Reference", "Dependency", "depend",
                 "require", "dependent", "interactive", "parallel", "remote", "RemoteFunction",
                 "ParallelFunction", "version_info", "error", "register_joblib_backend"):
        assert hasattr(ipp, name), name
    assert ipp.Cluster is ipp.HPCCluster
    assert ipp.error.TimeoutError is TimeoutError
    for name in ("RemoteError", "CompositeError", "EngineError", "TaskAborted", "TaskTimeout", "UnmetDependency",
                 "ImpossibleDependency", "DependencyTimeout", "InvalidDependency", "NoEnginesRegistered"):
        assert issubclass(getattr(ipp.error, name), ipp.error.KernelError), name
    assert issubclass(ipp.error.ImpossibleDependency, ipp.error.UnmetDependency)
    assert ipp.version_info[:3] == tuple(int(x) for x in ipp.__version__.split(".")[:3])


def test_block_is_inherited_and_negative_targets(rc):
    """rc.block sets the default of views made afterwards; rc[-1] is the last engine."""
    ids = rc.ids
    assert rc[-1].apply_sync(os.getpid) == rc.engines[ids[-1]]["pid"]
    assert rc[-2:].apply_sync(lambda: 1) == [1, 1]
    with pytest.raises(IndexError):
        rc[-len(ids) - 1]
    rc.block = True
    try:
        assert rc[:].apply(lambda: 2) == [2, 2]
        assert rc.load_balanced_view().apply(lambda: 3) == 3
        assert rc.direct_view("all").block is True
    finally:
        rc.block = False
    assert isinstance(rc[:].apply(lambda: 4), ipp.AsyncResult)


def test_results_metadata_history_and_wait_by_msg_id(rc):
    """rc.results, rc.metadata and rc.history are keyed by msg_id; wait takes msg_ids, indices and results."""
    lv = rc.load_balanced_view()
    ar = lv.apply_async(lambda x: x * 2, 21)
    mid = ar.msg_ids[0]
    assert rc.history[-1] == mid and mid in rc.metadata
    assert rc.wait(mid, timeout=10) is True
    assert rc.results[mid] == 42
    md = rc.metadata[mid]
    assert md["engine_id"] in rc.ids and md["completed"] >= md["started"]
    ar2 = lv.apply_async(lambda: 7)
    assert rc.wait([ar2, -1], timeout=10)
    assert rc.wait(timeout=10) and not rc.outstanding
    with pytest.raises(ValueError, match="unknown task"):
        rc.wait("no-such-msg-id")


def test_set_flags_chains_and_lists_valid_flags(rc):
    """set_flags returns the view; an unknown flag names the valid ones; temp_flags restores them."""
    lv = rc.load_balanced_view()
    assert lv.set_flags(retries=1, label="fit_1") is lv
    with pytest.raises(KeyError, match="did you mean 'retries'.*flags: targets, block"):
        lv.set_flags(retrys=2)
    with lv.temp_flags(block=True, label="tmp"):
        assert lv.apply(lambda: 1) == 1
        assert rc.metadata[rc.history[-1]]["label"] == "tmp"
    assert lv.block is False and lv.label == "fit_1"
    with pytest.raises(ValueError, match="timeout"):
        lv.set_flags(timeout=-1)


def _wait_then(path, value):
    wait_for_file(path)
    return value


def test_after_dependency_orders_tasks(rc, tmp_path):
    """A task with `after` starts only once those tasks are done."""
    gate = str(tmp_path / "gate")
    lv = rc.load_balanced_view()
    first = lv.apply_async(_wait_then, gate, "first")
    later = lv.set_flags(after=first).apply_async(time.time)
    lv.set_flags(after=None)
    time.sleep(0.5)
    assert not later.ready(), "the dependent task ran before its dependency finished"
    released = time.time()
    open(gate, "w").close()
    assert first.get(10) == "first"
    assert later.get(10) >= released


def test_follow_runs_where_the_task_ran(rc):
    """`follow` sends a task to the engine that ran the followed task."""
    lv = rc.load_balanced_view()
    for _ in range(4):
        ar = lv.apply_async(os.getpid)
        ar.get(10)
        where = ar.metadata["engine_id"]
        with lv.temp_flags(follow=ar):
            assert lv.apply_sync(os.getpid) == rc.engines[where]["pid"]


def test_impossible_and_unknown_dependencies(rc):
    """A failed `after` (success only) makes the task impossible; an unknown msg_id is refused at once."""
    lv = rc.load_balanced_view()
    bad = lv.apply_async(lambda: 1 / 0)
    with pytest.raises(ipp.error.RemoteError):
        bad.get(10)
    with pytest.raises(ipp.error.ImpossibleDependency):
        lv.set_flags(after=bad).apply_async(lambda: 1).get(10)
    # failure=True: the task runs after a failure
    assert lv.set_flags(after=ipp.Dependency(bad, success=False, failure=True)).apply_async(lambda: 5).get(10) == 5
    with pytest.raises(ipp.error.InvalidDependency, match="nope-1"):
        lv.set_flags(after=["nope-1"]).apply_async(lambda: 1)
    lv.set_flags(after=None)


def test_dependency_timeout(rc, tmp_path):
    """A task whose dependencies are not met within `timeout` fails with TaskTimeout, as in IPython Parallel."""
    gate = str(tmp_path / "gate")
    lv = rc.load_balanced_view()
    blocker = lv.apply_async(_wait_then, gate, 1)
    waiting = lv.set_flags(after=blocker, timeout=0.3).apply_async(lambda: 2)
    lv.set_flags(after=None, timeout=None)
    with pytest.raises(ipp.error.TaskTimeout):
        waiting.get(10)
    open(gate, "w").close()
    assert blocker.get(10) == 1


def test_unmet_dependency_moves_to_another_engine(rc):
    """A task whose @depend check fails on one engine runs on another; none able -> ImpossibleDependency."""
    target = rc.ids[-1]
    pid = rc.engines[target]["pid"]

    def on_pid(p):
        import os as _os
        return _os.getpid() == p

    @ipp.depend(on_pid, pid)
    def where():
        import os as _os
        return _os.getpid()

    lv = rc.load_balanced_view()
    assert all(lv.apply_async(where).get(10) == pid for _ in range(4))

    @ipp.depend(on_pid, -1)
    def nowhere():
        return 0

    with pytest.raises(ipp.error.ImpossibleDependency):
        lv.apply_async(nowhere).get(10)


def test_load_balanced_view_over_some_engines(rc):
    """load_balanced_view(targets=[i]) runs only there; an executor over targets does too."""
    target = rc.ids[0]
    pid = rc.engines[target]["pid"]
    lv = rc.load_balanced_view(targets=[target])
    assert set(lv.map_sync(lambda _: __import__("os").getpid(), range(20))) == {pid}
    with rc.executor(targets=[target]) as ex:
        assert ex.submit(os.getpid).result(10) == pid


def test_queue_status_shape(rc, tmp_path):
    """queue_status: {engine: {'queue', 'completed', 'tasks'}, 'unassigned': n}; verbose lists msg_ids."""
    status = rc.queue_status()
    assert set(status) == set(rc.ids) | {"unassigned"}
    for eid in rc.ids:
        assert set(status[eid]) == {"queue", "completed", "tasks"}
    gate = str(tmp_path / "gate")
    ar = rc[rc.ids[0]].apply_async(_wait_then, gate, 1)
    one = wait_until(lambda: rc.queue_status(rc.ids[0]) if rc.queue_status(rc.ids[0])["queue"] else None, 10)
    assert one["queue"] == 1 and isinstance(one["completed"], int)
    verbose = rc.queue_status(verbose=True)
    assert ar.msg_ids[0] in verbose[rc.ids[0]]["queue"]
    open(gate, "w").close()
    ar.get(10)


def test_abort_tasks_that_have_not_started(rc, tmp_path):
    """abort() drops queued tasks (TaskAborted); the running one finishes."""
    gate = str(tmp_path / "gate")
    eid = rc.ids[0]
    dv = rc[eid]
    running = dv.apply_async(_wait_then, gate, "ran")
    queued = [dv.apply_async(lambda i=i: i) for i in range(3)]
    wait_until(lambda: rc.queue_status(eid)["queue"] == 4, 10, what="tasks to reach the engine")
    rc.abort(queued)
    open(gate, "w").close()
    assert running.get(10) == "ran"
    for ar in queued:
        with pytest.raises(ipp.error.TaskAborted):
            ar.get(10)
    lv = rc.load_balanced_view()
    assert lv.apply_sync(lambda: "still serving") == "still serving"


def _sleep_long():
    import time as _t
    _t.sleep(60)
    return "not interrupted"


def test_send_signal_interrupts_the_running_task(rc):
    """SIGINT raises KeyboardInterrupt inside the task; the engine stays registered and serves the next."""
    eid = rc.ids[0]
    ar = rc[eid].apply_async(_sleep_long)
    time.sleep(0.3)
    assert rc.send_signal(signal.SIGINT, targets=[eid]) == [eid]
    with pytest.raises(ipp.error.RemoteError) as err:
        ar.get(10)
    assert err.value.ename == "KeyboardInterrupt"
    assert eid in rc.ids
    assert rc[eid].apply_sync(lambda: "next") == "next"
    # an interrupt with nothing running does nothing (and does not stop the engine)
    rc.send_signal("SIGINT", targets=[eid])
    time.sleep(0.3)
    assert rc[eid].apply_sync(lambda: "alive") == "alive"


def test_clear_empties_the_namespace(rc):
    dv = rc[:]
    dv["to_clear"] = 5
    rc.clear(block=True)
    with pytest.raises(ipp.error.CompositeError):
        dv.pull("to_clear", block=True)


def test_async_result_indexing_iteration_and_metadata(rc):
    """ar[i], ar['engine_id'], iteration, get_dict, timedelta, split/join, return_exceptions."""
    dv = rc[:]
    ar = dv.apply_async(os.getpid)
    pids = ar.get(10)
    assert ar[0] == pids[0] and ar[:] == pids
    assert ar["engine_id"] == rc.ids and ar.engine_id == rc.ids
    assert list(ar) == pids
    assert ar.get_dict() == dict(zip(rc.ids, pids))
    assert ar.timedelta(ar.submitted, ar.completed) >= 0
    assert ar.wall_time >= 0 and ar.serial_time >= 0 and ar.progress == len(rc.ids)
    parts = ar.split()
    assert [p.get(1) for p in parts] == pids
    assert ipp.AsyncResult.join(*parts).get(1) == pids
    mixed = dv.apply_async(lambda: 1 / 0)
    got = mixed.get(10, return_exceptions=True)
    assert all(isinstance(e, ipp.error.RemoteError) and e.ename == "ZeroDivisionError" for e in got)
    slow = rc[0].apply_async(time.sleep, 1)
    with pytest.raises(TimeoutError):
        slow[0]
    slow.get(10)


def test_map_results_arrive_in_order_or_unordered(rc):
    lv = rc.load_balanced_view()
    amr = lv.map_async(lambda x: x * x, range(50), chunksize=3)
    assert list(amr) == [x * x for x in range(50)]
    amr = lv.map_async(lambda x: x, range(20), chunksize=2, ordered=False)
    assert sorted(amr) == list(range(20))
    assert len(amr) == 10 and isinstance(amr, ipp.AsyncMapResult)


def _print_slowly():
    import time as _t
    for i in range(3):
        print(f"line {i}", flush=True)
        _t.sleep(0.3)
    return "done"


def test_output_streams_while_the_task_runs(rc, capsys):
    """stream_output shows what a task prints while it runs; display_outputs after the fact."""
    ar = rc[0].apply_async(_print_slowly)
    with ar.stream_output():
        time.sleep(0.5)
        early = capsys.readouterr().out
        ar.get(10)
    assert "line 0" in early and "line 2" not in early, early
    rest = capsys.readouterr().out
    assert "line 2" in rest and rest.count("line 0") == 0
    assert ar.stdout == "line 0\nline 1\nline 2\n"
    ar.display_outputs()
    assert "[stdout:" in capsys.readouterr().out


def test_execute_result_of_last_expression(rc, capsys):
    ar = rc[:].execute("a_value = 6\na_value * 7")
    ar.get(10)
    assert all(r["data"]["text/plain"] == "42" for r in ar["execute_result"])
    ar.display_outputs()
    out = capsys.readouterr().out
    assert out.count(": 42") == len(rc.ids) and "Out[" in out


def _publish():
    import time as _t

    from ipphpc.datapub import publish_data
    for i in range(3):
        publish_data({"step": i})
        _t.sleep(0.25)
    return "done"


def test_publish_data_reaches_ar_data(rc):
    ar = rc[0].apply_async(_publish)
    ar.get(10)
    wait_until(lambda: ar.data.get("step") == 2, 5, what="the last publication")


def test_engine_namespace_is_main_and_cwd_imports(rc, tmp_path):
    """'' is on the engines' path: after chdir a module in the new folder imports; names set by execute
    are seen by @interactive functions."""
    (tmp_path / "compat_mod_here.py").write_text("VALUE = 'imported from the working directory'\n")
    dv = rc[:]
    dv.apply_sync(os.chdir, str(tmp_path))
    assert dv.apply_sync(lambda: __import__("compat_mod_here").VALUE) == ["imported from the working directory"] * 2
    assert dv.apply_sync(lambda: "" in sys.path) == [True, True]
    dv.execute("from_px = 11", block=True)

    @ipp.interactive
    def read():
        return from_px  # noqa: F821 - defined on the engines

    assert dv.apply_sync(read) == [11, 11]
    assert dv.apply_sync(lambda: __import__("sys").modules["__main__"].__dict__.get("from_px")) == [11, 11]


def test_sync_imports(rc):
    dv = rc[:]
    with dv.sync_imports(quiet=True):
        import colorsys  # noqa: F401
    assert dv.apply_sync(lambda: "colorsys" in globals()) == [True, True]


def test_use_pickle_and_back(rc):
    """use_pickle sends functions by reference (a lambda fails to pickle); use_cloudpickle restores it."""
    dv = rc[:]
    dv.block = True
    try:
        dv.use_pickle()
        with pytest.raises(Exception, match="pickle"):
            dv.apply(lambda: 1)
        assert dv.apply(os.getpid) == [rc.engines[e]["pid"] for e in rc.ids]
    finally:
        dv.use_cloudpickle()
    assert dv.apply(lambda: 1) == [1, 1]


def test_purge_local_results(rc):
    ar = rc[:].apply_async(lambda: 1)
    ar.get(10)
    mids = ar.msg_ids
    rc.purge_local_results(ar)
    assert not any(m in rc.results or m in rc.metadata for m in mids)
    with pytest.raises(ValueError):
        rc.purge_local_results()
    gate_ar = rc[0].apply_async(time.sleep, 0.5)
    with pytest.raises(RuntimeError, match="outstanding"):
        rc.purge_local_results(gate_ar)
    gate_ar.get(10)


def test_wait_interactive_and_spin(rc):
    lv = rc.load_balanced_view()
    lv.map_async(lambda x: x, range(10))
    rc.spin()
    rc.wait_interactive(interval=0.05, timeout=10)
    assert not rc.outstanding


def test_blocking_waits_are_interruptible_from_another_thread(rc):
    """A wait with a timeout returns False rather than hanging."""
    ar = rc[0].apply_async(time.sleep, 0.5)
    assert rc.wait(ar, timeout=0.05) is False
    assert rc.wait(ar, timeout=10) is True
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join(1)


def test_cluster_signal_engines_and_manager(cluster, rc):
    """Cluster.signal_engines_sync(SIGINT) interrupts every engine's task; ClusterManager finds the cluster."""
    ar = rc[:].apply_async(_sleep_long)
    time.sleep(0.3)
    assert sorted(cluster.signal_engines_sync(signal.SIGINT)) == rc.ids
    with pytest.raises(ipp.error.CompositeError) as err:
        ar.get(10)
    assert [e.ename for e in err.value.elist] == ["KeyboardInterrupt"] * len(rc.ids)
    assert rc[:].apply_sync(lambda: 1) == [1] * len(rc.ids)
    one = rc[rc.ids[-1]].apply_async(_sleep_long)
    time.sleep(0.3)
    cluster.signal_engine_sync("SIGINT", rc.ids[-1])
    with pytest.raises(ipp.error.RemoteError):
        one.get(10)
    manager = ipp.ClusterManager(profile_dir=cluster.profile_dir)
    found = manager.load_clusters()
    assert any(c.cluster_id == cluster.cluster_id for c in found.values())


def test_get_result_and_owner(rc):
    """get_result(msg_id) gives an AsyncHubResult of a task sent earlier; owner=True makes the client forget it."""
    ar = rc.load_balanced_view().apply_async(lambda: "kept")
    ar.get(10)
    mid = ar.msg_ids[0]
    again = rc.get_result(mid)
    assert isinstance(again, ipp.AsyncHubResult) and again.get(10) == "kept"
    assert rc.history[-1] == mid and rc.get_result(block=True) == "kept"  # default: the last task
    owned = rc.get_result(mid, owner=True)
    assert owned.get(10) == "kept"
    assert mid not in rc.results and mid not in rc.metadata
    with pytest.raises(ValueError, match="unknown task"):
        rc.get_result("not-a-msg-id")


def test_engine_sets_by_id(ipphpc_dir):
    """start_engines returns an engine set id; stop_engines(id) stops that set alone, as in IPython Parallel."""
    cluster = ipp.Cluster(n=1, shutdown_atexit=False)
    try:
        rc = cluster.start_and_connect_sync()
        second = cluster.start_engines_sync(n=2)
        rc.wait_for_engines(3, timeout=30)
        assert len(cluster.engine_set_ids) == 2 and second == cluster.engine_set_ids[1]
        cluster.stop_engines_sync(second)
        wait_until(lambda: len(rc.ids) == 1, 30, what="the second set's engines to leave")
        assert rc[:].apply_sync(lambda: 1) == [1]
        with pytest.raises(KeyError, match="no engine set"):
            cluster.stop_engines_sync(second)
    finally:
        cluster.stop_cluster_sync()


def _started(pid: int) -> float:
    """When a process started, in seconds since boot."""
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def test_cluster_settings_of_ipython_parallel(ipphpc_dir, tmp_path, caplog):
    """Cluster(log_level=, delay=, load_profile=, engine_launcher_class=) mean what they mean in IPython
    Parallel; a log level name that does not exist is refused, naming the valid ones."""
    quiet = ipp.Cluster(n=1, log_level=40)
    assert quiet.log.getEffectiveLevel() == 40 and not quiet.log.isEnabledFor(30)
    assert ipp.Cluster(n=1, log_level="debug").log.isEnabledFor(10)
    with pytest.raises(Exception, match="log_level='LOUD': use a number or one of DEBUG"):
        ipp.Cluster(log_level="LOUD")
    assert ipp.Cluster(engine_launcher_class="MPI", controller_launcher_class="Local").engines == "MPI"
    pdir = tmp_path / "prof"
    pdir.mkdir()
    (pdir / "ipphpc_cluster_config.py").write_text("c.HPCCluster.n = 7\n")
    assert ipp.Cluster(profile_dir=str(pdir)).n == 7
    assert ipp.Cluster(profile_dir=str(pdir), load_profile=False).n == 4
    cluster = ipp.Cluster(n=1, delay=1.5, shutdown_atexit=False, profile_dir=str(pdir), load_profile=False)
    try:
        cluster.start_cluster_sync()
        gap = _started(cluster.engine_sets[0].pid) - _started(cluster.controller_launcher.pid)
        assert gap >= 1.5, gap  # the engines started the delay after the controller
    finally:
        cluster.stop_cluster_sync()


def test_ipython_syntax_on_engines(rc):
    """%magics and !commands in executed code run through IPython on the engines, as on IPython Parallel's."""
    dv = rc[:]
    dv.execute("magic_value = 3", block=True)
    ar = dv.execute("!echo from-the-shell\n%who_ls")
    ar.get(20)
    for out in ar.stdout:
        assert "from-the-shell" in out
    assert all("magic_value" in r["data"]["text/plain"] for r in ar["execute_result"])
    assert dv.apply_sync(lambda: magic_value) == [3, 3]  # noqa: F821 - set on the engines


def test_reference_as_the_function_and_views_resolve_targets(rc):
    """apply(Reference('f')) calls the engine's f; rc[:].targets are ids, as in IPython Parallel."""
    dv = rc[:]
    assert dv.targets == rc.ids and rc[-1].targets == rc.ids[-1]
    dv["held_function"] = lambda: "called on the engine"
    assert dv.apply_sync(ipp.Reference("held_function")) == ["called on the engine"] * len(rc.ids)


def test_helpers_user_code_imports():
    """serialize_object/deserialize_object and util.disambiguate_url, which inter-engine code uses."""
    import numpy as np

    from ipphpc.serialize import deserialize_object, serialize_object
    from ipphpc.util import disambiguate_url
    data = {"a": np.arange(100_000), "f": lambda x: x + 1}
    back, rest = deserialize_object(serialize_object(data))
    assert rest == [] and (back["a"] == data["a"]).all() and back["f"](1) == 2
    assert disambiguate_url("tcp://*:5555") == "tcp://127.0.0.1:5555"
    assert disambiguate_url("tcp://0.0.0.0:5555", "10.0.0.7") == "tcp://10.0.0.7:5555"
    assert disambiguate_url("tcp://node3:5555", "10.0.0.7") == "tcp://node3:5555"
