import dataclasses
import os
import shutil
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ipphpc.batch import get_backend
from ipphpc.batch.render import (
    JobSpec,
    array_directive_missing,
    builtin_template_dir,
    detect_style,
    format_dhms,
    format_hms,
    parse_memory,
    parse_walltime,
    render_job,
    render_template,
    split_spec,
    template_context,
)

BASH = shutil.which("bash")
SCHEDULERS = ["slurm", "pbspro", "torque", "sge", "lsf", "htcondor"]
ENGINE = "ipphpc engine --profile-dir=/home/u/.ipphpc/profile_x --cluster-id=c1"


def spec(**overrides) -> JobSpec:
    values = dict(
        n=10,
        engines_per_task=4,
        walltime="1:30:00",
        memory="2G",
        cores=2,
        queue="short",
        account="proj42",
        env={"OMP_NUM_THREADS": "2", "GREETING": "hello world"},
        prologue=["module load python/3.11", "source /home/u/venv/bin/activate"],
        epilogue=["echo engines done"],
        extra_directives=[],
        engine_command=ENGINE,
        controller_command="ipphpc controller --profile-dir=/home/u/.ipphpc/profile_x --cluster-id=c1",
        profile_dir="/home/u/.ipphpc/profile_x",
        cluster_id="c1",
    )
    values.update(overrides)
    return JobSpec(**values)


#: what spec() sets that a scheduler cannot express, replaced by its nearest word
FIT = {"lsf": lambda s: dict(account="", project=s.account), "htcondor": lambda s: dict(queue="")}


def fit(scheduler, s: JobSpec) -> JobSpec:
    """``s`` without the options ``scheduler`` refuses (LSF charges projects, HTCondor has no queues)."""
    change = FIT.get(get_backend(scheduler).name)
    return dataclasses.replace(s, **change(s)) if change else s


def script_of(backend, s, role="engines"):
    """The shell script of a role (for HTCondor: the wrapper), and the submitted file."""
    files = render_job(backend, fit(backend, s), "/tmp/ipphpc-render-test", role=role)
    shell = next(f for f in files if f.text.startswith("#!/bin/bash"))
    return shell.text, files[0].text


def bash_syntax_ok(text: str, tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text(text)
    result = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# what each scheduler's engines file must say for spec(): 3 elements of 4 engines,
# 8 CPUs and 8192 MiB per element, 1.5 h, queue "short", account "proj42"
EXPECTED_ENGINE_DIRECTIVES = {
    "slurm": [
        "#SBATCH --array=0-2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=8192M",
        "#SBATCH --time=01:30:00",
        "#SBATCH --partition=short",
        "#SBATCH --account=proj42",
        "#SBATCH --output=/home/u/.ipphpc/profile_x/log/c1/engines-%A_%a.out",
    ],
    "pbspro": [
        "#PBS -J 0-2",
        "#PBS -l select=1:ncpus=8:mem=8192mb",
        "#PBS -l walltime=01:30:00",
        "#PBS -q short",
        "#PBS -A proj42",
        "#PBS -o /home/u/.ipphpc/profile_x/log/c1/engines-0-^array_index^.out",
    ],
    "torque": [
        "#PBS -t 0-2",
        "#PBS -l nodes=1:ppn=8",
        "#PBS -l mem=8192mb",
        "#PBS -l walltime=01:30:00",
        "#PBS -q short",
        "#PBS -A proj42",
        "#PBS -o /home/u/.ipphpc/profile_x/log/c1/",
    ],
    "sge": [
        "#$ -t 1-3",
        "#$ -pe smp 8",
        "#$ -l h_vmem=1024M",
        "#$ -l h_rt=01:30:00",
        "#$ -q short",
        "#$ -A proj42",
        "#$ -o /home/u/.ipphpc/profile_x/log/c1/engines-$JOB_ID.$TASK_ID.out",
        "#$ -S /bin/bash",
    ],
    "lsf": [
        '#BSUB -J "ipphpc-engines[1-3]"',
        "#BSUB -n 8",
        '#BSUB -R "rusage[mem=8192MB]"',
        "#BSUB -M 8192MB",
        "#BSUB -W 1:30",
        "#BSUB -q short",
        "#BSUB -P proj42",
        "#BSUB -o /home/u/.ipphpc/profile_x/log/c1/engines-%J_%I.out",
    ],
    "htcondor": [
        "queue 3",
        "request_cpus = 8",
        "request_memory = 8192",
        "accounting_group = proj42",
        "+IpphpcWalltime = 5400",
        "executable = /tmp/ipphpc-render-test/engines.sh",
        "periodic_remove = (JobStatus == 2) && (time() - EnteredCurrentStatus > IpphpcWalltime)",
        "output = /home/u/.ipphpc/profile_x/log/c1/engines-$(Cluster).$(Process).out",
        'environment = "IPPHPC_CONDOR_CLUSTER=$(Cluster) IPPHPC_CONDOR_PROCESS=$(Process)"',
    ],
}

EXIT_FILE_LINE = {
    "engines": 'ipphpc_exit_file="$ipphpc_exit_dir/exit-${ipphpc_jobid%%[-.[]*}-$ipphpc_index"',
    "controller": 'ipphpc_exit_file="$ipphpc_exit_dir/exit-${ipphpc_jobid%%[-.[]*}"',
}


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_builtin_engines_template(scheduler, tmp_path):
    script, submitted = script_of(scheduler, spec())
    lines = submitted.splitlines()
    for directive in EXPECTED_ENGINE_DIRECTIVES[scheduler]:
        assert directive in lines, f"{directive!r} missing from\n{submitted}"
    assert f"    {ENGINE} &" in script.splitlines()
    assert EXIT_FILE_LINE["engines"] in script.splitlines()
    assert "ipphpc_exit_dir=/home/u/.ipphpc/profile_x/log/c1" in script.splitlines()
    assert "export GREETING='hello world'" in script.splitlines()
    assert "module load python/3.11" in script.splitlines()
    assert not array_directive_missing(scheduler, submitted, fit(scheduler, spec()))
    bash_syntax_ok(script, tmp_path)


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_builtin_controller_template(scheduler, tmp_path):
    s = spec()
    script, submitted = script_of(scheduler, s, role="controller")
    assert f"    {s.controller_command} &" in script.splitlines()
    assert ENGINE not in script
    assert EXIT_FILE_LINE["controller"] in script.splitlines()
    if scheduler == "htcondor":
        assert submitted.rstrip().endswith("queue 1")
        assert '+IpphpcRole = "controller"' in submitted
    else:
        assert not get_backend(scheduler).has_array_directive(submitted)
    assert "ipphpc-controller" in submitted
    bash_syntax_ok(script, tmp_path)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_optional_directives_are_left_out(scheduler):
    s = spec(
        walltime=None, memory=None, queue=None, account=None, cores=1, engines_per_task=1
    )
    _, submitted = script_of(scheduler, s)
    for word in ("short", "proj42", "walltime", "h_rt", "--time", "-W ", "mem", "Walltime", "-pe "):
        assert word not in submitted, f"{word!r} should not be in\n{submitted}"


def test_gpus_are_requested_per_element():
    s = spec(gpus=1)
    expected = {
        "slurm": "#SBATCH --gres=gpu:4",
        "pbspro": "#PBS -l select=1:ncpus=8:mem=8192mb:ngpus=4",
        "torque": "#PBS -l nodes=1:ppn=8:gpus=4",
        "sge": "#$ -l gpu=4",
        "lsf": '#BSUB -gpu "num=4"',
        "htcondor": "request_gpus = 4",
    }
    for scheduler, line in expected.items():
        assert line in script_of(scheduler, s)[1].splitlines(), scheduler


def test_extra_directives_follow_the_generated_ones():
    s = spec(extra_directives=["#SBATCH --constraint=haswell", "#SBATCH --qos=debug"])
    text = render_template("slurm", s)
    lines = text.splitlines()
    assert lines.index("#SBATCH --constraint=haswell") > lines.index(
        "#SBATCH --output=/home/u/.ipphpc/profile_x/log/c1/engines-%A_%a.out"
    )
    assert lines.index("#SBATCH --qos=debug") == lines.index("#SBATCH --constraint=haswell") + 1
    # directives must stay above the first command
    assert lines.index("#SBATCH --qos=debug") < next(
        i for i, line in enumerate(lines) if line.startswith("export ")
    )


def test_htcondor_extra_directives_come_before_queue():
    text = render_template("htcondor", fit("htcondor", spec(extra_directives=['requirements = (OpSys == "LINUX")'])))
    lines = text.rstrip().splitlines()
    assert lines[-1] == "queue 3"
    assert lines[-2] == 'requirements = (OpSys == "LINUX")'


def test_htcondor_render_job_files():
    files = render_job("htcondor", fit("htcondor", spec()), "/work/sub", stem="engines-0")
    assert [str(f.path) for f in files] == ["/work/sub/engines-0.sub", "/work/sub/engines-0.sh"]
    assert [f.executable for f in files] == [False, True]
    assert "executable = /work/sub/engines-0.sh" in files[0].text.splitlines()


def test_single_file_schedulers_render_one_executable_script():
    for scheduler, suffix in [("slurm", ".sbatch"), ("pbspro", ".pbs"), ("sge", ".sge"), ("lsf", ".lsf")]:
        (only,) = render_job(scheduler, fit(scheduler, spec()), "/work/sub")
        assert only.path == Path("/work/sub/engines" + suffix)
        assert only.executable


def test_pbspro_single_element_is_a_plain_job():
    s = spec(n=1, engines_per_task=1)
    text = render_template("pbspro", s)
    assert "#PBS -J" not in text
    assert "#PBS -o /home/u/.ipphpc/profile_x/log/c1/engines-0-0.out" in text.splitlines()
    assert 'ipphpc_index="${PBS_ARRAY_INDEX:-0}"' in text.splitlines()
    assert not array_directive_missing("pbspro", text, s)


def test_sge_array_index_is_one_based_in_the_script():
    text = render_template("sge", spec())
    assert "export IPPHPC_ELEMENT=$(( ipphpc_index - 1 + 0 ))" in text.splitlines()


# ---- running the rendered scripts: what each element really does -----------------

SCHEDULER_ENV = {
    # scheduler -> (environment of array element with native index i, exit file name)
    "slurm": (
        lambda i: {"SLURM_ARRAY_JOB_ID": "57", "SLURM_ARRAY_TASK_ID": str(i), "SLURM_JOB_ID": str(64 + i)},
        "exit-57-{i}",
    ),
    "pbspro": (lambda i: {"PBS_JOBID": f"1234[{i}].pbs01", "PBS_ARRAY_INDEX": str(i)}, "exit-1234-{i}"),
    "torque": (lambda i: {"PBS_JOBID": f"2001[{i}].torque01", "PBS_ARRAYID": str(i)}, "exit-2001-{i}"),
    "sge": (lambda i: {"JOB_ID": "4", "SGE_TASK_ID": str(i)}, "exit-4-{i}"),
    "lsf": (lambda i: {"LSB_JOBID": "3100", "LSB_JOBINDEX": str(i)}, "exit-3100-{i}"),
    "htcondor": (lambda i: {"IPPHPC_CONDOR_CLUSTER": "7", "IPPHPC_CONDOR_PROCESS": str(i)}, "exit-7-{i}"),
}


def run_script(text: str, tmp_path: Path, env: dict, timeout: float = 20) -> subprocess.CompletedProcess:
    path = tmp_path / "job.sh"
    path.write_text(text)
    full_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
    return subprocess.run(
        [BASH, str(path)], env=full_env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_an_element_starts_its_engines_and_records_the_exit_code(scheduler, tmp_path):
    backend = get_backend(scheduler)
    record = tmp_path / "engines.txt"
    # engine 9 fails with 5; the element must report it
    command = (
        f'sh -c \'echo "$IPPHPC_ENGINE_INDEX $IPPHPC_ELEMENT $GREETING" >> {record}; '
        '[ "$IPPHPC_ENGINE_INDEX" != 9 ] || exit 5\''
    )
    s = spec(
        engine_command=command, profile_dir=str(tmp_path / "profile"), prologue=[], work_dir=str(tmp_path)
    )
    script, _ = script_of(backend, s)
    environment, exit_name = SCHEDULER_ENV[scheduler]
    native = 2 + backend.array_index_base  # the third element: engines 8 and 9 of 10
    result = run_script(script, tmp_path, environment(native))
    assert result.returncode == 5, result.stderr
    assert sorted(record.read_text().splitlines()) == ["8 2 hello world", "9 2 hello world"]
    exit_file = tmp_path / "profile" / "log" / "c1" / exit_name.format(i=native)
    assert exit_file.read_text() == "5\n"
    assert [p.name for p in exit_file.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_element_offsets_of_a_later_chunk(tmp_path):
    record = tmp_path / "engines.txt"
    total = spec(
        n=25,
        engines_per_task=2,
        engine_command=f"sh -c 'echo $IPPHPC_ENGINE_INDEX >> {record}'",
        profile_dir=str(tmp_path / "p"),
        prologue=[],
    )
    chunks = split_spec(total, max_array_size=5)
    assert [(c.array_start, c.elements) for c in chunks] == [(0, 5), (5, 5), (10, 3)]
    last = chunks[-1]
    text = render_template("slurm", last)
    assert "#SBATCH --array=0-2" in text.splitlines()
    # the last element of the last chunk holds engine 24 only
    result = run_script(text, tmp_path, {"SLURM_ARRAY_JOB_ID": "90", "SLURM_ARRAY_TASK_ID": "2"})
    assert result.returncode == 0, result.stderr
    assert record.read_text().split() == ["24"]
    assert (tmp_path / "p" / "log" / "c1" / "exit-90-2").read_text() == "0\n"


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_controller_script_records_its_exit_code(tmp_path):
    s = spec(controller_command="sh -c 'exit 7'", profile_dir=str(tmp_path / "p"), prologue=[])
    script, _ = script_of("slurm", s, role="controller")
    result = run_script(script, tmp_path, {"SLURM_JOB_ID": "58"})
    assert result.returncode == 7
    assert (tmp_path / "p" / "log" / "c1" / "exit-58").read_text() == "7\n"


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_sigterm_is_forwarded_and_recorded(tmp_path):
    started = tmp_path / "started"
    command = f"sh -c 'echo $$ >> {started}; exec sleep 60'"
    s = spec(
        n=2,
        engines_per_task=2,
        engine_command=command,
        profile_dir=str(tmp_path / "p"),
        prologue=[],
        epilogue=[],
    )
    path = tmp_path / "job.sh"
    path.write_text(render_template("slurm", s))
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "61", "SLURM_ARRAY_TASK_ID": "0"}
    proc = subprocess.Popen([BASH, str(path)], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not (started.exists() and len(started.read_text().split()) == 2):
            assert time.monotonic() < deadline, "engines did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        leftovers = [pid for pid in started.read_text().split() if Path(f"/proc/{pid}").exists()]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in started.read_text().split() if started.exists() else []:
            if Path(f"/proc/{pid}").exists():
                os.kill(int(pid), signal.SIGKILL)
    assert (tmp_path / "p" / "log" / "c1" / "exit-61-0").read_text() == "143\n"
    assert leftovers == [], "engines outlived their element"


# ---- IPython Parallel style templates --------------------------------------------

IPP_TEMPLATE = """#!/bin/sh
#PBS -N ipengine
#PBS -t 1-{n}
#PBS -q {queue}
#PBS -l nodes={n//4}:ppn=4
#PBS -o {output_file}
cd ${{PBS_O_WORKDIR}}
{program_and_args} --profile-dir="{profile_dir}" --cluster-id="{cluster_id}"
"""


def test_ipyparallel_template_text():
    s = spec(n=8, engines_per_task=1, output="/tmp/out.log")
    text = render_template("torque", s, template_text=IPP_TEMPLATE)
    assert text == (
        "#!/bin/sh\n#PBS -N ipengine\n#PBS -t 1-8\n#PBS -q short\n#PBS -l nodes=2:ppn=4\n"
        "#PBS -o /tmp/out.log\ncd ${PBS_O_WORKDIR}\n"
        f'{ENGINE} --profile-dir="/home/u/.ipphpc/profile_x" --cluster-id="c1"\n'
    )


def test_ipyparallel_template_file(tmp_path):
    path = tmp_path / "pbs.template"
    path.write_text("#PBS -l nodes={max(1, n//16)}:ppn={min(n, 16)}\n{program_and_args}\n")
    text = render_template("torque", spec(n=40, engines_per_task=1), template_file=path)
    assert text == f"#PBS -l nodes=2:ppn=16\n{ENGINE}\n"


def test_ipyparallel_template_with_unknown_name_fails_clearly():
    with pytest.raises(ValueError, match="nodes_per_host"):
        render_template("slurm", spec(), template_text="#SBATCH -N {nodes_per_host}\n")


def test_ipyparallel_template_without_array_directive_is_reported():
    s = spec(n=8, engines_per_task=1)
    text = render_template(
        "slurm", s, template_text="#!/bin/sh\n#SBATCH --ntasks={n}\nsrun {program_and_args}\n"
    )
    assert text == f"#!/bin/sh\n#SBATCH --ntasks=8\nsrun {ENGINE}\n"
    assert array_directive_missing("slurm", text, s)


@pytest.mark.parametrize(
    "text, filename, style",
    [
        ("#SBATCH -n {n}\n", None, "format"),
        ("#SBATCH -n {{ n }}\n", None, "jinja"),
        ("{% if queue %}#SBATCH -p {{ queue }}{% endif %}\n", None, "jinja"),
        ("cd ${{HOME}} && {program_and_args}\n", None, "format"),
        ("#SBATCH -n {n}\n", "engines.sbatch.j2", "jinja"),
        ("echo ${#ARR[@]} {n}\n", None, "format"),
        ("#SBATCH -n {{ n }}\ncd ${HOME}\n", None, "jinja"),
        ("plain text\n", None, "format"),
    ],
)
def test_detect_style(text, filename, style):
    assert detect_style(text, filename) == style


def test_jinja_template_text_can_include_the_shared_body():
    text = render_template(
        "slurm",
        spec(),
        template_text='#!/bin/bash\n#SBATCH --array={{ array_range }}\n{% include "common/run.sh.j2" %}',
    )
    assert text.startswith("#!/bin/bash\n#SBATCH --array=0-2\n")
    assert f"    {ENGINE} &" in text.splitlines()


# ---- overrides -----------------------------------------------------------------


def test_profile_templates_override_builtins(tmp_path):
    profile = tmp_path / "profile_x"
    override = profile / "templates" / "slurm"
    override.mkdir(parents=True)
    (override / "engines.sbatch.j2").write_text(
        "#!/bin/bash\n#SBATCH --array={{ array_range }}\n#SBATCH --constraint=site\n{% include 'common/run.sh.j2' %}"
    )
    text = render_template("slurm", spec(profile_dir=str(profile)))
    assert text.startswith("#!/bin/bash\n#SBATCH --array=0-2\n#SBATCH --constraint=site\n")
    assert "--cpus-per-task" not in text
    # other schedulers and roles still use the built-ins
    assert "#SBATCH --cpus-per-task=2" in render_template(
        "slurm", spec(profile_dir=str(profile)), role="controller"
    )


def test_profile_can_override_the_shared_body(tmp_path):
    profile = tmp_path / "profile_x"
    (profile / "templates" / "common").mkdir(parents=True)
    (profile / "templates" / "common" / "run.sh.j2").write_text("srun {{ command }}\n")
    text = render_template("sge", spec(profile_dir=str(profile)))
    assert text.rstrip().endswith(f"srun {ENGINE}")


def test_explicit_search_dirs_come_first(tmp_path):
    site = tmp_path / "site"
    (site / "lsf").mkdir(parents=True)
    (site / "lsf" / "engines.lsf.j2").write_text("site {{ array_directive }}\n")
    assert render_template("lsf", fit("lsf", spec()), search_dirs=[site]) == 'site #BSUB -J "ipphpc-engines[1-3]"\n'


def test_builtin_templates_are_found():
    root = builtin_template_dir()
    for scheduler in SCHEDULERS:
        backend = get_backend(scheduler)
        for name in backend.templates.values():
            assert (root / backend.template_dir / name).is_file(), name
    assert (root / "common" / "run.sh.j2").is_file()


# ---- the portable vocabulary ------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("1:30:00", 5400),
        ("01:30:00", 5400),
        ("2-00:00:00", 172800),
        ("1-12:30", 131400),
        ("36:00:00", 129600),
        ("1:30", 90),
        ("90", 5400),
        ("90:00", 5400),
        ("2-12", 216000),
        ("90m", 5400),
        ("2h", 7200),
        ("1d", 86400),
        ("45s", 45),
        (timedelta(minutes=5), 300),
    ],
)
def test_parse_walltime(value, seconds):
    assert parse_walltime(value) == seconds


@pytest.mark.parametrize("value", ["soon", "1:75:00", "1:00:99", "-5m", "1-25", "1-2:75", 3600])
def test_parse_walltime_rejects(value):
    with pytest.raises(ValueError):
        parse_walltime(value)


def test_walltime_forms():
    assert format_hms(129600) == "36:00:00"
    assert format_dhms(129600) == "1-12:00:00"
    assert format_dhms(59) == "00:00:59"
    context = template_context(get_backend("lsf"), fit("lsf", spec(walltime="1:30:30")))
    assert (context["walltime"], context["walltime_hhmm"], context["walltime_minutes"]) == (
        "01:30:30",
        "1:31",
        91,
    )
    # LSF takes whole minutes: round up, carrying into the hours
    assert template_context(get_backend("lsf"), fit("lsf", spec(walltime="0:59:30")))["walltime_hhmm"] == "1:00"
    assert template_context(get_backend("lsf"), fit("lsf", spec(walltime="59:59:00")))["walltime_hhmm"] == "59:59"
    assert "#SBATCH --time=1-12:00:00" in render_template("slurm", spec(walltime="36:00:00")).splitlines()


@pytest.mark.parametrize(
    "value, mib",
    [
        ("4G", 4096),
        ("4GB", 4096),
        ("4GiB", 4096),
        ("4000M", 4000),
        ("1.5G", 1536),
        ("512K", 1),
        ("1T", 1048576),
    ],
)
def test_parse_memory(value, mib):
    assert parse_memory(value) == mib


def test_parse_memory_rejects():
    with pytest.raises(ValueError, match="not a size"):
        parse_memory("lots")
    # Slurm reads 4 as MB, PBS as bytes: a size without a unit is refused with the fix
    for bare in ("4", 4096):
        with pytest.raises(ValueError, match=f"^memory '{bare}' has no unit: write {bare}G or {bare}M$"):
            parse_memory(bare)


def test_elements_round_up_and_last_element_is_partial():
    assert spec(n=10, engines_per_task=4).elements == 3
    assert spec(n=8, engines_per_task=4).elements == 2
    assert spec(n=10, engines_per_task=4, array_start=2).elements == 1
    text = render_template("slurm", spec(n=10, engines_per_task=4))
    assert "ipphpc_count=$(( 10 - IPPHPC_ELEMENT * 4 ))" in text.splitlines()


def test_split_spec_respects_the_backend_limit():
    backend = get_backend("lsf")
    chunks = split_spec(fit("lsf", spec(n=2500, engines_per_task=1)), backend.max_array_size)
    assert [(c.array_start, c.elements) for c in chunks] == [(0, 1000), (1000, 1000), (2000, 500)]
    assert '#BSUB -J "ipphpc-engines[1-500]"' in render_template(backend, chunks[2]).splitlines()
    # chunks of PBS Pro keep their output files apart
    pbs_chunks = split_spec(spec(n=30, engines_per_task=1), 10)
    assert (
        "#PBS -o /home/u/.ipphpc/profile_x/log/c1/engines-20-^array_index^.out"
        in render_template("pbspro", pbs_chunks[2]).splitlines()
    )


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="engine_command"):
        render_template("slurm", spec(engine_command="  "))
    with pytest.raises(ValueError, match="controller_command"):
        render_template("slurm", spec(controller_command=""), role="controller")
    with pytest.raises(ValueError, match="engines_per_task"):
        render_template("slurm", spec(engines_per_task=0))
    with pytest.raises(ValueError, match="role"):
        render_template("slurm", spec(), role="client")
    with pytest.raises(ValueError, match="unknown batch scheduler"):
        render_template("slurmm", spec())
    with pytest.raises(ValueError, match="no array elements"):
        render_template("slurm", spec(n=8, engines_per_task=4, array_start=2))
    with pytest.raises(ValueError, match="'MY-VAR'"):
        render_template("slurm", spec(env={"MY-VAR": "1"}))


def test_environment_values_are_shell_quoted(tmp_path):
    s = spec(env={"TRICKY": "it's $HOME; `x`"}, prologue=[])
    line = next(x for x in render_template("slurm", s).splitlines() if x.startswith("export TRICKY="))
    result = subprocess.run([BASH, "-c", f'{line}; printf %s "$TRICKY"'], capture_output=True, text=True)
    assert result.stdout == "it's $HOME; `x`"
