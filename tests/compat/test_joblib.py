"""joblib's Parallel on real engines through the 'ipyparallel' / 'ipphpc' backends."""
from __future__ import annotations

import os

import pytest

joblib = pytest.importorskip("joblib")
from joblib import Parallel, delayed, parallel_config  # noqa: E402

import ipphpc as ipp  # noqa: E402
from ipphpc import Client, RemoteError  # noqa: E402
from ipphpc.client._joblib import IPythonParallelBackend  # noqa: E402
from tests.core.helpers import ship_by_value  # noqa: E402

ship_by_value(__name__)


def neg_pid(x: int) -> tuple[int, int]:
    import os as _os
    return -x, _os.getpid()


def neg(x: int) -> int:
    return -x


def fails_on(x: int, bad: int) -> int:
    if x == bad:
        raise ZeroDivisionError(f"no {x}")
    return x


@pytest.fixture
def engine_pids(rc) -> set[int]:
    return set(rc[:].apply_sync(os.getpid))


@pytest.fixture
def latest(rc, monkeypatch):
    """The shared client as the most recently connected one."""
    monkeypatch.setattr(Client, "_latest", rc)
    return rc


@pytest.mark.parametrize("name", ["ipyparallel", "ipphpc"])
def test_default_backend_runs_on_the_latest_clients_engines(latest, engine_pids, name):
    ipp.register_joblib_backend()
    p = Parallel(backend=name)
    assert isinstance(p._backend, IPythonParallelBackend)
    out = p(delayed(neg_pid)(i) for i in range(40))
    assert [v for v, _ in out] == [neg(i) for i in range(40)]
    assert {pid for _, pid in out} <= engine_pids
    assert p._backend._view.client is latest


def test_parallel_config_context_and_n_jobs(latest, engine_pids):
    ipp.register_joblib_backend()
    with parallel_config(backend="ipphpc"):
        out = Parallel(n_jobs=-1)(delayed(neg_pid)(i) for i in range(10))
    assert [v for v, _ in out] == [-i for i in range(10)]
    assert {pid for _, pid in out} <= engine_pids
    assert IPythonParallelBackend().effective_n_jobs(1) == max(2, len(latest.ids))


def test_view_backend(rc, engine_pids):
    view = rc.load_balanced_view()
    view.register_joblib_backend("compat-view")
    p = Parallel(backend="compat-view")
    assert p._backend._view is view
    out = p(delayed(neg_pid)(i) for i in range(25))
    assert [v for v, _ in out] == [-i for i in range(25)]
    assert {pid for _, pid in out} <= engine_pids


def test_single_engine_direct_view_backend(rc, engine_pids):
    e1 = rc.ids[-1]
    pid = rc[e1].apply_sync(os.getpid)
    rc[e1].register_joblib_backend("compat-one")
    out = Parallel(backend="compat-one")(delayed(neg_pid)(i) for i in range(6))
    assert out == [(-i, pid) for i in range(6)]


def test_direct_view_of_several_engines_balances_over_them(rc, engine_pids):
    rc[:].register_joblib_backend("compat-all")
    out = Parallel(backend="compat-all")(delayed(neg_pid)(i) for i in range(30))
    assert [v for v, _ in out] == [-i for i in range(30)]
    assert {pid for _, pid in out} <= engine_pids


def test_generator_output(latest):
    ipp.register_joblib_backend()
    gen = Parallel(backend="ipyparallel", return_as="generator")(delayed(neg)(i) for i in range(12))
    assert list(gen) == [neg(i) for i in range(12)]


def test_task_error_reaches_the_caller(latest):
    ipp.register_joblib_backend()
    with pytest.raises(RemoteError) as e:
        Parallel(backend="ipyparallel")(delayed(fails_on)(i, 3) for i in range(6))
    assert e.value.ename == "ZeroDivisionError"


def test_without_a_client_one_is_connected_and_closed(cluster, rc, engine_pids, monkeypatch, tmp_path):
    """No client yet: the backend connects to the newest cluster of the default profile, and closes
    that client when joblib is done with the backend."""
    (tmp_path / "profile_default").symlink_to(cluster.profile_dir)
    monkeypatch.setenv("IPPHPC_DIR", str(tmp_path))
    monkeypatch.setattr(Client, "_latest", None)
    ipp.register_joblib_backend()
    out = Parallel(backend="ipyparallel")(delayed(neg_pid)(i) for i in range(8))
    assert [v for v, _ in out] == [-i for i in range(8)]
    assert {pid for _, pid in out} <= engine_pids
    made = Client._latest
    assert made is not None and made is not rc
    assert made._closed
    assert rc[:].apply_sync(neg, 1) == [-1, -1]  # the shared client is untouched


def test_make_default(latest, engine_pids):
    ipp.register_joblib_backend(make_default=True)
    try:
        out = Parallel()(delayed(neg_pid)(i) for i in range(4))
        assert {pid for _, pid in out} <= engine_pids
    finally:
        joblib.parallel.register_parallel_backend("loky", joblib.parallel.BACKENDS["loky"], make_default=True)
