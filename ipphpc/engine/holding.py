"""Results of a run of short tasks leave the engine together.

The tasks the controller hands an engine in one turn arrive in one envelope and run one after another.
Their results are held and leave as one envelope when the run ends, or once the oldest has waited
`HOLD` seconds: the main thread looks before each task starts, and while a task runs a thread of
this module looks, and sends them itself. The main thread leaves the socket alone while it is inside a
task, so that thread is then its only user; it needs the interpreter to do so, so a task that keeps
the GIL in a C extension holds the results before it back until it lets go.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import zmq

from ..wire import one_message

log = logging.getLogger("ipphpc.engine")

#: seconds a result may wait for the results of the tasks after it
HOLD = 0.001


class ResultHold:
    """Held results of one run; `send` writes a message on the engine's task socket (from the thread)."""

    def __init__(self, send: Callable[[list], None], hold: float = HOLD):
        self.hold = hold
        self.active = False  # inside a run: results are held
        self._send = send
        self._cond = threading.Condition(threading.Lock())
        self._held: list[list[Any]] = []
        self._since = 0.0  # when the oldest held result was added
        self._in_task = False
        self._closed = False
        self._thread: threading.Thread | None = None  # started with the first result held: an engine that
        # never gets an envelope (an idle one, one of long tasks) does without it

    def add(self, frames: list[Any]) -> None:
        with self._cond:
            self._held.append(frames)
            if len(self._held) == 1:
                self._since = time.monotonic()
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="ipphpc-result-hold", daemon=True)
                self._thread.start()

    def take(self) -> list[list[Any]]:
        """Every held result, for the main thread to send (between tasks)."""
        with self._cond:
            held, self._held = self._held, []
            return held

    def enter(self) -> list[list[Any]]:
        """A task starts: the results held past their time, for the main thread to send first. (Those still
        held are not yet due, so the thread is waiting for their time: it needs no word.)"""
        with self._cond:
            due = self._held if self._held and time.monotonic() - self._since >= self.hold else []
            if due:
                self._held = []
            self._in_task = True
            return due

    def leave(self) -> None:
        """The task ended: from here on the main thread uses the socket again."""
        with self._cond:
            self._in_task = False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(2)

    def _watch(self) -> None:
        cond = self._cond
        with cond:
            while not self._closed:
                if not self._held:
                    cond.wait()
                    continue
                left = self._since + self.hold - time.monotonic()
                if left > 0:
                    cond.wait(left)
                    continue
                if not self._in_task:  # between tasks: the main thread sends them (enter, or the run's end)
                    cond.wait()
                    continue
                held, self._held = self._held, []
                try:
                    self._send(one_message(held))
                except zmq.ZMQError as e:
                    log.warning("could not send %d results: %s", len(held), e)
