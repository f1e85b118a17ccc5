"""Small helpers the scheduler tests share: the `ipphpc` command, its status table, waits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from ..core.helpers import wait_until as _wait_until


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `pred` until it returns something true; fail after `timeout` seconds."""
    return _wait_until(pred, timeout, interval, what)


def process_environment(pid: int) -> dict[str, str]:
    """The environment a running process was started with (as the scheduler set it up)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def run_ipphpc(*args: str, timeout: float = 300, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`ipphpc ARGS...` as a user types it, with this interpreter."""
    return subprocess.run([sys.executable, "-m", "ipphpc", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of an `ipphpc status` table, as dicts keyed by the column headers.

    Columns are found from the dashes under the header, so empty cells stay in place.
    """
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("ROLE"))
    spans, pos = [], 0
    for dashes in lines[head + 1].split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    names = [lines[head][a:b].strip() for a, b in spans]
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, spans)} for line in lines[head + 2:] if line.strip()]


def tracked_job_ids(profile: Path, scheduler: str) -> list[str]:
    """Job ids the pollers of a profile followed (from their shared cache), to clean up after
    code that submits jobs without handing out their ids."""
    try:
        data = json.loads((profile / "pid" / f"batch-cache-{scheduler}.json").read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("jobs", {}))


def running_status(*args: str) -> Callable[[], subprocess.CompletedProcess | None]:
    """A probe for wait_until: `ipphpc status ARGS` once it shows every engines element RUNNING
    (it may lag the engines by a poll)."""
    def probe() -> subprocess.CompletedProcess | None:
        out = run_ipphpc("status", *args)
        assert out.returncode == 0, out.stderr
        rows = [r for r in parse_table(out.stdout) if r["ROLE"] == "engines"]
        return out if rows and all(r["STATE"] == "RUNNING" for r in rows) else None
    return probe


def stop_if_running(cluster: Any) -> None:
    """Stop what a test's HPCCluster still runs (a failed start may have stopped it already)."""
    ctl = cluster.controller_launcher
    if cluster.engine_sets or (ctl is not None and ctl.running):
        cluster.stop_cluster_sync()
