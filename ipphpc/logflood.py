"""Warnings about refused input, a few a minute at most: a flood of forged or replayed messages, or of
connections, must not fill the disk with log lines."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any


class FloodLog:
    """Logs the first `limit` warnings of each minute, then how many more there were."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter | None, what: str, limit: int = 10):
        self.log, self.what, self.limit = log, what, limit
        self._window = [time.monotonic(), 0]  # start of the minute, warnings in it
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            more = 0
            if now - self._window[0] > 60.0:
                more = self._window[1] - self.limit
                self._window = [now, 0]
            self._window[1] += 1
            shown = self._window[1] <= self.limit
        if self.log is None:
            return
        if more > 0:
            self.log.warning("... and %d more %s in the last minute", more, self.what)
        if shown:
            self.log.warning(msg, *args)
