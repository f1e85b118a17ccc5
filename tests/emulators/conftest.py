"""Fixtures putting an emulator's bin directory on PATH with a private state dir."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

EMU_DIR = Path(__file__).resolve().parent


@dataclass
class Emu:
    """A running emulator sandbox: state directory, work directory, helpers."""

    state: Path
    work: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *cmd: str, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run an emulator command in the work directory."""
        proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=60, cwd=self.work, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def jobs(self) -> list[dict]:
        """Raw job records (for cleanup and white-box checks)."""
        out = []
        for p in (self.state / "jobs").glob("*.json"):
            try:
                out.append(json.loads(p.read_text()))
            except ValueError:
                pass
        return out

    def invocations(self, command: str | None = None) -> list[dict]:
        """Entries of the invocation log, optionally for one command."""
        path = self.state / "invocations.log"
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in records if command is None or r["command"] == command]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def _cleanup(state: Path) -> None:
    """Stop the daemon of this sandbox and every job process it started."""
    lock = state / "state.lock"
    if not state.exists():
        return
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the daemon is between passes now
        pid_file = state / "daemon.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for p in (state / "jobs").glob("*.json"):
            try:
                job = json.loads(p.read_text())
            except ValueError:
                continue
            for elem in job["elements"].values():
                if elem["status"] == "running" and elem.get("pid"):
                    try:
                        os.killpg(elem["pid"], signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        fcntl.flock(fh, fcntl.LOCK_UN)


def _sandbox(tmp_path: Path, kind: str, extra: dict[str, str]) -> Iterator[Emu]:
    state = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPPHPC_EMU_")}
    env["PATH"] = f"{EMU_DIR / kind / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["IPPHPC_EMU_STATE"] = str(state)
    env["IPPHPC_EMU_KILL_DELAY"] = "1"
    env.update(extra)
    emu = Emu(state=state, work=work, env=env)
    try:
        yield emu
    finally:
        _cleanup(state)


@pytest.fixture
def pbs(tmp_path: Path) -> Iterator[Emu]:
    """PBS Pro emulator sandbox."""
    yield from _sandbox(tmp_path, "pbs", {"IPPHPC_EMU_FLAVOR": "pbspro", "IPPHPC_EMU_SERVER": "pbsserver"})


@pytest.fixture
def torque(tmp_path: Path) -> Iterator[Emu]:
    """Torque emulator sandbox."""
    yield from _sandbox(tmp_path, "pbs", {"IPPHPC_EMU_FLAVOR": "torque", "IPPHPC_EMU_SERVER": "torqueserver"})


@pytest.fixture
def lsf(tmp_path: Path) -> Iterator[Emu]:
    """LSF emulator sandbox (one emulated minute of run limit lasts one second)."""
    yield from _sandbox(tmp_path, "lsf", {"IPPHPC_EMU_LSF_SECONDS_PER_MINUTE": "1", "IPPHPC_EMU_LSF_RUNLIMIT_GRACE": "1"})


@pytest.fixture
def wait() -> Callable[..., None]:
    """The :func:`wait_for` polling helper."""
    return wait_for
