"""One behavioural suite for every task-database backend, through the client API of a real cluster.

The same workload runs on each backend and the same questions get the same answers; what is
expected comes from the submitting client's own knowledge of its tasks, never from the backend.
With `none` every lookup must raise NoTaskDatabase instead.
"""
from __future__ import annotations

import datetime
import pickle
import time
from types import SimpleNamespace

import pytest

import ipphpc
from ipphpc.client.taskdb import NoTaskDatabase
from ipphpc.error import RemoteError, TaskAborted
from tests.core.helpers import ship_by_value, wait_for_file

pytestmark = pytest.mark.timeout(120)


def double(x):
    return x * 2


def shout(x):
    print(f"hello {x}")
    return x


def fail(x):
    raise ValueError(f"bad {x}")


def big(n):
    import numpy as np
    return np.arange(n, dtype=np.float64)  # 256 KiB and more travel as a frame of their own


@pytest.fixture(scope="module")
def work(backend_cluster, tmp_path_factory):
    """The workload, sent by one client that then closes: (its records, what it knew)."""
    kind, pdir, cid = backend_cluster
    before = datetime.datetime.now() - datetime.timedelta(seconds=1)
    with ipphpc.Client(profile_dir=str(pdir), cluster_id=cid) as rc:
        rc.wait_for_engines(2, timeout=30)
        lv = rc.load_balanced_view()
        lv.label = "fit_a"
        a = [lv.apply_async(double, i) for i in range(3)]
        lv.label = "fit_b"
        b = lv.apply_async(fail, 7)
        lv.label = None
        s = lv.apply_async(shout, 5)
        dv = rc.direct_view(0)
        dv.label = "direct"
        g = dv.apply_async(big, 32768)  # 256 KiB: an out-of-band buffer of its own
        for ar in (*a, s, g):
            ar.get(30)
        with pytest.raises(RemoteError):
            b.get(30)
        mids = {"a": [x.msg_ids[0] for x in a], "b": b.msg_ids[0], "s": s.msg_ids[0], "g": g.msg_ids[0]}
        meta = {m: dict(rc.metadata[m]) for m in rc.history}
        order = list(rc.history)
    return SimpleNamespace(kind=kind, pdir=pdir, cid=cid, mids=mids, meta=meta, order=order, before=before,
                           release=tmp_path_factory.mktemp("release") / "go")


@pytest.fixture
def rc2(work):
    with ipphpc.Client(profile_dir=str(work.pdir), cluster_id=work.cid) as c:
        yield c


def _no_db(work, call):
    """With --db=none the call must say the controller keeps no records; True if that was checked."""
    if work.kind != "none":
        return False
    with pytest.raises(NoTaskDatabase, match="keeps no task records"):
        call()
    return True


def test_get_result_of_a_gone_client(work, rc2):
    mid = work.mids["a"][1]
    if _no_db(work, lambda: rc2.get_result(mid)):
        return
    ar = rc2.get_result(mid)
    assert isinstance(ar, ipphpc.AsyncHubResult)
    assert ar.get(10) == 2
    assert ar.metadata["engine_id"] == work.meta[mid]["engine_id"]
    # when it was submitted comes from the record: the same second the first client noted
    assert abs((ar.metadata["submitted"] - work.meta[mid]["submitted"]).total_seconds()) < 1
    assert ar.metadata["submitted"] <= ar.metadata["completed"]
    out = rc2.get_result(work.mids["s"]).get(10)
    assert out == 5
    assert rc2.metadata[work.mids["s"]]["stdout"] == "hello 5\n"


def test_records_hold_the_engines_times_and_output(work, rc2):
    quiet, loud = work.mids["a"][1], work.mids["s"]
    if _no_db(work, lambda: rc2.db_query({"msg_id": quiet})):
        return
    recs = {r["msg_id"]: r for r in rc2.db_query({"msg_id": {"$in": [quiet, loud]}},
                                                 keys=["msg_id", "started", "completed", "stdout", "error"])}
    assert (recs[quiet]["stdout"], recs[loud]["stdout"]) == ("", "hello 5\n")
    for m in (quiet, loud):
        assert recs[m]["error"] is None
        for k in ("started", "completed"):
            assert abs((recs[m][k] - work.meta[m][k]).total_seconds()) < 2e-6, (m, k)


def test_error_result_is_the_remote_error(work, rc2):
    if _no_db(work, lambda: rc2.get_result(work.mids["b"])):
        return
    with pytest.raises(RemoteError) as e:
        rc2.get_result(work.mids["b"]).get(10)
    assert e.value.ename == "ValueError" and "bad 7" in str(e.value)


def test_glob_and_regex(work, rc2):
    q = {"label": {"$glob": "fit_*"}}
    if _no_db(work, lambda: rc2.db_query(q)):
        return
    found = {r["msg_id"] for r in rc2.db_query(q, keys=["msg_id", "label"])}
    assert found == {*work.mids["a"], work.mids["b"]}
    found = [r["msg_id"] for r in rc2.db_query({"label": {"$regex": "^fit_[a]$"}}, keys=["label"])]
    assert found == work.mids["a"]
    assert [r["label"] for r in rc2.db_query({"msg_id": work.mids["g"]}, keys=["label"])] == ["direct"]


def test_comparisons_on_times(work, rc2):
    if _no_db(work, lambda: rc2.db_query({"completed": {"$gt": work.before}})):
        return
    every = {r["msg_id"] for r in rc2.db_query({"completed": {"$gt": work.before}}, keys=["msg_id"])}
    assert set(work.order) <= every
    assert rc2.db_query({"completed": {"$lt": work.before}, "msg_id": {"$in": work.order}}) == []
    pivot = rc2.db_query({"msg_id": work.mids["s"]}, keys=["completed"])[0]["completed"]
    assert isinstance(pivot, datetime.datetime)
    le = {r["msg_id"] for r in rc2.db_query({"completed": {"$lte": pivot}, "msg_id": {"$in": work.order}})}
    gt = {r["msg_id"] for r in rc2.db_query({"completed": {"$gt": pivot}, "msg_id": {"$in": work.order}})}
    assert work.mids["s"] in le and not le & gt and le | gt == set(work.order)
    ge = {r["msg_id"] for r in rc2.db_query({"completed": {"$gte": pivot}, "msg_id": {"$in": work.order}})}
    assert ge & le == {work.mids["s"]}


def test_equality_and_membership(work, rc2):
    if _no_db(work, lambda: rc2.db_query({"engine_id": 0})):
        return
    mine = {"msg_id": {"$in": work.order}}
    on0 = {m for m in work.order if work.meta[m]["engine_id"] == 0}
    assert {r["msg_id"] for r in rc2.db_query({**mine, "engine_id": {"$in": [0]}})} == on0
    assert {r["msg_id"] for r in rc2.db_query({**mine, "engine_id": {"$nin": [0]}})} == set(work.order) - on0
    assert {r["msg_id"] for r in rc2.db_query({**mine, "engine_id": {"$ne": 0}})} == set(work.order) - on0
    assert {r["msg_id"] for r in rc2.db_query({**mine, "engine_id": {"$eq": 0}})} == on0
    assert {r["msg_id"] for r in rc2.db_query({**mine, "label": None})} == {work.mids["s"]}
    assert rc2.db_query({**mine, "completed": None}) == []


def test_buffers_hold_the_frames_sent(work, rc2):
    if _no_db(work, lambda: rc2.db_query({"msg_id": work.mids["g"]}, keys=["result_buffers"])):
        return
    rec = rc2.db_query({"msg_id": work.mids["g"]}, keys=["result_buffers", "buffers", "result_header"])[0]
    frames = rec["result_buffers"]
    assert len(frames) >= 3  # metadata, pickle, the out-of-band buffer
    assert pickle.loads(frames[1], buffers=frames[2:]).tolist() == list(range(32768))
    assert rec["result_header"]["p"] == work.mids["g"] and rec["buffers"]


def test_history_is_in_submission_order(work, rc2):
    if _no_db(work, rc2.hub_history):
        return
    hist = rc2.hub_history()
    assert [m for m in hist if m in set(work.order)] == work.order


def test_result_status_and_unknown_ids(work, rc2):
    if _no_db(work, lambda: rc2.result_status(work.mids["a"])):
        return
    st = rc2.result_status(work.mids["a"])
    assert st["completed"] == work.mids["a"] and st["pending"] == []
    with pytest.raises(KeyError, match="no-such-task"):
        rc2.result_status(["no-such-task"])
    with pytest.raises(KeyError, match="no-such-task"):
        rc2.get_result("no-such-task")


def test_unknown_operator_is_named(work, rc2):
    if work.kind == "none":
        return
    with pytest.raises(ValueError, match=r"'\$near'.*\$lt, \$gt"):
        rc2.db_query({"label": {"$near": 1}})


def test_resubmit_runs_again(work, rc2):
    old = work.mids["a"][2]
    if _no_db(work, lambda: rc2.resubmit([old])):
        return
    ar = rc2.resubmit([old])
    assert ar.get(20) == [4]
    new = ar.msg_ids[0]
    assert new != old
    assert rc2.db_query({"msg_id": old}, keys=["resubmitted"])[0]["resubmitted"] == new
    assert rc2.db_query({"msg_id": new}, keys=["client_uuid"])[0]["client_uuid"] == rc2.session.id


def test_pending_task_of_another_client(work, rc2):
    if work.kind == "none":
        return
    with ipphpc.Client(profile_dir=str(work.pdir), cluster_id=work.cid) as rc:
        ar = rc.load_balanced_view().apply_async(wait_for_file, str(work.release), 30)
        mid = ar.msg_ids[0]
        time.sleep(0.3)
        hub = rc2.get_result(mid)
        assert not hub.ready()
        assert rc2.result_status([mid])["pending"] == [mid]
        rec, = rc2.db_query({"msg_id": mid}, keys=["completed", "stdout", "stderr"])
        assert (rec["completed"], rec["stdout"], rec["stderr"]) == (None, "", "")  # as IPython Parallel's TaskRecord
        work.release.touch()
        assert hub.get(20) == "released" == ar.get(20)


def test_purge_then_lookup_fails(work):
    mid = work.mids["a"][0]
    with ipphpc.Client(profile_dir=str(work.pdir), cluster_id=work.cid) as rc:
        if _no_db(work, lambda: rc.purge_hub_results([mid])):
            return
        assert rc.purge_hub_results([mid]) == 1
    with ipphpc.Client(profile_dir=str(work.pdir), cluster_id=work.cid) as rc:
        with pytest.raises(KeyError, match=mid):
            rc.get_result(mid)
        assert rc.purge_hub_results(targets=[0, 1]) >= 1
        assert rc.db_query({"completed": {"$ne": None}, "msg_id": {"$in": work.order}}) == []


def test_controller_made_errors_are_recorded(work, rc2):
    if work.kind == "none":
        return
    ar = rc2.direct_view(0).apply_async(double, 1)
    ar.get(10)
    rc2.abort()  # nothing outstanding: a no-op
    lost = ipphpc.Client(profile_dir=str(work.pdir), cluster_id=work.cid)
    try:
        lv = lost.load_balanced_view(targets=[0])
        held = lv.apply_async(wait_for_file, str(work.release) + ".never", 0.5)
        queued = lv.apply_async(double, 3)
        lost.abort([queued])
        with pytest.raises(TaskAborted):
            queued.get(10)
        held.get(10)
    finally:
        lost.close()
    with pytest.raises(TaskAborted):
        rc2.get_result(queued.msg_ids[0]).get(10)


ship_by_value(__name__)


def test_broadcast_tasks_are_recorded_once_per_engine(work, rc2):
    """A broadcast view's task runs on every engine: each engine's run is a record of its own."""
    ar = rc2.broadcast_view().apply_async(double, 21)
    assert ar.get(30) == [42, 42]
    if _no_db(work, lambda: rc2.db_query({"msg_id": {"$in": ar.msg_ids}})):
        return
    recs = rc2.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["msg_id", "engine_id", "completed"])
    assert sorted(r["engine_id"] for r in recs) == sorted(rc2.ids) and all(r["completed"] for r in recs), recs
    assert [rc2.get_result(m).get(10) for m in ar.msg_ids] == [42, 42]
