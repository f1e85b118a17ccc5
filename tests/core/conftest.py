"""Fixtures for the core tests.

Every test runs under a private IPPHPC_DIR, so nothing reads or writes ~/.ipphpc. The
`cluster` fixture is one real controller with two real engines, started once and shared by
tests that do not disturb it; tests that kill, restart or flood a controller start their own
through `spawner`. Each fixture checks that no process of its own is left behind.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import Spawner, kill_matching


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory):
    """A private IPPHPC_DIR for the whole run, and a final check that no test process survived."""
    base = tmp_path_factory.getbasetemp().resolve()
    home = tmp_path_factory.mktemp("home").resolve()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPPHPC_DIR", str(home))
        yield home
    left = kill_matching(str(base))
    assert not left, f"processes left behind by the core tests: {left}"


@pytest.fixture
def ipphpc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh IPPHPC_DIR for one test."""
    d = (tmp_path / "ipphpc").resolve()
    monkeypatch.setenv("IPPHPC_DIR", str(d))
    return d


@pytest.fixture
def spawner(tmp_path: Path):
    """Start ipphpc processes for one test; at the end, none of them (or their children) may remain."""
    sp = Spawner(tmp_path)
    yield sp
    sp.cleanup()
    left = kill_matching(str(tmp_path.resolve()))
    assert not left, f"processes survived their test: {left}"


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    """A profile directory private to one test."""
    from ipphpc import paths
    return paths.profile_dir(profile_dir=str(tmp_path / "profile"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
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
