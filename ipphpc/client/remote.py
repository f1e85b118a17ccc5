"""Small functions that run on engines on the client's behalf (imported there by name)."""
from __future__ import annotations

from typing import Any, Callable

from ..remote_types import EngineNamespace, Reference  # noqa: F401 - their former home, still imported


def use_serializer(name: str) -> None:
    """Choose the pickler here (runs on engines too, for use_pickle/use_cloudpickle/use_dill)."""
    from .. import serialize
    serialize.use(name)


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


def _raw_view(a: Any) -> Any:
    """The bytes of a C-contiguous array as a flat integer array: MPI moves it whatever the dtype
    (datetime, strings, records, non-native byte order have no MPI datatype)."""
    import numpy
    flat = a.reshape(-1).view(numpy.uint8)
    # whole words where possible: fewer elements keep large arrays under MPI's int count limit
    return flat.view(numpy.uint64) if flat.size % 8 == 0 else flat


def _gather_quietly(comm: Any, pause: float = 0.0005) -> None:
    """Wait until every rank has arrived, sleeping between checks.

    The engines receive their part of a collective one after another; a rank that waits inside a
    blocking MPI call spins on a core, and with more ranks than cores the spinning starves the ranks
    (and the controller) still on their way. Once all are here, the collective itself runs at speed.
    """
    import time
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(pause)


def mpi_bcast(ns: dict, name: str, root: int) -> None:
    """Broadcast ns[name] from MPI rank `root` to every rank; arrays move as raw buffers.

    The root decides everything that can fail before the first collective and broadcasts a
    failure instead of raising alone, so the other ranks raise too rather than wait forever.
    """
    comm = ns["comm"]
    rank = comm.Get_rank()
    _gather_quietly(comm)
    meta: Any = None
    blob = None
    if rank == root:
        obj = ns.get(name)
        try:
            if name not in ns:
                raise NameError(f"name {name!r} is not defined")
            # only plain ndarrays: a subclass (np.matrix) would arrive as a plain array
            if type(obj).__name__ == "ndarray" and type(obj).__module__ == "numpy" \
                    and obj.flags.c_contiguous and not obj.dtype.hasobject:
                meta = ("array", obj.shape, obj.dtype)
            else:
                # cloudpickle, as for push: lambdas and local classes that plain pickle refuses
                import cloudpickle
                blob = cloudpickle.dumps(obj, protocol=5)
                meta = ("object", len(blob))
        except Exception as e:  # noqa: BLE001 - sent to every rank, so all of them raise
            meta = ("error", f"{type(e).__name__}: {e}")
    meta = comm.bcast(meta, root=root)
    if meta[0] == "error":
        raise RuntimeError(f"mpi_bcast: rank {root} cannot send {name!r}: {meta[1]}")
    if meta[0] == "array":
        import numpy
        buf = obj if rank == root else numpy.empty(meta[1], dtype=meta[2])
        if rank != root:
            # touch every page now, all ranks at once: faulting them in one by one inside the
            # broadcast stalls its pipeline at each fault while the other ranks wait
            _raw_view(buf)[:] = 0
        _gather_quietly(comm)
        comm.Bcast(_raw_view(buf), root=root)
        ns[name] = buf
    else:
        # the pickle moves as one raw buffer too, not pickled again by mpi4py's bcast
        data = blob if rank == root else bytearray(meta[1])
        comm.Bcast(data, root=root)
        if rank != root:
            import pickle
            ns[name] = pickle.loads(data)
