"""Small functions that run on engines on the client's behalf (imported there by name)."""
from __future__ import annotations

from typing import Any, Callable


def map_chunk(f: Callable, *chunks: Any) -> list:
    return list(map(f, *chunks))


def partition(seq: Any, parts: int) -> list:
    """Split a sliceable sequence into `parts` contiguous pieces of near-equal length."""
    n = len(seq)
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(seq[start:stop])
        start = stop
    return out


def concat(pieces: list) -> Any:
    """Join gathered pieces the way they were split: arrays with numpy, sequences with +."""
    if not pieces:
        return []
    first = pieces[0]
    if type(first).__module__ == "numpy" and hasattr(first, "shape"):
        import numpy
        return numpy.concatenate(pieces)
    if isinstance(first, (list, tuple, str, bytes)):
        out = first[:0]
        for p in pieces:
            out = out + p
        return out
    out = []
    for p in pieces:
        out.extend(p)
    return out


class Reference:
    """An argument that names a variable in the engine's namespace: `dv.apply(f, Reference('x'))`."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"


class EngineNamespace:
    """An argument replaced on the engine by its namespace dict (for helpers that read or set names)."""


def mpi_bcast(ns: dict, name: str, root: int) -> None:
    """Broadcast ns[name] from MPI rank `root` to every rank; arrays move as raw buffers."""
    comm = ns["comm"]
    rank = comm.Get_rank()
    obj = ns.get(name) if rank == root else None
    meta = None
    if rank == root:
        is_array = type(obj).__module__ == "numpy" and getattr(obj, "flags", None) is not None \
            and obj.flags.c_contiguous and obj.dtype.hasobject is False
        meta = ("array", obj.shape, obj.dtype.str) if is_array else ("object",)
    meta = comm.bcast(meta, root=root)
    if meta[0] == "array":
        import numpy
        buf = obj if rank == root else numpy.empty(meta[1], dtype=meta[2])
        comm.Bcast(buf, root=root)
        ns[name] = buf
    else:
        ns[name] = comm.bcast(obj, root=root)
