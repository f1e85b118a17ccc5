"""Grow or shrink a running cluster.

Growing submits one more engine set (one job array for a batch cluster). Shrinking stops engines, idle
ones and the newest first; an engine told to stop finishes the tasks it holds first, so no running task
is killed and none is lost. Elements still waiting in the queue count as engines to come.
"""
from __future__ import annotations

import time
from typing import Any


def engines_now(cluster: Any, rc: Any) -> int:
    """Engines the cluster has or will have: for batch sets, those of every element not ended (queued,
    held, running, or submitted and not yet seen by the poller); for processes, those registered."""
    per = max(1, int(getattr(cluster, "engines_per_task", 1) or 1))
    batch = [x for x in list(cluster.engine_sets) if getattr(x, "states", None) is not None]
    if not batch:
        return len(rc.ids)
    alive = 0
    for launcher in batch:
        elements = -(-int(getattr(launcher, "n", 0)) // per)
        alive += elements - sum(1 for r in launcher.states() if r.state.finished)
    return alive * per


def stop_engine_ids(rc: Any, ids: list[int], timeout: float) -> None:
    """Ask engines to leave once done with what they hold, and wait until they have."""
    missing = sorted(set(ids) - set(rc.ids))
    if missing:
        raise KeyError(f"no engine(s) {missing} in this cluster; its engines: {rc.ids}")
    rc._request("stop_engines", {"targets": list(ids)})
    wait_gone(rc, ids, timeout, "still busy after {timeout:g} s; they leave once their tasks are done")


def wait_gone(rc: Any, ids: list[int], timeout: float, then: str) -> None:
    """Wait until none of the engines `ids` is registered; else TimeoutError: 'engine(s) [..] ' + `then`
    (formatted with `timeout`)."""
    deadline = time.monotonic() + timeout
    while set(ids) & set(rc.ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"engine(s) {sorted(set(ids) & set(rc.ids))} " + then.format(timeout=timeout))
        time.sleep(0.05)


def scale(cluster: Any, rc: Any, n: int, timeout: float) -> dict:
    """Bring the cluster to `n` engines; returns what was done: {'added': k} or {'stopped': [ids]}."""
    if n < 0:
        raise ValueError(f"scale({n}): the number of engines cannot be negative")
    ids = list(rc.ids)
    have = engines_now(cluster, rc)
    if n > have:
        cluster.start_engines_sync(n - have)
        return {"added": n - have}
    if n == have:
        return {}
    status = rc.queue_status()
    busy = {eid: status.get(eid, {}).get("tasks", 0) + status.get(eid, {}).get("queue", 0) for eid in ids}
    victims = sorted(ids, key=lambda e: (busy[e] > 0, -e))[:have - n]
    stop_engine_ids(rc, victims, timeout)
    return {"stopped": sorted(victims)}
