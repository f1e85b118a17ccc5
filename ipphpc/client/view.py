"""DirectView and LoadBalancedView, with IPython Parallel's names and semantics."""
from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import sys
import time
from typing import Any, Callable, Iterable, Iterator

from .. import serialize
from ..error import NoEnginesRegistered
from .asyncresult import AsyncMapResult, AsyncResult
from .held import HeldTask
from .remote import EngineNamespace, concat, map_chunk, mpi_bcast, partition, use_serializer

#: a synchronous apply that is not one plain task (several engines, retries, a timeout)
_NOT_ONE = object()


class View:
    """Common flags and the apply family."""

    _flag_names: tuple[str, ...] = ("targets", "block", "track", "label")

    def __init__(self, client: Any, targets: Any, block: bool = False, **flags: Any):
        self.client = client
        self._targets = targets
        self.block = block
        self.track = False
        self.label: str | None = None
        self.history: list[str] = []  # msg_ids of tasks sent through this view
        self.set_flags(**flags)

    @property
    def targets(self) -> Any:
        return self._targets

    @targets.setter
    def targets(self, value: Any) -> None:
        self._targets = value

    def set_flags(self, **flags: Any) -> "View":
        """Set flags by name (returns the view, so calls chain: `view.set_flags(block=True).apply(f)`)."""
        for k in flags:
            if k not in self._flag_names:
                import difflib
                near = difflib.get_close_matches(k, self._flag_names, 1)
                raise KeyError(f"{type(self).__name__} has no flag {k!r}"
                               f"{f' (did you mean {near[0]!r}?)' if near else ''}; its flags: "
                               f"{', '.join(self._flag_names)}")
        for k, v in flags.items():
            setattr(self, k, v)
        return self

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator["View"]:
        """Flags set for the `with` block only."""
        saved = {k: getattr(self, k) for k in self._flag_names}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            self.set_flags(**saved)

    # -- the client's controls, for this view's tasks and engines ------------------------------
    @property
    def outstanding(self) -> set[str]:
        return set(self.history) & self.client.outstanding

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for this view's tasks (or `jobs`)."""
        return self.client.wait(self.history if jobs is None else jobs, timeout)

    def abort(self, jobs: Any = None, targets: Any = None, block: bool | None = None) -> None:
        """Drop this view's tasks (or `jobs`) that have not started."""
        jobs = jobs if jobs is not None else sorted(self.outstanding)
        self.client.abort(jobs, targets if targets is not None else self._control_targets(), block)

    def queue_status(self, targets: Any = None, verbose: bool = False) -> dict:
        return self.client.queue_status(targets if targets is not None else self._control_targets() or "all",
                                        verbose)

    def purge_results(self, jobs: Any = (), targets: Any = ()) -> None:
        self.client.purge_results(jobs, targets)

    def shutdown(self, targets: Any = None, restart: bool = False, hub: bool = False,
                 block: bool | None = None) -> None:
        """Stop this view's engines (and the controller with hub=True)."""
        self.client.shutdown(targets if targets is not None else self._control_targets() or "all", restart, hub,
                             block)

    def get_result(self, indices_or_msg_ids: Any = None, block: bool | None = None, owner: bool = False) -> Any:
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        if isinstance(indices_or_msg_ids, int):
            indices_or_msg_ids = self.history[indices_or_msg_ids]
        return self.client.get_result(indices_or_msg_ids, block, owner)

    def spin(self) -> None:
        self.client.spin()

    def activate(self, suffix: str = "") -> None:
        """Run the IPython magics %px{suffix}, %%px{suffix}, %pxresult{suffix}, ... on this view."""
        from .magics import activate
        activate(self, suffix)

    def _control_targets(self) -> Any:
        return self._targets

    # -- decorators and serialization ----------------------------------------------------------
    def remote(self, block: bool | None = None, **flags: Any) -> Callable:
        """Decorator: calling the function runs it through this view."""
        from .remotefunction import remote
        return remote(self, block=block, **flags)

    def parallel(self, dist: str = "b", block: bool | None = None, **flags: Any) -> Callable:
        """Decorator: calling the function with sequences splits them over the engines."""
        from .remotefunction import parallel
        return parallel(self, dist=dist, block=block, **flags)

    def register_joblib_backend(self, name: str = "ipyparallel", make_default: bool = False) -> None:
        """Make joblib's `Parallel(backend=name)` run its batches on this view."""
        from ._joblib import register
        register(name, make_default, view=self)

    def _use(self, name: str) -> Any:
        # the engines switch first, with a message they can still read; then this side
        ar = self.client.direct_view("all")._send_all("apply", serialize.dumps((use_serializer, (name,), {})),
                                                      f"use_{name}")
        ar.get()
        use_serializer(name)
        return None if self.block else ar

    def use_pickle(self) -> Any:
        """Functions travel by reference with plain pickle (no lambdas), here and on every engine."""
        return self._use("pickle")

    def use_cloudpickle(self) -> Any:
        """Functions, lambdas and closures travel by value (the default), here and on every engine."""
        return self._use("cloudpickle")

    def use_dill(self) -> Any:
        """dill instead of cloudpickle, here and on every engine (dill must be installed on both)."""
        return self._use("dill")

    @property
    def executor(self) -> "ViewExecutor":
        """A concurrent.futures.Executor over this view (on a DirectView, each future's result is a list)."""
        return ViewExecutor(self)

    def _note(self, ar: AsyncResult) -> AsyncResult:
        self.history.extend(ar.msg_ids)
        return ar

    def apply(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        ar = self._apply(f, args, kwargs)
        return ar.get() if self.block else ar

    def apply_async(self, f: Callable, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._apply(f, args, kwargs)

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        target = self._sync_target()
        if target is not _NOT_ONE and self.client._quiet():  # one task: its result comes to this thread directly
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

    def _ids(self) -> list[int]:
        ids = self.client._resolve(self._targets)
        if not ids:
            raise NoEnginesRegistered("no engines registered; wait with rc.wait_for_engines(n)")
        return ids

    @property
    def _single(self) -> bool:
        return isinstance(self._targets, int)

    def _sync_target(self) -> Any:
        if not self._single or self.track or self.label is not None:
            return _NOT_ONE
        if self._targets < 0 or self._targets not in self.client._engines:
            return self._ids()[0]  # counted from the end, or raises naming the engines there are
        return self._targets

    def _send_all(self, kind: str, payload: list, fname: str) -> AsyncResult:
        ids = self._ids()
        ar = AsyncResult(len(ids), fname, single=self._single)
        if len(ids) > 1:  # one message, fanned out by the controller
            self.client._send_fan(kind, payload, ar, ids, label=self.label, track=self.track)
        else:
            self.client._send_task(kind, payload, ar, 0, target=ids[0], label=self.label, track=self.track)
        return self._note(ar)

    def _apply(self, f: Callable, args: tuple, kwargs: dict) -> AsyncResult:
        return self._send_all("apply", serialize.dumps((f, args, kwargs)), getattr(f, "__name__", "apply"))

    def execute(self, code: str, silent: bool = True, targets: Any = None, block: bool | None = None) -> Any:
        """Run code in the engines' namespaces; a last bare expression's value is each engine's
        `execute_result` (shown by ar.display_outputs())."""
        view = self if targets is None else self.client.direct_view(targets)
        ar = view._send_all("execute", [code.encode()], "execute")
        return self._finish(ar, block)

    def run(self, filename: str, targets: Any = None, block: bool | None = None) -> Any:
        with open(filename) as f:
            return self.execute(f.read(), targets=targets, block=block)

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Empty the engines' namespaces."""
        return self.client.clear(targets if targets is not None else self._targets,
                                 self.block if block is None else block)

    @contextlib.contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Imports written inside this block run on the engines too (and here, with `local`)."""
        caller = sys._getframe(2).f_globals
        real = builtins.__import__
        view = self

        def importer(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
            if globals is not caller or level:
                return real(name, globals, locals, fromlist, level)
            code = f"from {name} import {', '.join(fromlist)}" if fromlist else f"import {name}"
            if not quiet:
                print(f"importing {', '.join(fromlist)} from {name} on engine(s)" if fromlist else
                      f"importing {name} on engine(s)")
            view.execute(code, block=True)
            if local:
                return real(name, globals, locals, fromlist, level)
            return sys.modules.get(name) or _NoModule(name)

        builtins.__import__ = importer
        try:
            yield
        finally:
            builtins.__import__ = real

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
            self.client._send_task("push", serialize.dumps({key: value}), ar, i, target=eid, label=self.label,
                                   track=self.track)
        return self._finish(self._note(ar), block)

    def gather(self, key: str, block: bool | None = None) -> Any:
        """Pull `key` from each engine and join the pieces in engine order."""
        ids = self._ids()
        ar = AsyncMapResult(len(ids), "gather", reduce=concat)
        self.client._send_fan("pull", serialize.dumps(key), ar, ids, label=self.label)
        block = self.block if block is None else block
        self._note(ar)
        return ar.get() if block else ar

    def map(self, f: Callable, *seqs: Iterable, block: bool | None = None, **kw: Any) -> Any:
        """Partition the sequences over the engines, one piece per engine."""
        ids = self._ids()
        seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s) for s in seqs]
        parts = [partition(s, len(ids)) for s in seqs]
        ar = AsyncMapResult(len(ids), getattr(f, "__name__", "map"))
        for i, eid in enumerate(ids):
            chunks = [list(p[i]) for p in parts]
            self.client._send_task("apply", serialize.dumps((map_chunk, (f, *chunks), {})), ar, i, target=eid,
                                   label=self.label, track=self.track)
        block = self.block if block is None else block
        self._note(ar)
        return ar.get() if block else ar

    def imap(self, f: Callable, *seqs: Iterable, **kw: Any) -> Iterator:
        """map, yielding results in order as they arrive."""
        return iter(self.map(f, *seqs, block=False, **kw))

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
        self.client._send_fan("apply", serialize.dumps((mpi_bcast, (EngineNamespace(), name, root), {})), ar, ids)
        return self._finish(ar, block)

    def __len__(self) -> int:
        return len(self._ids())

    def __repr__(self) -> str:
        return f"<DirectView {self._targets}>"


class BroadcastView(DirectView):
    """IPython Parallel's broadcast view: the DirectView's semantics (each engine gets the task)."""

    _flag_names = (*DirectView._flag_names, "is_coalescing")

    def __init__(self, client: Any, targets: Any, is_coalescing: bool = False, **flags: Any):
        self.is_coalescing = is_coalescing
        super().__init__(client, targets, **flags)

    def __repr__(self) -> str:
        return f"<BroadcastView {self._targets}>"


class _NoModule:
    """What `import x` binds inside sync_imports(local=False): the module lives on the engines only."""

    def __init__(self, name: str):
        self.__name__ = name

    def __repr__(self) -> str:
        return f"<module {self.__name__!r} imported on the engines only>"


class LoadBalancedView(View):
    """Work sent to whichever engine is free: `rc.load_balanced_view()`, or among `targets`.

    Flags: `retries` (run again on failure), `timeout` (fail with TaskTimeout if not started within
    it, dependencies included), `after` (start only after these tasks), `follow` (run where these ran),
    `label`, `chunksize` (map), `duration` (seconds a task is expected to run: it is not started on an
    engine whose allocation ends sooner). Without `duration`, once engines with a known end are there,
    the longest of a function's last five runs (through this client) is used for its next tasks.
    """

    _flag_names = ("targets", "block", "track", "label", "follow", "after", "timeout", "retries", "chunksize",
                   "duration")

    def __init__(self, client: Any, targets: Any = None, block: bool = False, retries: int = 0,
                 timeout: float | None = None, chunksize: int | None = None, **flags: Any):
        self.retries = retries
        self.timeout = timeout
        self.chunksize = chunksize
        self.after: Any = None
        self.follow: Any = None
        self.duration: float | None = None
        super().__init__(client, targets, block, **flags)

    def set_flags(self, **flags: Any) -> "LoadBalancedView":
        for name in ("timeout", "duration"):
            t = flags.get(name)
            if t is not None and (not isinstance(t, (int, float)) or t < 0):
                raise ValueError(f"{name}={t!r}: a number of seconds, or None")
        super().set_flags(**flags)
        return self

    def _among(self) -> frozenset | None:
        if self._targets is None or self._targets == "all":
            return None
        ids = self.client._resolve(self._targets)
        if not ids:
            raise NoEnginesRegistered(f"no engine among targets {self._targets!r}")
        return frozenset(ids)

    def _deps(self) -> tuple[Any, Any]:
        """`after` and `follow` as Dependencies (None when unset or empty)."""
        out = []
        for value in (self.after, self.follow):
            if value is None or (not isinstance(value, (str, AsyncResult)) and not value and
                                 not hasattr(value, "all")):
                out.append(None)
                continue
            from ..dependency import Dependency
            dep = value if isinstance(value, Dependency) else Dependency(value)
            out.append(dep if dep else None)
        return out[0], out[1]

    def _sync_target(self) -> Any:
        plain = not self.retries and not self.timeout and self.after is None and self.follow is None \
            and self._targets is None and not self.track and self.label is None and not self.duration
        return None if plain else _NOT_ONE

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        if _is_dependent(f):
            return self._apply(f, args, kwargs).get()
        return super().apply_sync(f, *args, **kwargs)

    def _send(self, kind: str, payload: list, ar: AsyncResult, index: int, among: frozenset | None,
              deps: tuple[Any, Any], resend: bool, fkey: str | None = None) -> None:
        after, follow = deps
        extra = {"label": self.label, "track": self.track, "duration": self.duration, "fkey": fkey}
        if after is None and follow is None:
            self.client._send_task(kind, payload, ar, index, timeout=self.timeout, retries=self.retries,
                                   among=among, resend=resend, **extra)
            return
        client = self.client
        mid = client._reserve_id()
        ar.msg_ids[index] = mid
        client._note_submitted(mid, ar, index, time.time(), None, self.label)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        task = HeldTask(mid, ar, index, kind, payload, after, follow, among, deadline, self.retries,
                        {**extra, "timeout": self.timeout, "resend": resend})
        with client._lock:
            client._held.hold(task)
        if deadline is not None:
            client._loop.call_soon_threadsafe(client._loop.call_later, self.timeout + 0.01, client._expire_held)

    def _apply(self, f: Callable, args: tuple, kwargs: dict) -> AsyncResult:
        among, deps = self._among(), self._deps()
        self.client._held.check_known(list(deps))
        ar = AsyncResult(1, getattr(f, "__name__", "apply"))
        self._send("apply", serialize.dumps((f, args, kwargs)), ar, 0, among, deps, _is_dependent(f),
                   self._fkey(f))
        return self._note(ar)

    def _fkey(self, f: Callable, chunk: int = 0) -> str | None:
        """What a task's run time is learned under (its function's code, and a map's chunk size), when no
        `duration` is set and some engine's allocation has a known end; else None (nothing learned)."""
        if self.duration is not None or not self.client._learning():
            return None
        code = getattr(f, "__code__", None)
        name = getattr(f, "__qualname__", None) or type(f).__qualname__
        where = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else getattr(f, "__module__", "")
        return f"{where}:{name}" + (f"[{chunk}]" if chunk else "")

    def map(self, f: Callable, *seqs: Iterable, block: bool | None = None, chunksize: int | None = None,
            ordered: bool = True, **kw: Any) -> Any:
        """Map in chunks; without `chunksize`, about four chunks per engine, as multiprocessing does."""
        if not seqs:
            raise TypeError("map needs at least one sequence")
        if kw:
            raise TypeError(f"map() got unexpected keyword argument(s) {', '.join(kw)}; it takes block, "
                            f"chunksize and ordered")
        among, deps = self._among(), self._deps()
        self.client._held.check_known(list(deps))
        seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s) for s in seqs]
        n = min(len(s) for s in seqs)
        chunksize = chunksize or self.chunksize
        if not chunksize:
            workers = max(1, len(among) if among is not None else len(self.client.ids))
            chunksize, extra = divmod(n, workers * 4)
            chunksize += bool(extra)
            chunksize = max(1, chunksize)
        starts = range(0, n, chunksize)
        ar = AsyncMapResult(len(starts), getattr(f, "__name__", "map"), ordered=ordered)
        resend = _is_dependent(f)
        fkey = self._fkey(f, chunksize)
        for i, start in enumerate(starts):
            chunks = [list(s[start:start + chunksize]) for s in seqs]
            self._send("apply", serialize.dumps((map_chunk, (f, *chunks), {})), ar, i, among, deps, resend, fkey)
        self._note(ar)
        block = self.block if block is None else block
        return ar.get() if block else ar

    def imap(self, f: Callable, *seqs: Iterable, ordered: bool = True, chunksize: int | None = None) -> Iterator:
        return iter(self.map(f, *seqs, block=False, ordered=ordered, chunksize=chunksize))

    def _control_targets(self) -> Any:
        return self._targets

    def __repr__(self) -> str:
        return "<LoadBalancedView>" if self._targets is None else f"<LoadBalancedView {self._targets}>"


def _is_dependent(f: Any) -> bool:
    """A function wrapped by @depend/@require: an engine may refuse it, and it then goes to another."""
    mod = sys.modules.get("ipphpc.dependency")
    return mod is not None and isinstance(f, getattr(mod, "dependent", ()))


def _done_or(ar: AsyncResult, block: bool) -> Any:
    """None once every task finished (raising if one failed) when blocking; else the AsyncResult."""
    if block:
        ar.get()
        return None
    return ar


class ViewExecutor(concurrent.futures.Executor):
    """concurrent.futures.Executor over a view; futures are AsyncResults."""

    def __init__(self, view: View):
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
