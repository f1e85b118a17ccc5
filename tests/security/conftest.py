"""Fixtures for the security tests, and the `fuzz` marker.

The tests start their own controller and engines through `Spawner` (tests/core/helpers.py), under the
run's private IPPHPC_DIR, and check that no process of theirs is left behind, as the core tests do.
Tests marked `fuzz` (long fuzzing runs, marker listed in pyproject.toml) are skipped unless selected
with `-m fuzz` or IPPHPC_FUZZ=1.
"""
from __future__ import annotations

import os

import pytest


def _fuzz_selected(config: pytest.Config) -> bool:
    if os.environ.get("IPPHPC_FUZZ", "") not in ("", "0"):
        return True
    expr = config.getoption("markexpr", default="") or ""
    return "fuzz" in expr and "not fuzz" not in expr


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _fuzz_selected(config):
        return
    skip = pytest.mark.skip(reason="long fuzzing run: select it with -m fuzz or IPPHPC_FUZZ=1")
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(skip)


# the core tests' fixtures: a private IPPHPC_DIR for every test, `spawner` (no process left behind), `pdir`
from tests.core.conftest import _private_home, pdir, spawner  # noqa: E402, F401
