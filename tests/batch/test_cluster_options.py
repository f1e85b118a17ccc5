"""The batch options as users give them: HPCCluster keywords and configuration, `ipphpc submit`
flags, and what reaches the script. Nothing is submitted."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from ipphpc import HPCCluster
from ipphpc.batch.resources import option_names
from ipphpc.batch.states import State
from ipphpc.cli.main import FLAG_TRAITS, build_parser, to_config
from ipphpc.launch.batch import scheduler_launcher
from ipphpc.launch.poller import ElementStatus


@pytest.fixture
def cluster(tmp_path: Path):
    def make(**kwargs) -> HPCCluster:
        return HPCCluster(profile_dir=str(tmp_path / "profile"), shutdown_atexit=False, **kwargs)
    return make


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_every_resource_reaches_the_slurm_script(cluster) -> None:
    c = cluster(scheduler="slurm", n=2, cores=4, memory="4G", partition="x", account="a1")
    script = lines(c.job_script())
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH --mem=4096M", "#SBATCH --partition=x",
                 "#SBATCH --account=a1", "#SBATCH --array=0-1"):
        assert line in script, line
    assert c.job_script() in c.dry_run()  # the exact script the dry run shows


def test_older_and_dask_jobqueue_names_are_aliases(cluster) -> None:
    c = cluster(scheduler="slurm", cpus_per_engine=3, memory_per_engine="1G", environment={"A": "1"},
                job_extra_directives=["--hold"], job_script_prologue=["module load x"], partition="p")
    assert (c.cores, c.memory, c.env, c.queue) == (3, "1G", {"A": "1"}, "p")
    script = lines(c.job_script())
    assert {"#SBATCH --cpus-per-task=3", "#SBATCH --hold", "module load x", "export A=1"} <= set(script)


def test_profile_configuration_with_older_names(cluster) -> None:
    cfg = Config()
    cfg.HPCCluster.cpus_per_engine = 2
    cfg.HPCCluster.queue = "short"
    c = cluster(scheduler="slurm", config=cfg)
    assert (c.cores, c.queue) == (2, "short")


@pytest.mark.parametrize("kwargs, message", [
    ({"quue": "x"}, "unknown HPCCluster option 'quue'; did you mean 'queue'? valid: "),
    ({"wall_time": "1:00:00"}, "unknown HPCCluster option 'wall_time'; did you mean 'walltime'? valid: "),
    ({"zzz": 1}, "unknown HPCCluster option 'zzz'; valid: account, "),
    ({"processes": 4}, "HPCCluster option 'processes' is not accepted: dask-jobqueue's processes counts workers"),
    ({"interface": "ib0"}, "HPCCluster option 'interface' is not accepted: use controller_ip"),
    ({"worker_extra_args": ["--x"]}, "HPCCluster option 'worker_extra_args' is not accepted: use engine_args"),
    ({"memory": "4"}, "memory '4' has no unit: write 4G or 4M"),
    ({"walltime": "1:99:00"}, "walltime '1:99:00': minutes and seconds must be below 60"),
    ({"queue": "a", "partition": "b"}, "HPCCluster option 'queue' given twice with different values"),
])
def test_bad_keywords_are_one_line_errors(cluster, kwargs, message) -> None:
    with pytest.raises(ValueError) as err:
        cluster(**kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_an_option_the_scheduler_cannot_express_is_an_error(cluster) -> None:
    c = cluster(scheduler="htcondor", queue="short")
    with pytest.raises(ValueError, match="^htcondor cannot express queue='short': HTCondor has no queues"):
        c.dry_run()


def test_container_fields_are_carried(cluster) -> None:
    c = cluster(scheduler="slurm", container="img.sif", container_runtime="podman", container_binds=["/scratch"])
    options = c.batch_options()
    assert (options["container"], options["container_runtime"], options["container_binds"]) == (
        "img.sif", "podman", ["/scratch"])
    with pytest.raises(ValueError, match="container_runtime='lxc': use one of apptainer"):
        cluster(container_runtime="lxc")


# -- the command line -----------------------------------------------------------------------------
def test_job_script_of_htcondor_and_of_local_engines(cluster) -> None:
    text = cluster(scheduler="htcondor", n=2, cores=2).job_script()
    assert "request_cpus = 2" in lines(text) and "queue 2" in lines(text)
    assert "#!/bin/bash" in lines(text)  # the wrapper the submit file runs
    with pytest.raises(ValueError, match="^engines='local' are not batch jobs: there is no job script$"):
        cluster(n=2).job_script()


def test_every_option_has_a_flag_and_a_trait() -> None:
    assert set(option_names()) <= set(HPCCluster.class_trait_names(config=True))
    for name in option_names():
        assert FLAG_TRAITS[name] == [("HPCCluster", name, FLAG_TRAITS[name][0][2])], name
    ns, extra = build_parser().parse_known_args([
        "submit", "--cores", "2", "--mem", "3G", "-t", "90", "--partition", "p", "-A", "a", "-C", "knl",
        "--exclusive", "--env", "A=1", "--env", "B=x=y", "--prologue", "module load a", "--prologue", "b",
        "--extra-directive=--hold", "--gpus", "1", "--container-bind", "/s", "--qos", "q"])
    cfg = to_config(ns, extra, ("HPCCluster",)).HPCCluster
    assert (cfg.cores, cfg.memory, cfg.walltime, cfg.queue, cfg.account, cfg.constraint, cfg.exclusive) == (
        2, "3G", "90", "p", "a", "knl", True)
    assert (cfg.env, cfg.prologue, cfg.extra_directives, cfg.gpus, cfg.container_binds, cfg.qos) == (
        {"A": "1", "B": "x=y"}, ["module load a", "b"], ["--hold"], 1, ["/s"], "q")
    for old in (["--cpus-per-engine", "2"], ["--mem", "1G"], ["-q", "x"]):
        assert to_config(*build_parser().parse_known_args(["submit", *old]), ("HPCCluster",)).HPCCluster


def submit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipphpc", "submit", "--profile-dir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=60)


def test_dry_run_shows_normalized_values(tmp_path: Path) -> None:
    r = submit(tmp_path, "--scheduler", "slurm", "-n", "4", "--engines-per-task", "2", "-t", "2:00",
               "--mem", "1G", "--gpus", "1", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "# each element (2 engine(s)): 2 core(s), 2048M memory, 2 GPU(s), 1 per engine, walltime 00:02:00" \
        in lines(r.stdout)
    assert "#SBATCH --time=00:02:00" in lines(r.stdout)


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "slurm", "--mem", "4"], "ipphpc submit: memory '4' has no unit: write 4G or 4M"),
    (["--scheduler", "htcondor", "--queue", "short"],
     "ipphpc submit: htcondor cannot express queue='short': HTCondor has no queues: use constraint"),
    (["--scheduler", "lsf", "--account", "a"], "ipphpc submit: lsf cannot express account='a': LSF charges projects"),
])
def test_submit_refuses_in_one_line(tmp_path: Path, args, message) -> None:
    r = submit(tmp_path, *args, "--dry-run")
    assert r.returncode == 2 and r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr


# -- Torque: the element's output file holds the scheduler's notices ------------------------------
def test_torque_output_path_is_the_schedulers_own_file(tmp_path: Path) -> None:
    launcher = scheduler_launcher("torque")("engines", 4, profile_dir=str(tmp_path), cluster_id="c1")
    launcher.log_dir.mkdir(parents=True)
    out = launcher.log_dir / "ipphpc-engines.o2001-3"
    out.write_text("=>> PBS: job killed: walltime 65 exceeded limit 60\n")
    status = ElementStatus(job_id="2001[].torque01", array_index=3, state=State.TIMEOUT)
    assert launcher.output_path(status) == out


def test_ipython_parallel_section_names_reach_the_launchers(cluster) -> None:
    """IPython Parallel's sections (BatchSystemLauncher, PBS*, SGE*) and its batch_template_file are read,
    each just before ipphpc's own name of the same section."""
    cfg = Config()
    cfg.BatchSystemLauncher.account = "a0"
    cfg.BatchLauncher.account = "a1"  # ipphpc's name of the shared section wins over IPython Parallel's
    cfg.PBSLauncher.queue = "long"
    cfg.PBSEngineSetLauncher.queue = "short"
    cfg.PBSEngineSetLauncher.batch_template_file = "/site/pbs.tpl"
    cfg.SGEEngineSetLauncher.queue = "sge.q"
    c = cluster(engines="torque", n=2, config=cfg)
    engines, controller = c._launcher("torque", "engines", 2), c._launcher("torque", "controller")
    assert (engines.account, engines.queue, engines.template_file) == ("a1", "short", "/site/pbs.tpl")
    assert (controller.account, controller.queue, controller.template_file) == ("a1", "long", "")
    assert cluster(engines="pbspro", config=cfg)._launcher("pbspro", "engines").queue == "short"
    assert cluster(engines="sge", config=cfg)._launcher("sge", "engines").queue == "sge.q"
    assert cluster(engines="slurm", config=cfg)._launcher("slurm", "engines").queue == ""


def test_a_template_file_named_twice_differently_is_an_error(cluster) -> None:
    cfg = Config()
    cfg.SlurmEngineSetLauncher.batch_template_file = "/a.tpl"
    cfg.SlurmEngineSetLauncher.template_file = "/b.tpl"
    with pytest.raises(ValueError, match="'template_file' given twice with different values"):
        cluster(engines="slurm", config=cfg)._launcher("slurm", "engines")


def test_settings_of_the_processes_travel_to_them(cluster) -> None:
    """What a cluster's configuration says of the controller's task database or the engines' MPI reaches
    the processes it starts, under IPython Parallel's section names too."""
    cfg = Config()
    cfg.DictDB.size_limit = 5 * 2**20
    cfg.IPController.db_class = "sqlite"
    cfg.MPI.use = "mpi4py"
    cfg.IPEngine.work_dir = "/scratch"
    c = cluster(config=cfg)
    assert {f"--DictDB.size_limit={5 * 2**20}", "--IPController.db_class='sqlite'"} <= set(c._controller_cmd())
    assert {"--MPI.use='mpi4py'", "--IPEngine.work_dir='/scratch'"} <= set(c._engine_cmd())
    assert not any(a.startswith(("--MPI", "--IPEngine")) for a in c._controller_cmd())
