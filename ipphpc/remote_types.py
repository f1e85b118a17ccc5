"""Markers a client puts in a task's arguments and the engine replaces: shared by both sides.

They live below the client and the engine so the engine needs no client module to read them.
"""
from __future__ import annotations


class Reference:
    """An argument that names a variable in the engine's namespace: `dv.apply(f, Reference('x'))`."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"


class EngineNamespace:
    """An argument replaced on the engine by its namespace dict (for helpers that read or set names)."""
