"""DirectView and LoadBalancedView, with IPython Parallel's names and semantics."""
from __future__ import annotations

import concurrent.futures
import contextlib
import time
from typing import Any, Callable, Iterable, Iterator

from .. import serialize
from ..error import NoEnginesRegistered
from .asyncresult import AsyncMapResult, AsyncResult
from .remote import EngineNamespace, concat, map_chunk, mpi_bcast, partition


#: a synchronous apply that is not one plain task (several engines, retries, a timeout)
_NOT_ONE = object()


class View:
    """Common flags and the apply family."""

    def __init__(self, client: Any, targets: Any, block: bool = False, **flags: Any):
        self.client = client
        self._targets = targets
        self.block = block
        self.set_flags(**flags)

    def set_flags(self, **flags: Any) -> None:
        for k, v in flags.items():
            if not hasattr(self, k):
                raise KeyError(f"{type(self).__name__} has no flag {k!r}")
            setattr(self, k, v)

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[None]:
        saved = {k: getattr(self, k) for k in flags}
        self.set_flags(**flags)
        try:
            yield
        finally:
            self.set_flags(**saved)

    def apply(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        ar = self._apply(f, args, kwargs)
        return ar.get() if self.block else ar

    def apply_async(self, f: Callable, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._apply(f, args, kwargs)

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        target = self._sync_target()
        if target is not _NOT_ONE:  # one task: its result comes back to this thread directly
            return self.client._call_sync("apply", serialize.dumps((f, args, kwargs)), target)
        return self._apply(f, args, kwargs).get()

    def _sync_target(self) -> Any:
        """The engine id (None: any engine) when a synchronous apply is one plain task, else _NOT_ONE."""
        return _NOT_ONE

    def map_sync(self, f: Callable, *seqs: Iterable, **kw: Any) -> list:
        return self.map(f, *seqs, block=True, **kw)

    def map_async(self, f: Callable, *seqs: Iterable, **kw: Any) -> AsyncMapResult:
        return self.map(f, *seqs, block=False, **kw)

    def _apply(self, f: Callable, args: tuple, kwargs: dict) -> AsyncResult:
        raise NotImplementedError

    def map(self, f: Callable, *seqs: Iterable, block: bool | None = None, **kw: Any) -> Any:
        raise NotImplementedError


#: mpi_bcast without a value: broadcast what the root engine already holds
_ON_ROOT = object()


class DirectView(View):
    """Work sent to specific engines: `rc[:]`, `rc[0]`, `rc.direct_view([0, 2])`."""

    @property
    def targets(self) -> Any:
        return self._targets

    def _ids(self) -> list[int]:
        ids = self.client._resolve(self._targets)
        if not ids:
            raise NoEnginesRegistered("no engines registered; wait with rc.wait_for_engines(n)")
        return ids

    @property
    def _single(self) -> bool:
        return isinstance(self._targets, int)

    def _sync_target(self) -> Any:
        if not self._single:
            return _NOT_ONE
        if self._targets not in self.client._engines:
            self._ids()  # raises, naming the engines there are
        return self._targets

    def _send_all(self, kind: str, payload: list, fname: str) -> AsyncResult:
        ids = self._ids()
        ar = AsyncResult(len(ids), fname, single=self._single)
        digest = None
        from ..wire import payload_digest
        if len(ids) > 1 and payload:
            digest = payload_digest(payload)
        if self.client._other_python and kind in ("apply", "push") and payload:
            self.client._check_python(payload, ids)  # before any engine is sent anything
        for i, eid in enumerate(ids):
            self.client._send_task(kind, payload, ar, i, target=eid, digest=digest)
        return ar

    def _apply(self, f: Callable, args: tuple, kwargs: dict) -> AsyncResult:
        return self._send_all("apply", serialize.dumps((f, args, kwargs)), getattr(f, "__name__", "apply"))

    def execute(self, code: str, silent: bool = True, block: bool | None = None) -> Any:
        ar = self._send_all("execute", [code.encode()], "execute")
        return self._finish(ar, block)

    def run(self, filename: str, block: bool | None = None) -> Any:
        with open(filename) as f:
            return self.execute(f.read(), block=block)

    def push(self, ns: dict, block: bool | None = None) -> Any:
        if not isinstance(ns, dict):
            raise TypeError("push takes a dict of names to values")
        return self._finish(self._send_all("push", serialize.dumps(ns), "push"), block)

    def pull(self, names: str | list[str], block: bool | None = None) -> Any:
        if not isinstance(names, (str, list, tuple)):
            raise TypeError("pull takes a name or a list of names")
        names = names if isinstance(names, str) else list(names)
        return self._finish(self._send_all("pull", serialize.dumps(names), "pull"), block)

    def _finish(self, ar: AsyncResult, block: bool | None) -> Any:
        block = self.block if block is None else block
        if block:
            value = ar.get()
            return None if ar.fname in ("push", "execute", "mpi_bcast") else value
        return ar

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str):
            raise TypeError("use rc[...] to choose engines; view['name'] pulls a variable")
        return self.pull(name, block=True)

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value}, block=True)

    def update(self, ns: dict) -> None:
        self.push(ns, block=True)

    def get(self, name: str) -> Any:
        return self[name]

    def scatter(self, key: str, seq: Any, flatten: bool = False, block: bool | None = None) -> Any:
        """Split `seq` into one contiguous piece per engine and push each as `key`."""
        ids = self._ids()
        pieces = partition(seq, len(ids))
        ar = AsyncResult(len(ids), "push", single=False)
        for i, (eid, piece) in enumerate(zip(ids, pieces)):
            value = piece[0] if flatten and len(piece) == 1 else piece
            self.client._send_task("push", serialize.dumps({key: value}), ar, i, target=eid)
        return self._finish(ar, block)

    def gather(self, key: str, block: bool | None = None) -> Any:
        """Pull `key` from each engine and join the pieces in engine order."""
        ids = self._ids()
        ar = AsyncMapResult(len(ids), "gather", reduce=concat)
        payload = serialize.dumps(key)
        for i, eid in enumerate(ids):
            self.client._send_task("pull", payload, ar, i, target=eid)
        block = self.block if block is None else block
        return ar.get() if block else ar

    def map(self, f: Callable, *seqs: Iterable, block: bool | None = None, **kw: Any) -> Any:
        """Partition the sequences over the engines, one piece per engine."""
        ids = self._ids()
        seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s) for s in seqs]
        parts = [partition(s, len(ids)) for s in seqs]
        ar = AsyncMapResult(len(ids), getattr(f, "__name__", "map"))
        for i, eid in enumerate(ids):
            chunks = [list(p[i]) for p in parts]
            self.client._send_task("apply", serialize.dumps((map_chunk, (f, *chunks), {})), ar, i, target=eid)
        block = self.block if block is None else block
        return ar.get() if block else ar

    def mpi_bcast(self, name: str, value: Any = _ON_ROOT, root: int | None = None,
                  block: bool | None = None) -> Any:
        """Set `name` on every engine through MPI, not through the controller.

        With `value`, it is sent once, to the root engine, and MPI copies it to the others; without,
        the root engine's own `name` (a result computed or read there) is what every engine gets.
        The view must hold every rank of the engines' communicator (MPI engines: engine id = rank).
        """
        ids = self._ids()
        root = ids[0] if root is None else root
        if value is not _ON_ROOT:
            self.client.direct_view(root).push({name: value}, block=True)
        ar = AsyncResult(len(ids), "mpi_bcast", single=self._single)
        payload = serialize.dumps((mpi_bcast, (EngineNamespace(), name, root), {}))
        for i, eid in enumerate(ids):
            self.client._send_task("apply", payload, ar, i, target=eid)
        return self._finish(ar, block)

    def __len__(self) -> int:
        return len(self._ids())

    def __repr__(self) -> str:
        return f"<DirectView {self._targets}>"


class LoadBalancedView(View):
    """Work sent to whichever engine is free: `rc.load_balanced_view()`."""

    def __init__(self, client: Any, targets: Any = None, block: bool = False, retries: int = 0,
                 timeout: float | None = None, chunksize: int | None = None, **flags: Any):
        self.retries = retries
        self.timeout = timeout
        self.chunksize = chunksize
        super().__init__(client, targets, block, **flags)
        if targets is not None:
            raise NotImplementedError("a load-balanced view over a subset of engines is not supported yet; "
                                      "use targets=None")

    def _sync_target(self) -> Any:
        return None if not self.retries and not self.timeout else _NOT_ONE

    def _apply(self, f: Callable, args: tuple, kwargs: dict) -> AsyncResult:
        ar = AsyncResult(1, getattr(f, "__name__", "apply"))
        self.client._send_task("apply", serialize.dumps((f, args, kwargs)), ar, 0, timeout=self.timeout,
                               retries=self.retries)
        return ar

    def map(self, f: Callable, *seqs: Iterable, block: bool | None = None, chunksize: int | None = None,
            ordered: bool = True, **kw: Any) -> Any:
        """Map in chunks; without `chunksize`, about four chunks per engine, as multiprocessing does."""
        if not seqs:
            raise TypeError("map needs at least one sequence")
        seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s) for s in seqs]
        n = min(len(s) for s in seqs)
        chunksize = chunksize or self.chunksize
        if not chunksize:
            workers = max(1, len(self.client.ids))
            chunksize, extra = divmod(n, workers * 4)
            chunksize += bool(extra)
            chunksize = max(1, chunksize)
        starts = range(0, n, chunksize)
        ar = AsyncMapResult(len(starts), getattr(f, "__name__", "map"), ordered=ordered)
        for i, start in enumerate(starts):
            chunks = [list(s[start:start + chunksize]) for s in seqs]
            self.client._send_task("apply", serialize.dumps((map_chunk, (f, *chunks), {})), ar, i,
                                   timeout=self.timeout, retries=self.retries)
        block = self.block if block is None else block
        return ar.get() if block else ar

    def imap(self, f: Callable, *seqs: Iterable, ordered: bool = True, chunksize: int | None = None) -> Iterator:
        return iter(self.map(f, *seqs, block=False, ordered=ordered, chunksize=chunksize))

    @property
    def executor(self) -> "ViewExecutor":
        return ViewExecutor(self)

    def __repr__(self) -> str:
        return "<LoadBalancedView>"


class ViewExecutor(concurrent.futures.Executor):
    """concurrent.futures.Executor over a load-balanced view; futures are AsyncResults."""

    def __init__(self, view: LoadBalancedView):
        self.view = view
        self._submitted: list[AsyncResult] = []

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> AsyncResult:
        ar = self.view.apply_async(fn, *args, **kwargs)
        self._submitted.append(ar)
        return ar

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1) -> Iterator:
        ar = self.view.map(fn, *iterables, block=False, chunksize=chunksize)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator:
            if deadline is not None and not ar.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            yield from ar
        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if wait:
            for ar in self._submitted:
                ar.wait()
        self._submitted.clear()
