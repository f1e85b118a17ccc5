"""Keep a batch cluster at n engines until it is stopped: elements lost to the scheduler are replaced.

An element is replaced when the scheduler ended it while the cluster ran: TIMEOUT, a node failure (LOST,
or Slurm's NODE_FAIL), CANCELLED (preempted, or cancelled by hand); or when it COMPLETED after its
engines drained for the walltime (the controller lists the engines that left and why). Elements that
FAILED otherwise, or completed for another reason, are not: an engine that crashes at start would
otherwise be resubmitted in a loop. The elements found in one look are resubmitted as one job array, up
to `max_replacements` in all.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable

from ..batch.states import State, ended_by_scheduler
from .helper_thread import HelperThread


def job_number(job_id: Any) -> str:
    """The job's number in any scheduler's spelling: '12_3', '12[3].server', '12.3' and '12' give '12'."""
    m = re.match(r"\d+", str(job_id or ""))
    return m.group() if m else str(job_id)


def lost_elements(records: list[Any], drained: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """(job number, array index) of the elements to replace among the poller's records."""
    out = set()
    for r in records:
        key = (job_number(r.job_id), r.array_index)
        if (r.state.finished and ended_by_scheduler(r.state, r.native_state, r.reason)) or \
                (r.state is State.COMPLETED and key in drained):
            out.add(key)
    return out


class Replacer(HelperThread):
    """A thread that looks every `interval` seconds and resubmits what was lost (see the module text)."""

    def __init__(self, cluster: Any, submit: Callable[[int], str], interval: float, max_replacements: int,
                 log: logging.Logger, background: bool = True):
        self.cluster, self.submit, self.interval, self.max = cluster, submit, interval, max_replacements
        self.log = log
        self.replaced: set[tuple[str, int]] = set()
        self.count = 0
        self.drained: set[tuple[str, int]] = set()
        self._since = 0
        self._warned = False
        self._start_thread("ipphpc-replace", background)

    def _main(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.look()
            except Exception as e:  # noqa: BLE001 - one failed look must not end replacement; say why
                self.log.warning("replacing lost engines: %s: %s", type(e).__name__, e)

    def look(self) -> int:
        """One look: learn which engines drained, find lost elements, resubmit them; returns how many."""
        rc = self.cluster.client
        if rc is None:  # no client connected (yet): the controller's list waits
            return 0
        status = rc._request("status", {"departed_since": self._since})
        for d in status.get("departed", []):
            self._since = max(self._since, d["n"] + 1)
            if d.get("drained") and d.get("array_index") is not None:
                self.drained.add((job_number(d.get("job_id")), d["array_index"]))
        records = [r for launcher in list(self.cluster.engine_sets) for r in launcher.states()]
        new = sorted(lost_elements(records, self.drained) - self.replaced)
        if not new or self._stop.is_set():
            return 0
        room = self.max - self.count
        if room <= 0:
            if not self._warned:
                self._warned = True
                self.log.warning("replacing lost engines: the limit of %d replaced elements is reached "
                                 "(c.HPCCluster.max_replacements); %d more are not replaced", self.max, len(new))
            return 0
        take = new[:room]
        per = max(1, int(getattr(self.cluster, "engines_per_task", 1) or 1))
        set_id = self.submit(len(take) * per)
        self.replaced.update(take)
        self.count += len(take)
        names = ", ".join(f"{j}[{i}]" for j, i in take[:8]) + (" ..." if len(take) > 8 else "")
        self.log.warning("replaced %d lost element(s) (%s: walltime, preemption, node failure or cancel) with "
                         "engine set %s", len(take), names, set_id)
        return len(take)
