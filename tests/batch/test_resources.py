"""Every batch option on every scheduler: the directives it becomes, or the one-line error saying
why the scheduler cannot express it. Rendering is pure, so these run without any scheduler."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ipphpc.batch import get_backend
from ipphpc.batch.render import JobSpec, render_job, template_context
from ipphpc.batch.resources import Resources, option_names, parse_walltime

BASH = shutil.which("bash")
SCHEDULERS = ["slurm", "pbspro", "torque", "sge", "lsf", "htcondor"]

#: one value per option; each is rendered alone on top of BASE
VALUES = {
    "cores": 2, "memory": "1G", "gpus": 1, "nodes": 2, "engines_per_task": 2, "walltime": "2:00",
    "queue": "short", "account": "acct", "project": "proj", "qos": "low", "constraint": "haswell",
    "exclusive": True, "reservation": "resv1", "job_name": "myjob", "mail": "me@example.org",
}
#: BASE is 4 engines, 2 per element, 2 cores each: every element asks for 4 cores
BASE = dict(n=4, engines_per_task=2, cores=2, engine_command="ipphpc engine", profile_dir="/p", cluster_id="c1")
CONSTRAINTS = {"pbspro": "model=sky", "sge": "arch=lx-amd64", "lsf": "avx512", "htcondor": 'OpSys == "LINUX"'}
EXTRA = {"slurm": ("--hold", "#SBATCH --hold"), "pbspro": ("-W depend=afterok:1", "#PBS -W depend=afterok:1"),
         "torque": ("-W depend=afterok:1", "#PBS -W depend=afterok:1"), "sge": ("-hold_jid 7", "#$ -hold_jid 7"),
         "lsf": ("-app big", "#BSUB -app big"), "htcondor": ("priority = 5", "priority = 5")}

#: scheduler -> option -> the lines it must add, or the start of the error it must raise
EXPECTED: dict[str, dict[str, list[str] | str]] = {
    "slurm": {
        "cores": ["#SBATCH --cpus-per-task=4"], "memory": ["#SBATCH --mem=2048M"], "gpus": ["#SBATCH --gres=gpu:2"],
        "nodes": ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1"], "engines_per_task": ["#SBATCH --array=0-1"],
        "walltime": ["#SBATCH --time=00:02:00"], "queue": ["#SBATCH --partition=short"],
        "account": ["#SBATCH --account=acct"], "project": "slurm cannot express project='proj': Slurm charges accounts",
        "qos": ["#SBATCH --qos=low"], "constraint": ["#SBATCH --constraint=haswell"],
        "exclusive": ["#SBATCH --exclusive"], "reservation": ["#SBATCH --reservation=resv1"],
        "job_name": ["#SBATCH --job-name=myjob"],
        "mail": ["#SBATCH --mail-user=me@example.org", "#SBATCH --mail-type=END,FAIL"],
    },
    "pbspro": {
        "cores": ["#PBS -l select=1:ncpus=4"], "memory": ["#PBS -l select=1:ncpus=4:mem=2048mb"],
        "gpus": ["#PBS -l select=1:ncpus=4:ngpus=2"], "nodes": ["#PBS -l select=2:ncpus=4"],
        "engines_per_task": ["#PBS -J 0-1"], "walltime": ["#PBS -l walltime=00:02:00"], "queue": ["#PBS -q short"],
        "account": ["#PBS -A acct"], "project": ["#PBS -P proj"], "qos": "pbspro cannot express qos='low'",
        "constraint": ["#PBS -l select=1:ncpus=4:model=sky"], "exclusive": ["#PBS -l place=excl"],
        "reservation": "pbspro cannot express reservation='resv1': a PBS Pro reservation is a queue",
        "job_name": ["#PBS -N myjob"], "mail": ["#PBS -M me@example.org", "#PBS -m ae"],
    },
    "torque": {
        "cores": ["#PBS -l nodes=1:ppn=4"], "memory": ["#PBS -l mem=2048mb"], "gpus": ["#PBS -l nodes=1:ppn=4:gpus=2"],
        "nodes": ["#PBS -l nodes=2:ppn=4"], "engines_per_task": ["#PBS -t 0-1"],
        "walltime": ["#PBS -l walltime=00:02:00"], "queue": ["#PBS -q short"], "account": ["#PBS -A acct"],
        "project": "torque cannot express project='proj': Torque's -P is a proxy user",
        "qos": "torque cannot express qos='low'", "constraint": ["#PBS -l nodes=1:ppn=4:haswell"],
        "exclusive": ["#PBS -n"], "reservation": "torque cannot express reservation='resv1'",
        "job_name": ["#PBS -N myjob"], "mail": ["#PBS -M me@example.org", "#PBS -m ae"],
    },
    "sge": {
        "cores": ["#$ -pe smp 4"], "memory": ["#$ -l h_vmem=512M"], "gpus": ["#$ -l gpu=2"],
        "nodes": "sge cannot express nodes=2: Grid Engine places slots, not nodes", "engines_per_task": ["#$ -t 1-2"],
        "walltime": ["#$ -l h_rt=00:02:00"], "queue": ["#$ -q short"], "account": ["#$ -A acct"],
        "project": ["#$ -P proj"], "qos": "sge cannot express qos='low'", "constraint": ["#$ -l arch=lx-amd64"],
        "exclusive": ["#$ -l exclusive=true"], "reservation": ["#$ -ar resv1"], "job_name": ["#$ -N myjob"],
        "mail": ["#$ -M me@example.org", "#$ -m ea"],
    },
    "lsf": {
        "cores": ["#BSUB -n 4"], "memory": ['#BSUB -R "rusage[mem=2048MB]"', "#BSUB -M 2048MB"],
        "gpus": ['#BSUB -gpu "num=2"'], "nodes": ["#BSUB -n 8", '#BSUB -R "span[ptile=4]"'],
        "engines_per_task": ['#BSUB -J "ipphpc-engines[1-2]"'], "walltime": ["#BSUB -W 0:02"],
        "queue": ["#BSUB -q short"], "account": "lsf cannot express account='acct': LSF charges projects",
        "project": ["#BSUB -P proj"], "qos": "lsf cannot express qos='low'",
        "constraint": ['#BSUB -R "select[avx512]"'], "exclusive": ["#BSUB -x"], "reservation": ["#BSUB -U resv1"],
        "job_name": ['#BSUB -J "myjob[1-2]"'], "mail": ["#BSUB -u me@example.org", "#BSUB -N"],
    },
    "htcondor": {
        "cores": ["request_cpus = 4"], "memory": ["request_memory = 2048"], "gpus": ["request_gpus = 2"],
        "nodes": "htcondor cannot express nodes=2", "engines_per_task": ["queue 2"],
        "walltime": ["+IpphpcWalltime = 120"],
        "queue": "htcondor cannot express queue='short': HTCondor has no queues: use constraint",
        "account": ["accounting_group = acct"], "project": "htcondor cannot express project='proj'",
        "qos": "htcondor cannot express qos='low'", "constraint": ['requirements = (OpSys == "LINUX")'],
        "exclusive": "htcondor cannot express exclusive=True", "reservation": "htcondor cannot express reservation",
        "job_name": ["batch_name = myjob"], "mail": ["notify_user = me@example.org", "notification = Complete"],
    },
}
#: options that are not directives: they reach the script's body (or, for containers, the engine command)
BODY_OPTIONS = {"env", "prologue", "epilogue", "extra_directives", "container", "container_runtime",
                "container_binds"}


def render(scheduler: str, **options) -> tuple[str, str]:
    """(submitted file, shell script) for BASE plus ``options``."""
    files = render_job(scheduler, JobSpec(**{**BASE, **options}), "/tmp/ipphpc-resources-test")
    shell = next(f.text for f in files if f.text.startswith("#!/bin/bash"))
    return files[0].text, shell


def test_every_option_is_covered_for_every_scheduler() -> None:
    for scheduler in SCHEDULERS:
        assert set(EXPECTED[scheduler]) | BODY_OPTIONS == set(option_names()), scheduler


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("option", sorted(VALUES))
def test_option_directives(scheduler: str, option: str) -> None:
    value = CONSTRAINTS.get(scheduler, VALUES[option]) if option == "constraint" else VALUES[option]
    expected = EXPECTED[scheduler][option]
    if isinstance(expected, str):
        with pytest.raises(ValueError) as err:
            render(scheduler, **{option: value})
        message = str(err.value)
        assert message.startswith(expected) and "\n" not in message, message
        return
    plain, _ = render(scheduler)
    text, _ = render(scheduler, **{option: value})
    lines = text.splitlines()
    for line in expected:
        assert line in lines, f"{line!r} missing from\n{text}"
        if option not in ("engines_per_task", "cores"):  # those are in BASE already
            assert line not in plain.splitlines(), f"{line!r} is there without {option}"


def test_every_unsupported_option_is_refused_in_one_line() -> None:
    for scheduler in SCHEDULERS:
        backend = get_backend(scheduler)
        for option, why in backend.unsupported.items():
            value = 3 if option == "nodes" else True if option == "exclusive" else "x"
            with pytest.raises(ValueError) as err:
                render(scheduler, **{option: value})
            assert str(err.value) == f"{backend.name} cannot express {option}={value!r}: {why}"


def test_pbspro_boolean_constraint_and_exclusive_nodes() -> None:
    text, _ = render("pbspro", constraint="bigmem", nodes=2, exclusive=True)
    assert "#PBS -l select=2:ncpus=4:bigmem=True" in text.splitlines()
    assert "#PBS -l place=scatter:excl" in text.splitlines()


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_extra_directives_get_the_prefix_when_it_is_missing(scheduler: str) -> None:
    raw, line = EXTRA[scheduler]
    text, _ = render(scheduler, extra_directives=[raw, line])
    lines = text.splitlines()
    assert lines.count(line) == 2, text  # added once, kept once
    assert raw not in lines or raw == line  # never a bare line that the shell would run


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_env_prologue_and_epilogue_reach_the_script(scheduler: str) -> None:
    _, shell = render(scheduler, env={"A": "x y"}, prologue=["module load py"], epilogue=["echo bye"])
    lines = shell.splitlines()
    assert "export A='x y'" in lines
    assert lines.index("module load py") < lines.index("echo bye")


def test_torque_keeps_its_notices_in_the_elements_output() -> None:
    for role in ("engines", "controller"):
        spec = JobSpec(**{**BASE, "controller_command": "ipphpc controller"})
        text = render_job("torque", spec, "/tmp/x", role=role)[0].text
        assert "#PBS -o /dev/null" not in text and "exec >>" not in text
        assert "#PBS -o /p/log/c1/" in text.splitlines() and "#PBS -j oe" in text.splitlines()


def test_the_controller_gets_no_gpus_and_one_node() -> None:
    spec = JobSpec(**{**BASE, "controller_command": "ipphpc controller", "gpus": 2})
    context = template_context(get_backend("slurm"), spec, "controller")
    assert (context["gpus_total"], context["cpus_total"]) == (0, 2)


def test_older_names_still_work_in_templates() -> None:
    context = template_context(get_backend("slurm"), JobSpec(**{**BASE, "memory": "2G", "env": {"A": "1"}}))
    assert (context["cpus_per_engine"], context["memory_per_engine"], context["environment"]) == (2, "2G", {"A": "1"})


# -- walltime and memory ------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [
    ("90", 90 * 60), ("2:00", 120), ("1:30:00", 5400), ("2-0", 2 * 86400), ("1-12", 36 * 3600),
    ("1-12:30", 36 * 3600 + 1800), ("1-00:00:05", 86405), ("1h", 3600), ("90m", 5400), ("2d", 172800),
])
def test_walltime_is_read_as_slurm_reads_it(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text, message", [
    ("1:75:00", "walltime '1:75:00': minutes and seconds must be below 60; use MM, MM:SS"),
    ("1-24", "walltime '1-24': hours after 'D-' must be below 24"),
    ("soon", "walltime 'soon' is not a time; use MM, MM:SS, HH:MM:SS"),
])
def test_bad_walltimes_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        Resources(walltime=text).validate()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_resources_refuse_bad_values() -> None:
    for options, message in [
        ({"memory": "16"}, "memory '16' has no unit: write 16G or 16M"),
        ({"cores": 0}, "cores=0: must be at least 1"),
        ({"gpus": -1}, "gpus=-1: cannot be negative"),
        ({"container_runtime": "lxc"}, "container_runtime='lxc': use one of apptainer, singularity, podman, docker"),
        ({"env": {"A-B": "1"}}, "not valid environment variable names: 'A-B'"),
    ]:
        with pytest.raises(ValueError) as err:
            Resources(**options).validate()
        assert str(err.value) == message


# -- GPUs: each engine of an element sees its own devices ----------------------------------------
def run_element(tmp_path: Path, env: dict[str, str], gpus: int = 2, per_task: int = 3) -> list[str]:
    """Run element 0 of a Slurm script locally; each engine records index, CUDA and ROCR devices."""
    record = tmp_path / "engines.txt"
    command = (f"sh -c 'echo \"$IPPHPC_ENGINE_INDEX ${{CUDA_VISIBLE_DEVICES-unset}} "
               f"${{ROCR_VISIBLE_DEVICES-unset}}\" >> {record}'")
    spec = JobSpec(n=per_task, engines_per_task=per_task, gpus=gpus, engine_command=command,
                   profile_dir=str(tmp_path / "p"), cluster_id="c1")
    script = tmp_path / "job.sh"
    script.write_text(render_job("slurm", spec, tmp_path)[0].text)
    full = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "0", **env}
    result = subprocess.run([BASH, str(script)], env=full, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return sorted(record.read_text().splitlines())


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_engines_split_the_devices_the_scheduler_gave(tmp_path: Path) -> None:
    assert run_element(tmp_path, {"CUDA_VISIBLE_DEVICES": "3,4,5,6,7,8"}) == [
        "0 3,4 unset", "1 5,6 unset", "2 7,8 unset"]


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_engines_split_amd_devices(tmp_path: Path) -> None:
    assert run_element(tmp_path, {"ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5"}, gpus=1, per_task=2) == [
        "0 unset 0", "1 unset 1"]


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_every_device_variable_the_scheduler_set_is_split(tmp_path: Path) -> None:
    """Slurm sets CUDA_VISIBLE_DEVICES and ROCR_VISIBLE_DEVICES together: both must be split, or
    every engine of an element would still see all of its devices through the other one."""
    assert run_element(tmp_path, {"CUDA_VISIBLE_DEVICES": "2,3", "ROCR_VISIBLE_DEVICES": "2,3"},
                       gpus=1, per_task=2) == ["0 2 2", "1 3 3"]


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_engines_of_a_job_get_the_huge_page_tunable(tmp_path: Path) -> None:
    """The element's engines run with glibc's huge-page tunable added, and a user's own value kept."""
    for given, seen in ((None, "glibc.malloc.hugetlb=1"), ("glibc.malloc.check=3", "glibc.malloc.check=3:glibc.malloc"
                        ".hugetlb=1"), ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0")):
        record = tmp_path / f"env-{given}.txt"
        spec = JobSpec(n=1, engine_command=f"sh -c 'echo \"$GLIBC_TUNABLES\" > {record}'",
                       profile_dir=str(tmp_path / "p"), cluster_id="c1")
        script = tmp_path / "job.sh"
        script.write_text(render_job("slurm", spec, tmp_path)[0].text)
        env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "0"}
        if given:
            env["GLIBC_TUNABLES"] = given
        result = subprocess.run([BASH, str(script)], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert record.read_text().strip() == seen


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_engines_number_devices_when_the_scheduler_set_none(tmp_path: Path) -> None:
    assert run_element(tmp_path, {}) == ["0 0,1 0,1", "1 2,3 2,3", "2 4,5 4,5"]
