"""Warnings about refused input: the first ten of a minute, then how many more."""
from __future__ import annotations

import logging

from ipphpc import logflood


def test_a_flood_logs_ten_a_minute_then_the_count(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(logflood.time, "monotonic", lambda: now[0])
    flood = logflood.FloodLog(logging.getLogger("ipphpc.test"), "things refused")
    with caplog.at_level(logging.WARNING, logger="ipphpc.test"):
        for i in range(25):
            flood.warning("refused %d", i)
        assert [r.getMessage() for r in caplog.records] == [f"refused {i}" for i in range(10)]
        caplog.clear()
        now[0] += 61
        flood.warning("refused %d", 25)
        assert [r.getMessage() for r in caplog.records] == ["... and 15 more things refused in the last minute",
                                                            "refused 25"]
