"""When this engine's allocation ends, and when it should stop taking tasks before that.

A batch job started by ipphpc exports the walltime it asked for and its start time
(IPPHPC_WALLTIME, IPPHPC_JOB_START); `ipphpc engine --walltime` sets it for engines started by
hand (local, ssh, a user's own batch script). The engine drains a margin before the end, later
or earlier by a random share of `stagger`, so the elements of an array do not all leave at once.
"""
from __future__ import annotations

import os
import random
import time
from typing import Mapping


def allocation(walltime: float = 0.0, env: Mapping[str, str] = os.environ,
               now: float | None = None) -> tuple[float, float] | None:
    """(start, end) of this engine's allocation in epoch seconds, or None when its end is unknown."""
    now = time.time() if now is None else now
    if walltime > 0:
        return now, now + walltime
    seconds = float(env.get("IPPHPC_WALLTIME") or 0)
    if seconds <= 0:
        return None
    start = float(env.get("IPPHPC_JOB_START") or now)
    return start, start + seconds


def drain_time(start: float, ends: float, margin: float, stagger: float, rng: random.Random | None = None) -> float:
    """When to stop taking tasks: `margin` before the end, and up to `stagger` earlier; never in the
    first half of the allocation (a margin as long as a short job would leave it no work at all)."""
    r = (rng or random.Random()).uniform(0.0, max(stagger, 0.0))
    return max(ends - margin - r, start + (ends - start) / 2)
