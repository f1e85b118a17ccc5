"""The cluster's witness: tells the controller why a batch engine went silent, from the scheduler's view.

The controller parks the tasks of a batch engine whose heartbeat stopped without a word, and answers
this thread's long poll (`watch_engines`) at once (see ipphpc.controller.verdicts). The witness then
asks the scheduler (one forced poll, repeated every few seconds while the element still shows as
running, within the controller's wait) and sends its verdict: the scheduler's reason when the
scheduler ended the element (node failure, walltime, preemption, a cancel), else its word on it.
No scheduler call is made while no engine is lost.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ..batch.states import ended_by_scheduler
from .helper_thread import HelperThread
from .replace import job_number

#: seconds the long poll waits for news; between two forced polls of a lost engine's element
POLL_WAIT, REPOLL = 10.0, 2.0


class Witness(HelperThread):
    """A thread answering the controller's questions about silent engines of `cluster` (batch sets only)."""

    def __init__(self, cluster: Any, log: logging.Logger, background: bool = True):
        self.cluster, self.log = cluster, log
        self.pending: dict[int, tuple[dict, float]] = {}  # eid -> (what the controller said, answer by)
        self.answered = 0
        self._polled: dict[int, float] = {}
        self._start_thread("ipphpc-witness", background)

    def stop(self, timeout: float = 0.1) -> None:
        """A long poll under way ends when the cluster closes its client: no need to wait for it."""
        super().stop(timeout)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self.look(POLL_WAIT if not self.pending else REPOLL)
            except Exception as e:  # noqa: BLE001 - a failed look must not end the witness; say why
                if self._stop.is_set():  # its client closed with the cluster
                    return
                self.log.warning("witness: %s: %s", type(e).__name__, e)
                self._stop.wait(REPOLL)

    def look(self, wait: float) -> None:
        """One long poll for news, then a verdict for every lost engine the scheduler can speak of."""
        rc = self.cluster.client
        if rc is None:  # the cluster connects its client just after starting its engines
            self._stop.wait(0.2)
            return
        news = rc._request("watch_engines", {"wait": wait}, timeout=wait + 10)
        now = time.monotonic()
        for lost in news.get("lost", []):
            self.pending[int(lost["eid"])] = (lost, now + float(lost.get("answer_within", 0)))
        for eid, (lost, by) in list(self.pending.items()):
            if now >= by:
                del self.pending[eid]  # the controller has failed its tasks already
                continue
            record = self._element(lost)
            if record is None or not record.state.finished:
                continue  # the scheduler has not seen it end (yet): asked again in a moment
            del self.pending[eid]
            ended = ended_by_scheduler(record.state, record.native_state, record.reason)
            says = record.native_state + (f" ({record.reason})" if record.reason else "")
            rc._request("verdict", {"eid": eid, "ended": ended, "says": says})
            self.answered += 1
            self.log.info("engine %d: the scheduler says its element %s ended %s%s", eid,
                          f"{lost.get('job_id')}[{lost.get('array_index')}]", says, f": {ended}" if ended else "")

    def _element(self, lost: dict) -> Any:
        """The poller's record of the lost engine's element, read fresh from the scheduler."""
        job = job_number(lost.get("job_id"))
        for launcher in list(self.cluster.engine_sets):
            if job not in {job_number(j) for j in getattr(launcher, "job_ids", None) or []}:
                continue
            poller = launcher.poller
            if time.monotonic() - self._polled.get(id(poller), 0.0) >= REPOLL:
                poller.poll_once(force=True)
                self._polled[id(poller)] = time.monotonic()
            for r in launcher.states():
                if job_number(r.job_id) == job and r.array_index == lost.get("array_index"):
                    return r
        return None
