"""Backends on their own: the same records and queries give the same answers; limits; files that persist."""
from __future__ import annotations

import json

import pytest

from ipphpc.controller.taskdb.memory import CulledIds, DictStore
from ipphpc.controller.taskdb.query import QueryError

from .conftest import make_store

STORES = ["dict", "sqlite", "hdf5", "mongodb"]


def _task(i: int, label: str | None = None, size: int = 10) -> dict:
    return {"msg_id": f"s-{i}", "client_uuid": "c1" if i % 2 else "c2", "engine_uuid": None, "engine_id": None,
            "label": label, "queue": "task", "kind": "apply", "submitted": 1000.0 + i, "started": None,
            "completed": None, "received": None, "resubmitted": None, "header": json.dumps({"id": f"s-{i}"}),
            "result_header": None, "result_sig": None, "stdout": None, "stderr": None, "error": None,
            "execute_result": None, "buffers": [memoryview(bytes([i % 256]) * size), b"x"], "result_buffers": None}


def _result(i: int) -> tuple[str, dict]:
    return f"s-{i}", {"engine_id": i % 3, "engine_uuid": f"e{i % 3}", "received": 2000.0 + i,
                      "started": 1500.0 + i, "completed": 1600.0 + i, "result_header": json.dumps({"p": f"s-{i}"}),
                      "result_sig": "sig", "stdout": f"out {i}", "stderr": "",
                      "error": {"ename": "ValueError"} if i % 5 == 0 else None, "execute_result": None,
                      "result_buffers": [b"{}", bytes(range(i % 7))]}


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    s.insert([_task(i, f"fit_{i % 4}" if i % 3 else None) for i in range(40)])
    s.update([_result(i) for i in range(0, 40, 2)])
    s.commit()
    yield s
    s.close()


QUERIES = [
    ({"label": {"$glob": "fit_[12]"}}, lambda i: i % 3 and i % 4 in (1, 2)),
    ({"label": {"$regex": "_3$"}}, lambda i: i % 3 and i % 4 == 3),
    ({"completed": None}, lambda i: i % 2 == 1),
    ({"completed": {"$gt": 1610.0}}, lambda i: i % 2 == 0 and i > 10),
    ({"completed": {"$gte": 1610.0, "$lt": 1620.0}}, lambda i: i % 2 == 0 and 10 <= i < 20),
    ({"submitted": {"$lte": 1005.0}}, lambda i: i <= 5),
    ({"engine_id": {"$in": [1, 2]}}, lambda i: i % 2 == 0 and i % 3 in (1, 2)),
    ({"engine_id": {"$nin": [1, 2]}}, lambda i: not (i % 2 == 0 and i % 3 in (1, 2))),
    ({"client_uuid": {"$ne": "c1"}}, lambda i: i % 2 == 0),
    ({"client_uuid": "c1", "label": None}, lambda i: i % 2 == 1 and i % 3 == 0),
    ({"stdout": {"$eq": "out 4"}}, lambda i: i == 4),
    ({"msg_id": {"$in": ["s-3", "s-4", "nope"]}, "completed": {"$ne": None}}, lambda i: i == 4),
    ({"result_header": {"$eq": {"p": "s-6"}}}, lambda i: i == 6),
]


@pytest.mark.parametrize("query,expect", QUERIES, ids=[json.dumps(q) for q, _ in QUERIES])
def test_same_answers(store, query, expect):
    got = [r["msg_id"] for r in store.find(query, ["msg_id"])]
    assert got == [f"s-{i}" for i in range(40) if expect(i)]


def test_records_round_trip(store):
    r = store.get(["s-4", "s-5"])
    assert r["s-4"]["buffers"] == [bytes([4]) * 10, b"x"] and r["s-4"]["result_buffers"] == [b"{}", bytes(range(4))]
    assert r["s-4"]["error"] is None and r["s-5"]["result_buffers"] is None
    assert store.get(["s-10"], ["error"])["s-10"]["error"] == {"ename": "ValueError"}
    assert [x["msg_id"] for x in store.scan(["msg_id"])] == [f"s-{i}" for i in range(40)]
    assert store.delete(["s-4", "nope"]) == 1
    store.commit()
    assert "s-4" not in store.get(["s-4"]) and len(store.find({})) == 39


def test_bad_queries_name_what_is_wrong(store):
    with pytest.raises(QueryError, match=r"'\$foo'.*valid operators: \$lt, \$gt, \$lte, \$gte, \$eq, \$ne, \$in"):
        store.find({"label": {"$foo": 1}})
    with pytest.raises(QueryError, match="unknown TaskRecord field 'colour'"):
        store.find({"colour": "red"})
    with pytest.raises(QueryError, match=r"\$in on 'label' takes a list"):
        store.find({"label": {"$in": "fit"}})


@pytest.mark.parametrize("kind", ["sqlite", "hdf5"])
def test_files_persist(kind, tmp_path):
    s = make_store(kind, tmp_path)
    s.insert([_task(i) for i in range(5)])
    s.update([_result(2)])
    s.commit()
    s.close()
    again = make_store(kind, tmp_path)
    assert [r["msg_id"] for r in again.find({"completed": {"$ne": None}})] == ["s-2"]
    assert len(again.find({})) == 5
    again.close()


def test_dict_culls_oldest_finished_and_says_which_limit():
    s = DictStore(record_limit=20, size_limit=10**9)
    s.insert([_task(i) for i in range(15)])
    s.update([_result(i) for i in range(1, 15)])  # s-0 stays pending
    s.insert([_task(i) for i in range(15, 25)])
    assert len(s.records) <= 20 and "s-0" in s.records
    gone = [f"s-{i}" for i in range(25) if f"s-{i}" not in s.records]
    assert gone and gone[0] == "s-1"
    assert "record_limit=20" in s.culled(gone[0])


def test_dict_byte_limit():
    s = DictStore(record_limit=10**6, size_limit=200_000)
    for i in range(40):
        s.insert([_task(i, size=20_000)])
        s.update([_result(i)])
    assert s.nbytes <= 200_000 and len(s.records) < 40
    assert "size_limit=200000 bytes" in s.culled("s-0")
    assert s.culled("s-39") is None


def test_culled_ids_are_kept_as_runs_and_bounded():
    c = CulledIds(limit=4)
    for n in [1, 2, 3, 5, 6, 4]:  # 4 arrives last and joins the two runs
        c.add(f"abc-{n}", "why")
    assert c.count == 1 and c.runs["abc"] == [[1, 6, 0]]
    assert [c.get(f"abc-{n}") for n in (0, 1, 6, 7)] == [None, "why", "why", None]
    c.add("abc-9", "other")  # another reason starts its own run
    c.add("abc-10", "other")
    assert c.runs["abc"] == [[1, 6, 0], [9, 10, 1]] and c.get("abc-10") == "other"
    c.add("odd id", "why")
    c.add("def-1", "why")
    c.add("ghi-1", "why")  # a fifth entry: the oldest session's first run goes
    assert c.count == 4 and c.get("abc-3") is None and c.get("abc-9") == "other"
    assert c.get("odd id") == "why" and c.get("ghi-1") == "why"


def test_culled_ids_remade_in_fresh_memory_answer_as_before():
    c = CulledIds(limit=100)
    for n in [*range(1, 50, 2), *range(2, 20, 2)]:  # gaps: pending tasks culled later than their neighbours
        c.add(f"abc-{n}", "why")
    c.add("odd id", "other")
    before = ({f"abc-{n}": c.get(f"abc-{n}") for n in range(60)}, c.get("odd id"), c.count)
    old_runs = c.runs["abc"]
    c.renew()
    assert ({f"abc-{n}": c.get(f"abc-{n}") for n in range(60)}, c.get("odd id"), c.count) == before
    assert c.runs["abc"] == old_runs and c.runs["abc"] is not old_runs and c.runs["abc"][0] is not old_runs[0]
    c.add("abc-20", "why")  # still a working structure: 20 joins [1, 19] and [21, 21]
    assert c.get("abc-20") == "why" and c.count == before[2] - 1


def test_a_million_culled_ids_cost_little():
    s = DictStore(record_limit=100, size_limit=10**9)
    for start in range(0, 200_000, 1000):
        s.insert([_task(i) for i in range(start, start + 1000)])
        s.update([_result(i) for i in range(start, start + 1000)])
    assert len(s.records) <= 100 and s._culled.count <= 2
    assert "record_limit=100" in s.culled("s-0") and "record_limit=100" in s.culled("s-199000")


def test_dict_compaction_packs_finished_records_and_keeps_every_answer():
    s = DictStore(record_limit=10**6, size_limit=10**9)
    s.insert([_task(i) for i in range(30)])
    s.update([_result(i) for i in range(0, 30, 2)])  # odd ones stay pending
    s.insert([{**_task(30), "buffers": [memoryview(b"b" * 100_000)]}])  # a large frame is kept as received
    s.update([(_result(30)[0], {**_result(30)[1], "result_buffers": [b"{}", memoryview(b"r" * 100_000)]})])
    before = s.get([f"s-{i}" for i in range(31)])
    order = list(s.records)
    s.compact()
    assert [type(s.records[f"s-{i}"]) for i in (0, 1, 30)] == [bytes, dict, dict]
    assert list(s.records) == order
    assert s.get([f"s-{i}" for i in range(31)]) == before
    assert [r["msg_id"] for r in s.scan(["msg_id"])] == order
    assert s.nbytes == sum(len(r) + 200 if type(r) is bytes else r["_size"] for r in s.records.values())
    s.update([("s-0", {"resubmitted": "s-99"})])  # a packed record unpacked to be changed
    assert s.get(["s-0"])["s-0"]["resubmitted"] == "s-99" and s.get(["s-0"])["s-0"]["stdout"] == "out 0"
    s.size_limit = s.nbytes // 2
    s.insert([_task(40)])
    assert "s-2" not in s.records and "s-1" in s.records  # the oldest finished go first; pending ones stay
    assert s.delete(["s-3", "s-1", "s-2"]) == 2 and "s-3" not in s.records
