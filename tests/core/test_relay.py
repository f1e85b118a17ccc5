"""Large frames to many engines passed among the engines: on a real cluster without shared memory (as across
hosts) the client writes a pushed array `relay.FANOUT` times whatever the number of engines, every engine
gets it equal, and what the client gives up on is forgotten down the tree. (The tree itself, in process:
tests/core/test_relay_tree.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from ipphpc import bulk, relay

from .helpers import cluster_without_shm, ship_by_value, wait_until

ship_by_value(__name__)
N_ENGINES = 5
MB = 2**20


def checksum(name):
    """What an engine holds under `name`: dtype, shape and a hash of its elements in order."""
    import hashlib

    import numpy as np
    a = globals()[name]
    return a.dtype.str, list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def want(a):
    import hashlib
    return [a.dtype.str, list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]


@pytest.fixture
def cluster5(spawner, pdir):
    with cluster_without_shm(spawner, pdir, "relay", N_ENGINES) as rc:
        yield rc


def client_bytes(rc) -> int:
    return sum(ch.sent for ch in rc._direct.links.values())


def test_a_push_to_many_engines_leaves_the_client_fanout_times(cluster5):
    rc = cluster5
    a = np.arange(6 * MB // 8, dtype=np.float64).reshape(-1, 3)
    before = client_bytes(rc)
    rc[:].push({"a": a}, block=True)
    sent = client_bytes(rc) - before
    assert len(rc._direct.links) == relay.FANOUT
    # FANOUT copies and their seals and routes, not N_ENGINES copies
    assert relay.FANOUT * a.nbytes <= sent < (relay.FANOUT + 0.5) * a.nbytes
    assert [list(g) for g in rc[:].apply_sync(checksum, "a")] == [want(a)] * N_ENGINES


def test_every_dtype_and_a_non_contiguous_array_arrive_equal(cluster5):
    rc = cluster5
    for dtype in (np.int32, np.complex128, np.uint8):
        a = (np.arange(3 * MB // np.dtype(dtype).itemsize) % 251).astype(dtype)
        rc[:].push({"a": a}, block=True)
        assert [list(g) for g in rc[:].apply_sync(checksum, "a")] == [want(a)] * N_ENGINES
    b = np.arange(4 * MB // 8, dtype=np.float64).reshape(1024, -1)[:, ::2]
    rc[:].push({"a": b}, block=True)
    assert [list(g) for g in rc[:].apply_sync(checksum, "a")] == [want(b)] * N_ENGINES


def test_a_scatter_and_an_apply_with_a_large_argument_to_all(cluster5):
    rc = cluster5
    a = np.random.default_rng(1).random(2 * MB // 8)

    def total(x):
        return float(x.sum())

    assert rc[:].apply_sync(total, a) == [float(a.sum())] * N_ENGINES


def test_without_the_relay_the_client_sends_every_copy(cluster5, monkeypatch):
    rc = cluster5
    rc._direct.relay = False
    a = np.ones(2 * MB // 8)
    before = client_bytes(rc)
    rc[:].push({"a": a}, block=True)
    assert client_bytes(rc) - before >= N_ENGINES * a.nbytes
    assert len(rc._direct.links) == N_ENGINES


def test_frames_the_client_gave_up_on_are_forgotten_down_the_tree(cluster5):
    rc = cluster5
    a = np.ones(2 * MB // 8)
    rc[:].push({"a": a}, block=True)  # connections open
    chans = list(rc._direct.links.values())
    tid = bulk.new_id()
    tree = relay.plan(rc.ids, rc.engines)
    for ch, node in zip(chans, tree):
        ch.send(tid, relay.route_bytes(node[3]), bulk.ROUTE)
    bulk.send_all(chans, tid, a)
    for ch in chans:
        ch.cancel(tid)

    def unclaimed():
        import gc

        from ipphpc.engine.engine import Engine
        eng = next(o for o in gc.get_objects() if isinstance(o, Engine))
        return sum(ch.unclaimed() for ch in eng.direct_in.channels.values())

    assert wait_until(lambda: rc[:].apply_sync(unclaimed) == [0] * N_ENGINES, timeout=30)
