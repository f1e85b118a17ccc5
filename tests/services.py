"""Tests that need a service run when it is declared up (`IPPHPC_CI_SERVICES`), and fail if it then misbehaves.

Where it is not declared (a developer machine without it), they are skipped with the reason.
"""
from __future__ import annotations

import os

import pytest


def declared(service: str) -> bool:
    return service in os.environ.get("IPPHPC_CI_SERVICES", "").split()


def require(service: str, how: str) -> pytest.MarkDecorator:
    """Skip unless the service is declared; `how` says how to bring it up."""
    return pytest.mark.skipif(not declared(service), reason=f"{service} not declared in IPPHPC_CI_SERVICES; {how}")
