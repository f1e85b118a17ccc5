"""Where an engine came from: host, pid, batch job, array element, MPI rank and container image.

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


# variables a container runtime must pass through for the fields above (podman takes prefixes)
ORIGIN_ENV_PREFIXES = ("SLURM_", "LSB_", "PBS_", "SGE_", "OMPI_", "PMI_", "PMIX_", "IPPHPC_")
#: set by ipphpc's container wrapper to the image the engine runs in
CONTAINER_IMAGE_VAR = "IPPHPC_CONTAINER_IMAGE"


def origin_env_names() -> tuple[str, ...]:
    """Every variable engine_origin reads, for runtimes that pass variables only by name."""
    names = [n for _, jobs, idxs in _SCHEDULERS for n in (*jobs, *idxs)] + [*_RANK_VARS, *_SIZE_VARS]
    return tuple(dict.fromkeys(names))


def container_origin(env: Mapping[str, str], containerenv: str = "/run/.containerenv") -> dict:
    """The image and runtime this engine runs in, so that `rc.engines` shows which stack ran a task."""
    image = env.get(CONTAINER_IMAGE_VAR) or None
    runtime = None
    for name in ("APPTAINER", "SINGULARITY"):
        if env.get(f"{name}_CONTAINER"):
            runtime, image = name.lower(), image or env[f"{name}_CONTAINER"]
            break
    else:
        # podman sets container=podman and writes /run/.containerenv; a host may carry a stray
        # /.dockerenv (images turned into VMs do), so docker is known by ipphpc's variable only
        if os.path.exists(containerenv):
            runtime = env.get("container") or "podman"
            image = image or _containerenv_image(containerenv)
        elif image:
            runtime = env.get("container") or None
    return {"container": image or (runtime and "unknown image"), "container_runtime": runtime}


def _containerenv_image(path: str) -> str | None:
    """Podman writes image="..." into /run/.containerenv only for privileged containers."""
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition("=")
                if k.strip() == "image":
                    return v.strip().strip('"') or None
    except OSError:
        pass
    return None


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
            "python": platform.python_version(), **container_origin(env)}
    if env.get("IPPHPC_ENGINE_SET"):  # the launch it belongs to (an MPI job's ranks share no process group)
        info["engine_set"] = env["IPPHPC_ENGINE_SET"]
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
