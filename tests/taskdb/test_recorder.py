"""The writer thread tidies up once quiet after every burst, however the burst arrived."""
from __future__ import annotations

import logging
import time

from ipphpc.controller.taskdb.memory import DictStore
from ipphpc.controller.taskdb.recorder import Recorder
from tests.core.helpers import wait_until


class Counting(DictStore):
    def __init__(self):
        super().__init__()
        self.compactions: list[int] = []

    def compact(self) -> None:
        self.compactions.append(len(self.records))
        super().compact()


def test_a_pause_mid_burst_does_not_take_the_compaction_of_its_end():
    store = Counting()
    rec = Recorder(store, logging.getLogger("test"), window=0.0, max_batch=500)
    try:
        for start, n in ((0, 3000), (3000, 1500)):  # a burst, a pause of more than a second, a short burst
            for i in range(start, start + n):
                rec.put(("set", f"s-{i}", {"completed": 1.0}))
            wait_until(lambda: rec.idle(), 10, what="the writer to drain")
            time.sleep(1.6)
        assert len(store.compactions) == 2, store.compactions
    finally:
        rec.close()
