"""Checks over the whole collection."""
from __future__ import annotations

import pytest


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
