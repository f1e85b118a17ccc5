"""The writer thread: the hub puts what it routed on a queue; this thread turns it into records in batches.

The hub's cost per task is one `SimpleQueue.put` of a tuple holding the header it already parsed
and the frames it already had; the thread builds records, writes a batch in one transaction, and
runs lookups in order with the writes before them, handing answers back to the event loop.
A write that fails (a full disk) is logged once, and routing goes on.
"""
from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from typing import Any, Callable

from ..memtrim import trim
from .base import Store
from .fields import from_fan, from_result, from_task

_STOP = object()


class Recorder:
    def __init__(self, store: Store, log: logging.Logger, window: float | None = None, max_batch: int = 20_000):
        self.store, self.log, self.max_batch = store, log, max_batch
        self.window = store.window if window is None else window
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.put: Callable[[tuple], None] = self.q.put
        self.failing = False
        self.busy = False  # holding a batch (and its frames): not idle even when the queue is empty
        self.lost = 0
        self.written = 0
        self._trimmed = 0
        self._trimmed_at = 0.0  # monotonic time of the last trim in a burst
        self.trim_gap = 5.0  # seconds at least between two trims in a burst (each walks every object and the heap)
        self._compacted = 0
        self.quiet = 60.0  # seconds between two full error lines about failing writes
        self._last_error = -self.quiet
        self.thread = threading.Thread(target=self._main, name="ipphpc-taskdb", daemon=True)
        self.thread.start()

    def idle(self) -> bool:
        """Nothing queued and no batch held."""
        return not self.busy and self.q.empty()

    def ask(self, fn: Callable[[Store], Any], reply: Callable[[Any], None], loop: Any) -> None:
        """Run `fn(store)` after every write queued before it; `reply(answer or exception)` on `loop`."""
        self.put(("ask", fn, reply, loop))

    def close(self, timeout: float = 30.0) -> None:
        self.put((_STOP,))
        self.thread.join(timeout)
        try:
            self.store.close()
        except Exception as e:  # noqa: BLE001 - closing must not stop the controller from exiting
            self.log.error("task database: closing %s failed: %s", self.store.name, e)

    def _main(self) -> None:
        get, get_now = self.q.get, self.q.get_nowait
        due = False  # a burst was written: tidy up once the queue has stayed empty for a second
        while True:
            try:
                items = [get(timeout=1.0) if due else get()]
            except queue.Empty:
                due, self._compacted = False, self.written
                t0 = time.perf_counter()
                self.store.compact()  # survivors of a burst packed together: the pages they pinned can go back
                trim()
                self.log.debug("task database: idle after a burst; compacted and trimmed in %.3f s",
                               time.perf_counter() - t0)
                continue
            self.busy = True
            if items[0][0] in ("task", "result", "set"):
                time.sleep(self.window)  # let a batch gather: one transaction for many tasks (a lookup goes now)
            while len(items) < self.max_batch:
                try:
                    items.append(get_now())
                except queue.Empty:
                    break
            more = self._apply(items)
            del items  # a batch holds frames: let them go now, not when the next task arrives
            self.busy = False
            if self.written - self._trimmed >= 20_000 and self.q.empty() \
                    and time.monotonic() - self._trimmed_at >= self.trim_gap:
                self._trimmed, self._trimmed_at = self.written, time.monotonic()
                trim()  # the frames of a large burst were just let go: give their pages back
            # compacted once quiet, if more than a few records came since the last time (a pause of the client
            # may bring one mid-burst: the end of the burst still gets its own)
            due = due or self.written - self._compacted >= 1000
            if not more:
                return

    def _apply(self, items: list[tuple]) -> bool:
        inserts: list[dict] = []
        updates: list[tuple[str, dict]] = []
        # records inserted in this batch, by msg_id: a result (or a change) for one of them completes the
        # record before it is written (most results of a busy controller come in their task's batch)
        fresh: dict[str, dict] | None = {} if self.store.whole_records else None
        for it in items:
            kind = it[0]
            if kind == "task":
                recs = from_fan(it[1], it[2], 0.0) if "ids" in it[1] else [from_task(it[1], it[2], 0.0)]
                inserts += recs
                if fresh is not None:
                    for r in recs:
                        fresh[r["msg_id"]] = r
            elif kind == "result" or kind == "set":
                mid, fields = (it[1]["p"], from_result(it[1], it[2], it[3])) if kind == "result" else it[1:]
                rec = fresh.get(mid) if fresh is not None else None
                if rec is None:
                    updates.append((mid, fields))
                else:
                    rec.update(fields)
            elif kind == "ask":
                self._write(inserts, updates)
                inserts, updates = [], []
                if fresh is not None:
                    fresh = {}
                self._answer(*it[1:])
            elif kind is _STOP:
                self._write(inserts, updates)
                return False
        self._write(inserts, updates)
        return True

    def _write(self, inserts: list[dict], updates: list[tuple[str, dict]]) -> None:
        if not inserts and not updates:
            return
        try:
            if inserts:
                self.store.insert(inserts)
            if updates:
                self.store.update(updates)
            self.store.commit()
        except Exception as e:  # noqa: BLE001 - a failing disk must never stop routing
            self.lost += len(inserts) + len(updates)
            if not self.failing:
                self.failing = True
                now = time.monotonic()
                if now - self._last_error >= self.quiet:
                    self._last_error = now
                    self.log.error("task database (%s): cannot record tasks: %s; the controller keeps routing, "
                                   "but these records are lost until writing works again", self.store.name,
                                   self._why(e))
                else:  # a disk that is nearly full flaps: one error a minute, then short lines
                    self.log.warning("task database (%s): writing failed again (%d records lost so far)",
                                     self.store.name, self.lost)
            try:
                self.store.recover()
            except Exception as e2:  # noqa: BLE001 - reported with the first error already
                self.log.debug("task database: recover failed: %s", e2)
            return
        self.written += len(inserts) + len(updates)
        if self.failing:
            self.failing = False
            self.log.warning("task database (%s): recording again (%d records were lost)", self.store.name,
                             self.lost)

    def _why(self, e: Exception) -> str:
        """One line: a full disk said plainly (HDF5 and SQLite word it in many lines, or not at all)."""
        text = str(e)
        where = getattr(self.store, "path", None)
        if getattr(e, "errno", None) == errno.ENOSPC or "Errno 28" in text or "disk is full" in text:
            return f"no space left on the device holding {where}" if where else "no space left on the device"
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        return f"{type(e).__name__}: {first}"

    def _answer(self, fn: Callable, reply: Callable, loop: Any) -> None:
        try:
            answer = fn(self.store)
        except Exception as e:  # noqa: BLE001 - handed to the requester as its answer
            answer = e
        try:
            loop.call_soon_threadsafe(reply, answer)
        except RuntimeError:
            pass  # the loop closed: the controller is stopping
