"""The keeper of a cluster started by `ipphpc submit` (which exits): it adapts the cluster's size, ends with
the cluster or its controller, and the cluster file keeps every engine set whichever process added it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ipphpc
from ipphpc import HPCCluster
from ipphpc.cluster import keeper

from .helpers import alive, kill_matching, ship_by_value, wait_until

ship_by_value(__name__)


def ipphpc_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipphpc", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def pdir(tmp_path):
    root = tmp_path.resolve()
    yield str(root / "profile")
    ipphpc_cli("stop", "--all", "--profile-dir", str(root / "profile"))
    left = kill_matching(str(root))
    assert not left, f"processes left behind: {left}"


def keeper_log(pdir: str, cid: str) -> str:
    return Path(pdir, "log", f"ipkeeper-{cid}.out").read_text()


def cluster_record(pdir: str, cid: str) -> dict:
    with open(os.path.join(pdir, "security", f"cluster-{cid}.json")) as f:
        return json.load(f)


def test_submit_adapt_grows_for_waiting_tasks_and_releases_idle_engines(pdir):
    r = ipphpc_cli("submit", "-n", "0", "--adapt", "0:2:1", "--HPCCluster.adapt_interval=0.2", "--profile-dir",
                   pdir, "--cluster-id", "ad")
    assert r.returncode == 0 and r.stdout.strip() == "ad", r.stderr
    assert "keeper pid" in r.stderr and "adapts between 0 and 2 engines" in r.stderr, r.stderr
    pid = cluster_record(pdir, "ad")["keeper"]["pid"]
    assert keeper.alive(pid)
    status = ipphpc_cli("status", "ad", "--profile-dir", pdir)
    assert any(line.split()[:4] == ["keeper", "pid", str(pid), "RUNNING"] for line in status.stdout.splitlines()), \
        status.stdout
    with ipphpc.Client(profile_dir=pdir, cluster_id="ad") as rc:
        assert rc.ids == []
        ar = rc.load_balanced_view().map_async(lambda x: (time.sleep(0.3), x * 2)[1], range(6))
        assert ar.get(timeout=60) == [0, 2, 4, 6, 8, 10]  # the keeper started engines for them
        assert len(set(ar.engine_id)) >= 1 and len(cluster_record(pdir, "ad")["engine_sets"]) >= 1
        wait_until(lambda: rc.ids == [], 30, what="the idle engines to be released")
    log = keeper_log(pdir, "ad")
    assert "adapt: released" in log, log
    stop = ipphpc_cli("stop", "ad", "--profile-dir", pdir)
    assert stop.returncode == 0 and "cluster ad: stopped" in stop.stdout, stop
    assert not alive(pid)  # `ipphpc stop` ends the keeper before it cancels anything
    assert not any(n.startswith((".cluster-ad", "cluster-ad")) for n in os.listdir(os.path.join(pdir, "security")))


def test_keeper_ends_when_its_controller_is_gone(pdir):
    r = ipphpc_cli("submit", "-n", "0", "--adapt", "0:1", "--profile-dir", pdir, "--cluster-id", "gone")
    assert r.returncode == 0, r.stderr
    record = cluster_record(pdir, "gone")
    pid, controller = record["keeper"]["pid"], record["controller"]["pid"]
    wait_until(lambda: "keeping cluster gone" in keeper_log(pdir, "gone"), 30,
               what="the keeper to connect")
    os.kill(controller, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 30, what="the keeper to end after its controller")
    log = keeper_log(pdir, "gone")
    assert "the controller of cluster gone is gone" in log, log


@pytest.mark.parametrize("value", ["5:2", "x", "1:2:3:4", "-1:2"])
def test_bad_adapt_range_is_one_line(pdir, value):
    r = ipphpc_cli("submit", "-n", "0", f"--adapt={value}", "--profile-dir", pdir, "--cluster-id", "bad")
    assert r.returncode == 2, r
    (line,) = r.stderr.strip().splitlines()[-1:]
    assert "adapt range" in line and "MIN" in line and "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(pdir, "security", "cluster-bad.json"))


def test_no_keeper_for_local_engines_without_adapt(pdir):
    r = ipphpc_cli("submit", "-n", "1", "--profile-dir", pdir, "--cluster-id", "plain")
    assert r.returncode == 0, r.stderr
    assert "keeper pid" not in r.stderr and cluster_record(pdir, "plain")["keeper"] == {"pid": None}


def test_engine_sets_added_by_another_process_are_kept_and_stopped(pdir):
    """`ipphpc scale` adds a set to the file of a cluster this process started: a later write here keeps it, a
    set stopped here does not come back from the file, and stopping the cluster stops the other's set too."""
    c = HPCCluster(n=1, profile_dir=pdir, cluster_id="both", shutdown_atexit=False,
                   engine_args=["--Engine.startup_command=x = 7"])
    with c as rc:
        r = ipphpc_cli("scale", "both", "2", "--profile-dir", pdir)
        assert r.returncode == 0, r.stderr
        rc.wait_for_engines(2, timeout=30)
        assert c.refresh_from_file() and len(c.engine_set_ids) == 2
        # the engine started by the other process ran the cluster's own engine command
        assert rc[:].apply_sync(lambda: x) == [7, 7]  # noqa: F821 - set by the startup command
        first = c.engine_set_ids[0]
        c.start_engines_sync(1)
        assert len(c.engine_set_ids) == 3 and len(cluster_record(pdir, "both")["engine_sets"]) == 3
        other_pid = c.engine_sets[1].pid
        c.stop_engines_sync(c.engine_set_ids[2])
        c.refresh_from_file()
        assert len(c.engine_set_ids) == 2 and first in c.engine_set_ids
        assert cluster_record(pdir, "both")["engine_set_ids"] == c.engine_set_ids
    wait_until(lambda: not alive(other_pid), 15, what="the engine `ipphpc scale` started to stop with the cluster")
