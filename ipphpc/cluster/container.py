"""Run an engine command inside a container image (Apptainer, Singularity, Podman, Docker).

Pure: builds a command line, runs nothing. The engine must see the controller (host network),
the profile directory (connection file, logs) at the same path, and the variables the batch
scheduler and MPI set, since the engine reports its job, array index and rank from them.
"""
from __future__ import annotations

from typing import Sequence

from ..engine.origin import CONTAINER_IMAGE_VAR, ORIGIN_ENV_PREFIXES, origin_env_names

RUNTIMES = ("apptainer", "singularity", "podman", "docker")
GPUS = ("nvidia", "amd")

#: the engine command inside an image: the image's own Python (the host's path means nothing there)
CONTAINER_ENGINE_CMD = ("python3", "-m", "ipphpc", "engine")

# what else a task commonly needs from the job: its GPUs and thread count
_EXTRA_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
              "ZE_AFFINITY_MASK", "OMP_NUM_THREADS",
              "IPPHPC_ELEMENT", "IPPHPC_ENGINE_INDEX", "IPPHPC_PROFILE_DIR", "IPPHPC_CLUSTER_ID", "IPPHPC_DIR")


def _bind_spec(bind: str) -> str:
    """`SRC[:DEST[:OPTS]]` with DEST defaulting to SRC: `-v /path` alone would make a podman volume."""
    src, sep, rest = bind.partition(":")
    if not src.startswith("/"):
        raise ValueError(f"container bind {bind!r}: the host path must be absolute "
                         f"(write /full/path or /full/path:/path/in/container)")
    return bind if sep else f"{src}:{src}"


def _binds(binds: Sequence[str], profile_dir: str, work_dir: str | None) -> list[str]:
    out: list[str] = []
    for b in [profile_dir, work_dir or "", *binds]:
        if b and (spec := _bind_spec(b)) not in out:
            out.append(spec)
    return out


def _oci_env(runtime: str, image: str) -> list[str]:
    """Podman takes `--env PREFIX*` for every variable with that prefix; Docker only names, one by one.

    A name without a value is copied from the host when it is set there, and left out otherwise.
    """
    names = list(origin_env_names()) + [n for n in _EXTRA_ENV if n not in origin_env_names()]
    if runtime == "podman":
        names = [f"{p}*" for p in ORIGIN_ENV_PREFIXES] + [n for n in names if not n.startswith(ORIGIN_ENV_PREFIXES)]
    args = [a for n in names for a in ("--env", n)]
    return args + ["--env", f"{CONTAINER_IMAGE_VAR}={image}"]


def _gpu_flags(runtime: str, gpu: str) -> list[str]:
    if not gpu:
        return []
    if gpu not in GPUS:
        raise ValueError(f"container gpu {gpu!r} is not known; valid: {', '.join(GPUS)} (or '' for none)")
    if runtime in ("apptainer", "singularity"):
        return ["--nv"] if gpu == "nvidia" else ["--rocm"]
    if gpu == "nvidia":
        # podman finds GPUs through CDI (nvidia-ctk cdi generate); docker through its nvidia runtime
        return ["--device", "nvidia.com/gpu=all"] if runtime == "podman" else ["--gpus", "all"]
    return ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]


def wrap_engine_command(cmd: list[str], image: str, runtime: str = "apptainer", binds: Sequence[str] = (),
                        profile_dir: str = "", work_dir: str | None = None, gpu: str = "") -> list[str]:
    """The command that runs `cmd` inside `image` with `runtime`.

    `binds` are extra `SRC[:DEST[:OPTS]]` mounts; the profile and work directories are mounted at
    their own paths. `gpu` ('nvidia' or 'amd') adds the runtime's GPU flags; nothing is added unless asked.
    """
    rt = runtime.strip().lower()
    if rt not in RUNTIMES:
        raise ValueError(f"unknown container runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if not image:
        raise ValueError("no container image given: set container to an image file (.sif) or name")
    mounts = _binds(binds, profile_dir, work_dir)
    gpu_flags = _gpu_flags(rt, gpu)
    if rt in ("apptainer", "singularity"):
        # the host environment passes in by default (scheduler and MPI variables included)
        out = [rt, "exec", *[a for m in mounts for a in ("--bind", m)]]
        if work_dir:
            out += ["--pwd", work_dir]
        return [*out, *gpu_flags, "--env", f"{CONTAINER_IMAGE_VAR}={image}", image, *cmd]
    # --init: a small init forwards SIGTERM to the engine (PID 1 ignores signals it has no handler for);
    # --uts=host: the engine reports the host's name, which the controller compares with its own
    out = [rt, "run", "--rm", "--init", "--network=host", "--uts=host", "--security-opt", "label=disable",
           *[a for m in mounts for a in ("--volume", m)]]
    if "--cluster-id" in cmd[:-1]:
        # `podman ps --filter label=ipphpc.cluster_id=ID` finds a cluster's containers
        out += ["--label", f"ipphpc.cluster_id={cmd[cmd.index('--cluster-id') + 1]}"]
    if work_dir:
        out += ["--workdir", work_dir]
    return [*out, *gpu_flags, *_oci_env(rt, image), image, *cmd]
