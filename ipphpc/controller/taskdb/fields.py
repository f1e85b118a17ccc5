"""The TaskRecord: one row per task, built from the signed headers and frames the hub forwards.

A record is a plain dict. Times are seconds since the epoch (the client shows datetimes);
``header`` and ``result_header`` hold the JSON text exactly as it was signed, so a stored
result can be sent again as the very message the engine sent (``result_sig`` is its signature).
Payloads stay opaque bytes: nothing here unpickles.
"""
from __future__ import annotations

import json
from typing import Any

from ...wire import PAYLOAD_AT, Session, fan_part, head_parts, json_bytes, json_value, payload_digest
from ...wire import raw as _raw

#: every field, in the order the SQL and HDF5 layouts use
SCALARS: tuple[str, ...] = (
    "msg_id", "client_uuid", "engine_uuid", "engine_id", "label", "queue", "kind",
    "submitted", "started", "completed", "received", "resubmitted",
    "header", "result_header", "result_sig", "stdout", "stderr", "error", "execute_result",
)
BLOBS: tuple[str, ...] = ("buffers", "result_buffers")
FIELDS: tuple[str, ...] = SCALARS + BLOBS
TIMES = frozenset({"submitted", "started", "completed", "received"})
JSON_TEXT = frozenset({"header", "result_header"})  # JSON text on disk, dicts when queried
JSON_VALUES = frozenset({"error", "execute_result"})  # dicts, stored as JSON text by the file backends
INTS = frozenset({"engine_id"})
#: db_query's default keys: everything but the payloads, as in IPython Parallel
DEFAULT_KEYS: tuple[str, ...] = tuple(k for k in SCALARS if k != "result_sig")


def _t(ts: Any) -> float | None:
    """Times to the microsecond, as datetimes hold them: a datetime from a record compares equal to it.
    (The double nearest a whole number of microseconds; `round(ts, 6)` costs five times as much.)"""
    return None if ts is None else round(float(ts) * 1e6) / 1e6




def from_task(h: dict, frames: list, now: float) -> dict:
    """The record of a task as it entered the controller: `frames` is [ident, head, *payload]."""
    return {
        "msg_id": h["id"], "client_uuid": h.get("c"), "engine_uuid": None,
        "engine_id": h.get("to"), "label": h.get("lbl"), "queue": "mux" if "to" in h else "task",
        "kind": h.get("k"), "submitted": _t(h.get("ts", now)), "started": None, "completed": None,
        "received": None, "resubmitted": None, "header": head_parts(frames[1])[1].decode(),
        "result_header": None, "result_sig": None, "stdout": "", "stderr": "", "error": None,
        "execute_result": None, "buffers": [_raw(f) for f in frames[PAYLOAD_AT:]], "result_buffers": None,
    }


def from_fan(h: dict, frames: list, now: float) -> list[dict]:
    """The records of one message sent to many engines (`to` and `ids` lists): one per engine, sharing the
    payload frames, each with the header its engine got (not the list of every engine)."""
    first = from_task(h, frames, now)
    out = []
    for eid, mid in zip(h["to"], h["ids"]):
        rec = dict(first)
        rec["msg_id"], rec["engine_id"] = mid, eid
        rec["header"] = json_bytes(fan_part(h, eid, mid)).decode()  # as the hub signed it for that engine
        out.append(rec)
    return out


def from_result(h: dict, frames: list, now: float) -> dict:
    """The fields a result adds to its task's record: `frames` is [ident, head, *payload].

    The signed header carries the task's times (`st`, `cp`) and says when the engine's metadata frame
    holds more (`mo`: output, an error, an execute result); only then is that frame read. It is JSON,
    read only once a signed digest in the header matched, so the controller never parses
    unauthenticated bytes. That digest is `dm`, over the metadata frame alone, when the engine sent
    one: a large result is then not hashed here (the client checks all of it against `d` when it reads it).
    """
    payload = frames[PAYLOAD_AT:]
    sig, hb = head_parts(frames[1])
    out: dict[str, Any] = {
        "engine_id": h.get("eid"), "engine_uuid": h.get("s"), "received": _t(now),
        "result_header": hb.decode(), "result_sig": sig.decode(),
        "result_buffers": [_raw(f) for f in payload],
    }
    err = h.get("err")
    if err is not None:
        out.update(error=err, completed=_t(now))
        return out
    if "cp" in h and "mo" not in h:  # the signed header has the times, and the metadata holds nothing else
        out.update(started=_t(h["st"]), completed=_t(h["cp"]), stdout="", stderr="", error=None,
                   execute_result=None)
        return out
    try:
        if "dm" in h:
            if payload_digest(payload[:1]) != h["dm"]:
                return out
        else:
            Session.check_payload(h, payload)
        meta = json_value(_raw(payload[0]))
    except Exception:  # noqa: BLE001 - a damaged result is still stored; the client reports why it is unreadable
        return out
    out.update(started=_t(meta.get("started")), completed=_t(meta.get("completed")), stdout=meta.get("stdout"),
               stderr=meta.get("stderr"), error=meta.get("error"), execute_result=meta.get("execute_result"))
    return out


def blob_bytes(rec: dict) -> int:
    """Bytes a record's payloads take."""
    n = 0
    for k in BLOBS:
        for f in rec.get(k) or ():
            n += memoryview(f).nbytes
    return n


def for_user(rec: dict, keys: tuple[str, ...] | list[str]) -> dict:
    """The fields `keys` of a record as db_query returns them (header dicts parsed from their text)."""
    out = {}
    for k in keys:
        v = rec.get(k)
        if k in JSON_TEXT and isinstance(v, str):
            v = json.loads(v)
        out[k] = v
    return out
