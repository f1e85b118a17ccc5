"""The command lines that run an engine inside a container, for every runtime (nothing is started)."""
from __future__ import annotations

import shlex

import pytest

from ipphpc.cluster.container import RUNTIMES, wrap_engine_command
from ipphpc.engine.origin import container_origin, engine_origin, origin_env_names

ENGINE = ["python3", "-m", "ipphpc", "engine", "--profile-dir", "/home/u/.ipphpc/profile_default",
          "--cluster-id", "c1"]
PDIR = "/home/u/.ipphpc/profile_default"


def wrap(runtime: str, **kw: object) -> list[str]:
    kw.setdefault("profile_dir", PDIR)
    return wrap_engine_command(list(ENGINE), "img", runtime=runtime, **kw)  # type: ignore[arg-type]


def test_apptainer_command_text() -> None:
    line = shlex.join(wrap("apptainer", work_dir="/scratch/run", binds=["/data", "/sw:/opt/sw:ro"]))
    assert line == ("apptainer exec --bind /home/u/.ipphpc/profile_default:/home/u/.ipphpc/profile_default "
                    "--bind /scratch/run:/scratch/run --bind /data:/data --bind /sw:/opt/sw:ro --pwd /scratch/run "
                    "--env IPPHPC_CONTAINER_IMAGE=img img " + shlex.join(ENGINE))


def test_singularity_is_apptainer_under_its_old_name() -> None:
    assert wrap("singularity")[1:] == wrap("apptainer")[1:]
    assert wrap("singularity")[0] == "singularity"


def test_apptainer_passes_the_environment_by_default() -> None:
    # scheduler variables reach the engine without being named; no --cleanenv, no --containall
    cmd = wrap("apptainer")
    assert not {"--cleanenv", "-e", "--containall", "-C"} & set(cmd)


@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_oci_runtimes_share_host_network_and_mount_profile(runtime: str) -> None:
    cmd = wrap(runtime, work_dir="/scratch/run")
    img = cmd.index("img")
    assert cmd[:3] == [runtime, "run", "--rm"]
    assert cmd[img + 1:] == ENGINE
    opts = cmd[:img]
    assert "--network=host" in opts and "--init" in opts and "--uts=host" in opts
    assert opts[opts.index("--workdir") + 1] == "/scratch/run"
    vols = [opts[i + 1] for i, a in enumerate(opts) if a == "--volume"]
    assert vols == [f"{PDIR}:{PDIR}", "/scratch/run:/scratch/run"]
    envs = [opts[i + 1] for i, a in enumerate(opts) if a == "--env"]
    assert "IPPHPC_CONTAINER_IMAGE=img" in envs


def test_podman_passes_scheduler_variables_by_prefix() -> None:
    cmd = wrap("podman")
    envs = {cmd[i + 1] for i, a in enumerate(cmd) if a == "--env"}
    assert {"SLURM_*", "PBS_*", "LSB_*", "SGE_*", "PMI_*", "OMPI_*", "IPPHPC_*"} <= envs
    assert "JOB_ID" in envs and "SGE_TASK_ID" not in envs  # JOB_ID has no prefix; SGE_TASK_ID is in SGE_*


def test_docker_names_every_variable_the_engine_reads() -> None:
    cmd = wrap("docker")
    envs = {cmd[i + 1] for i, a in enumerate(cmd) if a == "--env"}
    assert not any(e.endswith("*") for e in envs)  # docker has no prefix form
    assert set(origin_env_names()) <= envs
    assert {"SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "LSB_JOBINDEX", "SGE_TASK_ID", "PMI_RANK"} <= envs


def test_engine_reads_no_variable_the_wrapper_drops() -> None:
    # origin_env_names must list what engine_origin reads: an engine given only those sees the same job
    env = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "PMI_RANK": "1", "PMI_SIZE": "4"}
    inside = {k: v for k, v in env.items() if k in origin_env_names()}
    assert {k: engine_origin(inside)[k] for k in ("job_id", "array_index", "mpi_rank")} == \
        {k: engine_origin(env)[k] for k in ("job_id", "array_index", "mpi_rank")} == \
        {"job_id": "77", "array_index": 3, "mpi_rank": 1}


@pytest.mark.parametrize("runtime,gpu,flags", [
    ("apptainer", "nvidia", ["--nv"]), ("apptainer", "amd", ["--rocm"]), ("singularity", "nvidia", ["--nv"]),
    ("podman", "nvidia", ["--device", "nvidia.com/gpu=all"]), ("docker", "nvidia", ["--gpus", "all"]),
    ("podman", "amd", ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]),
])
def test_gpu_flags_only_when_asked(runtime: str, gpu: str, flags: list[str]) -> None:
    with_gpu, without = wrap(runtime, gpu=gpu), wrap(runtime)
    assert shlex.join(flags) in shlex.join(with_gpu)
    assert not {"--nv", "--rocm", "--gpus", "nvidia.com/gpu=all", "/dev/kfd"} & set(without)
    assert [a for a in with_gpu if a not in flags] == [a for a in without if a not in flags]


def test_duplicate_binds_are_mounted_once() -> None:
    cmd = wrap("podman", work_dir=PDIR, binds=[PDIR])
    assert cmd.count("--volume") == 1


@pytest.mark.parametrize("kw,words", [
    ({"runtime": "charliecloud"},
     ["unknown container runtime 'charliecloud'", "apptainer, singularity, podman, docker"]),
    ({"binds": ["data"]}, ["'data'", "absolute"]),
    ({"gpu": "intel"}, ["'intel'", "nvidia, amd"]),
])
def test_bad_input_is_one_line_naming_the_fix(kw: dict, words: list[str]) -> None:
    runtime = kw.pop("runtime", "podman")
    with pytest.raises(ValueError) as e:
        wrap(runtime, **kw)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_runtime_names_are_case_insensitive() -> None:
    assert wrap("Podman")[0] == "podman"
    assert set(RUNTIMES) == {"apptainer", "singularity", "podman", "docker"}


def test_origin_reports_the_image(tmp_path: pytest.TempPathFactory) -> None:
    none = str(tmp_path / "absent")  # type: ignore[operator]
    assert container_origin({}, none) == {"container": None, "container_runtime": None}
    assert container_origin({"APPTAINER_CONTAINER": "/sw/eng.sif"}, none) == \
        {"container": "/sw/eng.sif", "container_runtime": "apptainer"}
    assert container_origin({"SINGULARITY_CONTAINER": "/sw/eng.sif", "IPPHPC_CONTAINER_IMAGE": "eng.sif"}, none) == \
        {"container": "eng.sif", "container_runtime": "singularity"}
    cenv = tmp_path / "containerenv"  # type: ignore[operator]
    cenv.write_text('engine="podman-4.3.1"\nname="x"\nimage="localhost/eng:1"\n')
    assert container_origin({"container": "podman"}, str(cenv)) == \
        {"container": "localhost/eng:1", "container_runtime": "podman"}
    assert container_origin({"IPPHPC_CONTAINER_IMAGE": "eng:2"}, none) == \
        {"container": "eng:2", "container_runtime": None}


def test_oci_containers_carry_the_cluster_id() -> None:
    for runtime in ("podman", "docker"):
        cmd = wrap(runtime)
        assert cmd[cmd.index("--label") + 1] == "ipphpc.cluster_id=c1"
    assert "--label" not in wrap_engine_command(["python3", "-m", "ipphpc", "engine"], "img", runtime="podman")
