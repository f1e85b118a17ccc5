"""Scheduler daemon: starts queued elements, enforces limits, records exits.

Started on demand by the submitting/controlling commands (``python -m
ipphpc_emu.daemon KIND STATE_DIR``) in its own session.  Only one daemon runs
per state directory (it holds ``daemon.lock``); it exits by itself when no
element is running or waiting to run.  The flavour-specific parts (job
environment, output files, signals, exit codes) live in :mod:`ipphpc_emu.pbs`
and :mod:`ipphpc_emu.lsf`.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import subprocess
import sys
import time
from types import ModuleType
from typing import Any

from .common import DONE, QUEUED, RUNNING, Store, signal_group, sorted_elements

POLL_INTERVAL = 0.05
IDLE_EXIT_AFTER = 0.5


def flavor_module(job: dict[str, Any]) -> ModuleType:
    """The module implementing a job's flavour."""
    return importlib.import_module("ipphpc_emu.lsf" if job["flavor"] == "lsf" else "ipphpc_emu.pbs")


def pid_alive(pid: int | None) -> bool:
    """True if a process with this id exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_append(path: str, truncate: bool) -> Any:
    """Open ``path`` for appending, emptying it first if ``truncate``."""
    if truncate:
        open(path, "wb").close()
    return open(path, "ab")


class Daemon:
    """The scheduling loop for one state directory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.procs: dict[tuple[int, str], subprocess.Popen[bytes]] = {}
        self.idle_since: float | None = None

    # -- element lifecycle -----------------------------------------------------
    def start(self, job: dict[str, Any], key: str, elem: dict[str, Any]) -> None:
        """Launch one element as a process group of its own."""
        mod = flavor_module(job)
        now = time.time()
        elem["start"] = now
        elem["status"] = RUNNING
        try:
            spec = mod.launch_spec(self.store, job, elem)
            # Files are opened in append mode (after truncation where the
            # flavour overwrites) so that messages the daemon adds, such as
            # the walltime notice, are never overwritten by the job.
            out = _open_append(spec["stdout"], truncate=not spec.get("append"))
            err = out if not spec.get("stderr") else _open_append(spec["stderr"], truncate=not spec.get("append_err"))
            try:
                proc = subprocess.Popen(
                    spec["argv"],
                    cwd=spec["cwd"],
                    env=spec["env"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                out.close()
                if err is not out:
                    err.close()
        except (OSError, ValueError) as exc:
            elem["pid"] = None
            self.finish(job, elem, None, launch_error=str(exc))
            return
        elem["pid"] = proc.pid
        self.procs[(job["seq"], key)] = proc

    def finish(self, job: dict[str, Any], elem: dict[str, Any], returncode: int | None, launch_error: str | None = None) -> None:
        """Record the end of an element and let the flavour finalise it."""
        elem["end"] = time.time()
        elem["status"] = DONE
        elem["raw_returncode"] = returncode
        elem["launch_error"] = launch_error
        flavor_module(job).finalize(self.store, job, elem)

    # -- one pass ----------------------------------------------------------------
    def tick(self) -> bool:
        """Run one scheduling pass; return True if there is still work."""
        now = time.time()
        cfg = self.store.config()
        jobs = self.store.active_jobs()
        changed: dict[int, dict[str, Any]] = {}
        running = 0
        running_per_job: dict[int, int] = {}
        for job in jobs:
            mod = flavor_module(job)
            for key, elem in job["elements"].items():
                if elem["status"] != RUNNING:
                    continue
                proc = self.procs.get((job["seq"], key))
                if proc is None:
                    if pid_alive(elem["pid"]):
                        rc = None
                    else:  # started by an earlier daemon and gone: status unknown
                        self.finish(job, elem, None, launch_error="lost")
                        changed[job["seq"]] = job
                        continue
                else:
                    rc = proc.poll()
                if rc is not None:
                    self.procs.pop((job["seq"], key), None)
                    self.finish(job, elem, rc)
                    changed[job["seq"]] = job
                    continue
                running += 1
                running_per_job[job["seq"]] = running_per_job.get(job["seq"], 0) + 1
                limit = mod.walltime_seconds(job)
                if limit is not None and elem["kill"] is None and now - elem["start"] >= limit:
                    plan = mod.walltime_plan(self.store, job, elem, now - elem["start"], limit, cfg)
                    elem["kill"] = {"reason": "walltime", "plan": plan, "step": 0, "next": 0.0}
                    changed[job["seq"]] = job
                kill = elem["kill"]
                if kill and kill["step"] < len(kill["plan"]) and now >= kill["next"]:
                    sig, delay = kill["plan"][kill["step"]]
                    signal_group(elem["pid"], int(sig))
                    kill["step"] += 1
                    kill["next"] = now + float(delay)
                    changed[job["seq"]] = job

        free = int(cfg.get("slots", 16)) - running
        waiting = False
        for job in jobs:
            limit = job.get("max_concurrent")
            for elem in sorted_elements(job):
                if elem["status"] != QUEUED:
                    continue
                waiting = True
                if free <= 0:
                    break
                if limit and running_per_job.get(job["seq"], 0) >= limit:
                    break
                key = next(k for k, v in job["elements"].items() if v is elem)
                self.start(job, key, elem)
                changed[job["seq"]] = job
                if elem["status"] == RUNNING:
                    free -= 1
                    running += 1
                    running_per_job[job["seq"]] = running_per_job.get(job["seq"], 0) + 1

        for job in changed.values():
            if not any(e["status"] != DONE for e in job["elements"].values()):
                job["finished_time"] = max((e["end"] or now) for e in job["elements"].values())
            job["mtime"] = now
            self.store.save(job)
        return running > 0 or waiting or bool(self.procs)

    def run(self, lock_fh: Any) -> None:
        """Loop until idle, then release the daemon lock and exit."""
        while True:
            with self.store.locked():
                busy = self.tick()
                now = time.time()
                if busy:
                    self.idle_since = None
                elif self.idle_since is None:
                    self.idle_since = now
                elif now - self.idle_since >= IDLE_EXIT_AFTER:
                    # Release while still holding the state lock so that a
                    # command saving new work afterwards starts a new daemon.
                    try:
                        os.unlink(self.store.root / "daemon.pid")
                    except FileNotFoundError:
                        pass
                    fcntl.flock(lock_fh, fcntl.LOCK_UN)
                    return
            time.sleep(POLL_INTERVAL)


def main(argv: list[str]) -> int:
    """Entry point: ``python -m ipphpc_emu.daemon KIND STATE_DIR``."""
    kind, root = argv[0], argv[1]
    os.environ["IPPHPC_EMU_STATE"] = root
    store = Store(kind)
    lock_fh = open(store.root / "daemon.lock", "a+")  # noqa: SIM115 - held as long as the daemon runs
    try:
        fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0
    (store.root / "daemon.pid").write_text(str(os.getpid()))
    Daemon(store).run(lock_fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
