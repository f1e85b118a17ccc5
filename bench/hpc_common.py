"""Helpers shared by the batch, MPI and SSH-tunnel benchmarks.

Standard library only.  Every benchmark prints a header (date, machine, load),
one table with the ratio of each figure to its peer, and notes; numbers are
printed, never checked against limits.  Scheduler calls are counted by shims
put first on PATH (see :func:`write_scheduler_shims`), so a count does not
depend on the code being measured counting itself.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TAG_VAR = "IPPHPC_BENCH_TAG"
SHIM_LOG_VAR = "IPPHPC_BENCH_SHIM_LOG"
SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol")


# -- numbers and tables -----------------------------------------------------------------------
def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int) or v == 0:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    x = a / b
    if x >= 100:
        return f"{x:,.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


def render_table(head: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 2) -> str:
    """Plain aligned columns; the first ``left`` columns flush left, the rest right."""
    body = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(x[i])) for x in [list(head), *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(list(head)), "  ".join("-" * w for w in widths), *(line(b) for b in body)])


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def header(title: str) -> dict[str, Any]:
    """Print what ran where (to stderr) and return it for the JSON."""
    info = machine()
    info["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"{title}, {info['date']}\nmachine: {info['cores']} cores ({info['cpu']}), Linux {info['kernel']}, "
          f"Python {info['python']}, load average {info['load_average']}", file=sys.stderr, flush=True)
    return info


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def write_json(path: str, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


# -- waiting and cleaning up ------------------------------------------------------------------
def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``pred`` until it returns something true; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``TAG_VAR=tag`` (ours, wherever they run)."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except (OSError, IndexError):
            continue
        found.append(int(d.name))
    return found


def reap(tag: str, wait: float = 5.0) -> list[tuple[int, str]]:
    """Give tagged processes ``wait`` seconds to go, then SIGTERM/SIGKILL those left; returns them."""
    deadline = time.monotonic() + wait
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = []
    for pid in tagged_pids(tag):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        left.append((pid, cmd.strip()[:160]))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 2
        while any(p in tagged_pids(tag) for p, _ in left) and time.monotonic() < end:
            time.sleep(0.05)
    return left


def stop_group(p: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM the process group of ``p`` (started with start_new_session), SIGKILL after ``timeout``."""
    if p.poll() is not None:
        return p.returncode
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return p.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return None


# -- counting scheduler calls -----------------------------------------------------------------
_SHIM = """#!/bin/bash
# logs each call to ${log_var} (when set), then runs the real {name}
real={real}
if [ -z "${{{log_var}:-}}" ]; then exec "$real" "$@"; fi
start=$(date +%s.%N)
{body}
"""
_PLAIN = """"$real" "$@"
rc=$?
printf '%s\\t%s\\t%s\\t%s\\t\\n' "$start" "$(date +%s.%N)" {name} "$*" >> "${log_var}"
exit $rc"""
# sbatch: also keep what it printed (the job id), so a benchmark can cancel exactly its own jobs
_CAPTURE = """out=$("$real" "$@")
rc=$?
[ -n "$out" ] && printf '%s\\n' "$out"
printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$start" "$(date +%s.%N)" {name} "$*" "$(printf '%s' "$out" | tr '\\n\\t' '  ')" \
    >> "${log_var}"
exit $rc"""


def write_scheduler_shims(directory: Path, commands: Sequence[str] = SLURM_COMMANDS) -> Path:
    """Write a logging wrapper for each scheduler command into ``directory``; put it first on PATH.

    Each call appends ``start, end, name, args, output`` (tab separated) to the
    file named by $IPPHPC_BENCH_SHIM_LOG; without that variable a shim just
    runs the real command.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in commands:
        real = shutil.which(name)
        if real is None:
            raise FileNotFoundError(f"{name} not found on PATH")
        body = (_CAPTURE if name == "sbatch" else _PLAIN).format(name=name, log_var=SHIM_LOG_VAR)
        path = directory / name
        path.write_text(_SHIM.format(name=name, real=real, log_var=SHIM_LOG_VAR, body=body))
        path.chmod(0o755)
    return directory


def read_shim_log(path: Path) -> list[dict[str, Any]]:
    calls = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return calls
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        calls.append({"start": float(parts[0]), "end": float(parts[1]), "cmd": parts[2], "args": parts[3],
                      "out": parts[4].strip() if len(parts) > 4 else ""})
    return calls


def count_calls(calls: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in calls:
        counts[c["cmd"]] = counts.get(c["cmd"], 0) + 1
    return counts


def job_ids_from(calls: Iterable[dict[str, Any]]) -> list[str]:
    """Job ids printed by the logged sbatch calls (``123`` or ``123;cluster``; plain sbatch's sentence too)."""
    ids = []
    for c in calls:
        if c["cmd"] != "sbatch":
            continue
        for word in c["out"].replace(";", " ").split():
            if word.isdigit():
                ids.append(word)
                break
    return ids


# -- Slurm: only our own jobs -----------------------------------------------------------------
def _real(name: str) -> str:
    """The scheduler command itself, never a shim (clean-up calls are not counted)."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / name
        if not (p.is_file() and os.access(p, os.X_OK)):
            continue
        with open(p, "rb") as fh:
            if SHIM_LOG_VAR.encode() not in fh.read(400):
                return str(p)
    return name


def slurm_live(job_ids: Sequence[str]) -> dict[str, str]:
    """``{'123_4': 'PENDING', ...}`` for the elements of ``job_ids`` that Slurm still holds, queues or runs."""
    if not job_ids:
        return {}
    r = subprocess.run([_real("squeue"), "--noheader", "--array", f"--jobs={','.join(job_ids)}",
                        "--format=%i|%T"], capture_output=True, text=True, timeout=60, check=False)
    live = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if state and state not in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT"):
            live[jid] = state
    return live


def slurm_cleanup(job_ids: Sequence[str], timeout: float = 60.0) -> list[str]:
    """Cancel whatever of ``job_ids`` is still in the queue and wait until it left; returns what stayed."""
    if not job_ids or not slurm_live(job_ids):
        return []
    subprocess.run([_real("scancel"), *job_ids], capture_output=True, timeout=60, check=False)
    try:
        wait_until(lambda: not slurm_live(job_ids), timeout, "cancelled jobs to leave the queue", 0.5)
    except TimeoutError:
        pass
    return sorted(slurm_live(job_ids))


def bench_env(tmp: Path, tag: str, **extra: str) -> dict[str, str]:
    """The environment of everything a benchmark starts: private dirs, the tag, this checkout first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    for var, sub in (("IPPHPC_DIR", "ipphpc"), ("IPYTHONDIR", "ipython"), ("JUPYTER_CONFIG_DIR", "jupyter/config"),
                     ("JUPYTER_DATA_DIR", "jupyter/data"), ("JUPYTER_RUNTIME_DIR", "jupyter/runtime")):
        d = tmp / sub
        d.mkdir(parents=True, exist_ok=True)
        env[var] = str(d)
    env[TAG_VAR] = tag
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
