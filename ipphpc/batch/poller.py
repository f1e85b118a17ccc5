"""Watching batch jobs without hammering the scheduler.

A :class:`Poller` follows any number of jobs (array jobs and their elements)
of one scheduler and keeps, for every element, its state, the scheduler's own
word for it, the reason, exit code, host and ``since`` (when it entered that
state). It is built around what login nodes can bear:

* ONE status command per poll for every tracked job (``squeue --jobs=a,b,c``),
  never one per job or element;
* the interval grows (1 s, 2 s, 4 s ... up to ``max_interval``) while nothing
  changes and drops back when something does, or when a caller asks for a
  quick look (right after a submission or a cancel);
* a failed query backs off exponentially and changes NO state: the last known
  states stay, with the error and the time of the last good poll;
* elements that left the queue are judged by the scheduler's accounting
  (``sacct``, ``qstat -x``, ``qacct``, ``bjobs -d``, ``condor_history``), then
  by the exit file the batch script leaves, and only after ``lost_grace``
  seconds without an answer are they LOST;
* with a ``profile_dir``, pollers of every process on the machine share one
  query through ``<profile_dir>/pid/batch-cache-<scheduler>.json``: a poller
  whose jobs were queried by someone else within its own interval reads that
  file instead of calling the scheduler, and the poller that does query asks
  about every job the others registered too. A lock file makes the pollers
  take turns.

The polling logic is written once, as a generator that yields the commands it
wants run (and the pauses it wants taken); :meth:`Poller.poll_once` drives it
with plain calls, :meth:`Poller.poll_once_async` with asyncio subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from .backend import Backend, BatchOutputError
from .commands import (
    COUNTER,
    DEFAULT_TIMEOUT,
    CommandCounter,
    CommandResult,
    failed_command_message,
    run_command,
    run_command_async,
)
from .registry import get_backend
from .states import JobRecord, State, exit_file_path, read_exit_file, short_job_id, state_from_exit_code

log = logging.getLogger("ipphpc.batch")

Key = tuple[str, "int | None"]
#: ``runner(argv, input=None, timeout=..., cwd=None) -> CommandResult``
Runner = Callable[..., CommandResult]
AsyncRunner = Callable[..., Awaitable[CommandResult]]

CACHE_VERSION = 1


# -- what is known about one element --------------------------------------------------------
@dataclass(frozen=True)
class ElementStatus:
    """The latest word on one array element (or single job).

    ``source`` says where it came from: ``submitted`` (nothing seen yet),
    ``status``, ``accounting``, ``exit-file``, ``lost`` or ``cancel``.
    """

    job_id: str
    array_index: int | None
    state: State
    native_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    host: str | None = None
    #: when the element entered ``state`` (seconds since the epoch)
    since: float = 0.0
    native_id: str | None = None
    signal: int | None = None
    source: str = "submitted"
    #: when a poll last said anything about the element
    updated: float = 0.0
    #: since when the element is absent from the status output (None: it is listed)
    missing_since: float | None = None
    #: a finished element whose outcome needs no further lookup
    resolved: bool = False

    @property
    def key(self) -> Key:
        return (self.job_id, self.array_index)

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def active(self) -> bool:
        return self.state.active

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ElementStatus:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["state"] = State(known["state"])
        return cls(**known)


@dataclass
class TrackedJob:
    """A submitted job and the elements it should have.

    ``elements`` maps the scheduler's index of each element (None for a job
    that is not an array) to the index its exit file carries (None: no index).
    """

    job_id: str
    elements: dict[int | None, int | None]
    cluster_id: str = ""
    role: str = "engines"
    submitted_at: float = 0.0
    cancel_requested_at: float | None = None
    wanted_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "elements": [[i, e] for i, e in self.elements.items()],
            "cluster_id": self.cluster_id,
            "role": self.role,
            "submitted_at": self.submitted_at,
            "cancel_requested_at": self.cancel_requested_at,
            "wanted_at": self.wanted_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrackedJob:
        return cls(
            job_id=str(d["job_id"]),
            elements={i: e for i, e in d.get("elements", [[None, None]])},
            cluster_id=d.get("cluster_id", ""),
            role=d.get("role", "engines"),
            submitted_at=d.get("submitted_at", 0.0),
            cancel_requested_at=d.get("cancel_requested_at"),
            wanted_at=d.get("wanted_at", 0.0),
        )


def _index_key(index: int | None) -> str:
    return "-" if index is None else str(index)


def _index_from_key(text: str) -> int | None:
    return None if text == "-" else int(text)


# -- steps the poll generator asks its driver for -----------------------------------------
class _Run(NamedTuple):
    argv: list[str]
    input: str | None = None


class _Sleep(NamedTuple):
    seconds: float


PollSteps = Generator["_Run | _Sleep", Any, list[ElementStatus]]


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass
class _Work:
    """The jobs one poll handles: this poller's, plus the ones other pollers registered."""

    jobs: dict[str, TrackedJob]
    status: dict[Key, ElementStatus]
    mine: set[str]
    queried: set[str] = field(default_factory=set)
    error: str | None = None
    accounting_error: str | None = None


class Poller:
    """Follows the jobs of one scheduler with one status query per interval.

    ``runner``/``async_runner`` replace the functions that run commands
    (tests pass fakes); ``clock``/``sleep`` replace ``time.time``/``time.sleep``.
    """

    def __init__(
        self,
        backend: Backend | str,
        profile_dir: str | Path | None = None,
        *,
        runner: Runner | None = None,
        async_runner: AsyncRunner | None = None,
        counter: CommandCounter | None = None,
        min_interval: float = 1.0,
        max_interval: float = 30.0,
        max_backoff: float = 300.0,
        lost_grace: float = 60.0,
        command_timeout: float = DEFAULT_TIMEOUT,
        shared_cache: bool = True,
        want_window: float = 86400.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = get_backend(backend)
        self.profile_dir = Path(profile_dir) if profile_dir else None
        self.counter = counter if counter is not None else CommandCounter(parent=COUNTER)
        self._runner = runner
        self._async_runner = async_runner
        self.min_interval = min_interval
        self.max_interval = max(max_interval, min_interval)
        self.max_backoff = max_backoff
        self.lost_grace = lost_grace
        self.command_timeout = command_timeout
        self.want_window = want_window
        self._clock = clock
        self._sleep = sleep
        self.cache_path: Path | None = None
        self.lock_path: Path | None = None
        if shared_cache and self.profile_dir is not None:
            directory = self.profile_dir / "pid"
            self.cache_path = directory / f"batch-cache-{self.backend.name}.json"
            self.lock_path = directory / f"batch-cache-{self.backend.name}.lock"
        self._jobs: dict[str, TrackedJob] = {}
        self._status: dict[Key, ElementStatus] = {}
        self.interval = min_interval
        self._next_poll = 0.0
        self._fresh_after = 0.0
        self._fast_requested = False
        self.errors = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_good_poll: float | None = None
        self.accounting_error: str | None = None
        self.backoff_until = 0.0
        self._health_at = 0.0
        self._listeners: list[Callable[[list[ElementStatus]], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # -- tracking ------------------------------------------------------------------------------
    def track(
        self,
        job_id: str,
        indices: Iterable[int | None] | Mapping[int | None, int | None] = (None,),
        *,
        cluster_id: str = "",
        role: str = "engines",
        submitted_at: float | None = None,
    ) -> TrackedJob:
        """Follow ``job_id`` and the elements ``indices`` (scheduler indices).

        A mapping gives each element's exit-file index explicitly; otherwise
        it equals the scheduler's index.
        """
        now = self._clock()
        elements = dict(indices) if isinstance(indices, Mapping) else {i: i for i in indices}
        if not elements:
            raise ValueError(f"job {job_id} has no elements to follow")
        job = TrackedJob(job_id, elements, cluster_id, role, submitted_at or now, wanted_at=now)
        previous = self._jobs.get(job_id)
        if previous is not None:
            job.cancel_requested_at = previous.cancel_requested_at
        self._jobs[job_id] = job
        for index in elements:
            self._status.setdefault(
                (job_id, index),
                # updated=0: any word from a poll, even one older than this call, is better
                ElementStatus(job_id, index, State.PENDING, reason="submitted; not seen by the scheduler yet",
                              since=job.submitted_at, updated=0.0),
            )
        if self.cache_path is not None:
            self._adopt(self._read_cache(), now)
        # look soon, but a fresh enough shared answer will do (re-attaching CLIs)
        self.interval = self.min_interval
        self._next_poll = min(self._next_poll, now)
        if self._wake is not None:
            self._wake.set()
        return job

    def track_array(self, job_id: str, size: int, base: int = 0, **kwargs: Any) -> TrackedJob:
        """Follow an array of ``size`` elements numbered from ``base``."""
        return self.track(job_id, range(base, base + size), **kwargs)

    def untrack(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            for index in job.elements:
                self._status.pop((job_id, index), None)

    def mark_cancelled(self, job_ids: Iterable[str]) -> None:
        """Note that a cancel was sent, so vanished elements count as CANCELLED, not LOST."""
        now = self._clock()
        for job_id in job_ids:
            if job_id in self._jobs:
                self._jobs[job_id].cancel_requested_at = now
        self.request_fast_poll()

    @property
    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def tracked(self, job_id: str) -> TrackedJob:
        return self._jobs[job_id]

    # -- what is known -------------------------------------------------------------------------
    def records(self, job_ids: Iterable[str] | None = None) -> list[ElementStatus]:
        """Every element of ``job_ids`` (all tracked jobs by default), in submission order."""
        wanted = list(self._jobs) if job_ids is None else [j for j in job_ids if j in self._jobs]
        return [self._status[(j, i)] for j in wanted for i in self._jobs[j].elements]

    def record(self, job_id: str, array_index: int | None = None) -> ElementStatus:
        return self._status[(job_id, array_index)]

    def summary(self, job_ids: Iterable[str] | None = None) -> dict[str, int]:
        """How many elements are in each state: ``{"RUNNING": 250, "PENDING": 6}``."""
        counts: dict[str, int] = defaultdict(int)
        for status in self.records(job_ids):
            counts[status.state.value] += 1
        return dict(counts)

    def active_job_ids(self) -> list[str]:
        return [j for j in self._jobs if any(s.active for s in self.records([j]))]

    def health(self) -> dict[str, Any]:
        """How the last polls went: for ``ipphpc list`` and for error messages."""
        return {
            "last_good_poll": self.last_good_poll,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "errors": self.errors,
            "accounting_error": self.accounting_error,
            "interval": self.interval,
            "backoff_until": self.backoff_until or None,
            "calls": self.counter.total,
        }

    def add_listener(self, callback: Callable[[list[ElementStatus]], None]) -> None:
        """Call ``callback(changed)`` whenever elements change state or learn their exit code."""
        self._listeners.append(callback)

    # -- scheduling ----------------------------------------------------------------------------
    def request_fast_poll(self) -> None:
        """Look again soon and at the shortest interval, ignoring results older than now."""
        now = self._clock()
        self._fast_requested = True
        self.interval = self.min_interval
        self._fresh_after = now
        self._next_poll = min(self._next_poll, now)
        if self._wake is not None:
            self._wake.set()

    @property
    def next_poll(self) -> float:
        return self._next_poll

    def due(self) -> bool:
        return self._clock() >= self._next_poll

    def _schedule(self, now: float, changed: bool) -> None:
        if self.backoff_until > now:
            self._next_poll = self.backoff_until
            return
        if changed or self._fast_requested:
            self.interval = self.min_interval
        else:
            self.interval = min(self.interval * 2, self.max_interval)
        self._fast_requested = False
        self._next_poll = now + self.interval

    # -- sync API ------------------------------------------------------------------------------
    def poll_once(self, force: bool = False) -> list[ElementStatus]:
        """Bring the states up to date now; returns the elements that changed.

        Reads the shared cache instead of calling the scheduler when someone
        queried these jobs within the current interval, unless ``force``.
        """
        return self._drive(self._poll(force))

    def poll_if_due(self) -> list[ElementStatus]:
        """:meth:`poll_once` when the interval has passed; cheap to call in a loop."""
        return self.poll_once() if self.due() else []

    def wait_until(
        self,
        predicate: Callable[[list[ElementStatus]], bool],
        timeout: float,
        job_ids: Iterable[str] | None = None,
    ) -> bool:
        """Poll (at the poller's pace) until ``predicate(records)`` holds; False on timeout."""
        ids = list(job_ids) if job_ids is not None else None
        deadline = self._clock() + timeout
        while True:
            self.poll_if_due()
            if predicate(self.records(ids)):
                return True
            now = self._clock()
            if now >= deadline:
                return False
            self._sleep(max(min(self._next_poll, deadline) - now, 0.01))

    def run_command(self, argv: Sequence[str], input: str | None = None, cwd: str | Path | None = None,
                    timeout: float | None = None) -> CommandResult:
        """Run a scheduler command through this poller's runner and counter (submit, cancel)."""
        return self._run_sync(list(argv), input, cwd, timeout)

    def _run_sync(self, argv: list[str], input: str | None, cwd: str | Path | None = None,
                  timeout: float | None = None) -> CommandResult:
        timeout = timeout or self.command_timeout
        if self._runner is None:
            return run_command(argv, input, timeout, cwd=cwd, scheduler=self.backend.name, counter=self.counter)
        start = time.monotonic()
        try:
            result = self._runner(argv, input=input, timeout=timeout, cwd=cwd)
        except BaseException:
            self.counter.record(argv, None, time.monotonic() - start)
            raise
        self.counter.record(argv, result.rc, time.monotonic() - start)
        return CommandResult(*result)

    def _drive(self, steps: PollSteps) -> list[ElementStatus]:
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                if isinstance(step, _Sleep):
                    time.sleep(step.seconds)  # waiting for another process: real time, whatever the clock
                    value = None
                    continue
                try:
                    value = self._run_sync(step.argv, step.input)
                except Exception as exc:  # noqa: BLE001 - the generator judges it
                    value = exc
        except StopIteration as stop:
            return self._notify(stop.value)

    # -- asyncio API ---------------------------------------------------------------------------
    async def run_command_async(self, argv: Sequence[str], input: str | None = None,
                                cwd: str | Path | None = None, timeout: float | None = None) -> CommandResult:
        """:meth:`run_command` without blocking the event loop."""
        argv = list(argv)
        timeout = timeout or self.command_timeout
        if self._async_runner is None and self._runner is None:
            return await run_command_async(argv, input, timeout, cwd=cwd, scheduler=self.backend.name,
                                           counter=self.counter)
        if self._async_runner is None:
            return self._run_sync(argv, input, cwd, timeout)
        start = time.monotonic()
        try:
            result = await self._async_runner(argv, input=input, timeout=timeout, cwd=cwd)
        except BaseException:
            self.counter.record(argv, None, time.monotonic() - start)
            raise
        self.counter.record(argv, result.rc, time.monotonic() - start)
        return CommandResult(*result)

    async def poll_once_async(self, force: bool = False) -> list[ElementStatus]:
        """:meth:`poll_once` for an event loop."""
        steps = self._poll(force)
        value: Any = None
        try:
            while True:
                step = steps.send(value)
                if isinstance(step, _Sleep):
                    await asyncio.sleep(step.seconds)
                    value = None
                    continue
                try:
                    value = await self.run_command_async(step.argv, step.input)
                except Exception as exc:  # noqa: BLE001 - the generator judges it
                    value = exc
        except StopIteration as stop:
            return self._notify(stop.value)

    async def wait_until_async(
        self,
        predicate: Callable[[list[ElementStatus]], bool],
        timeout: float,
        job_ids: Iterable[str] | None = None,
    ) -> bool:
        """:meth:`wait_until` for an event loop."""
        ids = list(job_ids) if job_ids is not None else None
        deadline = self._clock() + timeout
        while True:
            if self.due():
                await self.poll_once_async()
            if predicate(self.records(ids)):
                return True
            now = self._clock()
            if now >= deadline:
                return False
            await asyncio.sleep(max(min(self._next_poll, deadline) - now, 0.01))

    async def run(self) -> None:
        """Poll for as long as the task runs, waking early on :meth:`request_fast_poll`."""
        self._wake = asyncio.Event()
        try:
            while True:
                delay = self._next_poll - self._clock()
                if delay > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    self._wake.clear()
                    continue
                try:
                    await self.poll_once_async()
                except Exception:  # noqa: BLE001 - a poller must survive anything a scheduler prints
                    log.exception("batch poller for %s failed", self.backend.name)
                    self._next_poll = self._clock() + self.max_interval
        finally:
            self._wake = None

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` as a task of the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"ipphpc-poller-{self.backend.name}")
        return self._task

    def stop(self) -> None:
        """Stop the task started by :meth:`start`."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _notify(self, changed: list[ElementStatus]) -> list[ElementStatus]:
        if changed:
            for callback in list(self._listeners):
                try:
                    callback(changed)
                except Exception:  # noqa: BLE001 - a listener must not stop the poller
                    log.exception("batch poller listener failed")
        return changed

    # -- one poll --------------------------------------------------------------------------------
    def _poll(self, force: bool) -> PollSteps:
        now = self._clock()
        before = {k: (s.state, s.exit_code) for k, s in self._status.items()}
        if self.cache_path is None:
            work = _Work(dict(self._jobs), dict(self._status), set(self._jobs))
            yield from self._query(work, now)
            self._absorb(work, now)
        else:
            data = self._read_cache()
            self._adopt(data, now)
            if force or not self._satisfied_by(data, now):
                lock = yield from self._lock()
                try:
                    # someone may have polled while this poller waited for the lock
                    data = self._read_cache()
                    self._adopt(data, now)
                    if force or not self._satisfied_by(data, now):
                        work = self._shared_work(data, now)
                        yield from self._query(work, now)
                        self._absorb(work, now)
                        self._write_cache(data, work, now)
                finally:
                    self._unlock(lock)
        changed = [s for k, s in self._status.items() if before.get(k) != (s.state, s.exit_code)]
        self._schedule(self._clock(), bool(changed))
        return changed

    def _query(self, work: _Work, now: float) -> Generator[_Run, Any, None]:
        """Ask the scheduler about every active job in ``work``, then resolve who left."""
        active = [j for j, job in work.jobs.items()
                  if any(work.status[(j, i)].active for i in job.elements)]
        needs: dict[Key, None] = {}
        if active:
            argv = self.backend.status_command(active)
            result = yield _Run(argv)
            records, error = self._parse(argv, result, self.backend.parse_status)
            if error is not None:
                work.error = error
                return  # keep every state as it was
            work.queried = set(active)
            seen = self._match(records, work.jobs)
            for job_id in active:
                for index in work.jobs[job_id].elements:
                    key = (job_id, index)
                    current = work.status[key]
                    if current.finished and current.resolved:
                        continue
                    record = seen.get(key)
                    if record is not None:
                        updated = self._cancel_aware(work.jobs[job_id], self._merge(current, record, "status", now))
                        work.status[key] = updated
                        if updated.finished and not updated.resolved:
                            needs[key] = None
                    elif current.active:
                        work.status[key] = replace(current, missing_since=current.missing_since or now)
                        needs[key] = None
        # finished elements (of any job) whose exit code is still unknown
        needs.update((k, None) for k, s in work.status.items() if s.finished and not s.resolved)
        if needs:
            yield from self._resolve(work, list(needs), now)

    def _resolve(self, work: _Work, needs: list[Key], now: float) -> Generator[_Run, Any, None]:
        """Accounting first (it knows TIMEOUT from FAILED), then exit files, then LOST after the grace."""
        order = {job_id: n for n, job_id in enumerate(work.jobs)}
        ids = sorted({job_id for job_id, _ in needs}, key=order.__getitem__)
        argv = self.backend.accounting_command(ids)
        accounted: dict[Key, JobRecord] = {}
        accounting_failed = False
        if argv:
            result = yield _Run(list(argv))
            records, error = self._parse(argv, result, self.backend.parse_accounting)
            if error is None:
                accounted = self._match(records, work.jobs)
                work.accounting_error = None
            else:
                work.accounting_error = error
                accounting_failed = True
        for key in needs:
            current = work.status[key]
            job = work.jobs[key[0]]
            record = accounted.get(key)
            if record is not None and (record.finished or current.active):
                work.status[key] = self._cancel_aware(
                    job, self._merge(current, record, "accounting", now, resolved=record.finished))
                continue
            code = self._exit_code(job, key[1])
            if code is not None:
                work.status[key] = self._from_exit_file(current, job, code, now)
            elif current.finished:
                # the status query said how it ended; only the exit code stays unknown
                work.status[key] = replace(current, resolved=True)
            elif job.cancel_requested_at is not None:
                work.status[key] = self._ended(
                    current, State.CANCELLED, "cancelled; the scheduler no longer lists it", "cancel", now)
            elif accounting_failed:
                continue  # accounting could not answer: that is not "nobody knows"
            elif now - (current.missing_since or now) >= self.lost_grace:
                what = f"`{argv[0]}`" if argv else "the scheduler"
                work.status[key] = self._ended(
                    current, State.LOST,
                    f"left the queue {now - (current.missing_since or now):.0f} s ago and neither {what} "
                    f"nor an exit file says how it ended", "lost", now)

    def _parse(
        self, argv: Sequence[str], result: CommandResult | BaseException, parse: Callable[[str], list[JobRecord]]
    ) -> tuple[list[JobRecord], str | None]:
        """Records from a command's output, or the error that makes the output unusable.

        A non-zero exit code whose stderr only says "unknown job" is an answer
        (the scheduler forgot those jobs), not an error.
        """
        if isinstance(result, BaseException):
            return [], _describe(result)
        rc, out, err = result
        if rc != 0 and not self.backend.is_unknown_job_error(err):
            return [], failed_command_message(argv, rc, err, out)
        try:
            return parse(out), None
        except BatchOutputError as exc:
            if rc != 0:  # an unknown-job answer whose stdout is not a listing
                return [], None
            return [], f"`{argv[0]}` printed output that cannot be read: {exc}"

    @staticmethod
    def _match(records: Iterable[JobRecord], jobs: Mapping[str, TrackedJob]) -> dict[Key, JobRecord]:
        """Records keyed by tracked element; a single job takes its one record whatever its index."""
        by_short: dict[str, str] = {}
        for job_id in jobs:
            by_short.setdefault(short_job_id(job_id), job_id)
        grouped: dict[str, list[JobRecord]] = defaultdict(list)
        for record in records:
            job_id = record.job_id if record.job_id in jobs else by_short.get(short_job_id(record.job_id))
            if job_id is not None:
                grouped[job_id].append(record)
        matched: dict[Key, JobRecord] = {}
        for job_id, found in grouped.items():
            elements = jobs[job_id].elements
            if len(elements) == 1:
                (index,) = elements
                exact = [r for r in found if r.array_index == index]
                matched[(job_id, index)] = (exact or found)[-1]
                continue
            for record in found:
                if record.array_index in elements:
                    matched[(job_id, record.array_index)] = record
        return matched

    @staticmethod
    def _merge(current: ElementStatus, record: JobRecord, source: str, now: float,
               resolved: bool | None = None) -> ElementStatus:
        exit_code = record.exit_code
        if exit_code is None and record.state == current.state:
            exit_code = current.exit_code
        return ElementStatus(
            job_id=current.job_id,
            array_index=current.array_index,
            state=record.state,
            native_state=record.native_state,
            reason=record.reason,
            exit_code=exit_code,
            host=record.host or current.host,
            since=current.since if record.state == current.state else now,
            native_id=record.native_id or current.native_id,
            signal=record.signal if record.signal is not None else current.signal,
            source=source,
            updated=now,
            missing_since=None,
            resolved=(record.finished and exit_code is not None) if resolved is None else resolved,
        )

    @staticmethod
    def _cancel_aware(job: TrackedJob, status: ElementStatus) -> ElementStatus:
        """A job script that traps the cancel's SIGTERM exits 143 by itself: still a cancel."""
        if (job.cancel_requested_at is None or status.state is not State.FAILED
                or not ((status.exit_code or 0) > 128 or status.signal)):
            return status
        detail = status.reason or f"exit code {status.exit_code}"
        return replace(status, state=State.CANCELLED, reason=f"cancelled ({detail})")

    @staticmethod
    def _ended(current: ElementStatus, state: State, reason: str, source: str, now: float) -> ElementStatus:
        return replace(current, state=state, native_state="", reason=reason, source=source, updated=now,
                       since=current.since if state == current.state else now, resolved=True)

    def _exit_code(self, job: TrackedJob, index: int | None) -> int | None:
        if self.profile_dir is None:
            return None
        exit_index = job.elements.get(index, index)
        return read_exit_file(exit_file_path(self.profile_dir, job.cluster_id, job.job_id, exit_index))

    def _from_exit_file(self, current: ElementStatus, job: TrackedJob, code: int, now: float) -> ElementStatus:
        if current.finished:  # the scheduler said how; the file adds the code
            return replace(current, exit_code=code, updated=now, resolved=True)
        state = state_from_exit_code(code)
        reason = f"exit code {code} from its exit file; the scheduler no longer lists it"
        if code != 0 and job.cancel_requested_at is not None:
            state, reason = State.CANCELLED, f"cancelled; its exit file says {code}"
        return replace(current, state=state, native_state="", reason=reason, exit_code=code,
                       since=current.since if state == current.state else now, source="exit-file",
                       updated=now, resolved=True,
                       signal=code - 128 if code > 128 else current.signal)

    def _absorb(self, work: _Work, now: float) -> None:
        """Take this poller's part of a poll's results, and how the poll went."""
        self._health_at = now
        for job_id in work.mine:
            for index in work.jobs[job_id].elements:
                key = (job_id, index)
                if key in self._status:
                    self._status[key] = work.status[key]
        self.accounting_error = work.accounting_error if work.accounting_error else (
            None if work.queried else self.accounting_error)
        if work.error is not None:
            self.errors += 1
            self.last_error, self.last_error_at = work.error, now
            backoff = min(self.min_interval * 2 ** self.errors, self.max_backoff)
            self.backoff_until = now + backoff
            log.warning("%s status query failed (%d in a row, next try in %.0f s): %s",
                        self.backend.name, self.errors, backoff, work.error)
        else:
            self.errors = 0
            self.backoff_until = 0.0
            if work.queried:
                self.last_good_poll = now

    # -- the shared cache ------------------------------------------------------------------------
    def _read_cache(self) -> dict[str, Any]:
        if self.cache_path is None:
            return {}
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        return data

    def _satisfied_by(self, data: Mapping[str, Any], now: float) -> bool:
        """True when the cache answers for all active jobs, or says the scheduler is backing off."""
        active = self.active_job_ids()
        unresolved = any(s.finished and not s.resolved for s in self._status.values())
        if not active and not unresolved:
            return True
        if data.get("backoff_until", 0) > now:
            return True
        if unresolved:
            return False
        entries = data.get("jobs", {})
        horizon = now - self.interval
        return all(
            polled > horizon and polled >= self._fresh_after
            for polled in (entries.get(j, {}).get("polled_at", 0) for j in active)
        )

    def _adopt(self, data: Mapping[str, Any], now: float) -> None:
        """Take newer element states and the poll health that other pollers left in the cache."""
        if not data:
            return
        entries = data.get("jobs", {})
        for job_id, job in self._jobs.items():
            entry = entries.get(job_id)
            if not entry:
                continue
            cancel = entry.get("job", {}).get("cancel_requested_at")
            if cancel and not job.cancel_requested_at:
                job.cancel_requested_at = cancel
            for index_text, raw in entry.get("elements", {}).items():
                key = (job_id, _index_from_key(index_text))
                mine = self._status.get(key)
                if mine is None:
                    continue
                try:
                    theirs = ElementStatus.from_dict(raw)
                except (KeyError, TypeError, ValueError):
                    continue
                if theirs.updated >= mine.updated:
                    self._status[key] = theirs
        if data.get("written_at", 0) > self._health_at:
            # the newest poll of any process says how the scheduler is doing
            self._health_at = data["written_at"]
            self.last_good_poll = data.get("last_good_poll") or self.last_good_poll
            self.errors = data.get("errors", 0)
            self.last_error, self.last_error_at = data.get("last_error"), data.get("last_error_at")
            self.backoff_until = data.get("backoff_until", 0.0)

    def _shared_work(self, data: Mapping[str, Any], now: float) -> _Work:
        """This poller's jobs plus the still-active jobs other pollers registered recently."""
        jobs = dict(self._jobs)
        status = dict(self._status)
        for job_id, entry in data.get("jobs", {}).items():
            if job_id in jobs:
                continue
            try:
                job = TrackedJob.from_dict(entry["job"])
                elements = {
                    (job_id, _index_from_key(k)): ElementStatus.from_dict(v)
                    for k, v in entry.get("elements", {}).items()
                }
            except (KeyError, TypeError, ValueError):
                continue
            if now - job.wanted_at > self.want_window or set(elements) != {(job_id, i) for i in job.elements}:
                continue
            if all(s.finished and s.resolved for s in elements.values()):
                continue
            jobs[job_id] = job
            status.update(elements)
        return _Work(jobs, status, set(self._jobs))

    def _write_cache(self, old: Mapping[str, Any], work: _Work, now: float) -> None:
        if self.cache_path is None:
            return
        entries: dict[str, Any] = dict(old.get("jobs", {}))
        for job_id, job in work.jobs.items():
            entry = dict(entries.get(job_id, {}))
            if job_id in work.mine:
                job.wanted_at = now
            entry["job"] = job.to_dict()
            entry["elements"] = {_index_key(i): work.status[(job_id, i)].to_dict() for i in job.elements}
            if job_id in work.queried:
                entry["polled_at"] = now
            entries[job_id] = entry
        for job_id in list(entries):
            job_info = entries[job_id].get("job", {})
            idle = now - job_info.get("wanted_at", 0)
            finished = all(State(e.get("state", "LOST")).finished and e.get("resolved")
                           for e in entries[job_id].get("elements", {}).values())
            if idle > self.want_window or (finished and idle > 3600):
                del entries[job_id]
        data = {
            "version": CACHE_VERSION,
            "scheduler": self.backend.name,
            "written_at": now,
            "last_good_poll": self.last_good_poll,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "errors": self.errors,
            "backoff_until": self.backoff_until,
            "jobs": entries,
        }
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self.cache_path)

    def _lock(self) -> Generator[_Sleep, Any, Any]:
        """Take the cache lock, pausing between tries; give up (and poll anyway) when a holder hangs."""
        assert self.lock_path is not None
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - released in _unlock
        deadline = time.monotonic() + 2 * self.command_timeout + 5
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("%s is held too long; polling without it", self.lock_path)
                    handle.close()
                    return None
                yield _Sleep(0.02)

    @staticmethod
    def _unlock(handle: Any) -> None:
        if handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


# -- one poller per scheduler and profile in a process ----------------------------------------
_SHARED: dict[tuple[str, str], Poller] = {}


def shared_poller(backend: Backend | str, profile_dir: str | Path | None = None, **kwargs: Any) -> Poller:
    """The process-wide poller of ``backend`` in ``profile_dir``, created on first use.

    Launchers of the same cluster (controller, engine sets) then share one
    poller, and the cache file shares it with other processes.
    """
    backend = get_backend(backend)
    key = (backend.name, str(Path(profile_dir).resolve()) if profile_dir else "")
    poller = _SHARED.get(key)
    if poller is None:
        poller = _SHARED[key] = Poller(backend, profile_dir, **kwargs)
    return poller


def reset_shared_pollers() -> None:
    """Forget the process-wide pollers (tests, forks)."""
    for poller in _SHARED.values():
        poller.stop()
    _SHARED.clear()


__all__ = [
    "ElementStatus",
    "Poller",
    "TrackedJob",
    "reset_shared_pollers",
    "shared_poller",
]
