"""The `ipphpc` command: submit, list, stop, profile create, configuration precedence."""
from __future__ import annotations

import json
import subprocess

from ipphpc import paths

from .helpers import PY, alive, procs_matching, wait_until


def ipphpc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ipphpc", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _cluster_record(pdir, cid) -> dict:
    return json.loads(paths.cluster_file(pdir, cid).read_text())


def test_submit_list_stop(ipphpc_dir):
    """`submit -n 2` prints the cluster id and returns with the cluster running; `list` shows 2/2 engines;
    `stop` stops it and no process is left."""
    pdir = paths.profile_dir()
    r = ipphpc("submit", "-n", "2")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert cid and "\n" not in cid
    rec = _cluster_record(pdir, cid)
    ctl_pid = rec["controller"]["pid"]
    try:
        assert alive(ctl_pid)
        assert paths.connection_file(pdir, "client", cid).exists()

        r = ipphpc("list")
        assert r.returncode == 0, r.stderr
        (row,) = [line for line in r.stdout.splitlines() if line.startswith(cid)]
        assert "running" in row and "2/2" in row and str(ctl_pid) in row
    finally:
        r = ipphpc("stop")
    assert r.returncode == 0, r.stderr
    assert f"cluster {cid}: stopped" in r.stdout
    assert not alive(ctl_pid)
    assert procs_matching(str(pdir)) == []
    assert not paths.cluster_file(pdir, cid).exists()
    assert cid not in ipphpc("list").stdout


def test_stop_unknown_cluster_lists_known_ones(ipphpc_dir):
    """`stop bogus-id` fails and names the clusters that do exist."""
    pdir = paths.profile_dir()
    r = ipphpc("submit", "-n", "1", "--cluster-id", "real-one")
    assert r.returncode == 0, r.stderr
    try:
        r = ipphpc("stop", "bogus-id")
        assert r.returncode != 0
        assert "bogus-id" in r.stderr and "real-one" in r.stderr
        assert alive(_cluster_record(pdir, "real-one")["controller"]["pid"])
    finally:
        assert ipphpc("stop", "real-one").returncode == 0
    assert procs_matching(str(pdir)) == []


def test_profile_create_writes_commented_config(ipphpc_dir):
    """`profile create NAME` writes a commented config file per role, naming the traits."""
    r = ipphpc("profile", "create", "mine")
    assert r.returncode == 0, r.stderr
    pdir = ipphpc_dir / "profile_mine"
    for role in ("controller", "engine", "cluster"):
        text = (pdir / f"ipphpc_{role}_config.py").read_text()
        assert "c = get_config()" in text
        code = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert code == ["c = get_config()  # noqa"], code  # everything else is commented out
    ctl = (pdir / "ipphpc_controller_config.py").read_text()
    assert "# c.Controller.heartbeat_period" in ctl and "# c.Controller.ip" in ctl
    assert "# c.Engine.controller_timeout" in (pdir / "ipphpc_engine_config.py").read_text()
    assert (pdir / "ipphpc_config.py").exists()
    # running it again keeps edits
    (pdir / "ipphpc_controller_config.py").write_text("c = get_config()\nc.Controller.heartbeat_period = 0.7\n")
    assert ipphpc("profile", "create", "mine").returncode == 0
    assert "0.7" in (pdir / "ipphpc_controller_config.py").read_text()
    assert "mine" in ipphpc("profile", "list").stdout


def _set_heartbeat_in_profile(ipphpc_dir, name: str, value: float):
    assert ipphpc("profile", "create", name).returncode == 0
    f = ipphpc_dir / f"profile_{name}" / "ipphpc_controller_config.py"
    f.write_text(f.read_text() + f"\nc.Controller.heartbeat_period = {value}\n")
    return ipphpc_dir / f"profile_{name}"


def test_profile_config_and_flag_precedence_controller(spawner, ipphpc_dir):
    """A value in the profile's controller config takes effect; a --Class.trait flag overrides it."""
    pdir = _set_heartbeat_in_profile(ipphpc_dir, "hb", 0.3)
    p, einfo, _ = spawner.controller(pdir, "from-profile")
    assert einfo["heartbeat_period"] == 0.3
    spawner.stop(p)
    p, einfo, _ = spawner.controller(pdir, "from-flag", "--Controller.heartbeat_period=0.4")
    assert einfo["heartbeat_period"] == 0.4


def test_profile_config_and_flag_precedence_submit(ipphpc_dir):
    """Through `ipphpc submit`, the profile's value reaches the controller, and a flag overrides it."""
    pdir = _set_heartbeat_in_profile(ipphpc_dir, "hbsubmit", 0.3)
    try:
        r = ipphpc("submit", "--profile", "hbsubmit", "-n", "1", "--cluster-id", "prof")
        assert r.returncode == 0, r.stderr
        assert json.loads(paths.connection_file(pdir, "engine", "prof").read_text())["heartbeat_period"] == 0.3
        r = ipphpc("submit", "--profile", "hbsubmit", "-n", "1", "--cluster-id", "flag",
                   "--Controller.heartbeat_period=0.4")
        assert r.returncode == 0, r.stderr
        assert json.loads(paths.connection_file(pdir, "engine", "flag").read_text())["heartbeat_period"] == 0.4
    finally:
        ipphpc("stop", "--profile", "hbsubmit", "--all")
        wait_until(lambda: procs_matching(str(pdir)) == [], 10, what="all clusters of the profile to stop")


def test_unknown_argument_is_explained(ipphpc_dir):
    """A malformed option is refused with a message showing the --Class.trait=value form."""
    r = ipphpc("controller", "--heartbeat=1")
    assert r.returncode != 0
    assert "--Class.trait=value" in r.stderr


def test_wrong_scheduler_name_starts_nothing(ipphpc_dir):
    """A misspelt scheduler is refused before anything starts: the error suggests the right name and
    lists the valid ones, and no controller, cluster file or connection file is left."""
    pdir = paths.profile_dir()
    r = ipphpc("submit", "--scheduler", "slurmm", "-n", "2", "--cluster-id", "typo")
    assert r.returncode != 0
    assert "unknown launcher 'slurmm' (did you mean 'slurm'?)" in r.stderr
    assert all(name in r.stderr for name in ("pbs", "sge", "lsf", "htcondor", "local"))
    assert procs_matching(str(pdir)) == []
    assert list((pdir / "security").glob("*typo*")) == []
    assert "no clusters" in ipphpc("list").stdout


def test_bad_options_and_refused_submissions_leave_nothing_running(ipphpc_dir):
    """Each bad value is named with what would be right, and no controller outlives the refusal
    (for a bad walltime the controller has already started when the script is rendered)."""
    pdir = paths.profile_dir()
    for args, why in [(["-n", "-3"], "n=-3: the number of engines cannot be negative"),
                      (["--scheduler", "slurm", "--engines-per-task", "0"], "engines_per_task=0: must be at least 1"),
                      (["--scheduler", "slurm", "--walltime", "abc"], "walltime 'abc' is not a time; use MM, MM:SS"),
                      (["--scheduler", "pbs", "--mem", "4X"], "memory '4X' is not a size; use e.g. 4G"),
                      (["--scheduler", "pbs", "--mem", "4"], "memory '4' has no unit: write 4G or 4M")]:
        r = ipphpc("submit", "-n", "2", *args, "--no-wait")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert why in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert procs_matching(str(pdir)) == [], args
        assert "no clusters" in ipphpc("list").stdout, args


def test_client_finds_newest_cluster_and_stop_after_controller_crash(ipphpc_dir):
    """Client() with no arguments finds the submitted cluster; after the controller is SIGKILLed,
    `list` reports it stopped and `stop` still removes the orphaned engines."""
    import os
    import signal

    from ipphpc import Client
    pdir = paths.profile_dir()
    r = ipphpc("submit", "-n", "2")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    ctl_pid = _cluster_record(pdir, cid)["controller"]["pid"]
    try:
        with Client() as rc:
            assert rc.cluster_id == cid
            rc.wait_for_engines(2, timeout=10)
            engine_pids = rc[:].apply_sync(os.getpid)
        os.kill(ctl_pid, signal.SIGKILL)
        wait_until(lambda: not alive(ctl_pid), 10, what="the controller to die")
        (row,) = [line for line in ipphpc("list").stdout.splitlines() if line.startswith(cid)]
        assert "stopped" in row
        assert all(alive(p) for p in engine_pids)
    finally:
        r = ipphpc("stop", cid)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not any(alive(p) for p in engine_pids), 10, what="the orphaned engines to stop")
    assert procs_matching(str(pdir)) == []


def test_status_lists_engines_started_outside_the_cluster(ipphpc_dir):
    """`submit -n 0` starts a controller alone; engines started by hand (as a user's own batch script
    does) show in `status` as joined rows with their pids, and `stop` stops them too."""
    import subprocess as sp

    from .helpers import PY
    pdir = paths.profile_dir()
    assert ipphpc("submit", "-n", "0", "--cluster-id", "own").returncode == 0
    engine = sp.Popen([PY, "-m", "ipphpc", "engine", "--cluster-id", "own", "-n", "2"],
                      stdin=sp.DEVNULL, stdout=sp.DEVNULL, stderr=sp.DEVNULL)
    try:
        def both_joined():
            r = ipphpc("status")
            return r.stdout.count("\njoined ") == 2 and r
        r = wait_until(both_joined, 60, interval=0.5, what="two joined engines in `ipphpc status`")
        assert "cluster own: 2 engines registered, all started outside it" in r.stdout
        pids = {int(line.split()[2]) for line in r.stdout.splitlines() if line.startswith("joined")}
        assert engine.pid in pids and len(pids) == 2
    finally:
        assert ipphpc("stop", "own").returncode == 0
    assert engine.wait(30) == 0
    assert procs_matching(str(pdir)) == []
