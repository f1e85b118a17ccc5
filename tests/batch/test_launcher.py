"""BatchLauncher: rendering, submission, re-attaching, cancelling, failure reports.

Most tests run against a fake Slurm (a function standing in for sbatch,
squeue, sacct and scancel). The ``pbs``/``lsf`` tests at the end submit real
jobs through the emulators in ``tests/emulators`` (jobs run as local
processes).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
from pathlib import Path

import pytest

from ipphpc.batch.registry import get_backend
from ipphpc.batch.states import State
from ipphpc.launch.batch import (
    BatchLauncher,
    element_map,
    expand_output_pattern,
    is_scheduler_name,
    scheduler_launcher,
)
from ipphpc.launch.commands import CommandResult, SchedulerCommandError
from ipphpc.launch.poller import Poller

REPO = Path(__file__).resolve().parents[2]
EMULATORS = REPO / "tests" / "emulators"
ENGINE_CMD = ["python", "-m", "ipphpc", "engine", "--profile-dir", "PROFILE", "--cluster-id", "c1"]


class FakeSlurm:
    """sbatch/squeue/sacct/scancel from a dict; sbatch reads the array size from the script."""

    def __init__(self, first_id: int = 100) -> None:
        self.next_id = first_id
        self.queue: dict[tuple[str, int | None], str] = {}
        self.history: dict[tuple[str, int | None], tuple[str, str]] = {}
        self.calls: list[list[str]] = []
        self.inputs: list[str | None] = []
        self.scripts: list[str] = []
        self.refuse_after: int | None = None

    def of(self, command: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == command]

    def __call__(self, argv, input=None, timeout=None, cwd=None) -> CommandResult:
        self.calls.append(list(argv))
        self.inputs.append(input)
        command = argv[0]
        if command == "sbatch":
            if self.refuse_after is not None and len(self.of("sbatch")) > self.refuse_after:
                return CommandResult(1, "", "sbatch: error: QOSMaxSubmitJobPerUserLimit\n")
            text = Path(argv[-1]).read_text()
            self.scripts.append(text)
            job = str(self.next_id)
            self.next_id += 1
            found = re.search(r"^#SBATCH --array=0-(\d+)$", text, re.MULTILINE)
            for index in range(int(found.group(1)) + 1) if found else [None]:
                self.queue[(job, index)] = "PENDING"
            return CommandResult(0, f"{job}\n", "")
        if command == "scancel":
            for key in self.queue:
                if key[0] in argv[1:]:
                    self.queue[key] = "CANCELLED"
                    self.history[key] = ("CANCELLED by 0", "0:15")
            return CommandResult(0, "", "")
        jobs = next(a.split("=", 1)[1].split(",") for a in argv if a.startswith("--jobs="))
        lines = []
        if command == "squeue":
            for (job, index), state in self.queue.items():
                if job in jobs:
                    lines.append(f"{job}|{'N/A' if index is None else index}|{job}|{state}|None|node1")
        elif command == "sacct":
            for (job, index), (state, code) in self.history.items():
                if job in jobs:
                    lines.append(f"{job if index is None else f'{job}_{index}'}|{job}|{state}|{code}|node1")
        return CommandResult(0, "".join(line + "\n" for line in lines), "")


@pytest.fixture
def slurm() -> FakeSlurm:
    return FakeSlurm()


def launcher_with(slurm: FakeSlurm, profile: Path, role: str = "engines", n: int = 4, **kwargs) -> BatchLauncher:
    poller = Poller("slurm", profile, runner=slurm, min_interval=0.01, max_interval=0.05)
    return BatchLauncher(role, n, scheduler="slurm", profile_dir=str(profile), cluster_id="c1",
                         poller=poller, **kwargs)


def engine_cmd(profile: Path) -> list[str]:
    return [str(profile) if a == "PROFILE" else a for a in ENGINE_CMD]


# -- dry runs: what would be written and run ---------------------------------------------------
DIRECTIVES = {
    "slurm": ["#SBATCH --array=0-7", "#SBATCH --partition=short", "#SBATCH --time=01:30:00",
              "#SBATCH --account=proj1"],
    "pbs": ["#PBS -J 0-7", "#PBS -q short", "#PBS -l walltime=01:30:00", "#PBS -A proj1"],
    "torque": ["#PBS -t 0-7", "#PBS -q short", "#PBS -l walltime=01:30:00", "#PBS -l nodes=1:ppn=2"],
    "sge": ["#$ -t 1-8", "#$ -q short", "#$ -l h_rt=01:30:00", "#$ -pe smp 2"],
    "lsf": ['#BSUB -J "ipphpc-engines[1-8]"', "#BSUB -q short", "#BSUB -W 1:30", "#BSUB -P proj1"],
    "htcondor": ["queue 8", "+IpphpcWalltime = 5400", "accounting_group = proj1", "request_cpus = 2"],
}
SUBMIT = {
    "slurm": "sbatch --parsable --qos=debug {dir}/engines-{tag}.sbatch",
    "pbs": "qsub --qos=debug {dir}/engines-{tag}.pbs",
    "torque": "qsub --qos=debug {dir}/engines-{tag}.pbs",
    "sge": "qsub -terse --qos=debug {dir}/engines-{tag}.sge",
    "lsf": "bsub --qos=debug < {dir}/engines-{tag}.lsf",
    "htcondor": "condor_submit -terse --qos=debug {dir}/engines-{tag}.sub",
}


@pytest.mark.parametrize("scheduler", sorted(DIRECTIVES))
def test_dry_run_shows_the_directives_and_the_exact_submit_command(scheduler, tmp_path) -> None:
    opts = dict(queue="short", walltime="1:30:00", account="proj1")
    if scheduler == "htcondor":  # no queues there
        del opts["queue"]
    if scheduler == "lsf":  # LSF charges projects
        opts["project"] = opts.pop("account")
    launcher = scheduler_launcher(scheduler)(
        "engines", 16, engines_per_task=2, profile_dir=str(tmp_path), cluster_id="c1", submit_args=["--qos=debug"],
        **opts,
    )
    text = launcher.dry_run(engine_cmd(tmp_path))
    for directive in DIRECTIVES[scheduler]:
        assert directive in text.splitlines(), directive
    directory = tmp_path / "log" / "c1" / "batch"
    assert f"# submit: {SUBMIT[scheduler].format(dir=directory, tag=launcher.tag)}" in text
    assert shlex.join(engine_cmd(tmp_path)) in text
    assert not (tmp_path / "log").exists()  # nothing written, nothing submitted
    assert launcher.submissions == []


def test_dry_run_of_the_controller(tmp_path) -> None:
    launcher = scheduler_launcher("slurm")("controller", profile_dir=str(tmp_path), cluster_id="c1",
                                           memory_per_engine="4G")
    text = launcher.dry_run(["python", "-m", "ipphpc", "controller"])
    assert "#SBATCH --mem=4096M" in text
    assert "--array" not in text
    assert text.count("# submit: sbatch --parsable ") == 1


def test_a_custom_template_replaces_the_built_in_one(tmp_path) -> None:
    template = tmp_path / "mine.sh"
    template.write_text("#!/bin/sh\n#SBATCH --array=0-{n//2 - 1}\n#SBATCH -p {queue}\n{program_and_args}\n")
    launcher = BatchLauncher("engines", 8, engines_per_task=2, queue="gpu", template_file=str(template),
                             profile_dir=str(tmp_path), cluster_id="c1")
    text = launcher.dry_run(["ipphpc", "engine"])
    assert "#SBATCH --array=0-3\n#SBATCH -p gpu\nipphpc engine\n" in text
    inline = BatchLauncher("engines", 2, batch_template="#SBATCH --array=0-1\n{{ command }}\n",
                           profile_dir=str(tmp_path), cluster_id="c1")
    assert "#SBATCH --array=0-1\nipphpc engine\n" in inline.dry_run(["ipphpc", "engine"])


def test_element_maps() -> None:
    assert element_map(get_backend("slurm"), "engines", 3) == {0: 0, 1: 1, 2: 2}
    assert element_map(get_backend("lsf"), "engines", 2) == {1: 1, 2: 2}
    # PBS Pro cannot make a one-element array: a plain job whose script writes index 0
    assert element_map(get_backend("pbs"), "engines", 1) == {None: 0}
    assert element_map(get_backend("torque"), "engines", 1) == {0: 0}
    assert element_map(get_backend("htcondor"), "controller", 1) == {None: None}


def test_output_patterns_are_filled_in() -> None:
    assert expand_output_pattern("engines-%A_%a.out", "57", 3) == "engines-57_3.out"
    assert expand_output_pattern("controller-%j.out", "58", None) == "controller-58.out"
    assert expand_output_pattern("engines-0-^array_index^.out", "12[].srv", 4) == "engines-0-4.out"
    assert expand_output_pattern("engines-$JOB_ID.$TASK_ID.out", "77", 2) == "engines-77.2.out"
    assert expand_output_pattern("engines-%J_%I.out", "9", 1) == "engines-9_1.out"
    assert expand_output_pattern("engines-$(Cluster).$(Process).out", "3", 0) == "engines-3.0.out"


# -- submitting ----------------------------------------------------------------------------------
def test_256_engines_with_arrays_of_at_most_100_make_three_submissions(slurm, tmp_path) -> None:
    launcher = launcher_with(slurm, tmp_path, n=256, max_array_size=100)
    launcher.start(engine_cmd(tmp_path), tmp_path / "log" / "ipengine-c1.out")
    assert len(slurm.of("sbatch")) == 3
    assert [re.search(r"--array=(\S+)", s).group(1) for s in slurm.scripts] == ["0-99", "0-99", "0-55"]
    assert [s.array_start for s in launcher.submissions] == [0, 100, 200]
    assert launcher.job_ids == ["100", "101", "102"]
    assert len(launcher.states()) == 256
    for sub in launcher.submissions:
        assert Path(sub.script).is_file() and Path(sub.script).parent == tmp_path / "log" / "c1" / "batch"
    assert "IPPHPC_ELEMENT=$(( ipphpc_index - 0 + 200 ))" in slurm.scripts[2]


def test_one_submit_call_for_256_engines(slurm, tmp_path) -> None:
    launcher = launcher_with(slurm, tmp_path, n=256)
    launcher.start(engine_cmd(tmp_path), tmp_path / "x.out")
    assert [c[0] for c in slurm.calls].count("sbatch") == 1
    assert len(launcher.states()) == 256
    assert launcher.running


def test_the_profile_and_cluster_come_from_the_command_when_not_given(slurm, tmp_path) -> None:
    poller = Poller("slurm", tmp_path, runner=slurm)
    launcher = scheduler_launcher("slurm")("controller", poller=poller)
    cmd = ["python", "-m", "ipphpc", "controller", "--profile-dir", str(tmp_path), "--cluster-id", "abc"]
    launcher.start(cmd, tmp_path / "log" / "ipcontroller-abc.out")
    assert (launcher.profile_dir, launcher.cluster_id) == (str(tmp_path), "abc")
    assert Path(launcher.submissions[0].script).parent == tmp_path / "log" / "abc" / "batch"
    assert launcher.submissions[0].elements == {None: None}


def test_a_refused_submission_cancels_the_chunks_already_submitted(slurm, tmp_path) -> None:
    slurm.refuse_after = 1
    launcher = launcher_with(slurm, tmp_path, n=30, max_array_size=10)
    with pytest.raises(SchedulerCommandError) as info:
        launcher.start(engine_cmd(tmp_path), tmp_path / "x.out")
    assert "QOSMaxSubmitJobPerUserLimit" in str(info.value)
    assert "exit code 1" in str(info.value)
    assert slurm.of("scancel") == [["scancel", "100"]]


def test_lsf_gets_the_script_on_standard_input(tmp_path) -> None:
    seen = []

    def bsub(argv, input=None, timeout=None, cwd=None):
        seen.append((argv, input))
        return CommandResult(0, "Job <4242> is submitted to default queue <normal>.\n", "")

    poller = Poller("lsf", tmp_path, runner=bsub)
    launcher = scheduler_launcher("lsf")("engines", 3, profile_dir=str(tmp_path), cluster_id="c1", poller=poller)
    launcher.start(["ipphpc", "engine"], tmp_path / "x.out")
    argv, script = seen[0]
    assert argv == ["bsub"]
    assert '#BSUB -J "ipphpc-engines[1-3]"' in script
    assert launcher.job_ids == ["4242"]
    assert [s.array_index for s in poller.records()] == [1, 2, 3]


# -- state, re-attaching, stopping ----------------------------------------------------------------
def test_to_dict_from_dict_roundtrip_can_poll_and_cancel(slurm, tmp_path) -> None:
    launcher = launcher_with(slurm, tmp_path, n=6, max_array_size=4, queue="short", walltime="10:00",
                             environment={"OMP_NUM_THREADS": "1"}, extra_directives=["#SBATCH --qos=x"])
    launcher.start(engine_cmd(tmp_path), tmp_path / "x.out")
    saved = json.loads(json.dumps(launcher.to_dict()))
    assert saved["kind"] == "batch" and saved["scheduler"] == "slurm"
    assert [s["job_id"] for s in saved["submissions"]] == ["100", "101"]

    other = Poller("slurm", tmp_path, runner=slurm, min_interval=0.01, max_interval=0.05)
    again = BatchLauncher.from_dict(saved, poller=other)
    assert again.to_dict() == saved
    assert type(again) is BatchLauncher and again.queue == "short" and again.environment == {"OMP_NUM_THREADS": "1"}
    assert again.running
    slurm.queue[("100", 0)] = "RUNNING"
    other.request_fast_poll()
    assert {s.state for s in again.states()} == {State.PENDING, State.RUNNING}
    assert again.stop(timeout=10) == []
    assert slurm.of("scancel") == [["scancel", "100", "101"]]
    assert {s.state for s in again.states()} == {State.CANCELLED}
    assert again.exit_code == 143


def test_stop_cancels_every_job_with_one_command_and_confirms(slurm, tmp_path) -> None:
    launcher = launcher_with(slurm, tmp_path, n=25, max_array_size=10)
    launcher.start(engine_cmd(tmp_path), tmp_path / "x.out")
    assert launcher.exit_code is None
    remaining = launcher.stop(timeout=10)
    assert remaining == []
    assert slurm.of("scancel") == [["scancel", "100", "101", "102"]]
    assert not launcher.running
    assert all(s.state is State.CANCELLED for s in launcher.states())
    # stopping again does not cancel again
    launcher.stop(timeout=1)
    assert len(slurm.of("scancel")) == 1


def test_stop_reports_elements_that_do_not_leave(slurm, tmp_path, caplog) -> None:
    launcher = launcher_with(slurm, tmp_path, n=2)
    launcher.start(engine_cmd(tmp_path), tmp_path / "x.out")
    slurm.queue = {k: "RUNNING" for k in slurm.queue}
    stuck = dict(slurm.queue)

    def ignoring_scancel(argv, input=None, timeout=None, cwd=None):
        result = FakeSlurm.__call__(slurm, argv, input, timeout, cwd)
        slurm.queue.update(stuck)  # the scheduler does not let go
        return result

    launcher.poller._runner = ignoring_scancel
    remaining = launcher.stop(grace=0, timeout=0.3)
    assert [(s.job_id, s.array_index, s.state) for s in remaining] == [("100", 0, State.RUNNING),
                                                                       ("100", 1, State.RUNNING)]
    assert "still RUNNING" in caplog.text


def test_exit_code_and_failure_report(slurm, tmp_path) -> None:
    launcher = launcher_with(slurm, tmp_path, n=3)
    launcher.start(engine_cmd(tmp_path), tmp_path / "x.out")
    log_dir = tmp_path / "log" / "c1"
    (log_dir / "engines-100_1.out").write_text("".join(f"line {i}\n" for i in range(50)) + "Traceback: boom\n")
    slurm.queue = {}
    slurm.history = {("100", 0): ("COMPLETED", "0:0"), ("100", 1): ("FAILED", "3:0"),
                     ("100", 2): ("TIMEOUT", "0:15")}
    launcher.poller.request_fast_poll()
    assert launcher.exit_code == 3
    failed = {f["array_index"]: f for f in launcher.failures(lines=5)}
    assert sorted(failed) == [1, 2]
    assert failed[1]["output_tail"].splitlines() == ["line 46", "line 47", "line 48", "line 49", "Traceback: boom"]
    report = launcher.failure_report(lines=5)
    assert "2 of 3 engines element(s) did not complete (slurm)" in report
    assert "job 100 element 1: FAILED, exit code 3 on node1" in report
    assert "Traceback: boom" in report
    assert "job 100 element 2: TIMEOUT" in report
    assert f"(no output in {log_dir / 'engines-100_2.out'})" in report


def test_options_come_from_the_cluster_configuration(tmp_path) -> None:
    from traitlets.config import Config

    class Cluster:  # what a launcher reads from its HPCCluster parent
        config = Config()
        profile_dir = str(tmp_path)
        cluster_id = "cfg"

    c = Cluster.config
    c.BatchLauncher.account = "proj42"
    c.BatchLauncher.queue = "all"
    c.SlurmEngineSetLauncher.queue = "short"
    c.BatchControllerLauncher.walltime = "24:00:00"
    c.SlurmLauncher.extra_directives = ["#SBATCH --qos=x"]
    c.PBSProLauncher.queue = "pbsq"
    engines = scheduler_launcher("slurm")("engines", 4, parent=Cluster())
    assert (engines.account, engines.queue, engines.walltime) == ("proj42", "short", "")
    assert (engines.profile_dir, engines.cluster_id) == (str(tmp_path), "cfg")
    assert "#SBATCH --qos=x" in engines.dry_run(["ipphpc", "engine"]).splitlines()
    controller = scheduler_launcher("slurm")("controller", parent=Cluster())
    assert (controller.queue, controller.walltime) == ("all", "24:00:00")
    assert scheduler_launcher("slurm")("engines", 4, queue="mine", parent=Cluster()).queue == "mine"
    c.BatchLauncher.scheduler = "pbs"
    chosen = BatchLauncher("engines", 2, parent=Cluster())
    assert (chosen.scheduler, chosen.queue, chosen.extra_directives) == ("pbspro", "pbsq", [])
    # a misspelt option is an error naming the closest one, not a warning
    c.SlurmLauncher.queues = "typo"
    with pytest.raises(ValueError, match="^unknown c.SlurmLauncher option 'queues'; did you mean 'queue'"):
        scheduler_launcher("slurm")("engines", 4, parent=Cluster())


def test_every_scheduler_name_resolves_to_a_batch_launcher() -> None:
    for name in ("slurm", "pbs", "pbspro", "torque", "sge", "lsf", "htcondor", "condor"):
        assert is_scheduler_name(name)
        cls = scheduler_launcher(name)
        assert issubclass(cls, BatchLauncher) and cls.kind == "batch"
        launcher = cls("engines", 2)
        assert launcher.scheduler == get_backend(name).name
        assert hasattr(cls, "from_dict")
    assert scheduler_launcher("pbs") is scheduler_launcher("PBSPro")
    assert scheduler_launcher("slurm").__name__ == "SlurmLauncher"
    assert not is_scheduler_name("local") and not is_scheduler_name("mypkg.mod:Launcher")
    assert is_scheduler_name("batch") and scheduler_launcher("batch") is BatchLauncher
    with pytest.raises(ValueError, match="valid names"):
        scheduler_launcher("slurmm")
    with pytest.raises(ValueError):
        BatchLauncher("client")


# -- end to end through the emulators --------------------------------------------------------------
def _cleanup_emulator(state: Path) -> None:
    """Kill the emulator daemon and any element still running (their process groups)."""
    if not state.exists():
        return
    with open(state / "state.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        pid_file = state / "daemon.pid"
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        for path in (state / "jobs").glob("*.json"):
            try:
                job = json.loads(path.read_text())
            except ValueError:
                continue
            for element in job.get("elements", {}).values():
                if element.get("status") == "running" and element.get("pid"):
                    try:
                        os.killpg(element["pid"], signal.SIGKILL)
                    except OSError:
                        pass


def _emulator(monkeypatch, tmp_path: Path, kind: str, extra: dict[str, str]) -> Path:
    bin_dir = EMULATORS / kind / "bin"
    if not bin_dir.is_dir():
        pytest.skip(f"the {kind} emulator is not in this checkout")
    for name in list(os.environ):
        if name.startswith("IPPHPC_EMU_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    state = tmp_path / "emu-state"
    monkeypatch.setenv("IPPHPC_EMU_STATE", str(state))
    monkeypatch.setenv("IPPHPC_EMU_KILL_DELAY", "1")
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return state


@pytest.fixture
def pbs_emulator(monkeypatch, tmp_path):
    state = _emulator(monkeypatch, tmp_path, "pbs", {"IPPHPC_EMU_FLAVOR": "pbspro", "IPPHPC_EMU_SERVER": "pbsserver"})
    yield "pbs"
    _cleanup_emulator(state)


@pytest.fixture
def torque_emulator(monkeypatch, tmp_path):
    state = _emulator(monkeypatch, tmp_path, "pbs", {"IPPHPC_EMU_FLAVOR": "torque",
                                                     "IPPHPC_EMU_SERVER": "torqueserver"})
    yield "torque"
    _cleanup_emulator(state)


@pytest.fixture
def lsf_emulator(monkeypatch, tmp_path):
    state = _emulator(monkeypatch, tmp_path, "lsf", {"IPPHPC_EMU_LSF_SECONDS_PER_MINUTE": "1",
                                                     "IPPHPC_EMU_LSF_RUNLIMIT_GRACE": "1"})
    yield "lsf"
    _cleanup_emulator(state)


#: element 1 fails with exit code 3; the others sleep a little and succeed
WORK = ("echo element $IPPHPC_ELEMENT on $(hostname); sleep 2; "
        "if [ $IPPHPC_ELEMENT = 1 ]; then echo bad input >&2; exit 3; fi")


def _e2e(scheduler: str, tmp_path: Path, walltime: str) -> None:
    profile = tmp_path / "profile"
    cmd = ["bash", "-c", WORK]

    def launcher(n: int, **kwargs) -> BatchLauncher:
        poller = Poller(scheduler, profile, min_interval=0.2, max_interval=1.0, lost_grace=30)
        return scheduler_launcher(scheduler)("engines", n, profile_dir=str(profile), cluster_id="e2e",
                                             poller=poller, **kwargs)

    engines = launcher(3)
    engines.start(cmd, profile / "log" / "ipengine-e2e.out")
    poller = engines.poller
    assert poller.counter.count() == 1  # one submission for the array
    assert poller.wait_until(lambda recs: any(r.state is State.RUNNING for r in recs), 30)
    running = [r for r in engines.states() if r.state is State.RUNNING]
    assert running and all(r.host for r in running)
    assert engines.running and engines.exit_code is None
    assert poller.wait_until(lambda recs: all(r.finished for r in recs), 60), engines.states()
    states = {r.array_index: r for r in engines.states()}
    base = get_backend(scheduler).array_index_base
    assert states[base].state is State.COMPLETED and states[base].exit_code == 0
    assert states[base + 2].state is State.COMPLETED
    failed = states[base + 1]
    assert (failed.state, failed.exit_code) == (State.FAILED, 3)
    assert engines.exit_code == 3
    report = engines.failure_report()
    assert f"element {base + 1}: FAILED, exit code 3" in report
    assert "element 1 on" in report and "bad input" in report

    slow = launcher(2)
    slow.start(["sleep", "300"], profile / "log" / "ipengine-e2e.out")
    assert slow.poller.wait_until(lambda recs: all(r.state is State.RUNNING for r in recs), 30)
    cancel_before = slow.poller.counter.count(get_backend(scheduler).cancel_command([])[0])
    assert slow.stop(timeout=60) == []
    assert slow.poller.counter.count(get_backend(scheduler).cancel_command([])[0]) == cancel_before + 1
    assert {r.state for r in slow.states()} == {State.CANCELLED}
    assert not slow.running

    limited = launcher(1, walltime=walltime)
    limited.start(["sleep", "300"], profile / "log" / "ipengine-e2e.out")
    assert limited.poller.wait_until(lambda recs: all(r.finished for r in recs), 90), limited.states()
    (record,) = limited.states()
    assert record.state is State.TIMEOUT, record
    assert "TIMEOUT" in limited.failure_report()
    if scheduler in ("pbs", "torque"):  # the scheduler's own notice is in the element's output
        assert "=>> PBS: job killed: walltime" in limited.failure_report(), limited.failure_report()


@pytest.mark.pbs
def test_pbs_emulator_end_to_end(pbs_emulator, tmp_path) -> None:
    _e2e("pbs", tmp_path, walltime="00:00:02")


@pytest.mark.pbs
def test_torque_emulator_end_to_end(torque_emulator, tmp_path) -> None:
    _e2e("torque", tmp_path, walltime="00:00:02")


@pytest.mark.lsf
def test_lsf_emulator_end_to_end(lsf_emulator, tmp_path) -> None:
    # the emulator's minute lasts one second: -W 0:01 ends the job after about a second
    _e2e("lsf", tmp_path, walltime="0:01:00")
