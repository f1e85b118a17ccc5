"""Engines under one mpiexec: ids are COMM_WORLD ranks, collectives run, data moves through MPI."""
from __future__ import annotations

import os
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest

import ipphpc
from ipphpc import paths

from ..services import require

# engines cannot import this test package: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.mpiexec, require("mpi", "run `bash .ci/services/mpi.sh` first")]


@pytest.fixture
def ipphpc_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IPPHPC_DIR", str(tmp_path / "ipphpc"))
    return tmp_path / "ipphpc"


@pytest.fixture
def mpi_cluster(ipphpc_dir):
    cluster = ipphpc.HPCCluster(n=4, engines="mpi", shutdown_atexit=False)
    rc = cluster.start_and_connect_sync()
    try:
        yield cluster, rc
    finally:
        cluster.stop_cluster_sync()
    assert not any(e.running for e in cluster.engine_sets)


def test_engine_ids_are_ranks_and_allreduce_runs(mpi_cluster):
    """Each engine's id is its rank; `comm`, `mpi_rank` and `mpi_size` are in the namespace; the cluster's
    traffic is CurveZMQ-encrypted, as for every cluster whose engines are not local processes."""
    cluster, rc = mpi_cluster
    assert "curve" in ipphpc.connection.read(paths.connection_file(cluster.pdir, "engine", cluster.cluster_id))
    assert rc.ids == [0, 1, 2, 3]
    ranks = rc[:].apply_sync(lambda: (mpi_rank, mpi_size, comm.Get_rank()))  # noqa: F821 - engine names
    assert ranks == [(i, 4, i) for i in range(4)]
    assert [rc.engines[i]["mpi_rank"] for i in rc.ids] == [0, 1, 2, 3]
    rc[:].execute("total = comm.allreduce(mpi_rank + 1)")
    assert rc[:]["total"] == [10, 10, 10, 10]


def _sleep_long():
    import time
    time.sleep(60)


def test_signal_interrupts_engines_under_mpiexec(mpi_cluster):
    """SIGINT through the cluster interrupts each rank's task; the ranks stay registered and serve on."""
    cluster, rc = mpi_cluster
    ar = rc[:].apply_async(_sleep_long)
    import time
    time.sleep(0.5)
    assert sorted(cluster.signal_engines_sync("SIGINT")) == [0, 1, 2, 3]
    with pytest.raises(ipphpc.error.CompositeError) as err:
        ar.get(20)
    assert {e.ename for e in err.value.elist} == {"KeyboardInterrupt"}
    assert rc.ids == [0, 1, 2, 3]
    assert rc[:].apply_sync(lambda: comm.allreduce(1)) == [4] * 4  # noqa: F821 - engine names


def test_mpi_bcast_moves_an_array_and_an_object(mpi_cluster):
    """mpi_bcast sends the value to one engine and MPI gives it to the others, unchanged."""
    _, rc = mpi_cluster
    x = np.random.default_rng(1).random(300_000)
    rc[:].mpi_bcast("x", x)
    sums = rc[:].apply_sync(lambda: float(x.sum()))
    assert sums == [float(x.sum())] * 4
    rc[:].mpi_bcast("cfg", {"alpha": 3, "name": "run"}, root=2)
    assert rc[:]["cfg"] == [{"alpha": 3, "name": "run"}] * 4


def test_mpi_bcast_of_what_one_engine_holds(mpi_cluster):
    """Without a value, mpi_bcast spreads the root engine's own array (computed there): nothing
    goes through the controller, and a name the root lacks fails on every engine instead of hanging."""
    _, rc = mpi_cluster
    rc[1].execute("import numpy as np; grid = np.arange(250_000, dtype='float64') * mpi_rank")
    before = rc.controller_status()["stats"]["tasks"]
    rc[:].mpi_bcast("grid", root=1, block=True)
    assert rc.controller_status()["stats"]["tasks"] - before == 4  # one small apply per engine, no push
    assert rc[:].apply_sync(lambda: float(grid[-1])) == [249_999.0] * 4  # noqa: F821 - rank 1's values
    with pytest.raises(ipphpc.CompositeError, match="nothing_here"):
        rc[:].mpi_bcast("nothing_here", root=2, block=True)
    assert rc[:].apply_sync(lambda: mpi_rank) == [0, 1, 2, 3]  # noqa: F821 - every engine still answers


def test_engine_mpi_flag_by_hand(ipphpc_dir, tmp_path):
    """`mpiexec -n 2 ipphpc engine --mpi` joins a controller with ids 0 and 1, and c.MPI.use works alike."""
    from ipphpc.launch.mpi import find_mpiexec, mpiexec_args
    cluster = ipphpc.HPCCluster(n=0, shutdown_atexit=False)
    cluster.start_controller_sync()
    procs = []
    try:
        rc = cluster.connect_client_sync()
        prefix, env = mpiexec_args(find_mpiexec(), 2)
        base = [sys.executable, "-m", "ipphpc", "engine", "--profile-dir", cluster.profile_dir,
                "--cluster-id", cluster.cluster_id]
        procs.append(subprocess.Popen(prefix + base + ["--mpi"], env={**os.environ, **env}))
        rc.wait_for_engines(2, timeout=60)
        assert rc.ids == [0, 1]
        assert rc[:].apply_sync(lambda: mpi_size) == [2, 2]  # noqa: F821
        prof = paths.profile_dir(profile_dir=cluster.profile_dir)
        (prof / "ipphpc_engine_config.py").write_text("c.MPI.use = 'mpi4py'\nc.Engine.engine_id = -1\n")
        rc.shutdown(hub=False)
        procs[0].wait(30)
        procs.append(subprocess.Popen(prefix + base, env={**os.environ, **env}))
        rc.wait_for_engines(2, timeout=60)
        assert sorted(rc[:].apply_sync(lambda: mpi_rank)) == [0, 1]  # noqa: F821
    finally:
        cluster.stop_cluster_sync()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def test_restart_engines_starts_the_mpi_job_again_under_the_same_ids(mpi_cluster):
    """restart_engines() on an MPI cluster: the ranks cannot restart alone (MPI_Init runs once per job), so the
    job is started again as a whole: new processes, the same engine ids, empty namespaces, collectives working.
    One rank alone is refused, naming what to do, and the engines keep serving."""
    cluster, rc = mpi_cluster
    with pytest.raises(RuntimeError, match=r"cannot restart engine\(s\) 2: it is one rank of an MPI job, which "
                                           r"cannot restart alone \(restart_engines\(\) restarts the whole job\)"):
        cluster.restart_engine_sync(2)
    rc[:].execute("x = 1")
    before = {eid: rc.engines[eid]["pid"] for eid in rc.ids}
    old_job = cluster.engine_sets[0].pid
    assert cluster.restart_engines_sync(timeout=120) == [0, 1, 2, 3]
    assert rc.ids == [0, 1, 2, 3]
    assert all(rc.engines[eid]["pid"] != pid for eid, pid in before.items())
    assert cluster.engine_sets[0].pid != old_job and len(cluster.engine_sets) == 1
    assert rc[:].apply_sync(lambda: "x" in globals()) == [False] * 4  # fresh namespaces
    rc[:].execute("total = comm.allreduce(mpi_rank + 1)")
    assert rc[:]["total"] == [10, 10, 10, 10]
    assert [rc.engines[i]["mpi_rank"] for i in rc.ids] == [0, 1, 2, 3]
