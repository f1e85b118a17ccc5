"""Tasks an earlier controller was running when it died: marked, not silently lost.

A restarted controller (same file, `--reuse`) finds records with no result. Each gets a result
signed by this controller saying so, which `get_result` returns like any other result: a
TaskAborted error naming why, instead of waiting forever for a result that will never come.
"""
from __future__ import annotations

import time

from ...wire import Session
from .base import Store
from .fields import from_result


def mark_lost(store: Store, session: Session) -> int:
    """Give every unfinished record a TaskAborted result; returns how many there were."""
    ids = [r["msg_id"] for r in store.find({"received": None}, ["msg_id"])]
    now = time.time()
    updates = []
    for mid in ids:
        fields = {"p": mid, "ok": False, "eid": None, "lost": 1, "err": {
            "ename": "TaskAborted", "tb": "",
            "evalue": "the controller stopped while this task was in flight; it was restarted and the task's "
                      "result never reached it (resubmit it with rc.resubmit)"}}
        updates.append((mid, from_result(fields, [b"", *session.pack("result", fields)], now)))
    if updates:
        store.update(updates)
        store.commit()
    return len(ids)
