"""Large frames straight between a client and engines, on a real cluster without shared memory (as when
they run on different hosts): arrays arrive equal, the controller's records hold only the descriptors,
results come back on the direct connection, and every way it can fail falls back or fails clearly."""
from __future__ import annotations

import numpy as np
import pytest

from ipphpc import Client, bulk, serialize
from ipphpc.client.direct import DirectLinks

from .helpers import cluster_without_shm, ship_by_value, wait_until

ship_by_value(__name__)
BIG = 3 * bulk.BULK_MIN


def double(a):
    return a * 2


def linked(rc, eid):
    """Send engine `eid` a large array and check the answer: the client's direct connection to it, then open."""
    a = np.arange(BIG // 8, dtype=np.float64)
    assert np.array_equal(rc[eid].apply_sync(double, a), a * 2)
    return rc._direct.links[eid]


def echo(a):
    return a


@pytest.fixture
def cluster2(spawner, pdir):
    """A controller without shared memory and two engines; yields (spawner, pdir, client)."""
    with cluster_without_shm(spawner, pdir, "direct", 2) as rc:
        yield spawner, pdir, rc


def test_engines_listen_and_say_where(cluster2):
    _, _, rc = cluster2
    for eid in rc.ids:
        d = rc.engines[eid]["direct"]
        assert d["at"].startswith("127.0.0.1:") and len(d["id"]) == 16
        assert rc._direct.reachable(rc.engines[eid])


def test_arrays_there_and_back_straight(cluster2):
    _, _, rc = cluster2
    e0, e1 = rc.ids
    for dtype in (np.float64, np.int32, np.complex128, np.uint8):
        a = (np.arange(BIG // np.dtype(dtype).itemsize) % 251).astype(dtype)
        ar = rc[e0].apply_async(double, a)
        assert np.array_equal(ar.get(timeout=30), a * 2)
        back = rc[e1].apply_sync(echo, a)
        assert back.dtype == a.dtype and np.array_equal(back, a)
    nc = np.arange(BIG // 4, dtype=np.float64).reshape(-1, 4)[:, ::2]  # not contiguous
    assert np.array_equal(rc[e0].apply_sync(echo, nc), nc)
    objs = np.array([str(i) for i in range(200_000)], dtype=object)  # pickled in band: a 1.6 MB pickle frame
    assert list(rc[e1].apply_sync(echo, objs)) == list(objs)
    assert set(rc._direct.links) == {e0, e1}
    rec = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header", "result_header", "buffers", "result_buffers"])[0]
    assert rec["header"]["bk"] == [1] and rec["result_header"]["bk"] == [2]
    # the controller had only the descriptors: 32 bytes where the array was
    assert len(rec["buffers"][1]) == 32 and len(rec["result_buffers"][2]) == 32
    assert all(ch.unclaimed() == 0 for ch in rc._direct.links.values())


def test_small_messages_keep_their_frames_and_name_the_connection(cluster2):
    _, _, rc = cluster2
    e0 = rc.ids[0]
    linked(rc, e0)
    ar = rc[e0].apply_async(echo, 5)
    assert ar.get(timeout=30) == 5
    h = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header"])[0]["header"]
    assert h["bc"] == rc._direct.token_hex and "bk" not in h


def test_a_large_pull_opens_the_connection_for_the_next(cluster2):
    _, _, rc = cluster2
    e1 = rc.ids[1]
    a = np.arange(BIG // 8, dtype=np.float64)
    rc[e1].execute(f"import numpy as np; big = np.arange({BIG // 8}, dtype=np.float64)", block=True)
    assert e1 not in rc._direct.links  # nothing large went there yet
    first = rc[e1].pull("big", block=True)
    wait_until(lambda: e1 in rc._direct.links, timeout=10, what="a direct connection opened after a large result")
    ar = rc[e1].pull("big", block=False)
    assert np.array_equal(first, a) and np.array_equal(ar.get(timeout=30), a)
    rec = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["result_header"])[0]
    assert rec["result_header"]["bk"] == [2]


def test_load_balanced_tasks_and_tasks_for_many_engines(cluster2):
    _, _, rc = cluster2
    a = np.arange(BIG // 8, dtype=np.float64)
    lview = rc.load_balanced_view()
    ar = lview.apply_async(double, a)  # where it runs is not known when it leaves: its engine asks for it
    assert np.array_equal(ar.get(timeout=30), a * 2)
    rec = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header", "buffers"])[0]
    assert rec["header"]["bp"] == [1] and len(rec["buffers"][1]) == 32 and not rc._direct._held
    push = rc[:].push({"fan": a}, block=False)  # one transfer id for both engines, sent to each
    push.get(timeout=30)
    assert rc[:].apply_sync(lambda: float(fan.sum())) == [float(a.sum())] * 2  # noqa: F821
    assert set(rc._direct.links) == set(rc.ids)
    recs = rc.db_query({"msg_id": {"$in": push.msg_ids}}, keys=["header", "buffers"])
    assert len(recs) == 2 and all(r["header"]["bk"] == [1] and len(r["buffers"][1]) == 32 for r in recs)
    assert len({bytes(r["buffers"][1]) for r in recs}) == 1
    ar = lview.apply_async(double, a)  # its engine has a connection from here now: the result comes on it
    assert np.array_equal(ar.get(timeout=30), a * 2)
    rec = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header", "result_header"])[0]
    assert rec["header"]["bc"] == rc._direct.token_hex and rec["result_header"]["bk"] == [2]
    pulled = rc[:].pull("fan", block=True)
    assert all(np.array_equal(p, a) for p in pulled)


def test_another_client_gets_a_clear_error_for_a_result_it_cannot_have(cluster2):
    _, _, rc = cluster2
    a = np.arange(BIG // 8, dtype=np.float64)
    ar = rc[rc.ids[0]].apply_async(double, a)
    ar.get(timeout=30)
    with Client(url_file=rc.url_file) as other:
        with pytest.raises(bulk.BulkError, match="went straight from the engine"):
            other.get_result(ar.msg_ids[0]).get(timeout=30)
        with pytest.raises(ValueError, match="never had them; send them again from the client"):
            other.resubmit(ar.msg_ids[0], block=False)


def test_a_dropped_connection_is_made_again(cluster2):
    _, _, rc = cluster2
    e0 = rc.ids[0]
    old = linked(rc, e0)
    old.close()
    assert linked(rc, e0) is not old and rc._direct.links[e0].closed is None


def test_frames_that_never_come_fail_the_task_clearly(cluster2, monkeypatch):
    _, _, rc = cluster2
    e0 = rc.ids[0]
    linked(rc, e0)

    def lose(chans, tid, frame, kind=b"D", salt=b""):  # the frame never leaves, then the connection goes
        for ch in chans:
            ch.close()
        return []
    monkeypatch.setattr(bulk, "send_all", lose)
    ar = rc[e0].apply_async(double, np.zeros(BIG // 8))
    monkeypatch.undo()
    with pytest.raises(Exception, match="DirectTransferError") as e:
        ar.get(timeout=30)
    assert "closed before" in str(e.value)
    assert rc[e0].apply_sync(double, 21) == 42  # the engine goes on


@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_engine_without_the_port_takes_frames_through_the_controller(spawner, pdir, how):
    spawner.controller(pdir, "nodirect", "--no-shm")
    if how == "flag":
        spawner.engine(pdir, "nodirect", "--no-direct")
    else:
        spawner.engine(pdir, "nodirect", env={"IPPHPC_NO_DIRECT": "1"})
    with Client(profile_dir=str(pdir), cluster_id="nodirect") as rc:
        rc.wait_for_engines(1, timeout=30)
        assert "direct" not in rc.engines[rc.ids[0]]
        a = np.arange(BIG // 8, dtype=np.float64)
        ar = rc[rc.ids[0]].apply_async(double, a)
        assert np.array_equal(ar.get(timeout=30), a * 2)
        assert not rc._direct.links
        rec = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header", "buffers"])[0]
        assert "bk" not in rec["header"] and len(rec["buffers"][1]) == BIG


def test_an_unreachable_engine_is_remembered_and_skipped():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    links = DirectLinks("k" * 64)
    info = {"direct": {"at": f"127.0.0.1:{port}", "id": "x"}, "host": __import__("socket").gethostname()}
    frames = serialize.dumps(np.zeros(BIG // 8))
    fields: dict = {}
    assert links.out(fields, frames, 3, info) is frames and fields == {}
    assert links._failed[(3, f"127.0.0.1:{port}")] > 0 and links.link(3, info) is None  # not tried again for now
    other_host = {"direct": {"at": f"127.0.0.1:{port}", "id": "x"}, "host": "elsewhere"}
    assert not links.reachable(other_host)  # a loopback address on another host is never tried


def test_a_task_for_many_engines_keeps_its_frames_unless_every_engine_is_connected():
    import socket
    import time
    key = "k" * 64
    here = socket.gethostname()
    up = bulk.Listener(bulk.Keys(key), "127.0.0.1", "e0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    engines = {0: {"direct": {"at": up.address, "id": "e0"}, "host": here},
               1: {"direct": {"at": f"127.0.0.1:{dead_port}", "id": "e1"}, "host": here}}
    links = DirectLinks(key)
    try:
        frames = serialize.dumps(np.zeros(BIG // 8))
        fields: dict = {}
        assert links.out_many(fields, frames, [0, 1], engines) is frames and "bk" not in fields
        time.sleep(0.2)
        assert sum(ch.unclaimed() for ch in up.channels.values()) == 0  # nothing was sent to the one that answered
        t0 = time.monotonic()
        assert links.out_many({}, frames, [1, 0], engines) is frames  # no new attempt for a while: at once
        assert time.monotonic() - t0 < 0.5
    finally:
        links.close()
        up.close()


def test_frames_of_a_message_that_went_the_long_way_are_forgotten_by_the_engines():
    """A task for two engines whose frames reached one whole and broke on the other: the message goes
    through the controller, the first engine is told to forget its copy at once, the second when the client
    connects to it again (it keeps what arrived whole on a connection for the client's next one)."""
    import socket
    import time
    key = "k" * 64
    here = socket.gethostname()
    lsts = [bulk.Listener(bulk.Keys(key), "127.0.0.1", f"e{i}") for i in range(2)]
    engines = {i: {"direct": {"at": lst.address, "id": f"e{i}"}, "host": here} for i, lst in enumerate(lsts)}
    links = DirectLinks(key)
    try:
        assert links.link(0, engines[0]) and links.link(1, engines[1])
        real = links.links[1].sock
        writes = []

        class Breaking:  # the second frame breaks after its first chunk
            def sendall(self, buf):
                writes.append(1)
                if len(writes) == 1 + (1 + 3) + 2:
                    raise BrokenPipeError(32, "Broken pipe")
                return real.sendall(buf)

            def __getattr__(self, name):
                return getattr(real, name)
        links.links[1].sock = Breaking()
        a, b = np.ones(3 * bulk.CHUNK // 8), np.zeros(3 * bulk.CHUNK // 8)
        frames = [b"head", memoryview(a), memoryview(b)]
        fields: dict = {}
        assert links.out_many(fields, frames, [0, 1], engines) is frames and "bk" not in fields
        token = links.token_hex

        def unclaimed(i):
            ch = lsts[i].channel(token)
            return ch.unclaimed() if ch is not None else 0
        deadline = time.monotonic() + 5
        while (unclaimed(0) or unclaimed(1) != 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert unclaimed(0) == 0  # told at once
        assert unclaimed(1) == 1 and links._abandoned == {1: [links._abandoned[1][0]]}
        assert links.link(1, engines[1]) is not None  # connects again: the engine is told
        deadline = time.monotonic() + 5
        while unclaimed(1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert unclaimed(1) == 0 and not links._abandoned
    finally:
        links.close()
        for lst in lsts:
            lst.close()


def test_an_engine_restarted_in_place_is_reached_at_its_new_port(tmp_path, monkeypatch):
    from ipphpc import HPCCluster

    from .helpers import kill_matching
    monkeypatch.setenv("IPPHPC_NO_SHM", "1")  # the controller and engines this cluster starts: no /dev/shm
    root = tmp_path.resolve()
    c = HPCCluster(n=1, profile_dir=str(root / "profile"), shutdown_atexit=False)
    try:
        rc = c.start_and_connect_sync()
        eid = rc.ids[0]
        a = np.arange(BIG // 8, dtype=np.float64)
        assert np.array_equal(rc[eid].apply_sync(double, a), a * 2)
        old = rc.engines[eid]["direct"]
        assert eid in rc._direct.links
        assert c.restart_engine_sync(eid) == [eid]
        wait_until(lambda: rc.engines[eid]["direct"] != old, timeout=30, what="the restarted engine's new port")
        ar = rc[eid].apply_async(double, a)
        assert np.array_equal(ar.get(timeout=30), a * 2)
        assert rc._direct.links[eid].closed is None and rc._direct.links[eid].name == rc.engines[eid]["direct"]["at"]
        assert rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header"])[0]["header"]["bk"] == [1]
    finally:
        c.stop_cluster_sync()
        left = kill_matching(str(root))
        assert not left, f"processes left behind: {left}"


def test_an_engine_that_leaves_takes_its_connection_along(cluster2):
    spawner, pdir, rc = cluster2
    e0 = rc.ids[0]
    ch = linked(rc, e0)
    rc.shutdown(targets=[e0], block=True)
    wait_until(lambda: e0 not in rc.ids, timeout=30, what="the engine to leave")
    wait_until(lambda: e0 not in rc._direct.links, timeout=10, what="its connection to go")
    assert ch.closed is not None
