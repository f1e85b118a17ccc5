"""Envelopes: what the controller has for one peer in one turn of its loop leaves as one message."""
from __future__ import annotations

import operator
import os
import signal
import threading
import time

import pytest
import zmq

from ipphpc import connection, serialize, wire
from ipphpc.wire import AuthError, Session, new_key

from .helpers import ship_by_value, wait_until
from .test_security import RawPeer, _hello, _register, _task

ship_by_value(__name__)


def _inc(x: int) -> int:
    return x + 1


def test_envelope_round_trip_and_each_message_keeps_its_own_signature():
    s = Session(new_key())
    msgs = [s.pack("task", {"k": "apply"}, [b"payload %d" % i, b"x" * i]) for i in range(1, 4)]
    msgs.append(s.pack("sync", {"n": 1}))
    env = wire.envelope(msgs)
    assert env[0].startswith(wire.ENVELOPE) and len(env) == 1 + sum(len(m) for m in msgs)
    inner = wire.unwrap(env)
    assert inner == msgs
    for m, original in zip(inner, msgs):
        _, h, payload = s.split(m)
        Session.check_payload(h, payload)
        assert payload == original[1:]
    # routing ids are left out when asked (the controller's outbox holds [ident, *frames])
    assert wire.unwrap(wire.envelope([[b"ident", *m] for m in msgs], skip=1)) == msgs
    # a single message is no envelope
    assert wire.unwrap(msgs[0]) is None


@pytest.mark.parametrize("counts", [b"", b"\x01\x00\x00", (1).to_bytes(4, "little") * 9,
                                    (0).to_bytes(4, "little") + (3).to_bytes(4, "little"),
                                    (1).to_bytes(4, "little")])
def test_malformed_envelope_is_refused(counts):
    s = Session(new_key())
    frames = [wire.ENVELOPE + counts, *s.pack("sync", {"n": 1}), b"extra"]
    with pytest.raises(AuthError, match="malformed envelope"):
        wire.unwrap(frames)


def test_a_forged_message_inside_an_envelope_fails_alone():
    s, forger = Session(new_key()), Session(new_key())
    good, bad = s.pack("sync", {"n": 1}), forger.pack("stop", {})
    inner = wire.unwrap(wire.envelope([good, bad]))
    assert s.split(inner[0])[1]["t"] == "sync"
    with pytest.raises(AuthError, match="bad signature"):
        s.split(inner[1])


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _collect(peer: RawPeer, want: int, timeout: float = 15.0) -> tuple[list[dict], int]:
    """(headers of the next `want` messages, how many of the zmq messages carrying them were envelopes)."""
    deadline = time.monotonic() + timeout
    headers, envelopes = [], 0
    while len(headers) < want:
        left = deadline - time.monotonic()
        assert left > 0 and peer.sock.poll(left * 1000), f"{len(headers)} of {want} messages came"
        frames = peer.sock.recv_multipart()
        inner = wire.unwrap(frames)
        envelopes += inner is not None
        for m in inner or [frames]:
            _, h, payload = peer.session.split(m)
            Session.check_payload(h, payload)
            headers.append(h)
    return headers, envelopes


def test_controller_sends_a_turns_messages_for_one_peer_as_one_envelope(spawner, pdir, ctx):
    """Tasks queued at the controller while it was stopped reach their engine in one envelope, in the order
    sent; the results the engine sends back in a burst reach the client in one envelope, each authentic."""
    proc, einfo, cinfo = spawner.controller(pdir, "env")
    engine = RawPeer(ctx, connection.urls(einfo, "engine")[0], einfo["key"])
    h, _ = _register(engine, {"info": {"host": "raw", "pid": 1}, "hb": os.urandom(8).hex()})
    assert h["t"] == "registered"
    eid = h["eid"]
    client = RawPeer(ctx, connection.urls(cinfo, "client")[0], cinfo["key"])
    _hello(client)
    n = 8
    sent = [_task(client, eid, _inc, i) for i in range(n)]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for frames in sent:
            client.send(frames)
        time.sleep(0.3)  # all of them in the controller's socket buffers when it wakes
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    tasks, envelopes = _collect(engine, n)
    assert [t["t"] for t in tasks] == ["task"] * n
    assert [t["id"] for t in tasks] == [wire.json_value(wire.head_parts(f[0])[1])["id"] for f in sent]
    assert envelopes >= 1, "the tasks came one message each"

    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for i, t in enumerate(tasks):
            body = [wire.json_bytes({"engine_id": eid}), *serialize.dumps(i + 1)]
            engine.send(engine.session.pack("result", {"p": t["id"], "ok": True, "eid": eid,
                                                       "dm": wire.payload_digest(body[:1])}, body))
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    results, envelopes = _collect(client, n)
    assert [r["p"] for r in results] == [t["id"] for t in tasks]
    assert envelopes >= 1, "the results came one message each"


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


def test_a_lone_apply_async_leaves_at_once(rc, tmp_path):
    """The first task after a quiet spell goes out from the caller's thread: it runs while the client's I/O
    thread is busy (here: asleep), not when that thread next gets to it."""
    io_free = threading.Event()

    def occupy() -> None:
        time.sleep(3)
        io_free.set()
    rc._loop.call_soon_threadsafe(occupy)
    time.sleep(0.1)
    marker = tmp_path / "ran"
    ar = rc.load_balanced_view().apply_async(_touch, str(marker))
    wait_until(lambda: marker.exists() or io_free.is_set(), 10, what="the task to run or the I/O thread to wake")
    assert marker.exists() and not io_free.is_set(), "the task waited for the client's I/O thread"
    ar.get(timeout=10)


def test_a_burst_of_apply_async_leaves_in_envelopes_and_in_order(rc):
    """A burst of tasks reaches the controller as few messages (envelopes), every task once, in order."""
    before = rc.controller_status()["stats"]
    eid = rc.ids[0]
    view = rc[eid]
    ars = [view.apply_async(operator.add, i, 1) for i in range(300)]
    assert [a.get(timeout=30) for a in ars] == list(range(1, 301))
    # an engine runs the tasks sent to it in the order they reached the controller
    started = [a.started for a in ars]
    assert started == sorted(started)
    after = rc.controller_status()["stats"]
    assert after["envelopes_in"] > before["envelopes_in"]
    assert after["task_messages"] - before["task_messages"] == 300


def _append_to_order(i: int) -> None:
    order.append(i)  # noqa: F821 - a name of the engine's namespace


def _order_so_far() -> list:
    return list(order)  # noqa: F821


def test_a_synchronous_call_comes_after_the_tasks_sent_before_it(rc):
    """A burst of apply_async to one engine and then apply_sync there: the engine runs them in the order
    sent, though the burst's tail waited in the client to leave as an envelope and the synchronous call
    travels on a connection of its own."""
    view = rc[rc.ids[0]]
    view.execute("order = []", block=True)
    for _round in range(3):
        view.execute("order.clear()", block=True)
        ars = [view.apply_async(_append_to_order, i) for i in range(200)]
        assert view.apply_sync(_order_so_far) == list(range(200))
        for a in ars:
            a.get(timeout=30)
