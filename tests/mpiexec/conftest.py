"""inside/ holds tests that run in every rank of one mpiexec (pytest-mpi, `--with-mpi`).

A plain pytest run leaves them out instead of reporting them skipped; test_inside_mpiexec.py
starts them under mpiexec and checks every rank passed every one.
"""
from __future__ import annotations

from pathlib import Path

import pytest

INSIDE = Path(__file__).parent / "inside"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Collect inside/ only when pytest-mpi is asked to run MPI tests."""
    if collection_path == INSIDE and not (config.getoption("--with-mpi", default=False)
                                          or config.getoption("--only-mpi", default=False)):
        return True
    return None
