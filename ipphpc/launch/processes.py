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


#: glibc (2.35 and later) then puts its large allocations on transparent huge pages: a 100 MB message
#: that zmq receives faults in 50 pages instead of 25,600, which was a third of the time it took to move.
#: Older glibc ignores it; a GLIBC_TUNABLES that already says glibc.malloc.hugetlb is left alone.
#: Engines only: it puts the heap on huge pages too, and a controller that keeps many small records (the
#: dict task database) then cannot give freed memory back (216 MiB instead of 99 after a 200,000-task map).
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


#: the same for a process started by a shell (on another host, through ssh)
HUGEPAGE_SH = ('case ":${GLIBC_TUNABLES:-}:" in *:glibc.malloc.hugetlb=*) ;; '
               f'*) export GLIBC_TUNABLES=${{GLIBC_TUNABLES:+$GLIBC_TUNABLES:}}{HUGEPAGE_TUNABLE} ;; esac')


def child_env(env: dict | None = None) -> dict:
    """The environment for an engine process: `env` (default: ours) with HUGEPAGE_TUNABLE."""
    env = dict(os.environ if env is None else env)
    have = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in have:
        env["GLIBC_TUNABLES"] = f"{have}:{HUGEPAGE_TUNABLE}" if have else HUGEPAGE_TUNABLE
    return env


def spawn(cmd: list[str], log_path: Path, env: dict | None = None, engines: bool = False) -> subprocess.Popen:
    """Start `cmd` detached from the terminal, in a process group of its own, output to `log_path`;
    engines get HUGEPAGE_TUNABLE."""
    out = open(log_path, "ab")  # noqa: SIM115 - closed below, once the child has it
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=child_env(env) if engines else env, close_fds=True)
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


def runs(pid: int, *words: bytes) -> bool:
    """The live process `pid` has each of `words` among its arguments (so the number was not reused by
    another program after the process we started ended)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and all(w in argv for w in words)


def stop_process(pid: int | None, *words: bytes, grace: float = 10.0) -> None:
    """SIGTERM a process that still `runs(pid, *words)`, wait up to `grace`, then SIGKILL it."""
    if pid is None or not runs(pid, *words):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
