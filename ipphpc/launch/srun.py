"""Engines across a Slurm allocation with one `srun`: used from inside a batch job."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .launchers import LocalLauncher
from .processes import spawn


class SrunLauncher(LocalLauncher):
    """`srun --ntasks=N ipphpc engine`: one engine per task of the current allocation."""

    kind = "srun"

    def __init__(self, role: str, n: int = 1, pid: int | None = None, cmd: list[str] | None = None,
                 srun_args: list[str] | None = None):
        super().__init__(role, n, pid, cmd)
        self.srun_args = list(srun_args or [])

    def start(self, cmd: list[str], log_path: Path) -> None:
        if not os.environ.get("SLURM_JOB_ID"):
            raise RuntimeError("engines='srun' runs inside a Slurm allocation (sbatch or salloc); "
                               "from a login node use scheduler='slurm'")
        srun = shutil.which("srun")
        if srun is None:
            raise FileNotFoundError("srun not found on PATH inside this Slurm job")
        # --overlap: the batch step already holds the allocation's CPUs in recent Slurm releases
        self.cmd = [srun, f"--ntasks={self.n}", "--overlap", "--kill-on-bad-exit=0", *self.srun_args, *cmd]
        self.proc = spawn(self.cmd, log_path, engines=self.role == "engines")
        self.pid = self.proc.pid

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "srun_args": self.srun_args}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SrunLauncher":
        return cls(d["role"], d.get("n", 1), d.get("pid"), d.get("cmd"), d.get("srun_args"))


def allocation_size(env: dict[str, str] | None = None) -> tuple[str, int]:
    """(launcher, number of slots) of the batch allocation this process runs in."""
    env = dict(os.environ if env is None else env)
    if env.get("SLURM_JOB_ID"):
        for var in ("SLURM_NTASKS", "SLURM_NPROCS"):
            if env.get(var, "").isdigit():
                return "srun", int(env[var])
        return "srun", int(env.get("SLURM_JOB_NUM_NODES", "1") or 1)
    nodefile = env.get("PBS_NODEFILE")
    if nodefile and os.path.exists(nodefile):
        with open(nodefile) as f:
            return "mpi", sum(1 for line in f if line.strip())
    for var in ("NSLOTS", "LSB_DJOB_NUMPROC"):
        if env.get(var, "").isdigit():
            return "mpi", int(env[var])
    raise RuntimeError("not inside a batch allocation: no SLURM_JOB_ID, PBS_NODEFILE, NSLOTS or LSB_DJOB_NUMPROC")
