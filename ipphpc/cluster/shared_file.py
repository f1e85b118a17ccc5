"""The cluster file as several processes change it: `ipphpc scale`, the keeper of a submitted cluster and
the process that started it may each add an engine set. Each change is made under a lock, on top of what
the file holds, so that no process drops a set another one added (and nobody could cancel its jobs).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def lock_path(cluster_file: Path) -> Path:
    """`.cluster-<id>.lock` next to the cluster file (not matched by the `cluster-*.json` listing)."""
    return cluster_file.with_name(f".{cluster_file.stem}.lock")


@contextlib.contextmanager
def locked(cluster_file: Path) -> Iterator[None]:
    """Hold the cluster's lock: one process at a time reads, changes and writes its file."""
    path = lock_path(cluster_file)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read(cluster_file: Path) -> dict[str, Any] | None:
    """The file's content, or None when it is gone (the cluster was stopped) or unreadable."""
    try:
        return json.loads(cluster_file.read_text())
    except (OSError, ValueError):
        return None


def sets_added_elsewhere(d: dict[str, Any], known: set[str], removed: set[str]) -> list[tuple[str, dict]]:
    """(set id, launcher dict) of the engine sets in the file that this process neither has nor removed."""
    sets = d.get("engine_sets", [])
    ids = d.get("engine_set_ids") or [str(i) for i in range(len(sets))]
    return [(sid, e) for sid, e in zip(ids, sets) if sid not in known and sid not in removed]
