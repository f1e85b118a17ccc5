"""`ipphpc engine`: waiting for the controller, where it came from, start-up options, orphan exit, -n."""
from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from ipphpc import Client, paths
from ipphpc.engine.origin import engine_origin

from .helpers import alive, clean_env, pgid_members, wait_until


def _client(pdir, cid) -> Client:
    return Client(paths.connection_file(pdir, "client", cid))


def _engine_logs(pdir, cid) -> str:
    return "".join(p.read_text(errors="replace") for p in (pdir / "log").glob(f"ipengine-{cid}-*.log"))


def _in_engine_namespace(source: str, name: str):
    """A function defined in __main__, as in a notebook: on the engine it sees the engine's namespace."""
    ns = {"__name__": "__main__"}
    exec(source, ns)
    return ns[name]


def test_engine_waits_for_connection_file(spawner, pdir):
    """An engine started before its controller waits for the connection file, then registers."""
    cid = "late"
    efile = paths.connection_file(pdir, "engine", cid)
    eng = spawner.engine(pdir, cid, "--wait-for-file", "60", env=clean_env())
    wait_until(lambda: "waiting for connection file" in _engine_logs(pdir, cid), 20,
               what="the engine to start waiting")
    assert not efile.exists() and eng.poll() is None
    spawner.controller(pdir, cid)
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(1, timeout=20)
        assert rc[rc.ids[0]].apply_sync(os.getpid) == eng.pid


def test_engine_gives_up_naming_the_file(spawner, pdir):
    """With a short --wait-for-file and no controller, the engine exits non-zero naming the file."""
    eng = spawner.engine(pdir, "never", "--wait-for-file", "0.3", env=clean_env())
    code = eng.wait(30)
    _, err = spawner.output(eng)
    assert code == 2
    assert str(paths.connection_file(pdir, "engine", "never")) in err
    assert "did not appear" in err and "--wait-for-file" in err


@pytest.mark.parametrize("env, expect", [
    ({"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "4249"},
     ("slurm", "4242", 7)),
    ({"SLURM_JOB_ID": "555"}, ("slurm", "555", None)),
    ({"LSB_JOBID": "31337", "LSB_JOBINDEX": "3"}, ("lsf", "31337", 3)),
    ({"PBS_JOBID": "98765.pbsserver", "PBS_ARRAY_ID": "98700[].pbsserver", "PBS_ARRAY_INDEX": "12"},
     ("pbs", "98700[].pbsserver", 12)),
    ({"PBS_JOBID": "77[4].torque", "PBS_ARRAYID": "4"}, ("pbs", "77[4].torque", 4)),
    ({"PBS_JOBID": "77.pbs"}, ("pbs", "77.pbs", None)),
    ({"JOB_ID": "1001", "SGE_TASK_ID": "5"}, ("sge", "1001", 5)),
    ({"JOB_ID": "1002", "SGE_TASK_ID": "undefined"}, ("sge", "1002", None)),
    ({}, (None, None, None)),
])
def test_engine_origin_per_scheduler(env, expect):
    """engine_origin reads each scheduler's job id and array index variables."""
    info = engine_origin(env)
    assert (info["scheduler"], info["job_id"], info["array_index"]) == expect
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()


def test_engine_origin_htcondor_and_mpi(tmp_path):
    """HTCondor ids come from the job ad file; MPI rank and size from the launcher's variables."""
    ad = tmp_path / ".job.ad"
    ad.write_text('MyType = "Job"\nClusterId = 314\nProcId = 15\n')
    info = engine_origin({"_CONDOR_JOB_AD": str(ad), "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"})
    assert (info["scheduler"], info["job_id"], info["array_index"]) == ("htcondor", "314", 15)
    assert (info["mpi_rank"], info["mpi_size"]) == (3, 8)
    assert engine_origin({"PMI_RANK": "x"})["mpi_rank"] is None


def test_engines_report_batch_origin(spawner, pdir):
    """Engines under faked Slurm, LSF, PBS and SGE environments report host, pid, job id and array index."""
    cid = "origin"
    spawner.controller(pdir, cid)
    envs = {
        "slurm": ({"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "4249"}, "4242", 7),
        "lsf": ({"LSB_JOBID": "31337", "LSB_JOBINDEX": "3"}, "31337", 3),
        "pbs": ({"PBS_JOBID": "98765.srv", "PBS_ARRAY_ID": "98700[].srv", "PBS_ARRAY_INDEX": "12"}, "98700[].srv", 12),
        "sge": ({"JOB_ID": "1001", "SGE_TASK_ID": "5"}, "1001", 5),
    }
    procs = {name: spawner.engine(pdir, cid, env=clean_env(**env)) for name, (env, _, _) in envs.items()}
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(len(envs), timeout=30)
        by_pid = {info["pid"]: (eid, info) for eid, info in rc.engines.items()}
        status = rc.controller_status()["engines"]
        for name, (_, job, idx) in envs.items():
            eid, info = by_pid[procs[name].pid]
            assert info["host"] == socket.gethostname()
            assert (info["scheduler"], info["job_id"], info["array_index"]) == (name, job, idx)
            assert status[str(eid)]["job_id"] == job
            assert rc[eid].apply_sync(os.getpid) == procs[name].pid


def test_work_dir_startup_script_and_command(spawner, pdir, tmp_path):
    """--work-dir is the engine's cwd; --startup-script then --startup-command run in its namespace."""
    cid = "startup"
    wd = tmp_path / "work dir"
    wd.mkdir()
    script = tmp_path / "setup.py"
    script.write_text("import os\nfrom_script = 40\nscript_cwd = os.getcwd()\n")
    spawner.controller(pdir, cid)
    spawner.engine(pdir, cid, "--work-dir", str(wd), "--startup-script", str(script),
                   "--startup-command", "from_command = from_script + 2", env=clean_env())
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(1, timeout=20)
        e = rc[rc.ids[0]]
        assert e.apply_sync(os.getcwd) == str(wd)
        get = _in_engine_namespace("def get():\n    return from_script, from_command, script_cwd\n", "get")
        assert e.apply_sync(get) == (40, 42, str(wd))
        assert e.pull(["from_script", "from_command"], block=True) == [40, 42]


def test_engine_of_flags_alone_does_without_traitlets(spawner, pdir, tmp_path):
    """Flags only: the settings come from the engine's own table, and traitlets is never imported."""
    cid = "lean"
    spawner.controller(pdir, cid)
    spawner.engine(pdir, cid, "--work-dir", str(tmp_path), "--controller-timeout", "77", env=clean_env())
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(1, timeout=20)
        e = rc[rc.ids[0]]
        assert e.apply_sync(os.getcwd) == str(tmp_path)
        loaded = e.apply_sync(lambda: sorted(m for m in __import__("sys").modules if m.split(".")[0] == "traitlets"))
        assert loaded == []


def test_engine_reads_profile_files_then_flags_then_class_settings(spawner, pdir, tmp_path):
    """A profile's configuration file is read (IPEngine before Engine), the flags win over it, and
    `--Engine.x=value` wins over the flags."""
    cid = "layers"
    spawner.controller(pdir, cid)
    (pdir / "ipphpc_engine_config.py").write_text(
        "c = get_config()\n"
        f"c.IPEngine.work_dir = {str(tmp_path)!r}\n"
        "c.IPEngine.startup_command = 'layer = \"ipengine\"'\n"
        "c.Engine.startup_command = 'layer = \"file\"'\n"
        "c.MPI.init_script = 'unused = 1'\n")
    spawner.engine(pdir, cid, env=clean_env())
    spawner.engine(pdir, cid, "--startup-command", "layer = 'flag'", env=clean_env())
    spawner.engine(pdir, cid, "--startup-command", "layer = 'flag'", "--Engine.startup_command=layer = 'class'",
                   env=clean_env())
    get = _in_engine_namespace("def get():\n    import os\n    return layer, os.getcwd()\n", "get")
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(3, timeout=30)
        seen = sorted(rc[:].apply_sync(get))
    assert seen == sorted([("file", str(tmp_path)), ("flag", str(tmp_path)), ("class", str(tmp_path))])


def test_engine_settings_are_checked():
    from ipphpc.engine.engine import Engine
    assert Engine(engine_id=3, walltime=90).walltime == 90.0
    with pytest.raises(ValueError, match=r"Engine.engine_id must be of type int, not '3'"):
        Engine(engine_id="3")
    with pytest.raises(TypeError, match="Engine has no setting 'work_dri'"):
        Engine(work_dri="/tmp")


def test_engine_exits_when_controller_killed(spawner, pdir):
    """After the controller dies by SIGKILL, an engine with a short --controller-timeout exits by itself."""
    cid = "orphan"
    ctl, _, _ = spawner.controller(pdir, cid, "--Controller.heartbeat_period=0.2")
    eng = spawner.engine(pdir, cid, "--controller-timeout", "1.5", env=clean_env())
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(1, timeout=20)
    os.kill(ctl.pid, signal.SIGKILL)
    ctl.wait(5)
    code = eng.wait(20)
    assert code == 3
    assert "no word from the controller" in _engine_logs(pdir, cid)


def test_n_engines_in_one_process_group(spawner, pdir):
    """`ipphpc engine -n 3` starts three engines (distinct pids) in the launching process's group."""
    cid = "three"
    spawner.controller(pdir, cid)
    eng = spawner.engine(pdir, cid, "-n", "3", env=clean_env())
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(3, timeout=30)
        assert len(rc.ids) == 3
        pids = rc[:].apply_sync(os.getpid)
        groups = rc[:].apply_sync(lambda: os.getpgid(0))
    assert len(set(pids)) == 3 and eng.pid in pids
    assert groups == [eng.pid] * 3
    assert sorted(pgid_members(eng.pid)) == sorted(pids)
    # one signal to the group stops them all
    os.killpg(eng.pid, signal.SIGTERM)
    assert eng.wait(15) == 0
    wait_until(lambda: not any(alive(p) for p in pids), 10, what="all three engines to exit")


def test_engine_log_in_profile(spawner, pdir):
    """Each engine logs to the profile's log/ folder, naming the cluster and its registration."""
    cid = "logs"
    spawner.controller(pdir, cid)
    eng = spawner.engine(pdir, cid, env=clean_env())
    with _client(pdir, cid) as rc:
        rc.wait_for_engines(1, timeout=20)
    log = pdir / "log" / f"ipengine-{cid}-{socket.gethostname()}-{eng.pid}.log"
    wait_until(lambda: log.exists() and "registered as engine" in log.read_text(), 10, what="engine log")
    assert json.loads(paths.connection_file(pdir, "engine", cid).read_text())["cluster_id"] == cid
