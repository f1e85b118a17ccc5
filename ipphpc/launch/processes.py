"""Processes a cluster starts locally: started in their own session, signalled as a group, reaped."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True for a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def spawn(cmd: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` detached from the terminal, in a process group of its own, output to `log_path`."""
    out = open(log_path, "ab")  # noqa: SIM115 - closed below, once the child has it
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    finally:
        out.close()


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_alive(pgid: int) -> bool:
    """Any live member of the process group (children forked by an engine set stay in it)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def terminate_groups(pgids: list[int], grace: float = 5.0, reap: list[subprocess.Popen] | None = None) -> list[int]:
    """SIGTERM each group, wait up to `grace`, then SIGKILL what is left; returns the groups killed hard."""
    live = [g for g in pgids if group_alive(g)]
    for g in live:
        signal_group(g, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        for p in reap or []:
            p.poll()
        live = [g for g in live if group_alive(g)]
        if live:
            time.sleep(0.05)
    for g in live:
        signal_group(g, signal.SIGKILL)
    for p in reap or []:
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
    return live
