"""AsyncResult: a concurrent.futures.Future over one or many tasks, as in IPython Parallel."""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import threading
import time
from typing import Any, Iterator

from ..error import CompositeError, RemoteError


class Metadata(dict):
    """Task metadata: submitted/started/completed/received times, engine_id, stdout, stderr."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _dt(ts: float | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(ts) if ts else None


class AsyncResult(concurrent.futures.Future):
    """The result of one or more tasks; `get()` returns one value for a single target, else a list."""

    def __init__(self, n: int, fname: str = "", single: bool = True, submitted: float | None = None):
        super().__init__()
        self._n = n
        self._left = n
        self._values: list[Any] = [None] * n
        self._errors: list[BaseException | None] = [None] * n
        self._meta: list[Metadata] = [Metadata() for _ in range(n)]
        self._done = [False] * n
        self._cond = threading.Condition()
        self._single = single
        self.fname = fname
        self.msg_ids: list[str] = [""] * n
        self._submitted = submitted or time.time()
        self._last = None
        if n == 0:
            self._finish()

    # -- called by the client's I/O thread ---------------------------------------------------
    def _child_done(self, i: int, value: Any, error: BaseException | None, meta: dict) -> None:
        with self._cond:
            if self._done[i]:
                return
            self._values[i], self._errors[i], self._done[i] = value, error, True
            self._meta[i].update(meta)
            self._left -= 1
            self._last = time.time()
            self._cond.notify_all()
            last = self._left == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        errors = [e for e in self._errors if e is not None]
        if errors:
            if self._single:
                self.set_exception(errors[0])
            else:
                remote = [e if isinstance(e, RemoteError) else RemoteError(type(e).__name__, str(e)) for e in errors]
                self.set_exception(CompositeError(f"{len(errors)} of {self._n} tasks raised", remote))
        else:
            self.set_result(self._reduce())

    def _reduce(self) -> Any:
        return self._values[0] if self._single else list(self._values)

    # -- the IPython Parallel surface -----------------------------------------------------------
    def get(self, timeout: float | None = None) -> Any:
        """The result, raising RemoteError (CompositeError for several) or TimeoutError."""
        if timeout is not None and timeout < 0:
            timeout = None
        try:
            return self.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{self._left} of {self._n} tasks not done after {timeout} s") from None

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None and timeout < 0:
            timeout = None
        concurrent.futures.wait([self], timeout)
        return self.done()

    def ready(self) -> bool:
        return self.done()

    def successful(self) -> bool:
        if not self.done():
            raise AssertionError("the result is not ready yet")
        return self.exception() is None

    @property
    def progress(self) -> int:
        return self._n - self._left

    def __len__(self) -> int:
        return self._n

    @property
    def metadata(self) -> Metadata | list[Metadata]:
        return self._meta[0] if self._single else self._meta

    @property
    def engine_id(self) -> Any:
        ids = [m.get("engine_id") for m in self._meta]
        return ids[0] if self._single else ids

    @property
    def stdout(self) -> Any:
        out = [m.get("stdout", "") for m in self._meta]
        return out[0] if self._single else out

    @property
    def stderr(self) -> Any:
        err = [m.get("stderr", "") for m in self._meta]
        return err[0] if self._single else err

    @property
    def elapsed(self) -> float:
        """Seconds since submission, up to the last reply once all are in."""
        end = self._last if self.done() and self._last else time.time()
        return end - self._submitted

    @property
    def wall_time(self) -> float:
        return self.elapsed

    @property
    def serial_time(self) -> float:
        """Sum of the tasks' run times on their engines."""
        total = 0.0
        for m in self._meta:
            if m.get("started") and m.get("completed"):
                total += (m["completed"] - m["started"]).total_seconds()
        return total

    def get_dict(self, timeout: float | None = None) -> dict:
        """Results keyed by engine id (one task per engine)."""
        values = self.get(timeout)
        values = [values] if self._single else values
        return dict(zip(self._meta_ids(), values))

    def _meta_ids(self) -> list:
        return [m.get("engine_id") for m in self._meta]

    def display_outputs(self) -> None:
        for m in self._meta:
            for name in ("stdout", "stderr"):
                text = m.get(name)
                if text:
                    print(f"[{name}:{m.get('engine_id')}] {text}", end="" if text.endswith("\n") else "\n")

    def wait_interactive(self, interval: float = 0.1, timeout: float = -1, widget: Any = None) -> None:
        """Wait with a progress bar (tqdm: a text bar in a terminal, a widget in a notebook)."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with tqdm(total=self._n, unit="tasks", desc=self.fname or "tasks", leave=True) as bar:
            while not self.done():
                if deadline is not None and time.monotonic() > deadline:
                    break
                self.wait(interval)
                bar.update(self.progress - bar.n)
            bar.update(self.progress - bar.n)

    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        state = "finished" if self.done() else "pending"
        return f"<{type(self).__name__}({self.fname}): {state} {self.progress}/{self._n}>"


class AsyncMapResult(AsyncResult):
    """Chunks of a map: `get()` flattens them in order; iterating yields results as they arrive."""

    def __init__(self, n: int, fname: str = "", ordered: bool = True, submitted: float | None = None,
                 reduce: Any = None):
        self._ordered = ordered
        self._reducer = reduce
        super().__init__(n, fname, single=False, submitted=submitted)

    def _reduce(self) -> Any:
        if self._reducer is not None:
            return self._reducer(self._values)
        out: list = []
        for chunk in self._values:
            out.extend(chunk)
        return out

    def __iter__(self) -> Iterator[Any]:
        if self._ordered:
            for i in range(self._n):
                with self._cond:
                    while not self._done[i]:
                        self._cond.wait()
                if self._errors[i] is not None:
                    raise self._errors[i]
                yield from self._values[i]
        else:
            seen: set[int] = set()
            while len(seen) < self._n:
                with self._cond:
                    ready = [i for i in range(self._n) if self._done[i] and i not in seen]
                    if not ready:
                        self._cond.wait()
                        continue
                for i in ready:
                    seen.add(i)
                    if self._errors[i] is not None:
                        raise self._errors[i]
                    yield from self._values[i]


def build_metadata(msg_id: str, submitted: float, meta: dict | None, eid: Any) -> Metadata:
    meta = meta or {}
    return Metadata(msg_id=msg_id, engine_id=meta.get("engine_id", eid), submitted=_dt(submitted),
                    started=_dt(meta.get("started")), completed=_dt(meta.get("completed")),
                    received=datetime.datetime.now(), stdout=meta.get("stdout", ""),
                    stderr=meta.get("stderr", ""), status="error" if meta.get("error") else "ok")
