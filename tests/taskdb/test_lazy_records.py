"""The in-memory store keeps the messages a record is made of and makes the record when it is read: what it
gives back must be what the record built at once from the same messages holds."""
from __future__ import annotations

import json

import pytest

from ipphpc.controller.taskdb import fields
from ipphpc.controller.taskdb.memory import DictStore
from ipphpc.wire import Session, payload_digest

CLIENT, ENGINE = Session("k" * 64), Session("k" * 64)


def _task(extra: dict | None = None, payload: list[bytes] | None = None) -> tuple[dict, list]:
    frames = [b"client-ident", *CLIENT.pack("task", {"k": "apply", "c": "cid", **(extra or {})},
                                            payload or [b"fn", b"args"])]
    return CLIENT.split(frames)[1], frames


def _result(mid: str, meta: dict | None = None, payload: list[bytes] | None = None) -> tuple[dict, list]:
    extra: dict = {"p": mid, "ok": True, "eid": 1}
    if meta is None:
        extra.update(st=1000.25, cp=1000.75)
        body = payload or [b"value"]
    else:
        body = [json.dumps(meta).encode(), *(payload or [])]
        extra.update(mo=1, dm=payload_digest(body[:1]))
    frames = [b"engine-ident", *ENGINE.pack("result", extra, body)]
    return ENGINE.split(frames)[1], frames


def _at_once(task: tuple[dict, list], result: tuple[dict, list] | None, now: float) -> dict:
    rec = fields.from_task(task[0], task[1], 0.0)
    if result is not None:
        rec.update(fields.from_result(result[0], result[1], now))
    return rec


def _same(got: dict, want: dict) -> None:
    for k in fields.FIELDS:
        g, w = got.get(k), want.get(k)
        if k in fields.BLOBS and g is not None:
            g, w = [bytes(f) for f in g], [bytes(f) for f in w]
        assert g == w, k


@pytest.mark.parametrize("meta", [None, {"started": 1.5, "completed": 2.5, "stdout": "hi\n", "stderr": "",
                                         "execute_result": {"data": {"text/plain": "3"}}}])
def test_a_record_read_is_the_record_built_at_once(meta):
    s = DictStore()
    task = _task({"to": 1, "lbl": "fit"})
    mid = task[0]["id"]
    s.add_task(*task)
    _same(s.get([mid])[mid], _at_once(task, None, 0.0))
    result = _result(mid, meta, [b"x" * 70_000] if meta else None)  # one frame above the copy limit
    s.add_result(*result, 1234.5)
    s.settle()
    _same(s.get([mid])[mid], _at_once(task, result, 1234.5))
    assert [r["msg_id"] for r in s.find({"completed": {"$ne": None}})] == [mid]


def test_packed_and_changed_records_keep_every_field():
    s = DictStore()
    tasks = [_task() for _ in range(3)]
    results = [_result(t[0]["id"]) for t in tasks[:2]]
    for t in tasks:
        s.add_task(*t)
    for r in results:
        s.add_result(*r, 99.0)
    s.compact()  # the finished two are packed, the pending one stays as it came
    assert [type(s.records[t[0]["id"]]) for t in tasks] == [bytes, bytes, tuple]
    for t, r in zip(tasks, results + [None]):
        _same(s.get([t[0]["id"]])[t[0]["id"]], _at_once(t, r, 99.0))
    first = tasks[0][0]["id"]
    s.update([(first, {"resubmitted": 5.0})])
    want = _at_once(tasks[0], results[0], 99.0)
    want["resubmitted"] = 5.0
    _same(s.get([first])[first], want)


def test_the_controllers_own_error_results_are_recorded_as_it_signed_them():
    s = DictStore()
    task = _task()
    mid = task[0]["id"]
    s.add_task(*task)
    err = {"p": mid, "ok": False, "eid": None, "err": {"ename": "EngineError", "evalue": "engine died", "tb": ""}}
    frames = [b"client-ident", *CLIENT.pack("result", err)]
    s.add_result(err, frames, 7.0)
    rec = s.get([mid])[mid]
    assert rec["error"]["ename"] == "EngineError" and rec["engine_uuid"] is None and rec["completed"] == 7.0


def test_a_broadcast_gets_a_record_per_engine():
    s = DictStore()
    h, frames = _task({"to": [0, 1], "ids": ["b-0", "b-1"]})
    s.add_task(h, frames)
    got = s.get(["b-0", "b-1"])
    assert [got[m]["engine_id"] for m in ("b-0", "b-1")] == [0, 1]


def test_culling_takes_finished_records_first_and_counts_lazy_ones():
    s = DictStore(record_limit=10, size_limit=10**9)
    tasks = [_task() for _ in range(12)]
    for t in tasks:
        s.add_task(*t)
    for t in tasks[1:6]:
        s.add_result(*_result(t[0]["id"]), 1.0)
    s.settle()
    kept = list(s.records)
    assert len(kept) <= 10 and tasks[0][0]["id"] in kept  # the oldest is pending: never culled
    gone = [t[0]["id"] for t in tasks if t[0]["id"] not in kept]
    assert gone == [t[0]["id"] for t in tasks[1:1 + len(gone)]] and "record_limit=10" in s.culled(gone[0])
    assert s.nbytes == sum(s._sized(r) for r in s.records.values())
