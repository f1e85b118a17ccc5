"""Checks over the whole collection, and the fixtures the core and compatibility tests share."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.core.helpers import kill_matching


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse tests that pytest-mpi would skip without saying so.

    Without --with-mpi, pytest-mpi skips every test whose keywords hold `mpi`: its own marker, but
    also a directory, module, class or parameter id named `mpi`. Only tests meant to run inside
    mpiexec may carry that marker (our own tests that start mpiexec are marked `mpiexec`).
    """
    stray = [item.nodeid for item in items if "mpi" in item.keywords and item.get_closest_marker("mpi") is None]
    if stray:
        raise pytest.UsageError("pytest-mpi would skip these tests because a directory, module, class or "
                                "parameter id is named 'mpi'; rename it: " + ", ".join(stray[:10]))
    for marker, (variable, what) in OPT_IN.items():
        if _selected(config, marker, variable):
            continue
        skip = pytest.mark.skip(reason=f"{what}: select it with -m {marker} or {variable}=1")
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)


#: markers of long runs that are skipped unless asked for (by marker expression or environment variable)
OPT_IN = {"fuzz": ("IPPHPC_FUZZ", "long fuzzing run"), "soak": ("IPPHPC_SOAK", "minutes-long soak on a scheduler")}


def _selected(config: pytest.Config, marker: str, variable: str) -> bool:
    if os.environ.get(variable, "") not in ("", "0"):
        return True
    expr = config.getoption("markexpr", default="") or ""
    return marker in expr and f"not {marker}" not in expr


# -- shared by the core and compatibility tests ---------------------------------------------------
@pytest.fixture
def ipphpc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh IPPHPC_DIR for one test."""
    d = (tmp_path / "ipphpc").resolve()
    monkeypatch.setenv("IPPHPC_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def ipphpc_session_home(tmp_path_factory):
    """A private IPPHPC_DIR for the whole run, and a final check that no test process survived."""
    base = tmp_path_factory.getbasetemp().resolve()
    home = tmp_path_factory.mktemp("home").resolve()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPPHPC_DIR", str(home))
        yield home
    left = kill_matching(str(base))
    assert not left, f"processes left behind by the core tests: {left}"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, ipphpc_session_home):
    """A controller and two engines (one `ipphpc engine -n 2` process group), shared by the run."""
    from ipphpc import HPCCluster
    root = tmp_path_factory.mktemp("shared").resolve()
    c = HPCCluster(n=2, profile_dir=str(root / "profile"), shutdown_atexit=False,
                   controller_args=["--Controller.heartbeat_period=0.25", "--Controller.heartbeat_misses=8"])
    try:
        c.start_and_connect_sync()
        yield c
    finally:
        c.stop_cluster_sync()
        left = kill_matching(str(root))
        assert not left, f"the shared cluster left processes behind: {left}"


@pytest.fixture
def rc(cluster):
    """The shared cluster's client, checked to still see both engines."""
    client = cluster.client
    client.wait_for_engines(2, timeout=10)
    return client
