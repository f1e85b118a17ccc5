"""A load-balanced task's large arguments wait in the client until the engine that gets the task asks for
them, on a real cluster without shared memory (as across hosts): they arrive equal, the controller never
holds them, the client lets them go once the result is in, and an engine that cannot ask gets the task
again with its frames, the long way."""
from __future__ import annotations

import numpy as np
import pytest

from ipphpc import bulk

from .helpers import cluster_without_shm, ship_by_value

ship_by_value(__name__)
BIG = 3 * bulk.BULK_MIN


def total(a):
    return float(a.sum()), a.dtype.str, a.shape


@pytest.fixture
def cluster2(spawner, pdir):
    with cluster_without_shm(spawner, pdir, "pull", 2) as rc:
        yield rc


def test_arguments_wait_for_their_engine_and_the_controller_never_has_them(cluster2):
    rc = cluster2
    lview = rc.load_balanced_view()
    arrays = [(np.arange(BIG // np.dtype(dtype).itemsize) * k).astype(dtype)
              for k, dtype in enumerate((np.float64, np.int32, np.uint8), 1)]
    ars = [lview.apply_async(total, a) for a in arrays]
    for a, ar in zip(arrays, ars):
        assert ar.get(timeout=60) == (float(a.sum()), a.dtype.str, a.shape)
    recs = rc.db_query({"msg_id": {"$in": [ar.msg_ids[0] for ar in ars]}}, keys=["header", "buffers"])
    assert len(recs) == 3 and all(r["header"]["bp"] == [1] and len(r["buffers"][1]) == 32 for r in recs)
    assert set(rc._direct.links) == set(rc.ids)  # a connection to every engine it could have gone to
    assert not rc._direct._held and not rc._direct._held_by


def test_a_sync_call_and_a_map_over_large_chunks(cluster2):
    rc = cluster2
    lview = rc.load_balanced_view()
    a = np.random.default_rng(3).random(4 * BIG // 8)
    b = a[::2]  # not contiguous
    assert lview.apply_sync(total, b) == (float(b.sum()), b.dtype.str, b.shape)
    parts = np.array_split(a, 4)
    assert lview.map_sync(total, parts) == [(float(p.sum()), p.dtype.str, p.shape) for p in parts]
    assert not rc._direct._held


def test_an_engine_that_cannot_ask_gets_the_task_again_the_long_way(cluster2, monkeypatch):
    rc = cluster2
    e0, e1 = rc.ids
    a = np.arange(BIG // 8, dtype=np.float64)
    assert rc[e0].apply_sync(total, a)[0] == float(a.sum())  # a connection to e0 only
    assert e1 not in rc._direct.links
    monkeypatch.setattr(rc._direct, "pull_ready", lambda among, engines: True)  # as if e1 registered just now
    lview = rc.load_balanced_view(targets=[e1])
    ar = lview.apply_async(total, a)
    assert ar.get(timeout=60)[0] == float(a.sum())
    assert ar.engine_id == e1
    assert lview.apply_sync(total, a)[0] == float(a.sum())  # the same for a synchronous call
    assert not rc._direct._held and not rc._direct._held_by


def test_resubmitting_a_task_whose_arguments_went_straight_is_refused_clearly(cluster2):
    rc = cluster2
    ar = rc.load_balanced_view().apply_async(total, np.ones(BIG // 8))
    ar.get(timeout=60)
    with pytest.raises(ValueError, match="never had them; send them again from the client"):
        rc.resubmit(ar.msg_ids[0], block=False)
