"""Fixtures for the security tests, and the `fuzz` marker.

The tests start their own controller and engines through `Spawner` (tests/core/helpers.py), under the
run's private IPPHPC_DIR, and check that no process of theirs is left behind, as the core tests do.
Tests marked `fuzz` (long fuzzing runs) are skipped unless selected with `-m fuzz` or IPPHPC_FUZZ=1
(tests/conftest.py).
"""
from __future__ import annotations

# the core tests' fixtures: a private IPPHPC_DIR for every test, `spawner` (no process left behind), `pdir`
from tests.core.conftest import _private_home, pdir, spawner  # noqa: F401
