"""Adaptive size: engines are added while tasks wait, and released only after staying idle.

Every `interval` seconds one look asks the controller for its queues (no scheduler call: batch states
come from the poller's shared cache). Tasks waiting with fewer than `maximum` engines: as many more as
tasks wait, up to `maximum`, in one submission. No task waiting: engines idle for `idle_timeout`
seconds in a row are stopped, down to `minimum`; an engine that ran a task a moment ago is kept, so a
pause between two computations does not release the cluster.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from .helper_thread import HelperThread
from .scale import engines_now, stop_engine_ids

#: how long queued tasks may wait for an engine while adapting (the controller's engine_wait)
ADAPT_ENGINE_WAIT = 24 * 3600.0


def parse_range(text: str) -> tuple[int, int, float] | None:
    """'MIN:MAX' or 'MIN:MAX:IDLE_SECONDS' (`--adapt`, c.HPCCluster.adapt_range) as (minimum, maximum,
    idle_timeout); '' is None (no adaptation)."""
    if not text:
        return None
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        lo, hi = int(parts[0]), int(parts[1])
        idle = float(parts[2]) if len(parts) == 3 else 300.0
    except ValueError:
        raise ValueError(f"adapt range {text!r}: write MIN:MAX or MIN:MAX:IDLE_SECONDS, e.g. 0:64 or 0:64:600") \
            from None
    if lo < 0 or hi < max(1, lo) or idle < 0:
        raise ValueError(f"adapt range {text!r}: need 0 <= MIN <= MAX, MAX >= 1 and IDLE_SECONDS >= 0")
    return lo, hi, idle


class Adaptive(HelperThread):
    """The running adaptation of one cluster; `stop()` ends it (stopping the cluster does too)."""

    def __init__(self, cluster: Any, minimum: int, maximum: int, idle_timeout: float, interval: float,
                 log: logging.Logger, background: bool = True):
        if minimum < 0 or maximum < max(1, minimum):
            raise ValueError(f"adapt(minimum={minimum}, maximum={maximum}): need 0 <= minimum <= maximum "
                             f"and maximum >= 1")
        if idle_timeout < 0 or interval <= 0:
            raise ValueError(f"adapt(idle_timeout={idle_timeout}, interval={interval}): idle_timeout >= 0 and "
                             f"interval > 0 seconds")
        self.cluster, self.minimum, self.maximum = cluster, minimum, maximum
        self.idle_timeout, self.interval, self.log = idle_timeout, interval, log
        self.idle_since: dict[int, float] = {}
        self.added = self.released = 0
        self._rc = None
        self._start_thread("ipphpc-adapt", background)

    def _client(self) -> Any:
        if self._rc is None:
            rc, own = self.cluster._client_for_control()
            self._rc = rc
            self._own = own
            rc._request("engine_wait", {"seconds": ADAPT_ENGINE_WAIT})  # tasks wait for engines to be added
        return self._rc

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.look()
                except Exception as e:  # noqa: BLE001 - one failed look must not end adaptation; say why
                    self.log.warning("adapt: %s: %s", type(e).__name__, e)
                self._stop.wait(self.interval)
        finally:
            if self._rc is not None and self._own:
                self._rc.close()

    def look(self) -> None:
        rc = self._client()
        status = rc.queue_status()
        waiting = int(status.get("unassigned", 0))
        have = engines_now(self.cluster, rc)
        now = time.monotonic()
        if have < self.minimum or (waiting and have < self.maximum):
            add = max(self.minimum - have, min(self.maximum - have, waiting))
            registered = len(rc.ids)
            set_id = self.cluster.start_engines_sync(add)
            if getattr(self.cluster.engine_sets[-1], "states", None) is None:
                # processes: count them once registered (batch elements count while queued)
                try:
                    rc.wait_for_engines(registered + add, timeout=60)
                except TimeoutError as e:
                    self.log.warning("adapt: %s", e)
            self.added += add
            self.log.info("adapt: %d task(s) waiting, %d engine(s): %d more (engine set %s)", waiting, have, add,
                          set_id)
            return
        busy = {int(k): v["tasks"] + v["queue"] for k, v in status.items() if k != "unassigned"}
        for eid, n in busy.items():
            if n:
                self.idle_since.pop(eid, None)
            else:
                self.idle_since.setdefault(eid, now)
        for eid in list(self.idle_since):
            if eid not in busy:
                del self.idle_since[eid]
        if waiting:
            return
        idle = sorted((eid for eid, t in self.idle_since.items() if now - t >= self.idle_timeout), reverse=True)
        victims = idle[:max(0, min(len(idle), have - self.minimum))]
        if victims:
            stop_engine_ids(rc, victims, timeout=60)
            self.released += len(victims)
            for eid in victims:
                self.idle_since.pop(eid, None)
            self.log.info("adapt: released %d engine(s) idle for %g s: %s", len(victims), self.idle_timeout,
                          victims)
