"""Restarting engines in place: the same ids and processes, a fresh interpreter, the startup code run again,
an empty namespace; tasks queued meanwhile wait for it."""
from __future__ import annotations

import os
import time

import pytest

from ipphpc import HPCCluster
from ipphpc.engine.main import restart_argv

from .helpers import kill_matching, ship_by_value

ship_by_value(__name__)


def test_restart_arguments_keep_the_id_and_start_one_engine():
    argv = ["engine", "--profile-dir", "/p", "-n", "4", "--engine-id=2", "--walltime", "1:00:00"]
    assert restart_argv(argv, 7) == ["engine", "--profile-dir", "/p", "--walltime", "1:00:00", "--engine-id", "7"]
    assert restart_argv(["engine", "-n3", "--n=2", "--Engine.engine_id=1"], 0) == ["engine", "--engine-id", "0"]


@pytest.fixture
def booted(tmp_path):
    root = tmp_path.resolve()
    c = HPCCluster(n=2, profile_dir=str(root / "profile"), shutdown_atexit=False,
                   engine_args=["--startup-command", "import time, sys; boot = time.time(); "
                                                     "mods = len(sys.modules)"])
    try:
        c.start_and_connect_sync()
        yield c
    finally:
        c.stop_cluster_sync()
        left = kill_matching(str(root))
        assert not left, f"processes left behind: {left}"


def test_restart_engines_in_place(booted):
    rc = booted.client
    ids = rc.ids
    dv = rc[:]
    dv.push({"x": 1}, block=True)
    pids = dv.apply_sync(os.getpid)
    before = dv.pull("boot", block=True)
    dv.execute("import json, xml.dom.minidom", block=True)  # modules a fresh interpreter does not have
    lv = rc.load_balanced_view()
    queued = lv.map_async(lambda v: (__import__("time").sleep(0.2), v * 2)[1], range(10))  # still queued
    assert booted.restart_engines_sync() == ids
    assert rc.ids == ids
    assert dv.apply_sync(os.getpid) == pids  # the same processes: a batch element goes on as it was
    after = dv.pull("boot", block=True)
    assert all(a > b for a, b in zip(after, before)), (before, after)  # the startup code ran again
    with pytest.raises(Exception, match="x"):
        dv.pull("x", block=True)
    assert dv.apply_sync(lambda: "xml.dom.minidom" in __import__("sys").modules) == [False, False]
    assert queued.get(timeout=30) == [v * 2 for v in range(10)]


def test_restart_one_engine_leaves_the_other(booted):
    rc = booted.client
    first, second = rc.ids
    rc[:].push({"x": 1}, block=True)
    t0 = time.time()
    assert booted.restart_engine_sync(first) == [first]
    assert rc.engines[first]["since"] > t0 and rc.engines[second]["since"] < t0
    assert rc[second].pull("x", block=True) == 1
    with pytest.raises(Exception, match="x"):
        rc[first].pull("x", block=True)


def test_restart_of_an_unknown_engine_is_refused(booted):
    with pytest.raises(RuntimeError, match="99: not registered"):
        booted.restart_engine_sync(99)
    with pytest.raises(KeyError, match="no engine set"):
        booted.restart_engines_sync("nope")


def test_restart_an_engine_set_by_its_id(booted):
    rc = booted.client
    (set_id,) = booted.engine_set_ids
    assert booted.restart_engines_sync(set_id) == rc.ids


def test_cli_restart(tmp_path):
    import subprocess
    import sys
    pdir = str(tmp_path.resolve() / "profile")

    def ipphpc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ipphpc", *args, "--profile-dir", pdir], capture_output=True,
                              text=True, timeout=120)
    try:
        assert ipphpc("submit", "-n", "2", "--cluster-id", "r1").returncode == 0
        out = ipphpc("restart", "r1")
        assert out.returncode == 0 and out.stdout.strip() == "cluster r1: restarted engine(s) 0, 1", out
        out = ipphpc("restart", "r1", "--engine", "1")
        assert out.returncode == 0 and out.stdout.strip() == "cluster r1: restarted engine(s) 1", out
        out = ipphpc("restart", "r1", "--engine", "5")
        assert out.returncode == 1 and out.stderr.strip() == ("ipphpc restart: cluster r1: cannot restart engine(s) "
                                                              "5: not registered"), out
        out = ipphpc("restart", "nope")
        assert out.returncode == 1 and "no cluster 'nope'" in out.stderr and "r1" in out.stderr, out
    finally:
        ipphpc("stop", "--all")
        left = kill_matching(pdir)
        assert not left, f"processes left behind: {left}"
