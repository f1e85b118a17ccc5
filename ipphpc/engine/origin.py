"""Where an engine came from: host, pid, batch job, array element and MPI rank.

Read from the environment each scheduler and MPI launcher sets, so that the controller can
link an engine to the job (and array element) the poller tracks.
"""
from __future__ import annotations

import os
import platform
import socket
from typing import Mapping

# (scheduler, job id variable, array index variable(s)) in the order they are tried
_SCHEDULERS = (
    ("slurm", ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"), ("SLURM_ARRAY_TASK_ID",)),
    ("lsf", ("LSB_JOBID",), ("LSB_JOBINDEX",)),
    ("pbs", ("PBS_ARRAY_ID", "PBS_JOBID"), ("PBS_ARRAY_INDEX", "PBS_ARRAYID")),
    ("sge", ("JOB_ID",), ("SGE_TASK_ID",)),
    # HTCondor sets none of its own; ipphpc's submit files pass $(Cluster) and $(Process)
    ("htcondor", ("IPPHPC_CONDOR_CLUSTER", "CONDOR_CLUSTER_ID"), ("IPPHPC_CONDOR_PROCESS", "CONDOR_PROC_ID")),
)
# global ranks only: MPICH's MPI_LOCALRANKID and its kin number the ranks of one node
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        v = env.get(n)
        if v not in (None, "", "undefined"):
            return v
    return None


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def htcondor_ids(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """HTCondor sets no id variables by default; the job ad file and _CONDOR_JOB_AD carry them."""
    ad = env.get("_CONDOR_JOB_AD")
    if not ad or not os.path.exists(ad):
        return None, None
    cluster = proc = None
    with open(ad) as f:
        for line in f:
            k, _, v = line.partition("=")
            k = k.strip()
            if k == "ClusterId":
                cluster = v.strip()
            elif k == "ProcId":
                proc = v.strip()
    return cluster, proc


def engine_origin(env: Mapping[str, str] | None = None) -> dict:
    """A dict for the registration message; fields are None when unknown."""
    env = os.environ if env is None else env
    info = {"host": socket.gethostname(), "pid": os.getpid(), "scheduler": None, "job_id": None,
            "array_index": None, "mpi_rank": _int(_first(env, _RANK_VARS)),
            "mpi_size": _int(_first(env, _SIZE_VARS)),
            # functions sent by value carry bytecode, which only the same Python minor version can read
            "python": platform.python_version()}
    for name, job_vars, idx_vars in _SCHEDULERS:
        job = _first(env, job_vars)
        if job is None and name == "htcondor":
            job, idx = htcondor_ids(env)
        else:
            idx = _first(env, idx_vars)
        if job is not None:
            info.update(scheduler=name, job_id=job, array_index=_int(idx))
            break
    return info
