"""The `ipphpc` command refuses what it cannot do in one line that names the problem and the fix.

Each test runs the real command; a traceback in its output is a failure. Also: --version, close
names for misspelt commands and flags, no abbreviated flags, profiles that must exist, and a
controller started by hand, which `list`, `status` and `stop` must see like any other.
"""
from __future__ import annotations

import json
import re

import pytest

from ipphpc import paths
from ipphpc._version import __version__

from .helpers import alive, procs_matching, wait_until
from .test_cli import ipphpc


def one_line_error(r, status: int = 2) -> str:
    """The single line a refused command printed, checked to be alone and without a traceback."""
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_version(ipphpc_dir):
    r = ipphpc("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ipphpc {__version__}"


def test_misspelt_command_suggests_the_right_one(ipphpc_dir):
    line = one_line_error(ipphpc("sumbit", "-n", "2"))
    assert "invalid choice 'sumbit' (did you mean 'submit'?)" in line
    assert not ipphpc_dir.exists()  # nothing was created on the way


def test_misspelt_flag_suggests_the_right_one(ipphpc_dir):
    line = one_line_error(ipphpc("submit", "--walltme", "1:00:00", "-n", "1"))
    assert line.startswith("ipphpc submit: unrecognized option '--walltme' (did you mean '--walltime'?)")
    line = one_line_error(ipphpc("stop", "--al"))
    assert "unrecognized option '--al' (did you mean '--all'?)" in line
    assert not ipphpc_dir.exists()


@pytest.mark.parametrize("args, full", [(["submit", "--queu", "short", "-n", "1"], "--queue"),
                                        (["submit", "--dry", "-n", "1"], "--dry-run"),
                                        (["controller", "--clust", "x"], "--cluster-id")])
def test_abbreviated_flags_are_refused(ipphpc_dir, args, full):
    """An abbreviation is not taken for the full flag: it is refused, naming the flag meant."""
    line = one_line_error(ipphpc(*args))
    assert f"unrecognized option '{args[1]}' (did you mean '{full}'?)" in line
    assert procs_matching(str(ipphpc_dir)) == []


def test_trait_arguments_still_pass_through(ipphpc_dir):
    """`--Class.trait=value` is not an unknown flag: it reaches the configuration."""
    r = ipphpc("submit", "--scheduler", "slurm", "-n", "2", "--dry-run",
               "--HPCCluster.engine_cmd=['/opt/special/python','-m','ipphpc','engine']")
    assert r.returncode == 0, r.stderr
    assert "/opt/special/python -m ipphpc engine" in r.stdout


_DRY = ["-n", "1", "--scheduler", "slurm", "--dry-run"]


@pytest.mark.parametrize("args, says", [
    (["controller", "--Controler.ip=x"],
     "--Controler.ip: `ipphpc controller` reads no settings of 'Controler' (did you mean 'Controller'?); "
     "it reads Controller, DictDB, IPController, MongoDB"),
    (["controller", "--Controller.ipx=2"], "--Controller.ipx: Controller has no setting 'ipx' (did you mean 'ip'?)"),
    (["controller", "--Engine.timeout=2"], "no settings of 'Engine' (an engine's settings go to `ipphpc engine`)"),
    (["controller", "--IPController.db_clas='sqlite'"], "IPController has no setting 'db_clas' (did you mean "
                                                          "'db_class'?)"),
    (["engine", "--Engine.register_timout=3"], "Engine has no setting 'register_timout' (did you mean "
                                               "'register_timeout'?)"),
    (["engine", "--MPI.us=1"], "--MPI.us: MPI has no setting 'us' (did you mean 'use'?); its settings are "
                               "init_script, use"),
    (["submit", *_DRY, "--SSHLauncher.usr=me"], "SSHLauncher has no setting 'usr' (did you mean 'user'?)"),
    (["submit", *_DRY, "--PBSEngineSetLauncher.quue=x"], "unknown c.PBSEngineSetLauncher option 'quue'; "
                                                        "did you mean 'queue'?"),
    (["submit", *_DRY, "--SlurmEngineSetLaucher.queue=x"], "reads no settings of 'SlurmEngineSetLaucher' (did you "
                                                          "mean 'SlurmEngineSetLauncher'?)"),
])
def test_a_setting_nothing_would_read_is_refused(ipphpc_dir, args, says):
    """A misspelt class or setting in --Class.trait=value is one line naming it, before anything starts."""
    line = one_line_error(ipphpc(*args))
    assert line.startswith(f"ipphpc {args[0]}: ") and says in line, line
    assert not ipphpc_dir.exists() and procs_matching(str(ipphpc_dir)) == []


def test_an_engine_setting_of_the_wrong_type_is_one_line(ipphpc_dir, tmp_path):
    """`--Engine.x=value` goes through traitlets, which refuses a value of the wrong type: one line, exit 2."""
    r = ipphpc("engine", "--profile-dir", str(tmp_path / "p"), "--Engine.controller_timeout='soon'", timeout=60)
    line = one_line_error(r)
    assert line.startswith("ipphpc engine: ") and "controller_timeout" in line and "'soon'" in line, line


def test_ipython_parallel_section_names_are_settings_too(ipphpc_dir):
    r = ipphpc("submit", *_DRY, "--IPController.db_class='sqlite'", "--IPEngine.work_dir='/tmp'",
               "--PBSEngineSetLauncher.queue=x", "--BatchSystemLauncher.account=a1")
    assert r.returncode == 0, r.stderr


def test_missing_profile_is_an_error_naming_the_existing_ones(ipphpc_dir):
    assert ipphpc("profile", "create", "analysis").returncode == 0
    for cmd in (["list"], ["status"], ["stop"], ["logs"], ["controller", "--cluster-id", "x"],
                ["profile", "locate", "analysys"]):
        args = [*cmd, "--profile", "analysys"] if cmd[0] != "profile" else cmd
        line = one_line_error(ipphpc(*args))
        assert "no profile 'analysys'" in line and "profiles there: analysis" in line, (cmd, line)
        assert "ipphpc profile create analysys" in line, line
    assert paths.profile_names() == ["analysis"]


def test_engine_waits_for_a_profile_its_controller_makes(ipphpc_dir):
    """Engines may start before the controller (a shared filesystem): an unknown profile is waited for,
    and the wait ends in one line naming the connection file it waited for."""
    line = one_line_error(ipphpc("engine", "--profile", "later", "--cluster-id", "x", "--wait-for-file", "0.5"))
    assert "waited 0.5 s for connection file" in line and "profile_later/security/ipcontroller-x-engine.json" in line


def test_submit_says_when_it_creates_a_profile(ipphpc_dir):
    r = ipphpc("submit", "--profile", "fresh", "--scheduler", "slurm", "-n", "1", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"created profile 'fresh' in {ipphpc_dir / 'profile_fresh'}" in r.stderr
    r = ipphpc("submit", "--profile", "fresh", "--scheduler", "slurm", "-n", "1", "--dry-run")
    assert r.returncode == 0 and "created profile" not in r.stderr


def test_bad_ports(ipphpc_dir):
    line = one_line_error(ipphpc("controller", "--cluster-id", "p", "--ports", "abc"))
    assert "--ports: 'abc' is not a list of ports" in line and "--ports 5001,5002,5003,5004" in line
    assert procs_matching(str(ipphpc_dir)) == []


def test_bad_log_level(ipphpc_dir):
    line = one_line_error(ipphpc("controller", "--cluster-id", "l", "--log-level", "LOUD"))
    assert "'LOUD' is not a log level" in line and "DEBUG, INFO, WARNING, ERROR" in line


def test_ipphpc_dir_under_a_file(tmp_path, monkeypatch):
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    monkeypatch.setenv("IPPHPC_DIR", str(blocker / "ipphpc"))
    for cmd in (["controller", "--cluster-id", "f"], ["submit", "-n", "1"], ["list"], ["logs"]):
        line = one_line_error(ipphpc(*cmd))
        assert f"{blocker} is a file, not a directory; set IPPHPC_DIR to a directory" in line, (cmd, line)


def test_profile_dir_under_a_file(ipphpc_dir, tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    line = one_line_error(ipphpc("submit", "-n", "1", "--profile-dir", str(blocker / "p")))
    assert f"{blocker} is a file, not a directory" in line


def test_broken_template(ipphpc_dir, tmp_path):
    """A Jinja syntax error names the file and line; the controller already started is stopped."""
    bad = tmp_path / "mine.sbatch.j2"
    bad.write_text("#!/bin/bash\n#SBATCH --array=0-{{ n }}\n{% if queue %}\nsrun {{ command }}\n")
    assert ipphpc("profile", "create").returncode == 0
    for extra in (["--dry-run"], ["--no-wait"]):
        line = one_line_error(ipphpc("submit", "--scheduler", "slurm", "-n", "2", "--template", str(bad), *extra))
        assert line.startswith(f"ipphpc submit: {bad}, line 4: Unexpected end of template"), line
        assert "fix the template" in line
    assert procs_matching(str(ipphpc_dir)) == []
    assert "no clusters" in ipphpc("list").stdout


def test_bad_trait_value_is_one_line(ipphpc_dir):
    line = one_line_error(ipphpc("controller", "--cluster-id", "t", "--Controller.ports='abc'"))
    assert "ports" in line and "'abc'" in line


def test_controller_started_by_hand_is_listed_and_stopped(spawner, ipphpc_dir):
    """`ipphpc controller --cluster-id=run7` writes a cluster file about itself: `list` and `status` show it,
    `stop run7` stops it (and the engine that joined it) and removes the file."""
    pdir = paths.profile_dir()
    p = spawner.ipphpc("controller", "--profile-dir", str(pdir), "--cluster-id", "run7", name="controller")
    wait_until(lambda: paths.cluster_file(pdir, "run7").exists(), 20, what="the controller's cluster file")
    record = json.loads(paths.cluster_file(pdir, "run7").read_text())
    assert record["controller"]["pid"] == p.pid
    engine = spawner.ipphpc("engine", "--profile-dir", str(pdir), "--cluster-id", "run7", name="engine")

    def listed():
        rows = [re.split(r"\s{2,}", line) for line in ipphpc("list").stdout.splitlines() if line.startswith("run7 ")]
        return rows and rows[0][2] == "1" and rows[0]
    row = wait_until(listed, 30, interval=0.3, what="run7 with one engine in `ipphpc list`")
    assert row[1] == f"{p.pid} running" and row[3] == "controller started by hand", row
    r = ipphpc("status", "run7")
    assert r.returncode == 0, r.stderr
    assert "cluster run7: 1 engines registered" in r.stdout
    assert f"pid {p.pid}" in r.stdout and "\njoined " in r.stdout
    r = ipphpc("stop", "run7")
    assert r.returncode == 0, r.stderr
    assert "cluster run7: stopped" in r.stdout
    assert p.wait(10) == 0 and engine.wait(10) == 0
    assert not alive(p.pid)
    assert not paths.cluster_file(pdir, "run7").exists()
    assert "no clusters" in ipphpc("list").stdout


def test_controller_started_by_hand_removes_its_file_when_it_stops(spawner, ipphpc_dir):
    """Stopped by a signal rather than `ipphpc stop`, it takes its cluster file with it."""
    import signal
    pdir = paths.profile_dir()
    p, _, _ = spawner.controller(pdir, "run8")
    assert paths.cluster_file(pdir, "run8").exists()
    assert spawner.stop(p, signal.SIGINT) == 0
    assert not paths.cluster_file(pdir, "run8").exists()


def test_a_submitted_cluster_keeps_its_own_cluster_file(ipphpc_dir):
    """The controller of `submit` does not replace the cluster's file with one about itself."""
    pdir = paths.profile_dir()
    r = ipphpc("submit", "-n", "1", "--cluster-id", "sub")
    assert r.returncode == 0, r.stderr
    try:
        record = json.loads(paths.cluster_file(pdir, "sub").read_text())
        assert not record["cluster"].get("by_hand") and len(record["engine_sets"]) == 1
    finally:
        assert ipphpc("stop", "sub").returncode == 0
    assert procs_matching(str(pdir)) == []


def test_controller_and_engine_read_ipython_parallels_sections():
    from traitlets.config import Config

    from ipphpc.controller.controller import Controller
    from ipphpc.engine.engine import Engine
    c = Config()
    c.IPController.db_class = "sqlite"
    c.IPController.ip = "10.0.0.1"
    c.Controller.ip = "*"  # ipphpc's own name wins
    c.IPEngine.work_dir = "/scratch"
    assert (Controller(config=c).db_class, Controller(config=c).ip) == ("sqlite", "*")
    assert Engine(config=c).work_dir == "/scratch"
