"""Fixtures for the compatibility tests: the core tests' real controller and two real engines."""
from tests.core.conftest import _session_home, cluster, rc  # noqa: F401 - fixtures, found by name
