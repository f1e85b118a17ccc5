"""become_dask / stop_dask: dask workers inside two real engines, a scheduler in this process."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

distributed = pytest.importorskip("distributed")

from ipphpc.client import dask as ipdask  # noqa: E402
from ipphpc.client.remote import EngineNamespace  # noqa: E402
from tests.core.helpers import ship_by_value, wait_until  # noqa: E402

ship_by_value(__name__)


def pid_of(x: int) -> tuple[int, int]:
    import os as _os
    return x * x, _os.getpid()


def engine_threads() -> list[str]:
    import threading as _threading
    return [t.name for t in _threading.enumerate()]


def has_worker(ns: dict) -> bool:
    return "dask_worker" in ns and "distributed_worker" in ns


@pytest.fixture
def engine_pids(rc) -> dict[int, int]:
    return dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))


@pytest.fixture
def dask_client(rc):
    dc = rc.become_dask()
    try:
        yield dc
    finally:
        rc.stop_dask()


def test_dask_work_runs_in_the_engines(rc, dask_client, engine_pids):
    dc = dask_client
    assert isinstance(dc, distributed.Client)
    dc.wait_for_workers(len(rc.ids), timeout=30)
    workers = dc.scheduler_info()["workers"]
    assert sorted(w["name"] for w in workers.values()) == sorted(rc.ids)
    assert all(w["nthreads"] == 1 for w in workers.values())
    assert sorted(dc.run(os.getpid).values()) == sorted(engine_pids.values())
    results = dc.gather(dc.map(pid_of, range(30)), asynchronous=False)
    assert [r for r, _ in results] == [x * x for x in range(30)]
    assert {p for _, p in results} <= set(engine_pids.values())
    total = dc.submit(sum, dc.map(lambda x: x + 1, range(10))).result(timeout=30)
    assert total == sum(range(1, 11))
    # the engines keep serving their own tasks meanwhile, with the worker in their namespace
    assert rc[:].apply_sync(has_worker, EngineNamespace()) == [True, True]
    assert all("ipphpc-dask-worker" in names for names in rc[:].apply_sync(engine_threads))
    assert "ipphpc-dask-scheduler" in [t.name for t in threading.enumerate()]


def test_become_dask_twice_reuses_the_cluster(rc, dask_client):
    assert rc.become_dask() is dask_client
    assert len(dask_client.scheduler_info()["workers"]) == len(rc.ids)


def test_stop_dask_leaves_engines_serving(rc, engine_pids):
    dc = rc.become_dask()
    scheduler = dc.scheduler.address
    rc.stop_dask()
    assert dc.status == "closed"
    assert rc[:].apply_sync(has_worker, EngineNamespace()) == [False, False]
    assert not any("ipphpc-dask-worker" in names for names in rc[:].apply_sync(engine_threads))
    assert "ipphpc-dask-scheduler" not in [t.name for t in threading.enumerate()]
    assert rc[:].apply_sync(os.getpid) == [engine_pids[e] for e in rc.ids]
    with pytest.raises(OSError):
        distributed.Client(scheduler, timeout=2)
    rc.stop_dask()  # nothing left to stop: no error


def test_part_of_the_engines(rc, engine_pids):
    e0, e1 = rc.ids[:2]
    dc = rc.become_dask(targets=[e0])
    try:
        assert list(dc.run(os.getpid).values()) == [engine_pids[e0]]
        dc2 = rc.become_dask(targets=[e1])
        assert dc2 is dc
        wait_until(lambda: len(dc.scheduler_info()["workers"]) == 2, timeout=30, what="the second worker")
        rc.stop_dask(targets=[e0])
        assert rc[:].apply_sync(has_worker, EngineNamespace()) == [False, True]
        wait_until(lambda: list(dc.run(os.getpid).values()) == [engine_pids[e1]], timeout=30,
                   what="only the second engine's worker")
    finally:
        rc.stop_dask()
    assert dc.status == "closed"
    assert rc[:].apply_sync(has_worker, EngineNamespace()) == [False, False]


def test_worker_args_reach_the_workers(rc):
    dc = rc.become_dask(nthreads=2, scheduler_args={"host": "127.0.0.1"})
    try:
        assert dc.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(w["nthreads"] == 2 for w in dc.scheduler_info()["workers"].values())
    finally:
        rc.stop_dask()


def test_without_distributed_one_line_says_how_to_install(rc, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError) as e:
        rc.become_dask()
    assert "\n" not in str(e.value) and "pip install distributed" in str(e.value)
    assert "ipphpc-dask-scheduler" not in [t.name for t in threading.enumerate()]
    assert rc[:].apply_sync(has_worker, EngineNamespace()) == [False, False]


def test_the_module_imports_without_distributed():
    """Engines import ipphpc.client.dask to run the worker functions; it must not need distributed."""
    code = "import sys; sys.modules['distributed'] = None; import ipphpc.client.dask"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_failed_start_stops_what_started(rc, monkeypatch):
    with pytest.raises(Exception, match="no_such_worker_option"):
        rc.become_dask(no_such_worker_option=1)
    assert ipdask._running.get(rc) is None
    assert "ipphpc-dask-scheduler" not in [t.name for t in threading.enumerate()]
    assert rc[:].apply_sync(has_worker, EngineNamespace()) == [False, False]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_nanny_workers_are_children_of_the_engines(rc, engine_pids):
    dc = rc.become_dask(nanny=True)
    try:
        pids = list(dc.run(os.getpid).values())
        assert len(pids) == len(rc.ids)
        assert sorted(parent_of(p) for p in pids) == sorted(engine_pids.values())
    finally:
        rc.stop_dask()
    assert dc.status == "closed"
    assert rc[:].apply_sync(has_worker, EngineNamespace()) == [False, False]
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and parent_of(p) in engine_pids.values() for p in pids),
               timeout=30, what="the nanny's worker processes to exit")
