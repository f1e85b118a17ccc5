"""How processes start. `local` runs them on this host; batch, ssh and MPI launchers plug in by name.

A launcher is found by a short case-insensitive name, by an import string
('package.module:Class'), or through the `ipphpc.launchers` entry-point group.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .processes import group_alive, pid_alive, spawn, terminate_groups


class LocalLauncher:
    """One local process group: the controller, or `ipphpc engine -n k` (k engines, one import)."""

    kind = "local"

    def __init__(self, role: str, n: int = 1, pid: int | None = None, cmd: list[str] | None = None):
        self.role = role
        self.n = n
        self.pid = pid
        self.cmd = cmd or []
        self.proc = None

    def start(self, cmd: list[str], log_path: Path) -> None:
        """`cmd` starts one process; an engine set runs it with `-n` to fork its siblings."""
        self.cmd = cmd + (["-n", str(self.n)] if self.role == "engines" and self.n > 1 else [])
        self.proc = spawn(self.cmd, log_path, engines=self.role == "engines")
        self.pid = self.proc.pid

    @property
    def running(self) -> bool:
        if self.pid is None:
            return False
        if self.proc is not None and self.proc.poll() is not None:
            return group_alive(self.pid)
        return pid_alive(self.pid) or group_alive(self.pid)

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def stop(self, grace: float = 5.0) -> None:
        if self.pid is not None:
            terminate_groups([self.pid], grace, [self.proc] if self.proc else None)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "n": self.n, "pid": self.pid, "cmd": self.cmd}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LocalLauncher":
        return cls(d["role"], d.get("n", 1), d.get("pid"), d.get("cmd"))


def _mpi() -> type:
    from .mpi import MPILauncher
    return MPILauncher


def _ssh() -> type:
    from .ssh import SSHLauncher
    return SSHLauncher


def _sshproxy() -> type:
    from .ssh import SSHProxyEngineSetLauncher
    return SSHProxyEngineSetLauncher


def _srun() -> type:
    from .srun import SrunLauncher
    return SrunLauncher


BUILTIN = {"local": lambda: LocalLauncher, "srun": _srun, "mpi": _mpi, "mpiexec": _mpi, "ssh": _ssh,
           "sshproxy": _sshproxy}


def find_launcher(name: str) -> type:
    """A launcher class by short name (any case), import string, or entry point."""
    key = name.lower()
    if key in BUILTIN:
        return BUILTIN[key]()
    from .batch import BatchLauncher, is_scheduler_name, scheduler_launcher
    if key == "batch":
        return BatchLauncher
    if is_scheduler_name(key):
        return scheduler_launcher(key)
    for ep in entry_points(group="ipphpc.launchers"):
        if ep.name.lower() == key:
            return ep.load()
    if "." in name or ":" in name:
        mod, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load launcher {name!r}: {e}") from None
    from .batch import launcher_names
    valid = sorted(set(BUILTIN) | set(launcher_names())) + sorted(
        ep.name for ep in entry_points(group="ipphpc.launchers"))
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown launcher {name!r}{hint}; valid names: {', '.join(valid)} "
                     f"(or an import string such as 'mypkg.launchers:MyLauncher')")


def launcher_from_dict(d: dict[str, Any]) -> Any:
    return find_launcher(d["kind"]).from_dict(d)


def ipphpc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ipphpc", *args]
