"""Whole clusters with real engines submitted through the PBS Pro, Torque and LSF emulators.

The emulators (tests/emulators) run every job as local processes and print what the real
commands print, so these tests need no service: HPCCluster submits one job array, the
engines in it register and run tasks, and stopping the cluster leaves no job and no process.
The same path is then driven from the shell with `ipphpc submit`, `status` and `stop`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from ipphpc import Client, HPCCluster

from .emulator_support import Emulator, emulator_fixture, group_alive, procs_matching, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCHEDULER = {"pbspro": "pbs", "torque": "torque", "lsf": "lsf"}
FIRST_INDEX = {"pbspro": 0, "torque": 0, "lsf": 1}


@pytest.fixture
def emulator(request, tmp_path, monkeypatch):
    yield from emulator_fixture(request.param, tmp_path, monkeypatch)


def element_of(emu: Emulator, pid: int) -> tuple[int, int | None]:
    """(job number, array index) of the emulator element whose process group holds `pid`."""
    pgid = os.getpgid(pid)
    elements = emu.elements()
    assert pgid in elements, f"engine pid {pid} (process group {pgid}) is in no element the emulator started"
    seq, index, _ = elements[pgid]
    return seq, index


def check_engines_match_elements(emu: Emulator, engines: dict[int, dict], n: int) -> None:
    """Each engine says which job and element it runs in; the emulator's own records must agree."""
    base = FIRST_INDEX[emu.flavor]
    assert sorted(info["array_index"] for info in engines.values()) == list(range(base, base + n))
    seqs = set()
    for eid, info in engines.items():
        seq, index = element_of(emu, info["pid"])
        seqs.add(seq)
        assert info["array_index"] == index, (eid, info)
        assert info["job_id"] == emu.expected_job_id(seq, index), (eid, info)
        assert info["scheduler"] == ("lsf" if emu.kind == "lsf" else "pbs")
    assert len(seqs) == 1, f"engines came from several jobs: {seqs}"


def check_nothing_left(emu: Emulator, marker: Path) -> None:
    assert wait_until(lambda: not emu.unfinished(), 30, what="the scheduler to forget the jobs") is True
    pgids = list(emu.elements())
    assert pgids, "the emulator started no element"
    for pgid in pgids:
        assert not group_alive(pgid), f"element process group {pgid} survived the stop"
    # the emulator's daemon leaves by itself a moment after its last job; nothing else may remain
    wait_until(lambda: not procs_matching(str(marker)), 30, what=f"the processes of {marker} to end")


@pytest.mark.parametrize("emulator", [pytest.param("pbspro", marks=pytest.mark.pbs),
                                      pytest.param("torque", marks=pytest.mark.pbs),
                                      pytest.param("lsf", marks=pytest.mark.lsf)], indirect=True)
def test_a_cluster_of_three_batch_engines_runs_tasks_and_leaves_nothing(emulator: Emulator, tmp_path) -> None:
    profile = tmp_path / "profile"
    cluster = HPCCluster(scheduler=SCHEDULER[emulator.flavor], n=3, profile_dir=str(profile),
                         engine_timeout=120, shutdown_atexit=False)
    try:
        with cluster as rc:
            assert emulator.submissions() == 1  # one array made all three engines
            (launcher,) = cluster.engine_sets
            assert len(launcher.job_ids) == 1
            engines = rc.engines
            assert len(engines) == 3
            check_engines_match_elements(emulator, engines, 3)
            # the array parent id qsub/bsub printed is the job every engine belongs to
            submitted = launcher.job_ids[0]
            assert all(i["job_id"].split("[")[0].split(".")[0] == submitted.split("[")[0].split(".")[0]
                       for i in engines.values())

            pids = rc[:].apply_sync(os.getpid)
            assert sorted(pids) == sorted(info["pid"] for info in engines.values())
            assert rc.load_balanced_view().map_sync(lambda x: x * x, range(50)) == [x * x for x in range(50)]
            index_var = "LSB_JOBINDEX" if emulator.kind == "lsf" else (
                "PBS_ARRAY_INDEX" if emulator.flavor == "pbspro" else "PBS_ARRAYID")
            seen = rc[:].apply_sync(lambda name: int(os.environ[name]), index_var)
            assert seen == [engines[eid]["array_index"] for eid in rc.ids]
        # the engines left because they were asked to: every element ended with status 0
        assert list(emulator.exit_codes().values()) == [0, 0, 0], emulator.exit_codes()
        assert not cluster.cluster_file.exists()
        check_nothing_left(emulator, tmp_path)
    finally:
        cluster.stop_cluster_sync()


def ipphpc(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipphpc", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.pbs
@pytest.mark.parametrize("emulator", ["pbspro"], indirect=True)
def test_submit_status_and_stop_from_the_shell(emulator: Emulator, tmp_path) -> None:
    profile = str(tmp_path / "profile")
    try:
        out = ipphpc("submit", "--scheduler", "pbs", "-n", "2", "--wait", "--timeout", "150",
                     "--profile-dir", profile)
        assert out.returncode == 0, out.stderr
        cluster_id = out.stdout.strip().splitlines()[-1]
        assert "submitted pbspro job(s) 1[].pbsserver" in out.stderr
        assert emulator.submissions() == 1

        with Client(profile_dir=profile, cluster_id=cluster_id, timeout=10) as rc:
            rc.wait_for_engines(2, timeout=30)
            check_engines_match_elements(emulator, rc.engines, 2)
            assert sorted(rc[:].apply_sync(lambda: 6 * 7)) == [42, 42]
            eids = {info["array_index"]: eid for eid, info in rc.engines.items()}

        # status asks the controller with a short timeout: on a loaded machine, ask again
        header = f"cluster {cluster_id} (pbs): 2 of 2 engines registered"
        status = wait_until(lambda: (res := ipphpc("status", "--profile-dir", profile)).returncode == 0
                            and res.stdout.startswith(header + "\n") and res, 60, interval=1,
                            what="`ipphpc status` to show both engines")
        lines = status.stdout.splitlines()
        # ROLE JOB INDEX STATE NATIVE REASON FOR HOST ENGINES: each element running, with its engine
        rows = {(row[0], row[2]): row for row in (line.split() for line in lines[3:])}
        for index in (0, 1):
            row = rows[("engines", str(index))]
            assert row[1:5] == ["1[].pbsserver", str(index), "RUNNING", "R"], row
            assert row[-1] == str(eids[index]), row
        assert any(line.split()[:1] == ["controller"] and "RUNNING" in line for line in lines[3:])

        stop = ipphpc("stop", "--profile-dir", profile)
        assert stop.returncode == 0, stop.stderr
        assert f"cluster {cluster_id}: stopped" in stop.stdout
        check_nothing_left(emulator, tmp_path)
        after = ipphpc("status", "--profile-dir", profile)
        assert after.returncode == 1 and "no cluster" in after.stderr
    finally:
        ipphpc("stop", "--all", "--profile-dir", profile, timeout=120)
