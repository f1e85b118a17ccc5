"""Helpers for the core tests: polling, process discovery, spawning ipphpc processes."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cloudpickle

from ipphpc import connection, paths

PY = sys.executable


def ship_by_value(module_name: str) -> None:
    """Functions of a test module travel by value: engines cannot import the test package."""
    cloudpickle.register_pickle_by_value(sys.modules[module_name])


def wait_for_file(path: str, limit: float = 30.0) -> str:
    """Run on an engine: block until `path` exists (or `limit` passes), so a test decides when a task ends."""
    import os as _os
    import time as _time
    deadline = _time.monotonic() + limit
    while not _os.path.exists(path):
        if _time.monotonic() > deadline:
            return "gave up"
        _time.sleep(0.005)
    return "released"


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `pred` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last answer: {value!r}")
        time.sleep(interval)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """A running process (a zombie counts as gone)."""
    st = _state(pid)
    return st is not None and st != "Z"


def procs_matching(marker: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `marker` (a test's private directory)."""
    found = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and alive(int(d.name)):
            found.append((int(d.name), cmd))
    return found


def kill_matching(marker: str) -> list[tuple[int, str]]:
    left = procs_matching(marker)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def pgid_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without batch-scheduler and MPI variables, plus `extra`."""
    prefixes = ("SLURM_", "LSB_", "PBS_", "SGE_", "CONDOR_", "_CONDOR_", "OMPI_", "PMI_", "PMIX_", "MPI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k != "JOB_ID"}
    env.update(extra)
    return env


class Spawner:
    """Starts `python -m ipphpc ...` processes in their own process groups and kills whatever is left."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self._n = 0

    def ipphpc(self, *args: str, env: dict | None = None, name: str = "proc") -> subprocess.Popen:
        self._n += 1
        base = self.root / f"{name}-{self._n}"
        with open(f"{base}.stdout", "wb") as out, open(f"{base}.stderr", "wb") as err:
            p = subprocess.Popen([PY, "-m", "ipphpc", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 start_new_session=True, env=env)
        p.stdout_path, p.stderr_path = Path(f"{base}.stdout"), Path(f"{base}.stderr")  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    @staticmethod
    def output(p: subprocess.Popen) -> tuple[str, str]:
        return p.stdout_path.read_text(errors="replace"), p.stderr_path.read_text(errors="replace")  # type: ignore

    def controller(self, pdir: Path, cluster_id: str, *args: str, timeout: float = 20.0,
                   env: dict | None = None) -> tuple[subprocess.Popen, dict, dict]:
        """Start `ipphpc controller` and wait for its connection files: (process, engine info, client info)."""
        pdir = Path(pdir)
        efile = paths.connection_file(pdir, "engine", cluster_id)
        cfile = paths.connection_file(pdir, "client", cluster_id)
        p = self.ipphpc("controller", "--profile-dir", str(pdir), "--cluster-id", cluster_id, *args,
                        env=env, name="controller")

        def written() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"controller exited with {p.returncode}: {self.output(p)}")
            try:  # files of an earlier controller (--reuse) carry its pid: wait for this one's
                return all(connection.read(f).get("pid") == p.pid for f in (efile, cfile))
            except Exception:  # noqa: BLE001 - not there yet
                return False
        wait_until(written, timeout, what=f"connection files of controller {cluster_id}")
        return p, connection.read(efile), connection.read(cfile)

    def engine(self, pdir: Path, cluster_id: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        return self.ipphpc("engine", "--profile-dir", str(pdir), "--cluster-id", cluster_id, *args,
                           env=env, name="engine")

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process group of `p` and wait for the leader; SIGKILL if it does not go."""
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            return p.wait(5)

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # forked engines stay in the leader's group after the leader exits
            for pid in pgid_members(p.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if p.poll() is None:
                p.kill()
                p.wait(5)


ship_by_value(__name__)  # wait_for_file runs on engines


@contextlib.contextmanager
def cluster_without_shm(spawner: "Spawner", pdir: Path, cluster_id: str, n: int):
    """A controller without shared memory and `n` engines (large frames then take the path they take between
    hosts); yields a client connected once all registered."""
    from ipphpc import Client

    spawner.controller(pdir, cluster_id, "--no-shm")
    for _ in range(n):
        spawner.engine(pdir, cluster_id)
    with Client(profile_dir=str(pdir), cluster_id=cluster_id) as rc:
        rc.wait_for_engines(n, timeout=60)
        yield rc

