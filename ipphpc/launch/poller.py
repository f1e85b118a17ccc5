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

The polling logic is a generator that yields the commands it wants run (and
the pauses it wants taken); :meth:`Poller.poll_once` drives it with plain
calls, so tests can drive it with fakes. What is known about an element and
how new word changes it is :mod:`ipphpc.batch.jobstate`; the shared file is
:mod:`ipphpc.launch.pollcache`.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from ..batch.backend import Backend, BatchOutputError
from ..batch.jobstate import (
    ElementStatus,
    Key,
    TrackedJob,
    cancel_aware,
    ended,
    from_exit_code,
    index_from_key,
    match_records,
    merge_record,
)
from ..batch.registry import get_backend
from ..batch.states import JobRecord, State, exit_file_path, read_exit_file
from .commands import COUNTER, DEFAULT_TIMEOUT, CommandCounter, CommandResult, failed_command_message, run_command
from .pollcache import SharedCache, Sleep, foreign_jobs, updated_entries

log = logging.getLogger("ipphpc.batch")

#: ``runner(argv, input=None, timeout=..., cwd=None) -> CommandResult``
Runner = Callable[..., CommandResult]


# -- steps the poll generator asks its driver for -----------------------------------------
class _Run(NamedTuple):
    argv: list[str]
    input: str | None = None


PollSteps = Generator["_Run | Sleep", Any, list[ElementStatus]]


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

    ``runner`` replaces the function that runs commands (tests pass fakes);
    ``clock``/``sleep`` replace ``time.time``/``time.sleep``.
    """

    def __init__(
        self,
        backend: Backend | str,
        profile_dir: str | Path | None = None,
        *,
        runner: Runner | None = None,
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
        self.min_interval = min_interval
        self.max_interval = max(max_interval, min_interval)
        self.max_backoff = max_backoff
        self.lost_grace = lost_grace
        self.command_timeout = command_timeout
        self.want_window = want_window
        self._clock = clock
        self._sleep = sleep
        self.cache = SharedCache(self.profile_dir, self.backend.name) \
            if shared_cache and self.profile_dir is not None else None
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
        if self.cache is not None:
            self._adopt(self.cache.read(), now)
        # look soon, but a fresh enough shared answer will do (re-attaching CLIs)
        self.interval = self.min_interval
        self._next_poll = min(self._next_poll, now)
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
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)  # waiting for another process: real time, whatever the clock
                    value = None
                    continue
                try:
                    value = self._run_sync(step.argv, step.input)
                except Exception as exc:  # noqa: BLE001 - the generator judges it
                    value = exc
        except StopIteration as stop:
            return self._notify(stop.value)
        finally:
            # interrupted (Ctrl-C in a command it ran): release the cache lock now, not when the
            # traceback is freed, or the stop that follows would wait for this very process's lock
            steps.close()

    def _notify(self, changed: list[ElementStatus]) -> list[ElementStatus]:
        if changed:
            for callback in list(self._listeners):
                try:
                    callback(changed)
                except Exception:
                    log.exception("batch poller listener failed")
        return changed

    # -- one poll --------------------------------------------------------------------------------
    def _poll(self, force: bool) -> PollSteps:
        now = self._clock()
        before = {k: (s.state, s.exit_code) for k, s in self._status.items()}
        if self.cache is None:
            work = _Work(dict(self._jobs), dict(self._status), set(self._jobs))
            yield from self._query(work, now)
            self._absorb(work, now)
        else:
            data = self.cache.read()
            self._adopt(data, now)
            if force or not self._satisfied_by(data, now):
                lock = yield from self.cache.lock(2 * self.command_timeout + 5)
                try:
                    # someone may have polled while this poller waited for the lock
                    data = self.cache.read()
                    self._adopt(data, now)
                    if force or not self._satisfied_by(data, now):
                        work = self._shared_work(data, now)
                        yield from self._query(work, now)
                        self._absorb(work, now)
                        self._write_cache(data, work, now)
                finally:
                    self.cache.unlock(lock)
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
            seen = match_records(records, work.jobs)
            for job_id in active:
                for index in work.jobs[job_id].elements:
                    key = (job_id, index)
                    current = work.status[key]
                    if current.finished and current.resolved:
                        continue
                    record = seen.get(key)
                    if record is not None:
                        updated = cancel_aware(work.jobs[job_id], merge_record(current, record, "status", now))
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
                accounted = match_records(records, work.jobs)
                work.accounting_error = None
            else:
                work.accounting_error = error
                accounting_failed = True
        for key in needs:
            current = work.status[key]
            job = work.jobs[key[0]]
            record = accounted.get(key)
            if record is not None and (record.finished or current.active):
                merged = cancel_aware(job, merge_record(current, record, "accounting", now, resolved=record.finished))
                if merged.state is State.FAILED and not merged.exit_code:
                    # "failed with status 0" contradicts itself (in one run Slurm's accounting said so of two
                    # elements whose script exited 127): the element's own exit file, if written, has the code
                    code = self._exit_code(job, key[1])
                    if code:
                        merged = replace(merged, exit_code=code)
                work.status[key] = merged
                continue
            code = self._exit_code(job, key[1])
            if code is not None:
                work.status[key] = from_exit_code(current, job, code, now)
            elif current.finished:
                # the status query said how it ended; only the exit code stays unknown
                work.status[key] = replace(current, resolved=True)
            elif job.cancel_requested_at is not None:
                work.status[key] = ended(
                    current, State.CANCELLED, "cancelled; the scheduler no longer lists it", "cancel", now)
            elif accounting_failed:
                continue  # accounting could not answer: that is not "nobody knows"
            elif now - (current.missing_since or now) >= self.lost_grace:
                what = f"`{argv[0]}`" if argv else "the scheduler"
                work.status[key] = ended(
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

    def _exit_code(self, job: TrackedJob, index: int | None) -> int | None:
        if self.profile_dir is None:
            return None
        exit_index = job.elements.get(index, index)
        return read_exit_file(exit_file_path(self.profile_dir, job.cluster_id, job.job_id, exit_index))

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

    # -- the shared cache (:mod:`ipphpc.launch.pollcache`) --------------------------------------
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
                key = (job_id, index_from_key(index_text))
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
        jobs, status = foreign_jobs(data, self._jobs, now, self.want_window)
        return _Work({**self._jobs, **jobs}, {**self._status, **status}, set(self._jobs))

    def _write_cache(self, old: Mapping[str, Any], work: _Work, now: float) -> None:
        assert self.cache is not None
        self.cache.write({
            "written_at": now,
            "last_good_poll": self.last_good_poll,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "errors": self.errors,
            "backoff_until": self.backoff_until,
            "jobs": updated_entries(old, work.jobs, work.status, work.mine, work.queried, now, self.want_window),
        })


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
    _SHARED.clear()


__all__ = [
    "ElementStatus",
    "Poller",
    "TrackedJob",
    "reset_shared_pollers",
    "shared_poller",
]
