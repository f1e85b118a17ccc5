"""Remote and parallel functions: a function bound to a view, called like a local one.

`@remote(view)` makes every call a `view.apply`. `@parallel(view)` makes a call with sequences
split them: one contiguous piece per engine of a DirectView, or one element (or `chunksize`
elements) per task of a LoadBalancedView; the function gets the pieces and the results are joined.
`pf.map(*seqs)` calls the function on each element instead, like the builtin `map`.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Sequence

from ..util import engine_function


def remote(view: Any, block: bool | None = None, **flags: Any) -> Callable[[Callable], "RemoteFunction"]:
    """Decorator: calls of the function run on `view` (blocking per `block`, else per `view.block`)."""
    def wrap(f: Callable) -> RemoteFunction:
        return RemoteFunction(view, f, block=block, **flags)
    return wrap


def parallel(view: Any, dist: str = "b", block: bool | None = None, ordered: bool = True,
             **flags: Any) -> Callable[[Callable], "ParallelFunction"]:
    """Decorator: calls of the function with sequences are split over `view` (see ParallelFunction)."""
    def wrap(f: Callable) -> ParallelFunction:
        return ParallelFunction(view, f, dist=dist, block=block, ordered=ordered, **flags)
    return wrap


def _name(f: Any) -> str:
    for attr in ("__name__", "name"):
        try:
            return str(getattr(f, attr))
        except Exception:  # noqa: BLE001 - any object may be callable; fall back to its str
            pass
    return str(f)


class RemoteFunction:
    """`f` bound to `view`: calling it is `view.apply(f, ...)`, with `flags` set for the call."""

    def __init__(self, view: Any, f: Callable, block: bool | None = None, **flags: Any):
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        self.__name__ = _name(f)
        doc = getattr(f, "__doc__", None)
        if doc:
            self.__doc__ = f"{type(self).__name__} wrapping:\n{doc}"
        try:
            self.__signature__ = inspect.signature(f)
        except (TypeError, ValueError):
            pass  # a callable without a signature still works

    def _block(self) -> bool:
        return self.view.block if self.block is None else self.block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.view.temp_flags(block=self._block(), **self.flags):
            return self.view.apply(self.func, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__} on {self.view!r}>"


# -- splitting and joining sequences -----------------------------------------------------------

def _is_array(x: Any) -> bool:
    return type(x).__module__ == "numpy" and hasattr(x, "shape")


def _contiguous(seq: Sequence, p: int, q: int, n: int) -> Any:
    """Piece p of q near-equal contiguous pieces of seq[:n] (the first n % q pieces one longer)."""
    base, extra = divmod(n, q)
    low = p * base + min(p, extra)
    return seq[low:low + base + (p < extra)]


def _striped(seq: Sequence, p: int, q: int, n: int) -> Any:
    """Every q-th element of seq[:n], from element p."""
    return seq[p:n:q]


def _join_contiguous(pieces: list) -> Any:
    first = pieces[0]
    if _is_array(first):
        import numpy
        return numpy.concatenate(pieces)
    if isinstance(first, (list, tuple)):
        return [x for piece in pieces for x in piece]
    return pieces  # one scalar per piece: nothing to flatten


def _join_striped(pieces: list) -> Any:
    first = pieces[0]
    if _is_array(first):
        import numpy
        q = len(pieces)
        out = numpy.empty((sum(len(p) for p in pieces),) + first.shape[1:], numpy.result_type(*pieces))
        for p, piece in enumerate(pieces):
            out[p::q] = piece
        return out
    if isinstance(first, (list, tuple)):
        longest = max(len(p) for p in pieces)
        return [piece[i] for i in range(longest) for piece in pieces if i < len(piece)]
    return pieces


_DISTS = {"b": (_contiguous, _join_contiguous), "r": (_striped, _join_striped)}


def _map_chunk(f: Callable, *chunks: Any) -> list:
    """Runs on an engine: `f` over the elements of one piece, with the engine namespace as its globals."""
    return list(map(engine_function(f), *chunks))


def _sequence(seq: Any) -> Any:
    """A sequence that can be measured and sliced (iterators and sets become lists)."""
    if hasattr(seq, "__len__") and hasattr(seq, "__getitem__") and not isinstance(seq, dict):
        return seq
    return list(seq)


class ParallelFunction(RemoteFunction):
    """`f` applied to pieces of sequences, in parallel on `view`.

    `dist`: 'b' splits into contiguous blocks, 'r' deals elements round-robin. `chunksize`: the
    piece size on a LoadBalancedView (default: one element per task). `ordered=False` lets the
    result be iterated as pieces arrive. `return_exceptions`: failed pieces give their exception
    in the result instead of raising.
    """

    def __init__(self, view: Any, f: Callable, dist: str = "b", block: bool | None = None,
                 chunksize: int | None = None, ordered: bool = True, return_exceptions: bool = False,
                 **flags: Any):
        if dist not in _DISTS:
            raise ValueError(f"dist={dist!r} is not a distribution; use 'b' (contiguous blocks) or 'r' (round-robin)")
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize={chunksize!r}: give a positive int, or None for one element per task")
        super().__init__(view, f, block=block, **flags)
        self.dist = dist
        self.chunksize = chunksize
        self.ordered = ordered
        self.return_exceptions = return_exceptions

    def __call__(self, *sequences: Any) -> Any:
        return self._run(sequences, mapping=False)

    def map(self, *sequences: Any) -> Any:
        """`f` on each element of the sequences, like the builtin `map` (stops at the shortest);
        a list, or an AsyncMapResult when not blocking."""
        return self._run(sequences, mapping=True)

    def _load_balanced(self) -> bool:
        from .view import LoadBalancedView
        return isinstance(self.view, LoadBalancedView)

    def _targets(self) -> list[int]:
        return self.view.client._resolve(self.view.targets)

    def _run(self, sequences: tuple, mapping: bool) -> Any:
        if not sequences:
            raise TypeError(f"{self.__name__}{'.map' if mapping else ''}() needs at least one sequence")
        seqs = [_sequence(s) for s in sequences]
        lens = [len(s) for s in seqs]
        if not mapping and min(lens) != max(lens):
            raise ValueError(f"all sequences must have the same length, but have {lens}; "
                             f"use .map() to stop at the shortest")
        n = min(lens)
        if n == 0:
            return []
        split, join = _DISTS[self.dist]
        if self._load_balanced():
            size = self.chunksize or 1
            nparts = -(-n // size)
            views = [self.view] * nparts
        else:
            if self.chunksize:
                warnings.warn("chunksize is ignored on a DirectView: each engine gets one piece", UserWarning,
                              stacklevel=3)
            client = self.view.client
            views = [client.direct_view(t) for t in self._targets()]
            nparts = len(views)
        calls = []
        for p, view in enumerate(views):
            parts = [split(s, p, nparts, n) for s in seqs]
            if len(parts[0]) == 0:
                continue
            calls.append((view, parts))
        return self._submit(calls, mapping, join)

    def _submit(self, calls: list, mapping: bool, join: Callable) -> Any:
        from .asyncresult import AsyncMapResult

        def reduce(pieces: list) -> Any:
            return join(pieces) if pieces else []

        amr = AsyncMapResult(len(calls), self.__name__, ordered=self.ordered, reduce=reduce)
        for i, (view, parts) in enumerate(calls):
            with view.temp_flags(**self.flags):
                if mapping:
                    ar = view.apply_async(_map_chunk, self.func, *parts)
                else:
                    ar = view.apply_async(self.func, *parts)
            amr.msg_ids[i] = ar.msg_ids[0]
            amr._meta[i] = ar.metadata  # the same record: it fills in as the task runs
            amr._rc = ar._rc
            ar.add_done_callback(self._forward(amr, i, len(parts[0]) if mapping else None))
        if not self._block():
            return amr
        try:
            return amr.get()
        except KeyboardInterrupt:
            return amr  # an interrupted wait leaves the tasks running: hand back their result

    def _forward(self, amr: Any, i: int, chunk: int | None) -> Callable:
        """A callback passing one piece's outcome on to the joined result."""
        def done(ar: Any) -> None:
            error = ar.exception()
            meta = ar.metadata
            if error is None:
                amr._child_done(i, ar.result(), None, meta)
            elif self.return_exceptions:
                amr._child_done(i, [error] * chunk if chunk is not None else error, None, meta)
            else:
                amr._child_done(i, None, error, meta)
        return done


__all__ = ["remote", "parallel", "RemoteFunction", "ParallelFunction"]
