"""The client's side of the controller's task database: results of any task, queries, resubmission.

Results fetched from the controller arrive as the signed messages the engines sent, so they go
through the client's one decoding path (`Client._decode`); nothing here trusts the controller
with unpickling.
"""
from __future__ import annotations

import datetime
from typing import Any, Iterable

from .asyncresult import AsyncHubResult, build_metadata

TIMES = ("submitted", "started", "completed", "received")


class UnknownTask(KeyError, ValueError):
    """No record of a msg_id: a KeyError (as the task database says) and the ValueError earlier versions raised."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoTaskDatabase(RuntimeError):
    """The controller runs without a task database (--db=none)."""


def _epoch(v: Any) -> Any:
    """Datetimes in a query become the epoch seconds records hold (naive ones are local time, as shown)."""
    if isinstance(v, datetime.datetime):
        return round(v.timestamp(), 6)  # records hold times to the microsecond
    if isinstance(v, dict):
        return {k: _epoch(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_epoch(x) for x in v]
    return v


class TaskDBMixin:
    """Client methods that ask the controller's task database (IPython Parallel's names and shapes)."""

    def _db(self, t: str, fields: dict, timeout: float = 60.0) -> dict:
        reply = self._request(t, fields, timeout=timeout)
        err = reply.get("error")
        if err:
            if err.startswith("the controller keeps no task records"):
                raise NoTaskDatabase(err)
            raise {"KeyError": KeyError, "ValueError": ValueError}.get(reply.get("etype"), RuntimeError)(err)
        return reply

    def _hub_result(self, h: dict, payload: list) -> bool:
        """A result the controller sent for a get_result/resubmit of this client: True if one was waiting."""
        mid = h["p"]
        with self._lock:
            waiting = self._hub_waiting.pop(mid, None)
        if not waiting:
            return False
        value, error, meta = self._decode(h, payload)
        md = build_metadata(mid, self._hub_submitted.pop(mid, 0), meta, h.get("eid"))
        self.results[mid] = error if error is not None else value
        self.metadata[mid] = md
        for ar, i in waiting:
            ar._child_done(i, value, error, md)
        return True

    def _wait_hub(self, ar: AsyncHubResult, pairs: list[tuple[int, str]]) -> None:
        with self._lock:
            for i, m in pairs:
                self._hub_waiting.setdefault(m, []).append((ar, i))

    def _unwait_hub(self, ar: AsyncHubResult, mids: Iterable[str]) -> None:
        with self._lock:
            for m in mids:
                left = [w for w in self._hub_waiting.get(m, []) if w[0] is not ar]
                if left:
                    self._hub_waiting[m] = left
                else:
                    self._hub_waiting.pop(m, None)

    def _fetch(self, ar: AsyncHubResult, pairs: list[tuple[int, str]]) -> None:
        """Ask the controller for results the client does not hold; unknown ids raise KeyError naming them."""
        self._wait_hub(ar, pairs)
        mids = [m for _, m in pairs]
        try:
            reply = self._db("db_get", {"ids": mids})
        except Exception:
            self._unwait_hub(ar, mids)
            raise
        submitted = reply.get("submitted") or {}
        for i, m in pairs:
            t = submitted.get(m)
            if t is None:
                continue
            md = self.metadata.get(m)
            if md is None:  # its result comes later: it takes the time then
                self._hub_submitted[m] = t
                continue
            when = datetime.datetime.fromtimestamp(t)  # its result came before this reply
            for d in (md, ar._meta[i]):
                if d.get("submitted") is None:
                    d["submitted"] = when
        missing = reply.get("missing") or {}
        if missing:
            self._unwait_hub(ar, mids)
            m, why = next(iter(missing.items()))
            more = f"; {len(missing) - 1} more unknown" if len(missing) > 1 else ""
            raise UnknownTask(f"unknown task {m!r}: no record in the controller's task database"
                              + (f": {why}" if why else " (wrong msg_id, or purged)") + more)

    def db_query(self, query: dict, keys: Any = None) -> list[dict]:
        """TaskRecords matching a MongoDB-style query ($lt $gt $lte $gte $eq $ne $in $nin $glob $regex), with
        `keys` (default: everything but the buffers); datetimes in and out."""
        if isinstance(keys, str):
            keys = [keys]
        reply = self._db("db_query", {"query": _epoch(query), "keys": None if keys is None else list(keys)})
        frames = reply.get("_payload", [])
        recs = reply["records"]
        for r in recs:
            for k in TIMES:
                if r.get(k) is not None:
                    r[k] = datetime.datetime.fromtimestamp(r[k])
            for k in ("buffers", "result_buffers"):
                if isinstance(r.get(k), list):
                    r[k] = [bytes(frames[i]) for i in r[k]]
        return recs

    def hub_history(self) -> list[str]:
        """msg_ids of every task the controller recorded, oldest first."""
        return self._db("db_history", {})["history"]

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict:
        """{'pending': [...], 'completed': [...]} for tasks of any client; with status_only=False, also the
        completed results by msg_id. An unknown msg_id raises KeyError naming it."""
        if isinstance(msg_ids, (str, int)):
            msg_ids = [msg_ids]
        mids = [self.history[m] if isinstance(m, int) else m for m in msg_ids]
        reply = self._db("db_status", {"ids": mids})
        if reply.get("missing"):
            m, why = next(iter(reply["missing"].items()))
            raise KeyError(f"no task {m!r} in the controller's task database" + (f": {why}" if why else ""))
        out: dict[str, Any] = {"pending": reply["pending"], "completed": reply["completed"]}
        if not status_only and out["completed"]:
            ar = self.get_result(out["completed"], block=False)
            values = ar.get(return_exceptions=True) if hasattr(ar, "get") else []
            out.update(zip(out["completed"], values if isinstance(values, list) else [values]))
        return out

    def resubmit(self, indices_or_msg_ids: Any = None, metadata: dict | None = None,
                 block: bool | None = None) -> Any:
        """Run tasks again (of any client, by history index or msg_id): an AsyncHubResult of new msg_ids."""
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        single = not isinstance(indices_or_msg_ids, (list, tuple, set))
        items = [indices_or_msg_ids] if single else list(indices_or_msg_ids)
        mids = [self.history[i] if isinstance(i, int) else i for i in items]
        ar = AsyncHubResult(len(mids), "resubmit", single=single)
        ar._rc = self
        with self._lock:
            new = [self.session.next_id()[1] for _ in mids]
        for i, m in enumerate(new):
            ar.msg_ids[i] = m
        self._wait_hub(ar, list(enumerate(new)))
        try:
            self._db("db_resubmit", {"ids": mids, "new_ids": new})
        except Exception:
            self._unwait_hub(ar, new)
            raise
        block = self.block if block is None else block
        return ar.get() if block else ar

    def purge_hub_results(self, jobs: Any = (), targets: Any = ()) -> int:
        """Forget finished tasks in the controller's database: 'all', msg_ids/AsyncResults, or engines' tasks."""
        fields: dict[str, Any] = {}
        if jobs == "all" or targets == "all":
            fields["all"] = True
        else:
            if isinstance(jobs, (str, int)) or not isinstance(jobs, Iterable):
                jobs = [jobs]
            ids: list[str] = []
            for j in jobs:
                ids += list(j.msg_ids) if hasattr(j, "msg_ids") else [self.history[j] if isinstance(j, int) else j]
            fields["ids"] = ids
            if targets or targets == 0:
                fields["targets"] = [targets] if isinstance(targets, int) else list(targets)
        if not fields.get("all") and not fields.get("ids") and "targets" not in fields:
            raise ValueError("purge_hub_results needs jobs (msg_ids, AsyncResults or 'all') or targets")
        return self._db("db_purge", fields)["purged"]
