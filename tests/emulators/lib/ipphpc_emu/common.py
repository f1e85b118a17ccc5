"""State directory, locking, job records and helpers shared by all emulators."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

LIB_DIR = Path(__file__).resolve().parent.parent

# Element lifecycle used internally by every flavour; each flavour maps these
# onto its own documented state letters/names when it prints them.
QUEUED = "queued"
HELD = "held"
RUNNING = "running"
DONE = "done"

ACTIVE_STATES = (QUEUED, HELD, RUNNING)


def env_float(name: str, default: float) -> float:
    """Read a float from the environment, falling back to ``default``."""
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        return default


def env_int(name: str, default: int) -> int:
    """Read an int from the environment, falling back to ``default``."""
    return int(env_float(name, default))


def short_hostname() -> str:
    """The host name without its domain, as batch systems usually show it."""
    return socket.gethostname().split(".")[0] or "localhost"


def current_user() -> str:
    """Name of the user running the command."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "user")


def user_home() -> str:
    """Home directory of the user running the command."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.environ.get("HOME", "/")


def user_shell() -> str:
    """Login shell of the user running the command."""
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    if not shell or not os.path.exists(shell) or shell.endswith(("nologin", "false")):
        shell = "/bin/sh"
    return shell


def ctime(epoch: float) -> str:
    """``ctime(3)`` formatting without the trailing newline."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(epoch))


def hms(seconds: float) -> str:
    """Format seconds as ``HH:MM:SS`` (hours may exceed 24)."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def parse_index_list(spec: str) -> list[int]:
    """Parse array index specifications such as ``0-7``, ``1-9:2`` or ``0,3,5-6``."""
    indices: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
            if step <= 0:
                raise ValueError(f"bad step in {spec!r}")
        if "-" in part:
            lo_s, hi_s = part.split("-", 1)
            lo, hi = int(lo_s), int(hi_s)
            if hi < lo:
                raise ValueError(f"bad range in {spec!r}")
            indices.extend(range(lo, hi + 1, step))
        else:
            indices.append(int(part))
    if not indices:
        raise ValueError(f"empty index list {spec!r}")
    return sorted(set(indices))


def compress_indices(indices: list[int]) -> str:
    """Inverse of :func:`parse_index_list` for unit steps (``0-3,7``); ``-`` if empty."""
    if not indices:
        return "-"
    parts: list[str] = []
    start = prev = indices[0]
    for i in indices[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


class Store:
    """One emulator's state directory: job records, counters, locks and logs."""

    def __init__(self, kind: str) -> None:
        default = Path("/tmp/ipphpc-emu") / kind
        self.kind = kind
        self.root = Path(os.environ.get("IPPHPC_EMU_STATE") or default)
        self.jobs_dir = self.root / "jobs"
        self.active_dir = self.root / "active"
        self.spool_dir = self.root / "spool"
        for d in (self.root, self.jobs_dir, self.active_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- locking -----------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state lock (serialises every read-modify-write)."""
        with open(self.root / "state.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- invocation log ----------------------------------------------------
    def log_invocation(self, command: str, argv: list[str]) -> None:
        """Append one JSON line per command invocation (command line and time)."""
        record = {"time": time.time(), "command": command, "argv": argv, "cwd": os.getcwd()}
        line = json.dumps(record) + "\n"
        fd = os.open(self.root / "invocations.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    # -- configuration read by the daemon ----------------------------------
    def write_config(self) -> None:
        """Record the tunables of the calling environment for the daemon."""
        cfg = {
            "slots": env_int("IPPHPC_EMU_SLOTS", 16),
            "kill_delay": env_float("IPPHPC_EMU_KILL_DELAY", 10.0),
            "lsf_runlimit_grace": env_float("IPPHPC_EMU_LSF_RUNLIMIT_GRACE", 600.0),
        }
        tmp = self.root / f".config.{os.getpid()}"
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, self.root / "config.json")

    def config(self) -> dict[str, Any]:
        """Tunables last recorded by a command (defaults if none)."""
        try:
            return json.loads((self.root / "config.json").read_text())
        except (OSError, ValueError):
            return {"slots": 16, "kill_delay": 10.0, "lsf_runlimit_grace": 600.0}

    # -- job ids -------------------------------------------------------------
    def next_seq(self) -> int:
        """Allocate the next job sequence number (call with the lock held)."""
        path = self.root / "seq"
        try:
            seq = int(path.read_text().strip())
        except (OSError, ValueError):
            seq = env_int("IPPHPC_EMU_FIRST_ID", 1)
        path.write_text(str(seq + 1))
        return seq

    # -- job records ---------------------------------------------------------
    def job_path(self, seq: int) -> Path:
        return self.jobs_dir / f"{seq}.json"

    def load(self, seq: int) -> dict[str, Any] | None:
        """Read one job record, or ``None`` if there is no such job."""
        try:
            return json.loads(self.job_path(seq).read_text())
        except (OSError, ValueError):
            return None

    def save(self, job: dict[str, Any]) -> None:
        """Atomically write a job record and keep the active index in step."""
        seq = job["seq"]
        tmp = self.jobs_dir / f".{seq}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(job, indent=1, sort_keys=True))
        os.replace(tmp, self.job_path(seq))
        marker = self.active_dir / str(seq)
        if job_is_active(job):
            marker.touch()
        else:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()

    def all_jobs(self) -> list[dict[str, Any]]:
        """Every job record, in submission order."""
        jobs = []
        for p in self.jobs_dir.glob("*.json"):
            try:
                jobs.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        jobs.sort(key=lambda j: j["seq"])
        return jobs

    def active_jobs(self) -> list[dict[str, Any]]:
        """Jobs with at least one element not yet finished, in submission order."""
        jobs = []
        for p in self.active_dir.iterdir():
            if p.name.isdigit():
                job = self.load(int(p.name))
                if job is not None:
                    jobs.append(job)
        jobs.sort(key=lambda j: j["seq"])
        return jobs

    # -- daemon --------------------------------------------------------------
    def ensure_daemon(self) -> None:
        """Start the scheduler daemon for this state directory unless it runs."""
        lock_path = self.root / "daemon.lock"
        with open(lock_path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a daemon holds the lock
            fcntl.flock(fh, fcntl.LOCK_UN)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(LIB_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["IPPHPC_EMU_STATE"] = str(self.root)
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - the daemon inherits it
        subprocess.Popen(
            [sys.executable, "-m", "ipphpc_emu.daemon", self.kind, str(self.root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        log.close()


def job_is_active(job: dict[str, Any]) -> bool:
    """True while any element of the job is queued, held or running."""
    return any(e["status"] in ACTIVE_STATES for e in job["elements"].values())


def new_element(index: int | None, held: bool) -> dict[str, Any]:
    """A fresh element record."""
    return {
        "index": index,
        "status": HELD if held else QUEUED,
        "pid": None,
        "start": None,
        "end": None,
        "exit_status": None,
        "signal": None,
        "reason": None,
        "kill": None,
        "deleted": False,
        "stdout": None,
        "stderr": None,
    }


def sorted_elements(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Elements of a job ordered by array index."""
    return sorted(job["elements"].values(), key=lambda e: (e["index"] is None, e["index"] or 0))


def signal_group(pid: int | None, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (ignore if gone)."""
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def signal_number(name: str) -> int:
    """Translate ``TERM``, ``SIGTERM`` or ``15`` into a signal number."""
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    return int(getattr(signal, name))


def split_directive_line(line: str) -> list[str]:
    """Split the option part of a ``#PBS``/``#BSUB`` line like a shell would."""
    import shlex

    text = line
    # Drop a trailing comment introduced by whitespace + '#'.
    m = re.search(r"\s#", text)
    if m:
        text = text[: m.start()]
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()
