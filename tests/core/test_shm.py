"""Large frames through /dev/shm between a client, a controller and engines of one host.

The frames module alone, then a real local cluster: arrays arrive equal, the message carries
descriptors (the controller's records say so), the files are gone once every reader has them, the task
database still answers with the data after the files are gone, and a file removed too early fails its
task with a clear error instead of a hang.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from ipphpc import Client, RemoteError, serialize, shm

from .helpers import ship_by_value, wait_until

ship_by_value(__name__)

pytestmark = pytest.mark.skipif(shm.host_tag() is None, reason="no usable /dev/shm on this host")
BIG = 3 * shm.SHM_MIN


def files(pfx: str) -> list[str]:
    return sorted(n for n in os.listdir(shm.SHM_DIR) if n.startswith(pfx + "-"))


# -- the module alone --------------------------------------------------------------------------------
def test_a_large_frame_travels_as_a_descriptor_and_maps_back_read_only():
    pfx = shm.prefix("unit-test")
    a = np.arange(BIG // 8, dtype=np.float64)
    frames = serialize.dumps(a)
    out, idx = shm.export(frames, pfx)
    assert idx == [1] and len(out[1]) < 100 and out[0] is frames[0]
    name = shm.names({"sh": idx}, out)[0]
    assert oct(os.stat(os.path.join(shm.SHM_DIR, name)).st_mode & 0o777) == "0o600"
    back = serialize.loads(shm.resolve({"sh": idx}, out, unlink=True))
    assert np.array_equal(back, a) and not back.flags.writeable
    assert files(pfx) == []  # unlinked once mapped; the mapping keeps the pages
    assert back.sum() == a.sum()


def test_small_frames_stay_in_the_message():
    out, idx = shm.export([b"x" * 100, b"y" * (shm.SHM_MIN - 1)], shm.prefix("unit-test"))
    assert idx == [] and out == [b"x" * 100, b"y" * (shm.SHM_MIN - 1)]


def test_a_view_of_a_mapped_file_gets_a_second_name_not_a_copy():
    pfx = shm.prefix("unit-test")
    a = np.arange(BIG, dtype=np.uint8)
    out, idx = shm.export([memoryview(a)], pfx)
    mapped: list = []
    got = shm.resolve({"sh": idx}, out, mapped=mapped)
    view = np.frombuffer(got[0], dtype=np.uint8)[1000:1000 + shm.SHM_MIN]
    again, idx2 = shm.export([memoryview(view)], pfx, mapped)
    first, second = shm.names({"sh": idx}, out)[0], shm.names({"sh": idx2}, again)[0]
    st1, st2 = (os.stat(os.path.join(shm.SHM_DIR, n)) for n in (first, second))
    assert st1.st_ino == st2.st_ino and st1.st_nlink == 2  # the same file under a second name
    back = np.frombuffer(shm.resolve({"sh": idx2}, again, unlink=True)[0], dtype=np.uint8)
    assert np.array_equal(back, a[1000:1000 + shm.SHM_MIN])
    shm.remove([first])
    assert files(pfx) == []


@pytest.mark.parametrize("desc", [b"../../etc/passwd:0:10", b"ipphpc-0123456789ab-" + b"0" * 32 + b":0:x",
                                  b"not a descriptor"])
def test_descriptors_that_name_anything_else_are_refused(desc):
    with pytest.raises(shm.SharedMemoryError, match="not a shared-memory frame descriptor"):
        shm.attach(desc)


def test_a_file_readable_by_others_is_refused():
    pfx = shm.prefix("unit-test")
    out, idx = shm.export([b"z" * BIG], pfx)
    name = shm.names({"sh": idx}, out)[0]
    os.chmod(os.path.join(shm.SHM_DIR, name), 0o644)
    try:
        with pytest.raises(shm.SharedMemoryError, match="not a private file of this user"):
            shm.attach(out[0])
    finally:
        shm.remove([name])


def test_a_removed_file_is_named_in_the_error():
    out, idx = shm.export([b"z" * BIG], shm.prefix("unit-test"))
    shm.remove(shm.names({"sh": idx}, out))
    with pytest.raises(shm.SharedMemoryError, match="is gone"):
        shm.resolve({"sh": idx}, out)


# -- a real cluster ---------------------------------------------------------------------------------
def double(a):
    return a * 2


def echo(a):
    return a


def test_arrays_there_and_back_through_shared_memory(rc):
    pfx = shm.prefix(rc._info["key"])
    assert rc._shm is not None and set(rc.ids) <= rc._shm_engines
    for dtype in (np.float64, np.int32, np.complex128, np.uint8):
        a = (np.arange(BIG // np.dtype(dtype).itemsize) % 251).astype(dtype)
        ar = rc[rc.ids[0]].apply_async(double, a)
        assert np.array_equal(ar.get(timeout=30), a * 2)
        ar2 = rc.load_balanced_view().apply_async(echo, a)
        back = ar2.get(timeout=30)
        assert back.dtype == a.dtype and np.array_equal(back, a)
    objs = np.array([str(i) for i in range(200_000)], dtype=object)  # pickled in band: a 1.6 MB pickle frame
    assert list(rc[rc.ids[1]].apply_sync(echo, objs)) == list(objs)
    recs = rc.db_query({"msg_id": {"$in": ar.msg_ids + ar2.msg_ids}}, keys=["msg_id", "header", "result_header"])
    assert len(recs) == 2 and all(r["header"].get("sh") == [1] and r["result_header"].get("sh") == [2]
                                  for r in recs)
    wait_until(lambda: files(pfx) == [], timeout=10, what="no shared-memory file left")


def test_the_task_database_answers_with_the_data_after_the_files_are_gone(rc):
    pfx = shm.prefix(rc._info["key"])
    a = np.arange(BIG // 8, dtype=np.float64)
    ar = rc[rc.ids[0]].apply_async(double, a)
    assert np.array_equal(ar.get(timeout=30), a * 2)
    wait_until(lambda: files(pfx) == [], timeout=10, what="no shared-memory file left")
    with Client(url_file=rc.url_file) as other:  # another client: the stored result, sent inline
        assert np.array_equal(other.get_result(ar.msg_ids[0]).get(timeout=30), a * 2)
        again = other.resubmit(ar.msg_ids[0], block=False)  # the stored request, sent inline
        assert np.array_equal(again.get(timeout=30), a * 2)
        recs = other.db_query({"msg_id": ar.msg_ids[0]}, keys=["buffers"])
        assert np.array_equal(np.frombuffer(recs[0]["buffers"][1], dtype=np.float64), a)


def test_a_push_to_every_engine_writes_the_array_once(rc):
    pfx = shm.prefix(rc._info["key"])
    a = np.arange(BIG, dtype=np.uint8)
    rc[:].push({"shm_a": a}, block=True)
    sums = rc[:].apply_sync(lambda: int(shm_a.sum()))  # noqa: F821 - defined on the engines by the push
    assert sums == [int(a.sum())] * len(rc.ids)
    wait_until(lambda: files(pfx) == [], timeout=10, what="no shared-memory file left")
    assert np.array_equal(rc[rc.ids[1]].pull("shm_a", block=True), a)


def test_a_file_gone_before_the_engine_reads_it_fails_that_task_clearly(rc, monkeypatch):
    def export_then_lose(frames, pfx, mapped=None):
        out, idx = real(frames, pfx, mapped)
        shm.remove(shm.names({"sh": idx}, out))
        return out, idx
    real = shm.export
    monkeypatch.setattr(shm, "export", export_then_lose)
    ar = rc[rc.ids[0]].apply_async(double, np.zeros(BIG // 8))
    with pytest.raises(RemoteError, match="SharedMemoryError") as e:
        ar.get(timeout=30)
    assert "is gone" in str(e.value)
    monkeypatch.setattr(shm, "export", real)
    assert rc[rc.ids[0]].apply_sync(double, 21) == 42  # the engine goes on


def test_a_controller_started_with_no_shm_keeps_frames_in_messages(spawner, pdir):
    _, einfo, cinfo = spawner.controller(pdir, "noshm", "--no-shm")
    assert "shm" not in einfo and "shm" not in cinfo
    spawner.engine(pdir, "noshm")
    with Client(profile_dir=str(pdir), cluster_id="noshm") as rc:
        rc.wait_for_engines(1, timeout=30)
        assert rc._shm is None and "shm" not in rc.engines[rc.ids[0]]
        a = np.arange(BIG // 8, dtype=np.float64)
        ar = rc[rc.ids[0]].apply_async(double, a)
        assert np.array_equal(ar.get(timeout=30), a * 2)
        rec = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["header", "result_header"])[0]
        assert "sh" not in rec["header"] and "sh" not in rec["result_header"]


def test_an_engine_on_this_host_says_so_at_registration(rc):
    assert all(rc.engines[i].get("shm") == shm.host_tag() for i in rc.ids)


def test_a_closed_client_leaves_no_file_behind(rc):
    from ipphpc.client.asyncresult import AsyncResult
    other = Client(url_file=rc.url_file)
    other.wait_for_engines(2, timeout=30)
    pfx = shm.prefix(other._info["key"])
    other.close()
    with pytest.raises(RuntimeError, match="closed"):
        other._send_task("apply", serialize.dumps((double, (np.zeros(BIG // 8),), {})), AsyncResult(1, "x"), 0,
                         target=other.ids[0])
    assert files(pfx) == []


def test_the_controller_sweeps_its_cluster_files_when_it_stops(spawner, pdir):
    """What a sender killed between writing a frame and its reader's answer leaves behind."""
    p, einfo, _ = spawner.controller(pdir, "sweep")
    pfx = shm.prefix(einfo["key"])
    out, idx = shm.export([b"left" * shm.SHM_MIN], pfx)
    other = shm.prefix("another cluster")
    keep, _ = shm.export([b"kept" * shm.SHM_MIN], other)
    try:
        assert len(files(pfx)) == 1
        assert spawner.stop(p) == 0
        assert files(pfx) == [] and len(files(other)) == 1  # its own prefix only
    finally:
        shm.remove(shm.names({"sh": [0]}, out) + shm.names({"sh": [0]}, keep))
