"""The compatibility tests use the run's shared cluster (tests/conftest.py): a real controller, two real engines."""
import pytest


@pytest.fixture(autouse=True)
def _private_home(ipphpc_session_home):
    """Every compatibility test runs under the run's private IPPHPC_DIR."""
