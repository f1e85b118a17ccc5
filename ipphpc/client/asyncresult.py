"""AsyncResult: a concurrent.futures.Future over one or many tasks, as in IPython Parallel."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import sys
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
    """The result of one or more tasks; `get()` returns one value for a single target, else a list.

    A client keeps tens of thousands of these alive in a loop of apply_async, and the garbage collector
    walks every container they hold each time it looks at old objects. So what most never use (trackers,
    listeners, published data, a condition to wait for one task) is made only when first needed, and the
    state of the tasks is guarded by the Future's own lock.
    """

    _trackers: tuple | list = ()  # zmq MessageTrackers of sends made with track=True
    _listeners: tuple | list = ()  # (result, offset, only): joined / split results fed from this one
    _data: list[dict] | None = None  # what the tasks published, once something was
    _waiting: threading.Condition | None = None  # notified as each task ends, once someone waits for one

    def __init__(self, n: int, fname: str = "", single: bool = True, submitted: float | None = None):
        super().__init__()
        self._n = n
        self._left = n
        self._values: list[Any] = [None] * n
        self._errors: list[BaseException | None] = [None] * n
        self._meta: list[Metadata] = [Metadata() for _ in range(n)]
        self._done = [False] * n
        self._single = single
        self.fname = fname
        self.msg_ids: list[str] = [""] * n
        self._submitted = submitted or time.time()
        self._last = None
        self._streams: list[dict[str, int]] | None = None  # characters already shown, per task and stream
        self._live: dict[int, dict[str, str]] = {}  # output of running tasks, as streamed so far
        self._rc: Any = None  # the client that sent the tasks
        self.owner = False
        if n == 0:
            self._finish()

    def _signal(self) -> threading.Condition:
        """The condition notified as each task ends, on the Future's lock (call with that lock held): made by
        the first waiter, and separate from the Future's own, whose waiters take a wake-up for the end."""
        if self._waiting is None:
            self._waiting = threading.Condition(self._condition._lock)
        return self._waiting

    def _track(self, tracker: Any) -> None:
        self._trackers = [*self._trackers, tracker]

    # -- called by the client's I/O thread ---------------------------------------------------
    def _child_done(self, i: int, value: Any, error: BaseException | None, meta: dict) -> None:
        with self._condition:
            if self._done[i]:
                return
            self._values[i], self._errors[i], self._done[i] = value, error, True
            self._meta[i].update(meta)
            self._left -= 1
            self._last = time.time()
            if self._waiting is not None:
                self._waiting.notify_all()
            last = self._left == 0
            streaming = self._streams is not None
        if streaming:
            self._show_rest(i)
        for dst, offset, only in self._listeners:
            if only is None:
                dst._child_done(offset + i, value, error, meta)
            elif only == i:
                dst._child_done(offset, value, error, meta)
        if last:
            self._finish()

    def _on_stream(self, i: int, name: str, offset: int, text: str) -> None:
        """Output a running task printed (called by the client's I/O thread)."""
        live = self._live.setdefault(i, {"stdout": "", "stderr": ""})
        if self._done[i] or offset != len(live[name]):
            return  # the result arrived first and carries it all, or a piece was lost: wait for the result
        live[name] += text
        if self._streams is not None:
            self._show(i, name, text, offset)

    def _on_data(self, i: int, data: dict) -> None:
        if self._data is None:
            self._data = [{} for _ in range(self._n)]
        self._data[i].update(data)

    def _finish(self) -> None:
        if self.owner and self._rc is not None:  # the caller keeps the results: the client forgets them
            for mid in self.msg_ids:
                self._rc.results.pop(mid, None)
                self._rc.metadata.pop(mid, None)
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
    def get(self, timeout: float | None = None, return_exceptions: bool = False,
            return_when: Any = None) -> Any:
        """The result, raising RemoteError (CompositeError for several) or TimeoutError.

        `return_exceptions`: the exceptions take their tasks' places instead of being raised;
        `return_when=FIRST_EXCEPTION`: raise as soon as one task failed, without waiting for the rest.
        """
        if timeout is not None and timeout < 0:
            timeout = None
        if return_when == concurrent.futures.FIRST_EXCEPTION and not self.done():
            self._wait_first_exception(timeout)
        try:
            value = self.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{self._left} of {self._n} tasks not done after {timeout} s") from None
        except BaseException:
            if not return_exceptions:
                raise
            return self._reduce_with_errors()
        return value

    def _wait_first_exception(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._left and not any(e is not None for e in self._errors):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._signal().wait(left)
            first = next((e for e in self._errors if e is not None), None)
        if first is not None and not self.done():
            raise first

    def _reduce_with_errors(self) -> Any:
        values = [e if e is not None else v for v, e in zip(self._values, self._errors)]
        return values[0] if self._single else values

    def _check_ready(self) -> None:
        if not self.done():
            raise TimeoutError("result not ready")

    def wait_for_output(self, timeout: float | None = -1) -> bool:
        """Output arrives with each result: this is wait()."""
        return self.wait(timeout)

    @property
    def sent(self) -> bool:
        """Whether every message has left (with `track=True`: and zmq is done with its buffers)."""
        return all(t.done for t in self._trackers)

    def wait_for_send(self, timeout: float | None = -1) -> bool:
        """Wait until zmq no longer uses the buffers sent (arrays may be changed in place afterwards)."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        for t in self._trackers:
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                t.wait(left)
            except Exception:  # noqa: BLE001 - zmq.NotDone
                raise TimeoutError("still waiting to be sent") from None
        return True

    def abort(self) -> None:
        """Drop this result's tasks that have not started (started ones run on)."""
        if self.done():
            raise RuntimeError("can't abort: the result is already complete")
        client = self._client()
        client.abort(self)

    def _client(self) -> Any:
        if self._rc is None:
            raise RuntimeError("this result has no client (it was made by hand)")
        return self._rc

    @property
    def data(self) -> Any:
        """What the tasks published with ipphpc.datapub.publish_data, updated as it arrives."""
        data = self._data or [{} for _ in range(self._n)]
        return data[0] if self._single else data

    def __getitem__(self, key: Any) -> Any:
        """ar[i] / ar[a:b]: results (the task must be done); ar['key']: that metadata of every task."""
        if isinstance(key, (int, slice)):
            self._check_ready()
            values = self.get()
            values = [values] if self._single else values
            return values[key]
        if isinstance(key, str):
            values = [m[key] for m in self._meta]
            return values[0] if self._single else values
        raise TypeError(f"ar[...] takes an int, a slice or a metadata key, not {type(key).__name__}")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except (KeyError, TypeError):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}") from None

    def __iter__(self) -> Iterator[Any]:
        """Results in order as each arrives (a task that raised raises here)."""
        if self._single:
            raise TypeError("an AsyncResult with a single result is not iterable")
        for i in range(self._n):
            self._wait_child(i)
            if self._errors[i] is not None:
                raise self._errors[i]
            yield from self._child_values(i)

    def _child_values(self, i: int) -> list:
        return [self._values[i]]

    def _wait_child(self, i: int) -> None:
        with self._condition:
            while not self._done[i]:
                self._signal().wait()

    @classmethod
    def join(cls, *results: "AsyncResult") -> "AsyncResult":
        """One result over the tasks of several (the inverse of split)."""
        if not results:
            raise ValueError("join needs at least one AsyncResult")
        if len(results) == 1:
            return results[0]
        n = sum(r._n for r in results)
        joined = AsyncResult(n, results[0].fname, single=False)
        offset = 0
        for r in results:
            joined.msg_ids[offset:offset + r._n] = r.msg_ids
            for i in range(r._n):
                joined._meta[offset + i] = r._meta[i]
            r._link(joined, offset, None)
            offset += r._n
        return joined

    def split(self) -> tuple["AsyncResult", ...]:
        """One result per task, to wait for each on its own (concurrent.futures.wait and friends)."""
        if self._n == 1:
            return (self,)
        parts = []
        for i in range(self._n):
            part = AsyncResult(1, self.fname, single=True)
            part.msg_ids[0] = self.msg_ids[i]
            part._meta[0] = self._meta[i]
            self._link(part, 0, i)
            parts.append(part)
        return tuple(parts)

    def _link(self, dst: "AsyncResult", offset: int, only: int | None) -> None:
        """Pass results of this one on to `dst` (those already in at once)."""
        with self._condition:
            self._listeners = [*self._listeners, (dst, offset, only)]
            done = [(i, self._values[i], self._errors[i]) for i in range(self._n) if self._done[i]]
        for i, v, e in done:
            if only is None:
                dst._child_done(offset + i, v, e, {})
            elif only == i:
                dst._child_done(offset, v, e, {})

    def timedelta(self, start: Any, end: Any, start_key: Any = min, end_key: Any = max) -> float:
        """Seconds between two times or lists of times (reduced with start_key / end_key)."""
        if not isinstance(start, datetime.datetime):
            start = start_key(start)
        if not isinstance(end, datetime.datetime):
            end = end_key(end)
        return (end - start).total_seconds()

    @property
    def result_dict(self) -> dict:
        return self.get_dict()

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

    def display_outputs(self, groupby: str = "type", result_only: bool = False) -> None:
        """Show what the tasks printed, then their results: `[stdout:0]` blocks and `Out[0:3]: ...` lines.

        groupby 'type' (and 'order', which differs only for rich displays): all stdout, then all stderr,
        then results; 'engine': each engine's in turn.
        """
        if groupby not in ("type", "engine", "order"):
            raise ValueError(f"groupby={groupby!r}: use 'type', 'engine' or 'order'")
        self._check_ready()
        printer = _Printer()
        idx = range(self._n)
        if groupby in ("type", "order"):
            order = [(i, k) for k in ("stdout", "stderr", "result") for i in idx]
        else:
            order = [(i, k) for i in idx for k in ("stdout", "stderr", "result")]
        for i, kind in order:
            md = self._meta[i]
            if kind == "result":
                out = md.get("execute_result")
                if out:
                    _show_result(md.get("engine_id"), out)
            elif not result_only:
                printer.show(md.get("engine_id"), kind, md.get(kind, ""))

    @contextlib.contextmanager
    def stream_output(self) -> Iterator[None]:
        """Show the tasks' output as they print it, while inside this block."""
        with self._condition:
            self._printer = _Printer()
            self._streams = [{"stdout": 0, "stderr": 0} for _ in range(self._n)]
            live = [(i, dict(texts)) for i, texts in self._live.items()]
            finished = [i for i in range(self._n) if self._done[i]]
        for i, texts in live:
            for name, text in texts.items():
                if text and i not in finished:
                    self._show(i, name, text, 0)
        for i in finished:
            self._show_rest(i)
        try:
            yield
        finally:
            self._streams = None

    def _show(self, i: int, name: str, text: str, offset: int) -> None:
        shown = self._streams[i]
        if offset + len(text) <= shown[name]:
            return
        text = text[shown[name] - offset:]
        shown[name] += len(text)
        self._printer.show(self._meta[i].get("engine_id"), name, text)

    def _show_rest(self, i: int) -> None:
        """When a task ends: what it printed that was not shown yet, and an error it raised."""
        if self._streams is None:
            return
        md = self._meta[i]
        for name in ("stdout", "stderr"):
            text = md.get(name) or ""
            if len(text) > self._streams[i][name]:
                self._show(i, name, text[self._streams[i][name]:], self._streams[i][name])
        error = self._errors[i]
        if error is not None:  # at once, while other engines may run on: the user can stop them
            render = getattr(error, "render_traceback", None)
            self._printer.show_error(render() if render else
                                     [f"[engine {md.get('engine_id')}] {type(error).__name__}: {error}"])

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


class _Printer:
    """Prints engine output with a `[stdout:N]` heading each time the source changes."""

    def __init__(self):
        self.last = None
        self.ends_line = True

    def show(self, eid: Any, name: str, text: str) -> None:
        if not text:
            return
        head = f"[{name}:{eid}] "
        file = sys.stderr if name == "stderr" else sys.stdout
        pre = ""
        if head != self.last:
            pre = ("" if self.ends_line else "\n") + head + "\n"
            self.last = head
        self.ends_line = text.endswith("\n")
        print(pre + text, end="", file=file, flush=True)

    def show_error(self, lines: list[str]) -> None:
        """An engine's error (its first line names the engine), on stderr."""
        pre = "" if self.ends_line else "\n"
        print(pre + "\n".join(lines), file=sys.stderr, flush=True)
        self.last, self.ends_line = None, True


class ExecuteResult:
    """The value of an executed cell's last expression on one engine, shown as `Out[eid:n]: value`."""

    def __init__(self, engine_id: Any, content: dict):
        self.engine_id = engine_id
        self.data = content.get("data", {})
        self.execution_count = content.get("execution_count")

    def __repr__(self) -> str:
        return f"Out[{self.engine_id}:{self.execution_count}]: {self.data.get('text/plain', '')}"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        bundle = dict(self.data)
        bundle["text/plain"] = repr(self)
        return bundle


def _show_result(eid: Any, content: dict) -> None:
    result = ExecuteResult(eid, content)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        print(repr(result))
        return
    if get_ipython() is None:
        print(repr(result))
    else:
        display(result)


class AsyncResultSet:
    """Several AsyncResults waited on together (Client.wait_interactive)."""

    def __init__(self, results: list):
        self.results = results

    def wait_interactive(self, interval: float = 1.0, timeout: float = -1) -> None:
        if self.results:
            AsyncResult.join(*self.results).wait_interactive(interval=interval, timeout=timeout)


class AsyncHubResult(AsyncResult):
    """A result fetched by msg_id (Client.get_result) rather than returned by the call that sent it."""


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

    def _child_values(self, i: int) -> list:
        return self._values[i]

    def __iter__(self) -> Iterator[Any]:
        if self._ordered:
            yield from AsyncResult.__iter__(self)
        else:
            seen: set[int] = set()
            while len(seen) < self._n:
                with self._condition:
                    ready = [i for i in range(self._n) if self._done[i] and i not in seen]
                    if not ready:
                        self._signal().wait()
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
                    stderr=meta.get("stderr", ""), status="error" if meta.get("error") else "ok",
                    execute_result=meta.get("execute_result"), error=meta.get("error"), outputs=[])
