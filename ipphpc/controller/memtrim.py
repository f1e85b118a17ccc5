"""Give memory back to the system once a burst of tasks has drained.

A million queued tasks leave glibc's heap fragmented: the frames are freed but the pages stay
with the process. `malloc_trim` returns them; it is called only when the controller has gone
idle after routing many tasks, so it never runs on the busy path.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Callable

_libc = None
try:
    _name = ctypes.util.find_library("c")
    _libc = ctypes.CDLL(_name) if _name else None
    if _libc is not None and not hasattr(_libc, "malloc_trim"):
        _libc = None
except OSError:  # not glibc (macOS, musl without it): nothing to trim
    _libc = None


def trim() -> None:
    """Collect garbage and hand free heap pages back to the system."""
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)


def tune_gc(young: int = 50_000) -> None:
    """Collect young objects every `young` allocations instead of 700, and never walk what startup made.

    A controller's objects are messages, freed by reference counting the moment they are routed; the
    cyclic collector finds next to nothing in them, yet with a backlog of tasks each of its passes walks
    them all, and the writer of the task database, which makes a record per task, set it off over and
    over (half the writer's time). Whatever cycles there are go at the next collection or at `trim`.
    """
    gc.freeze()
    gc.set_threshold(young, 20, 100)


class Trimmer:
    """Call `check(routed, idle)` now and then; trims after `every` tasks were routed and all is idle.

    `tidy` runs first: containers that held a burst's tasks keep their full-size tables once emptied
    (Python never shrinks a set or dict on removal), so it gives them new, small ones.
    """

    def __init__(self, every: int = 20_000, tidy: Callable[[], None] | None = None):
        self.every = every
        self.tidy = tidy
        self.last = 0

    def check(self, routed: int, idle: bool) -> bool:
        if not idle or routed - self.last < self.every:
            return False
        self.last = routed
        if self.tidy is not None:
            self.tidy()
        trim()
        return True
