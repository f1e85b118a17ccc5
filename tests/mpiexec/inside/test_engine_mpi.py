"""The engine's MPI start-up and self-description, in every rank of a real COMM_WORLD."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from mpi4py import MPI
from traitlets.config import Config

from ipphpc.engine.engine import Engine
from ipphpc.engine.origin import engine_origin

pytestmark = pytest.mark.mpi(min_size=4)

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()

# every rank gathers before it asserts: a rank that failed alone would leave the others in a collective.
# Each rank has its own --basetemp (test_inside_mpiexec.py), so tmp_path fixtures do not race.


def mpi_names(engine: Engine) -> dict:
    return engine._init_namespace().user_ns


def test_mpi4py_engine_takes_its_rank_as_id() -> None:
    """`--mpi`: engine id = COMM_WORLD rank, and comm, mpi_rank, mpi_size in the namespace."""
    engine = Engine(mpi="mpi4py")
    ns = mpi_names(engine)
    comm = ns["comm"]
    seen = WORLD.allgather((engine.engine_id, ns["mpi_rank"], ns["mpi_size"], comm.Get_rank(),
                            comm.Compare(WORLD) == MPI.IDENT, ns["MPI"] is MPI))
    assert seen == [(r, r, SIZE, r, True, True) for r in range(SIZE)]
    assert comm.allreduce(ns["mpi_rank"] + 1) == SIZE * (SIZE + 1) // 2


def test_mpi_use_in_the_config_does_the_same() -> None:
    """c.MPI.use = 'mpi4py' without the flag."""
    engine = Engine(config=Config({"MPI": {"use": "mpi4py"}}))
    ns = mpi_names(engine)
    seen = WORLD.allgather((engine.engine_id, ns["mpi_rank"], ns["mpi_size"]))
    assert seen == [(r, r, SIZE) for r in range(SIZE)]


def test_without_mpi_the_namespace_has_no_mpi_names() -> None:
    engine = Engine()
    ns = mpi_names(engine)
    assert engine.engine_id == -1
    assert not {"comm", "mpi_rank", "mpi_size", "MPI"} & set(ns)


def test_an_engine_id_given_is_kept() -> None:
    """An explicit --engine-id wins over the rank; the MPI names are still set."""
    engine = Engine(mpi="mpi4py", engine_id=100 + (SIZE - 1 - RANK))
    ns = mpi_names(engine)
    seen = WORLD.allgather((engine.engine_id, ns["mpi_rank"]))
    assert seen == [(100 + SIZE - 1 - r, r) for r in range(SIZE)]


def test_init_script_runs_first_and_its_names_stay(mpi_tmp_path: Path) -> None:
    """MPI.init_script runs before the startup script and command, which see what it defined."""
    script = mpi_tmp_path / "startup.py"
    if RANK == 0:
        script.write_text("order.append('script')\n")
    WORLD.Barrier()
    init = ("import mpi4py\nfrom mpi4py import MPI\norder = ['init']\n"
            "node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)\n")
    engine = Engine(mpi="mpi4py", startup_script=str(script),
                    startup_command="order.append('command'); where = (mpi_rank, node.Get_size())",
                    config=Config({"MPI": {"init_script": init}}))
    ns = mpi_names(engine)
    hosts = WORLD.allgather(socket.gethostname())
    seen = WORLD.allgather((ns["order"], ns["where"]))
    ns["node"].Free()
    assert seen == [(["init", "script", "command"], (r, hosts.count(hosts[r]))) for r in range(SIZE)]


def test_init_script_that_leaves_no_MPI_says_so() -> None:
    engine = Engine(mpi="mpi4py", config=Config({"MPI": {"init_script": "import mpi4py\n"}}))
    with pytest.raises(RuntimeError, match="must leave mpi4py's `MPI` module"):
        engine._init_namespace()


def test_other_mpi_bindings_are_refused() -> None:
    with pytest.raises(ValueError, match="not supported"):
        Engine(mpi="pympi")._init_namespace()


def test_engine_origin_reports_the_launchers_rank_and_size() -> None:
    """What the engine registers with: the rank and size mpiexec gave this process, and its pid."""
    origin = engine_origin()
    seen = WORLD.allgather((origin["mpi_rank"], origin["mpi_size"], origin["pid"], origin["host"]))
    assert [s[:2] for s in seen] == [(r, SIZE) for r in range(SIZE)]
    assert seen[RANK][2:] == (os.getpid(), socket.gethostname())
    assert len({s[2:] for s in seen}) == SIZE


def test_a_per_node_rank_is_not_taken_for_the_rank() -> None:
    """Launchers also set node-local numbers (MPICH's MPI_LOCALRANKID): without a global rank, none is reported."""
    global_vars = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
    env = {k: v for k, v in os.environ.items() if k not in global_vars}
    assert any(k in os.environ for k in global_vars)
    assert engine_origin(env)["mpi_rank"] is None
