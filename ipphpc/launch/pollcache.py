"""The file through which pollers of every process on a login node share one scheduler query.

``<profile_dir>/pid/batch-cache-<scheduler>.json`` holds, for every job some poller follows, the
job, its elements' latest status and when the scheduler was last asked about it, plus how the
newest poll went. A lock file next to it makes the pollers take turns; taking the lock yields
:class:`Sleep` steps instead of sleeping, so the poller that drives it decides how to wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..batch.jobstate import ElementStatus, Key, TrackedJob, index_from_key, index_key
from ..batch.states import State

log = logging.getLogger("ipphpc.batch")

CACHE_VERSION = 1


class Sleep(NamedTuple):
    """A pause the lock asks its driver to take before the next try."""

    seconds: float


class SharedCache:
    """The cache file and its lock for one scheduler in one profile."""

    def __init__(self, profile_dir: str | Path, scheduler: str) -> None:
        directory = Path(profile_dir) / "pid"
        self.scheduler = scheduler
        self.path = directory / f"batch-cache-{scheduler}.json"
        self.lock_path = directory / f"batch-cache-{scheduler}.lock"

    def read(self) -> dict[str, Any]:
        """The cache's content; empty when it is missing, unreadable or of another version."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        return data

    def write(self, data: Mapping[str, Any]) -> None:
        """Replace the cache at once (readers never see half a file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "scheduler": self.scheduler, **data},
                                  separators=(",", ":")))
        os.replace(tmp, self.path)

    def lock(self, hold_limit: float) -> Generator[Sleep, Any, Any]:
        """Take the lock, pausing between tries; give up (and poll anyway) after ``hold_limit`` seconds."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - released in unlock
        deadline = time.monotonic() + hold_limit
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("%s is held too long; polling without it", self.lock_path)
                    handle.close()
                    return None
                yield Sleep(0.02)

    @staticmethod
    def unlock(handle: Any) -> None:
        if handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def foreign_jobs(data: Mapping[str, Any], own: Mapping[str, TrackedJob], now: float, want_window: float,
                 ) -> tuple[dict[str, TrackedJob], dict[Key, ElementStatus]]:
    """The still-active jobs other pollers registered within ``want_window``, and their elements."""
    jobs: dict[str, TrackedJob] = {}
    status: dict[Key, ElementStatus] = {}
    for job_id, entry in data.get("jobs", {}).items():
        if job_id in own:
            continue
        try:
            job = TrackedJob.from_dict(entry["job"])
            elements = {
                (job_id, index_from_key(k)): ElementStatus.from_dict(v)
                for k, v in entry.get("elements", {}).items()
            }
        except (KeyError, TypeError, ValueError):
            continue
        if now - job.wanted_at > want_window or set(elements) != {(job_id, i) for i in job.elements}:
            continue
        if all(s.finished and s.resolved for s in elements.values()):
            continue
        jobs[job_id] = job
        status.update(elements)
    return jobs, status


def updated_entries(old: Mapping[str, Any], jobs: Mapping[str, TrackedJob], status: Mapping[Key, ElementStatus],
                    mine: set[str], queried: set[str], now: float, want_window: float) -> dict[str, Any]:
    """The cache's job entries after a poll: the polled jobs' new word, stale entries dropped."""
    entries: dict[str, Any] = dict(old.get("jobs", {}))
    for job_id, job in jobs.items():
        entry = dict(entries.get(job_id, {}))
        if job_id in mine:
            job.wanted_at = now
        entry["job"] = job.to_dict()
        entry["elements"] = {index_key(i): status[(job_id, i)].to_dict() for i in job.elements}
        if job_id in queried:
            entry["polled_at"] = now
        entries[job_id] = entry
    for job_id in list(entries):
        job_info = entries[job_id].get("job", {})
        idle = now - job_info.get("wanted_at", 0)
        finished = all(State(e.get("state", "LOST")).finished and e.get("resolved")
                       for e in entries[job_id].get("elements", {}).values())
        if idle > want_window or (finished and idle > 3600):
            del entries[job_id]
    return entries
