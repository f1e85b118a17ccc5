"""Fixtures for the core tests.

Every test runs under a private IPPHPC_DIR, so nothing reads or writes ~/.ipphpc. The
`cluster` fixture (tests/conftest.py) is one real controller with two real engines, started once
and shared with the compatibility tests; tests that kill, restart or flood a controller start their
own through `spawner`. Each fixture checks that no process of its own is left behind.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import Spawner, kill_matching


@pytest.fixture(autouse=True)
def _private_home(ipphpc_session_home):
    """Every core test runs under the run's private IPPHPC_DIR (tests/conftest.py)."""


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
