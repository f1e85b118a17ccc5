"""A task for many engines travels as one message, which the controller sends on to each engine."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ipphpc import EngineError, serialize

from .helpers import ship_by_value

ship_by_value(__name__)


def stats(rc) -> dict:
    return rc.controller_status()["stats"]


def test_one_message_reaches_every_engine(rc):
    before = stats(rc)
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get(timeout=30)
    after = stats(rc)
    assert after["task_messages"] - before["task_messages"] == 1
    assert after["tasks"] - before["tasks"] == 2
    assert len(set(ar.msg_ids)) == 2
    assert ar.engine_id == rc.ids
    assert pids == [rc.engines[i]["pid"] for i in rc.ids]


def test_push_of_an_array_arrives_whole_on_each_engine(rc):
    a = np.arange(3_000_000, dtype=np.float64).reshape(1000, 3000)[:, ::2]  # 12 MB, not contiguous
    before = stats(rc)
    rc[:].push({"fan_a": a}, block=True)
    assert stats(rc)["task_messages"] - before["task_messages"] == 1
    for eid in rc.ids:
        got = rc[eid].pull("fan_a", block=True)
        assert got.dtype == a.dtype and np.array_equal(got, a)
    assert rc[:].gather("fan_a", block=False).get(timeout=30).shape == (2000, 1500)


def test_each_engine_has_its_own_record_and_resubmits_alone(rc):
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get(timeout=30)
    recs = rc.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["msg_id", "engine_id", "queue", "header"])
    assert sorted((r["msg_id"], r["engine_id"], r["queue"]) for r in recs) == sorted(
        (m, e, "mux") for m, e in zip(ar.msg_ids, rc.ids))
    # each engine got (and each record keeps) a header naming that engine alone, not the list of all
    assert all(r["header"]["to"] == r["engine_id"] and r["header"]["id"] == r["msg_id"] and "ids" not in r["header"]
               for r in recs)
    for mid, pid in zip(ar.msg_ids, pids):
        assert rc.get_result(mid).get(timeout=30) == pid
    again = rc.resubmit(ar.msg_ids[1], block=False)
    assert again.get(timeout=30) == pids[1]  # ran again on the second engine only


def test_a_part_for_an_engine_that_is_gone_fails_alone(rc):
    """The client's list of engines can be behind the controller's: that engine's part fails, the others run."""
    from ipphpc.client.asyncresult import AsyncResult
    ar = AsyncResult(2, "getpid")
    rc._send_fan("apply", serialize.dumps((os.getpid, (), {})), ar, [rc.ids[0], 999])
    with pytest.raises(EngineError, match="engine 999 is not registered"):
        ar.get(timeout=30)
    assert ar._values[0] == rc.engines[rc.ids[0]]["pid"]
