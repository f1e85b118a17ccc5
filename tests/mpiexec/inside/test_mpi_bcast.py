"""The engine-side half of DirectView.mpi_bcast, run by every rank as the engines run it."""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import pytest
from mpi4py import MPI

from ipphpc import serialize
from ipphpc.client.remote import EngineNamespace, mpi_bcast
from ipphpc.engine.engine import Engine

pytestmark = pytest.mark.mpi(min_size=4)

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()


def engine_ns() -> dict:
    """A namespace as an MPI engine has it (comm, mpi_rank, mpi_size)."""
    return Engine(mpi="mpi4py")._init_namespace().user_ns


def same_everywhere(got: Any, want: Any) -> bool:
    """Same type, dtype, shape and bytes (bytes, so that NaT and NaN count as equal to themselves)."""
    return type(got) is type(want) and got.dtype == want.dtype and got.shape == want.shape \
        and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("n, dtype", [(1_500_007, np.float64), (1_000_001, np.float32)], ids=["f8", "f4-odd-bytes"])
def test_a_large_array_reaches_every_rank(n: int, dtype: type) -> None:
    """Root 2's array replaces whatever the others held; the root keeps its very object."""
    want = np.random.default_rng(7).random(n).astype(dtype)
    ns = engine_ns()
    root = 2
    mine = want.copy()
    ns["x"] = mine if RANK == root else np.zeros(3)
    mpi_bcast(ns, "x", root)
    seen = WORLD.allgather((same_everywhere(ns["x"], want), ns["x"] is mine))
    assert seen == [(True, r == root) for r in range(SIZE)]


def _record() -> np.ndarray:
    a = np.zeros(3, dtype=[("id", "<i4"), ("w", ">f8"), ("tag", "S4")])
    a["id"], a["w"], a["tag"] = [1, 2, 3], [0.5, -1.0, 2.25], [b"ab", b"cd", b"ef"]
    return a


ARRAYS = {
    "datetime": lambda: np.array(["2024-01-01", "2025-02-03", "NaT"], dtype="datetime64[D]"),
    "nan": lambda: np.array([1.0, np.nan, -np.inf]),
    "timedelta": lambda: np.arange(5, dtype="timedelta64[s]"),
    "unicode": lambda: np.array(["ab", "cdé", ""]),
    "bytes": lambda: np.array([b"ab", b"c"]),
    "record": _record,
    "big-endian": lambda: np.arange(7, dtype=">i4"),
    "bool": lambda: np.array([True, False, True]),
    "complex": lambda: np.arange(4) * (1 + 2j),
    "zero-dim": lambda: np.array(5.5),
    "empty": lambda: np.empty((0, 3)),
    "two-dim": lambda: np.arange(12, dtype=np.int16).reshape(3, 4),
    "fortran-order": lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "strided": lambda: np.arange(20)[::3],
    "recarray-subclass": lambda: np.rec.fromarrays([np.arange(3), np.arange(3.0)], names="i,x"),
}


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_arrays_of_any_dtype_and_layout_arrive_equal(kind: str) -> None:
    """Dtypes MPI has no datatype for, and arrays that are not plain C-contiguous ndarrays."""
    want = ARRAYS[kind]()
    ns = engine_ns()
    ns["a"] = ARRAYS[kind]() if RANK == 1 else None
    try:
        mpi_bcast(ns, "a", 1)
        got = ns["a"]
        result = (type(got).__name__, str(got.dtype), got.shape, same_everywhere(got, want))
    except Exception as e:  # noqa: BLE001 - reported by every rank below, so none is left waiting
        result = (f"{type(e).__name__}: {e}",)
    seen = WORLD.allgather(result)
    assert seen == [(type(want).__name__, str(want.dtype), want.shape, True)] * SIZE


def test_python_objects_functions_and_local_classes() -> None:
    """Objects travel as one pickle, made with cloudpickle so lambdas and local classes go too."""
    class Settings:
        def __init__(self, alpha: int):
            self.alpha = alpha

    def scaled(k: int) -> Callable[[int], int]:
        return lambda v: v * k

    root = 3
    ns = engine_ns()
    if RANK == root:
        ns["cfg"] = {"alpha": 3, "name": "run", "grid": np.arange(6).reshape(2, 3)}
        ns["f"] = scaled(7)
        ns["s"] = Settings(11)
    for name in ("cfg", "f", "s"):
        mpi_bcast(ns, name, root)
    cfg = ns["cfg"]
    seen = WORLD.allgather((cfg["alpha"], cfg["name"], cfg["grid"].tolist(), ns["f"](2), ns["s"].alpha))
    assert seen == [(3, "run", [[0, 1, 2], [3, 4, 5]], 14, 11)] * SIZE


def test_a_value_the_root_cannot_send_fails_on_every_rank() -> None:
    """The root broadcasts its failure: every rank raises, none waits for data that never comes."""
    ns = engine_ns()
    ns["lock"] = threading.Lock() if RANK == 0 else "stale"
    try:
        mpi_bcast(ns, "lock", 0)
        result = "no error"
    except RuntimeError as e:
        result = str(e)
    seen = WORLD.allgather(result)
    assert all(s.startswith("mpi_bcast: rank 0 cannot send 'lock': TypeError") for s in seen), seen
    # the communicator is still in step afterwards
    assert WORLD.allreduce(1) == SIZE


def test_through_the_executor_as_the_client_sends_it() -> None:
    """The client pushes to the root, then every engine applies mpi_bcast(EngineNamespace(), name, root)."""
    want = np.random.default_rng(3).integers(0, 1 << 40, size=(500, 333))
    engine = Engine(mpi="mpi4py")
    ex = engine._init_namespace()
    root = SIZE - 1
    pushed = ex.run("push", serialize.dumps({"grid": want})) if RANK == root else (True, [], {})
    ok, frames, meta = ex.run("apply", serialize.dumps((mpi_bcast, (EngineNamespace(), "grid", root), {})))
    seen = WORLD.allgather((pushed[0], ok, frames, meta.get("error", {}).get("evalue"),
                            same_everywhere(ex.user_ns["grid"], want)))
    assert seen == [(True, True, [], None, True)] * SIZE


def test_a_name_the_root_does_not_have_fails_on_every_rank() -> None:
    """Broadcasting what the root holds, when it holds nothing by that name, is an error, not None."""
    ns = engine_ns()
    ns["result"] = "stale"
    if RANK == 2:
        del ns["result"]
    try:
        mpi_bcast(ns, "result", 2)
        result = f"no error, got {ns['result']!r}"
    except RuntimeError as e:
        result = str(e)
    seen = WORLD.allgather(result)
    assert seen == ["mpi_bcast: rank 2 cannot send 'result': NameError: name 'result' is not defined"] * SIZE
