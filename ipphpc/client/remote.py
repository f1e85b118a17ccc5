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
